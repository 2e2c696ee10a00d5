"""Training: the pure train/eval steps and `train_and_evaluate`, driven by an ml_collections config.

`train_step(state, batch) -> (state, metrics)` is jitted once. Metrics are sums
with their denominators (`loss_sum`/`tokens`), so they add up across steps and
devices before dividing.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from moe_jax import config as model_config
from moe_jax import input_pipeline
from moe_jax.generate import generate
from moe_jax.hf import from_pretrained, save_pretrained
from moe_jax.model import Model, Transformer, init_variables
from moe_jax.tokenizer import load_tokenizer


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  buffers: Any  # non-trained variables (V3 router bias); may be {}
  opt_state: Any
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
  config: model_config.ModelConfig = flax.struct.field(pytree_node=False)


def make_optimizer(cfg: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
  """AdamW with linear warmup and cosine decay, global-norm clipping."""
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, cfg.learning_rate, max(cfg.warmup_steps, 1), max(num_steps, cfg.warmup_steps + 1),
      end_value=cfg.learning_rate * cfg.final_lr_fraction)
  return optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                     optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay))


def _lm_loss(params, buffers, config, batch):
  """Next-token cross-entropy over trained positions, plus the MoE balance losses."""
  tokens, seg = batch["tokens"], batch["segment_ids"]
  inputs = tokens[:, :-1]
  out = Transformer(config).apply({"params": params, "buffers": buffers}, inputs,
                                  batch["positions"][:, :-1], seg[:, :-1])
  # A target counts if it is a training token of the same example as its input.
  weights = (batch["loss_mask"][:, 1:] & (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] != 0))
  weights = weights.astype(jnp.float32)
  logp = jax.nn.log_softmax(out.logits.astype(jnp.float32), -1)
  nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]
  loss_sum = jnp.sum(nll * weights)
  n = jnp.sum(weights)
  aux = out.aux.balance_loss + out.aux.device_balance_loss
  return loss_sum / jnp.maximum(n, 1.0) + aux, (loss_sum, n, out.aux)


def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
  """One optimizer step on a batch of packed rows."""
  grad_fn = jax.value_and_grad(_lm_loss, has_aux=True)
  (_, (loss_sum, n, aux)), grads = grad_fn(state.params, state.buffers, state.config, batch)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss_sum": loss_sum, "tokens": n, "balance_loss": aux.balance_loss,
             "dropped": aux.dropped, "grad_norm": optax.tree.norm(grads),
             "update_norm": optax.tree.norm(updates)}
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(state: TrainState, batch: dict) -> dict:
  _, (loss_sum, n, _) = _lm_loss(state.params, state.buffers, state.config, batch)
  return {"loss_sum": loss_sum, "tokens": n}


def evaluate(eval_fn, state: TrainState, data, num_batches: int) -> float:
  """Mean loss per target token over the first `num_batches` batches of `data`."""
  loss, n = 0.0, 0.0
  for i in range(num_batches):
    m = eval_fn(state, data[i])
    loss, n = loss + float(m["loss_sum"]), n + float(m["tokens"])
  return loss / max(n, 1.0)


def build_model_config(cfg: ml_collections.ConfigDict) -> model_config.ModelConfig:
  """The ModelConfig from `config.model`: a preset plus any ModelConfig field overrides."""
  fields = dict(cfg.model)
  preset = fields.pop("preset")
  if preset not in model_config.PRESETS:
    raise model_config.ConfigError(
        f"config.model.preset: {preset!r} is not one of {sorted(model_config.PRESETS)}")
  return model_config.PRESETS[preset]().replace(**fields) if fields else model_config.PRESETS[preset]()


def _assets(name: str) -> str:
  return os.path.join(os.path.dirname(__file__), "assets", name)


def resolve_data_path(path: str) -> str:
  """`assets:NAME` names a sample shipped with moe_jax; anything else is a path."""
  return _assets(path[len("assets:"):]) if path.startswith("assets:") else path


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains a model as `cfg` describes, evaluating before and after; returns summary metrics."""
  os.makedirs(workdir, exist_ok=True)
  tokenizer = load_tokenizer(cfg.data.tokenizer)
  if cfg.init_from:
    model = from_pretrained(cfg.init_from)
    mcfg, variables = model.config, model.variables
  else:
    mcfg = build_model_config(cfg)
    if mcfg.vocab_size < tokenizer.vocab_size:
      raise model_config.ConfigError(
          f"config.model.vocab_size={mcfg.vocab_size} is smaller than the tokenizer's "
          f"{tokenizer.vocab_size} ids")
    variables = init_variables(mcfg, cfg.seed)
  files = [resolve_data_path(p) for p in cfg.data.train_files]
  rows = input_pipeline.load_packed(files, tokenizer, cfg.data.seq_len, cfg.data.max_examples)
  n_eval = max(cfg.data.batch_size, int(len(rows["tokens"]) * cfg.data.eval_fraction))
  eval_rows = {k: v[:n_eval] for k, v in rows.items()}
  train_rows = {k: v[n_eval:] for k, v in rows.items()}
  train_data = input_pipeline.batches(train_rows, cfg.data.batch_size, cfg.seed)
  eval_data = input_pipeline.batches(eval_rows, cfg.data.batch_size, cfg.seed, shuffle=False)
  eval_batches = max(1, n_eval // cfg.data.batch_size)

  tx = make_optimizer(cfg.optimizer, cfg.num_train_steps)
  params = variables["params"]
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     buffers=variables.get("buffers", {}), opt_state=tx.init(params), tx=tx,
                     config=mcfg)
  n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
  print(f"model: {mcfg.model_type}, {n_params:,} parameters, {len(mcfg.moe_layers)} MoE layers "
        f"x {mcfg.n_routed_experts} experts (top-{mcfg.num_experts_per_tok}); "
        f"data: {len(train_rows['tokens'])} train / {n_eval} eval rows of {cfg.data.seq_len} tokens")

  step_fn = jax.jit(train_step, donate_argnums=0)
  eval_fn = jax.jit(eval_step)
  before = evaluate(eval_fn, state, eval_data, eval_batches)
  print(f"eval loss before training: {before:.4f}")
  log_path = os.path.join(workdir, "metrics.jsonl")
  t0, tokens_seen = time.time(), 0
  with open(log_path, "a", encoding="utf-8") as log:
    for step in range(cfg.num_train_steps):
      state, m = step_fn(state, train_data[step])
      tokens_seen += cfg.data.batch_size * cfg.data.seq_len
      if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.num_train_steps:
        m = jax.device_get(m)
        loss = float(m["loss_sum"]) / max(float(m["tokens"]), 1.0)
        if not np.isfinite(loss):
          raise FloatingPointError(f"step {step + 1}: non-finite loss {loss}")
        rate = tokens_seen / (time.time() - t0)
        print(f"step {step + 1}/{cfg.num_train_steps}  loss {loss:.4f}  "
              f"balance {float(m['balance_loss']):.4f}  {rate:,.0f} tokens/s", flush=True)
        log.write(json.dumps({"step": step + 1, "loss": loss, "tokens_per_s": rate,
                              "grad_norm": float(m["grad_norm"])}) + "\n")
  after = evaluate(eval_fn, state, eval_data, eval_batches)
  print(f"eval loss after training: {after:.4f} (before {before:.4f})")
  model = Model(mcfg, {"params": state.params, **({"buffers": state.buffers} if state.buffers else {})})
  summary = {"eval_loss_before": before, "eval_loss_after": after}
  if cfg.export_hf:
    out = os.path.join(workdir, "hf")
    save_pretrained(model, out)
    print(f"exported Hugging Face checkpoint: {out}")
    summary["hf_dir"] = out
  if cfg.sample_prompt:
    prompt = [tokenizer.bos_id] + tokenizer.encode(f"User: {cfg.sample_prompt}\n\nAssistant:")
    out_ids = generate(model, np.asarray([prompt]), max_new_tokens=cfg.sample_tokens,
                       eos_token_id=tokenizer.eos_id)
    text = tokenizer.decode(np.asarray(out_ids[0, len(prompt):]))
    print(f"sample: {cfg.sample_prompt!r} -> {text!r}")
    summary["sample"] = text
  with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2, ensure_ascii=False)
  return summary
