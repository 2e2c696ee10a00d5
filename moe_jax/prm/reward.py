"""The process reward model: step scores at tag positions, its loss, and its metrics.

A step's score is read at the last token of the step's tag, from the logits of
the two label tokens: p(good) = softmax([z_good, z_bad])[0] (Math-Shepherd's
released scorer; spec A3-A4). There is no label shift: the logit at the tag
position is what trains. With `value_head` a scalar head on the final hidden
state replaces the two LM logits: p(good) = sigmoid(w . h + b).

Batches are packed rows {"tokens", "score_mask", "targets", "segment_ids",
"positions"} [B, T]; `targets` holds the step label in [0, 1] (hard or soft) at
score positions.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from moe_jax.model import Model, Transformer
from moe_jax.prm.discrimination import roc_auc  # the one AUC of the package; re-exported here


@dataclasses.dataclass(frozen=True)
class RewardHead:
  """How scores are read: the two label-token ids, or a scalar value head."""

  good_id: int
  bad_id: int
  value_head: bool = False


def label_ids(tokenizer, good: str = "+", bad: str = "-") -> tuple[int, int]:
  """Ids of the two label tokens; each must be exactly one token."""
  out = []
  for name, text in (("good", good), ("bad", bad)):
    ids = tokenizer.encode(text)
    if len(ids) != 1:
      raise ValueError(f"the {name} label {text!r} is {len(ids)} tokens for this tokenizer; "
                       "PRM labels must be single tokens")
    out.append(ids[0])
  return out[0], out[1]


VALUE_HEAD = "value_head"  # where a model holds the head: params["value_head"], beside the transformer's
# Its logical axes: D + 1 numbers, replicated on every device.
VALUE_HEAD_AXES = {"kernel": jax.sharding.PartitionSpec(None), "bias": jax.sharding.PartitionSpec()}


def init_value_head(hidden_size: int) -> dict:
  """A zero-initialised scalar value head: kernel [hidden_size] and bias."""
  return {"kernel": jnp.zeros((hidden_size,), jnp.float32), "bias": jnp.zeros((), jnp.float32)}


def with_value_head(model: Model) -> Model:
  """`model` with a value head: its own if it has one, else a zero-initialised one."""
  head = model.params.get(VALUE_HEAD, init_value_head(model.config.hidden_size))
  return Model(model.config, {**model.variables, "params": {**model.params, VALUE_HEAD: head}})


def good_logit(params, buffers, config, batch, head: RewardHead):
  """logit of p(good) at every position: [B, T] float32 (z_good - z_bad, or the value head)."""
  model_params = {k: v for k, v in params.items() if k != VALUE_HEAD}
  out = Transformer(config).apply({"params": model_params, "buffers": buffers}, batch["tokens"],
                                  batch["positions"], batch["segment_ids"],
                                  return_hidden=head.value_head)
  if head.value_head:
    vh = params[VALUE_HEAD]
    return out.hidden.astype(jnp.float32) @ vh["kernel"] + vh["bias"], out.aux
  logits = out.logits.astype(jnp.float32)
  return logits[..., head.good_id] - logits[..., head.bad_id], out.aux


def prm_loss(params, buffers, config, batch, head: RewardHead, rank_weight: float = 0.0):
  """Binary cross-entropy at score positions with (soft) targets, averaged over steps.

  For hard targets this is the cross-entropy over the two label tokens; soft
  targets (Math-Shepherd's soft estimation) enter as p(good) targets. With
  `rank_weight` and pair rows (`training.pair_rows`), plus rank_weight x `rank_loss`.
  Returns (loss, (loss_sum, n_steps, MoEAux)) like the LM loss.
  """
  z, aux = good_logit(params, buffers, config, batch, head)
  t = batch["targets"].astype(jnp.float32)
  m = batch["score_mask"].astype(jnp.float32)
  nll = -(t * jax.nn.log_sigmoid(z) + (1 - t) * jax.nn.log_sigmoid(-z))
  loss_sum, n = jnp.sum(nll * m), jnp.sum(m)
  loss = loss_sum / jnp.maximum(n, 1.0)
  if rank_weight and "rank_right" in batch:  # pair rows only (held-out rows have no pairs)
    loss = loss + rank_weight * rank_loss(z, batch)
  return loss + aux.balance_loss + aux.device_balance_loss, (loss_sum, n, aux)


def rank_loss(z, batch):
  """Mean over pair rows of softplus(z_wrong - z_right): the pairwise logistic (Bradley-Terry)
  loss on each row's two last-step logits. batch: "rank_right", "rank_wrong" [B] positions,
  "rank_mask" [B] (0 on padding rows)."""
  rows = jnp.arange(z.shape[0])
  margin = z[rows, batch["rank_right"]] - z[rows, batch["rank_wrong"]]
  w = batch["rank_mask"].astype(jnp.float32)
  return jnp.sum(jax.nn.softplus(-margin) * w) / jnp.maximum(w.sum(), 1.0)


def make_loss(head: RewardHead, rank_weight: float = 0.0):
  """prm_loss bound to a head (and a ranking weight), in the trainer's loss_fn signature."""
  return functools.partial(prm_loss, head=head, rank_weight=rank_weight)


@functools.partial(jax.jit, static_argnames=("config", "head"))
def _probs(config, variables, batch, head):
  z, _ = good_logit(variables["params"], variables.get("buffers", {}), config, batch, head)
  return jax.nn.sigmoid(z)


def score_rows(model: Model, rows: dict, head: RewardHead, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
  """(p(good), target) at every score position of packed rows, in row order."""
  probs, targets = [], []
  n = len(rows["tokens"])
  for i in range(0, n, batch_size):
    b = {k: v[i:i + batch_size] for k, v in rows.items()}
    short = batch_size - len(b["tokens"])
    if short:  # pad the last batch so every call has one shape
      b = {k: np.concatenate([v, np.zeros((short,) + v.shape[1:], v.dtype)]) for k, v in b.items()}
    p = np.asarray(_probs(model.config, model.variables, {k: jnp.asarray(v) for k, v in b.items()
                                                          if k != "targets" and k != "score_mask"},
                          head))
    mask = b["score_mask"].astype(bool)
    probs.append(p[mask])
    targets.append(b["targets"][mask])
  return np.concatenate(probs), np.concatenate(targets)


def metrics(probs: np.ndarray, targets: np.ndarray) -> dict:
  """Step accuracy, balanced accuracy, ROC AUC and log-loss against labels (soft labels thresholded at 0.5 for the classification metrics)."""
  probs = np.clip(np.asarray(probs, np.float64), 1e-7, 1 - 1e-7)
  t = np.asarray(targets, np.float64)
  y = t >= 0.5
  pred = probs >= 0.5
  pos, neg = y.sum(), (~y).sum()
  tpr = (pred & y).sum() / pos if pos else float("nan")
  tnr = (~pred & ~y).sum() / neg if neg else float("nan")
  return {"steps": int(len(t)), "accuracy": float((pred == y).mean()) if len(t) else float("nan"),
          "balanced_accuracy": float((tpr + tnr) / 2), "auc": roc_auc(probs, y),
          "log_loss": float(-np.mean(t * np.log(probs) + (1 - t) * np.log(1 - probs)))}
