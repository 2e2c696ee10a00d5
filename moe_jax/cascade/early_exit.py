"""Dynamic early exiting on one encoder, the baselines CascadeBERT is measured against.

Both put an internal classifier after every layer but the last, whose own
classifier is the model's (`heads.CLASSIFIER` on the pooled output). They sit
in one task head, `params["ramps"]`, stacked over the first L-1 layers:

  deebert  DeeBERT (Xin et al., 2020): each off-ramp is a pooler (dense + tanh on
           the layer's first token) and a linear classifier. Trained in two
           stages, as the paper does: fine-tune the backbone with its final
           classifier (the ordinary classification loss), then freeze it and
           train the off-ramps on the sum of their cross-entropies
           (`deebert_loss`, trainable mode "heads"). Exit: entropy below S.
  pabee    PABEE (Zhou et al., 2020): each internal classifier is linear on the
           model's own pooler applied to the layer's first token. Trained in
           one stage with the backbone on sum_j j * CE_j / sum_j j over all L
           layers (`pabee_loss`). Exit: the prediction unchanged for
           `patience` layers.

`layer_steps` runs the encoder one layer at a time for `exits.run`, so that an
example that exits at layer l never reaches layer l + 1.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from moe_jax import axes as ax
from moe_jax import heads
from moe_jax.cascade.losses import cross_entropy
from moe_jax.config import ModelConfig
from moe_jax.model import Model, module_for

RAMPS = "ramps"  # where the internal classifiers live: params["ramps"], beside the model's
KINDS = ("deebert", "pabee")


def init_ramps(config: ModelConfig, num_labels: int, kind: str, seed: int = 0) -> dict:
  """The internal classifiers of layers 0..L-2, stacked: normal(initializer_range) kernels."""
  if kind not in KINDS:
    raise ValueError(f"early-exit kind {kind!r} is not one of {KINDS}")
  n, d = config.num_hidden_layers - 1, config.hidden_size
  k1, k2 = jax.random.split(jax.random.key(seed))
  std = config.initializer_range
  out = {"classifier": {"kernel": std * jax.random.normal(k1, (n, d, num_labels), jnp.float32),
                        "bias": jnp.zeros((n, num_labels), jnp.float32)}}
  if kind == "deebert":
    out["pooler"] = {"kernel": std * jax.random.normal(k2, (n, d, d), jnp.float32),
                     "bias": jnp.zeros((n, d), jnp.float32)}
  return out


def ramp_axes(kind: str) -> dict:
  """Logical axes of `init_ramps`' tree (the layer axis and the few labels replicated)."""
  out = {"classifier": {"kernel": P(None, ax.EMBED, None), "bias": P(None, None)}}
  if kind == "deebert":
    out["pooler"] = {"kernel": P(None, ax.EMBED, ax.MLP), "bias": P(None, ax.MLP)}
  return out


def kind_of(ramps: dict) -> str:
  return "deebert" if "pooler" in ramps else "pabee"


def _dense(p: dict, x):
  return x.astype(jnp.float32) @ p["kernel"].astype(jnp.float32) + p["bias"].astype(jnp.float32)


def ramp_logits(ramps: dict, pooler: dict, l: int, first) -> jax.Array:
  """[B, C] the internal classifier of layer l (< L-1) on that layer's first token `first` [B, D]."""
  pick = lambda tree: jax.tree_util.tree_map(lambda a: a[l], tree)
  pooled = jnp.tanh(_dense(pick(ramps["pooler"]) if "pooler" in ramps else pooler, first))
  return _dense(pick(ramps["classifier"]), pooled)


def internal_logits(params, buffers, config: ModelConfig, batch: dict):
  """([L-1, B, C] float32 logits of the internal classifiers, EncoderOutput).

  params: the encoder's tree plus params["ramps"] (any params["classifier"] is ignored)."""
  body = {k: v for k, v in params.items() if k not in (heads.CLASSIFIER, RAMPS)}
  out = module_for(config).apply({"params": body, "buffers": buffers}, batch["tokens"],
                                 batch.get("positions"), batch.get("segment_ids"))
  logits = [ramp_logits(params[RAMPS], body["pooler"], l, out.layer_first[l])
            for l in range(config.num_hidden_layers - 1)]
  return jnp.stack(logits), out


def all_logits(params, buffers, config: ModelConfig, batch: dict):
  """([L, B, C] float32 logits of every layer's classifier, MoEAux); the last is the model's own
  classifier on the pooled output."""
  internal, out = internal_logits(params, buffers, config, batch)
  final = _dense(params[heads.CLASSIFIER], out.pooled)
  return jnp.concatenate([internal, final[None]]), out.aux


def _live(batch):
  return batch["segment_ids"][:, 0] != 0


def deebert_loss(params, buffers, config: ModelConfig, batch: dict):
  """DeeBERT's second stage: the sum over off-ramps of their mean cross-entropies (the trainer's
  signature; params are the frozen backbone, without its classifier, and the "ramps" head)."""
  logits, out = internal_logits(params, buffers, config, batch)
  aux = out.aux
  sums = [cross_entropy(lg, batch["label"], _live(batch)) for lg in logits]
  n = sums[0][1]
  loss_sum = sum(s for s, _ in sums)
  return loss_sum / jnp.maximum(n, 1.0), (loss_sum, n, aux)


def pabee_loss(params, buffers, config: ModelConfig, batch: dict):
  """PABEE: sum_j j * CE_j / sum_j j over the L layers' classifiers, with the MoE balance losses."""
  logits, aux = all_logits(params, buffers, config, batch)
  sums = [cross_entropy(lg, batch["label"], _live(batch)) for lg in logits]
  n = sums[0][1]
  weights = np.arange(1, len(sums) + 1, dtype=np.float64)
  loss_sum = sum(w * s for w, (s, _) in zip(weights / weights.sum(), sums))
  loss = loss_sum / jnp.maximum(n, 1.0) + aux.balance_loss + aux.device_balance_loss
  return loss, (loss_sum, n, aux)


# Layer by layer, for the real early exit ----------------------------------------------------

@functools.partial(jax.jit, static_argnames=("config", "layer"))
def _step(config, variables, ramps, layer, x, batch):
  """Layer `layer` on hidden states x [B, T, D] (the embeddings first): (x, probs [B, C])."""
  m = module_for(config)
  if x is None:
    x = m.apply(variables, batch["tokens"], batch["positions"], batch["segment_ids"], method="embed")
  x = m.apply(variables, layer, x, batch["segment_ids"], batch["positions"], method="layer")
  if layer == config.num_hidden_layers - 1:
    pooled = m.apply(variables, x, method="pool")
    logits = _dense(variables["params"][heads.CLASSIFIER], pooled)
  else:
    logits = ramp_logits(ramps, variables["params"]["pooler"], layer, x[:, 0])
  return x, jax.nn.softmax(logits, -1)


def layer_steps(model: Model, rows: dict, batch_size: int = 32) -> list:
  """`exits.run` steps, one per layer, for `model` (params with "classifier" and "ramps") on the
  encoded `rows`; each step carries the hidden states of the rows still running."""
  c = model.config
  ramps = model.params[RAMPS]
  variables = {**model.variables, "params": {k: v for k, v in model.params.items() if k != RAMPS}}

  def step(layer):
    def run(ids, carry):
      xs, probs = [], []
      for i in range(0, len(ids), batch_size):
        idx = ids[i:i + batch_size]
        short = batch_size - len(idx)
        batch = {k: jnp.asarray(np.pad(rows[k][idx], [(0, short), (0, 0)]))
                 for k in ("tokens", "segment_ids", "positions")}
        x = None if carry is None else jnp.pad(carry[i:i + batch_size], [(0, short), (0, 0), (0, 0)])
        x, p = _step(c, variables, ramps, layer, x, batch)
        xs.append(x[:len(idx)])
        probs.append(np.asarray(p)[:len(idx)])
      return np.concatenate(probs), jnp.concatenate(xs)
    return run

  return [step(layer) for layer in range(c.num_hidden_layers)]
