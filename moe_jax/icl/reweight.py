"""Anchor re-weighting (paper Sec. 3.1, Eq. 12; official `attentioner_for_train.py`, `reweighting.py`).

A^h_l(q, p_i) -> exp(beta_{l,h,i}) A^h_l(q, p_i), post-softmax, not renormalised:
one beta per layer, head and demonstration, initialised at 0 (exactly vanilla
ICL). Only beta trains, with Adam (0.9, 0.999), batch size 1, 10 epochs over
4 extra examples per class drawn apart from the demonstrations; the loss is the
cross-entropy over the label-word logits at q. The learning rate is 0.01 in the
paper and 0.1 in the code's `ReweightingArgs`; `lr` defaults to the paper's.

Training goes through the engine: beta is a task head ("anchor_beta") of a
`TrainableSpec("heads")`, so `steps.make_optimizer` gives the frozen model no
update and no optimizer state and `steps.make_train_step` is the step. Beta
touches only the target row q, so each training prompt up to q is prefilled
once (`runner.prefill`) and each step runs q alone against that cache.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from moe_jax import steps, trainable
from moe_jax.attention import Hooks
from moe_jax.icl import runner
from moe_jax.icl.flows import label_loss
from moe_jax.model import Model, Transformer

HEAD = "anchor_beta"
PAPER_LR, CODE_LR = 0.01, 0.1


@dataclasses.dataclass(frozen=True)
class ReweightConfig:
  """The optimizer fields `steps.make_optimizer` reads, at the paper's values."""
  learning_rate: float = PAPER_LR
  epochs: int = 10
  schedule: str = "constant"
  warmup_steps: int = 0
  final_lr_fraction: float = 1.0
  b1: float = 0.9
  b2: float = 0.999
  weight_decay: float = 0.0  # plain Adam
  grad_clip: float = math.inf  # none
  seed: int = 0


def anchor_mult(beta, q_index, n_query: int, n_slots: int, label_slots):
  """[L, B, N, T, S] ones with exp(beta[l, h, i]) at (q_index[b], label_slots[i])."""
  row = (jnp.arange(n_query)[None, :] == jnp.asarray(q_index)[:, None]).astype(beta.dtype)  # [B, T]
  col = (jnp.arange(n_slots)[:, None] == jnp.asarray(label_slots)[None, :]).astype(beta.dtype)  # [S, D]
  return 1.0 + jnp.einsum("bt,sd,lnd->lbnts", row, col, jnp.exp(beta) - 1.0)


def _loss(params, buffers, config, batch):
  beta = params[HEAD]
  body = {k: v for k, v in params.items() if k != HEAD}
  ids = batch["ids"]
  mult = anchor_mult(beta, batch["q_index"], ids.shape[1], batch["cache"]["segment_ids"].shape[1],
                     batch["label_slots"])
  out = Transformer(config).apply({"params": body, "buffers": buffers}, ids, batch["positions"],
                                  batch["segment_ids"], batch["cache"], hooks=Hooks(mult=mult))
  logits_q = out.logits[jnp.arange(ids.shape[0]), batch["q_index"]]
  nll = label_loss(logits_q, batch["label_ids"], batch["label"])
  loss_sum, n = jnp.sum(nll), jnp.float32(ids.shape[0])
  return loss_sum / n, (loss_sum, n, out.aux)


def _batch(model: Model, context_ids, query, label: int, label_ids, label_slots, slots: int) -> dict:
  """One training example: the context and the query up to q prefilled, q itself to run."""
  ctx = runner.prefill(model, list(context_ids) + list(query[:-1]), min_slots=slots)
  return {"ids": np.asarray([[query[-1]]], np.int32),
          "positions": np.asarray([[ctx.next_position]], np.int32),
          "segment_ids": np.ones((1, 1), np.int32), "cache": runner.cache_with_room(ctx, 1, 1),
          "q_index": np.zeros((1,), np.int32), "label": np.asarray([label], np.int32),
          "label_ids": np.asarray(label_ids, np.int32), "label_slots": np.asarray(label_slots, np.int32)}


@functools.cache
def _step(config, cfg: ReweightConfig):
  """(spec, optimizer, jitted train step), built once per model config and settings."""
  spec = trainable.TrainableSpec("heads").with_heads({HEAD: jax.sharding.PartitionSpec()})
  tx = steps.make_optimizer(cfg, 1, spec)  # a constant schedule: the step count is moot
  return spec, tx, jax.jit(steps.make_train_step(config, spec, tx, _loss))


def train_beta(model: Model, context_ids, label_slots, queries, labels, label_ids,
               cfg: ReweightConfig = ReweightConfig(), progress=None) -> tuple[np.ndarray, list]:
  """beta [L, N, n_demo] trained on (query, label) pairs; returns (beta, per-epoch mean loss).

  Beta changes only what q computes, so each example's context and query up to q
  are prefilled once and a step runs q alone (the same loss as the whole prompt).
  """
  c = model.config
  spec, tx, step = _step(c, cfg)
  beta0 = jnp.zeros((c.num_hidden_layers, c.num_attention_heads, len(label_slots)), jnp.float32)
  params = {**model.params, HEAD: beta0}
  state = steps.TrainState(step=jnp.int32(0), params=params,
                           buffers=model.variables.get("buffers", {}), opt_state=tx.init(params))
  slots = -(-(len(context_ids) + max(len(q) for q in queries)) // 128) * 128  # few shapes
  batches = [_batch(model, context_ids, q, y, label_ids, label_slots, slots)
             for q, y in zip(queries, labels)]
  rng = np.random.default_rng(cfg.seed)
  history = []
  for epoch in range(cfg.epochs):
    losses = []
    for i in rng.permutation(len(batches)):
      state, m = step(state, batches[i])
      losses.append(float(m["loss_sum"]))
    history.append(float(np.mean(losses)))
    if progress:
      progress(epoch + 1, history[-1])
  return np.asarray(state.params[HEAD]), history


def reweighted_queries(model: Model, ctx: runner.ContextCache, queries, beta, label_slots,
                       batch: int = 8) -> runner.QueryResult:
  """The query passes with exp(beta) on A(q, p_i) (beta = 0 is vanilla ICL)."""
  beta = jnp.asarray(beta, jnp.float32)
  hooks_for = lambda qi, t, s: Hooks(mult=anchor_mult(beta, qi, t, s, label_slots))
  return runner.run_queries(model, ctx, queries, hooks_for, batch=batch)
