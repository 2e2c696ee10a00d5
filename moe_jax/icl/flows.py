"""Saliency and the three information flows of ICL (paper Eq. 1-4; official `attention_attr.py`).

Saliency of layer l: I_l = |sum_h A_{h,l} * dL/dA_{h,l}| [T, T], heads summed
before the absolute value (the paper's footnote alternative, sum_h |.|, is
`per_head_abs=True`). It is computed the official way: the post-softmax
attention is multiplied by a tensor of ones P (`attention.Hooks.mult`) and
dL/dP = A * dL/d(A P) at P = 1, by `jax.grad`. L is the cross-entropy of the
gold label over the C label-word logits at the target position q.

The flows, per layer, with the diagonal of I_l zeroed, label positions p_k
and 0-indexed positions (the official denominators):

  S_wp = sum_k sum_{j < p_k} I(p_k, j) / sum_k p_k          text -> label words
  S_pq = sum_k I(q, p_k) / C                                label words -> target
  S_ww = (sum_{j < i <= q} I(i, j) - the two above) / (q (q + 1) / 2 - sum_k p_k - C)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from moe_jax.attention import Hooks
from moe_jax.model import Model, Transformer


def label_loss(logits_q, label_ids, label):
  """Cross-entropy of `label` over the label-word logits. logits_q: [..., V] -> [...]."""
  restricted = jnp.take(logits_q.astype(jnp.float32), jnp.asarray(label_ids), axis=-1)  # [..., C]
  return -jnp.take_along_axis(jax.nn.log_softmax(restricted, -1),
                              jnp.asarray(label)[..., None], -1)[..., 0]


@functools.partial(jax.jit, static_argnames=("config", "per_head_abs"))
def _saliency(config, variables, ids, label_ids, label, per_head_abs: bool):
  t = ids.shape[1]
  ones = jnp.ones((config.num_hidden_layers, 1, config.num_attention_heads, t, t), jnp.float32)

  def loss(mult):
    out = Transformer(config).apply(variables, ids, hooks=Hooks(mult=mult))
    return label_loss(out.logits[0, -1], label_ids, label)

  grad = jax.grad(loss)(ones)[:, 0]  # [L, N, T, T] = A * dL/dA
  return jnp.sum(jnp.abs(grad), 1) if per_head_abs else jnp.abs(jnp.sum(grad, 1))


def saliency(model: Model, ids, label_ids, label: int, per_head_abs: bool = False) -> np.ndarray:
  """[L, T, T] saliency of each layer for one prompt `ids` [T] whose last token is q."""
  ids = jnp.asarray(ids, jnp.int32)[None]
  return np.asarray(_saliency(model.config, model.variables, ids, jnp.asarray(label_ids),
                              jnp.int32(label), per_head_abs))


def flows(saliency_l: np.ndarray, label_pos, q: int) -> np.ndarray:
  """[..., 3] = (S_wp, S_pq, S_ww) from saliency [..., T, T] (any leading layer axes)."""
  s = np.array(saliency_l, np.float64)[..., :q + 1, :q + 1]
  idx = np.arange(q + 1)
  s[..., idx, idx] = 0.0
  s = np.tril(s)  # causal: j <= i only (the diagonal is zero)
  p = np.asarray(label_pos)
  wp = s[..., p, :].sum((-1, -2))
  pq = s[..., q, p].sum(-1)
  ww = s.sum((-1, -2)) - wp - pq
  n_ww = q * (q + 1) / 2 - p.sum() - len(p)
  return np.stack([wp / p.sum(), pq / len(p), ww / n_ww], -1)


def normalised(flow: np.ndarray) -> np.ndarray:
  """Each layer's three flows scaled to sum to 1 (the official notebook's plot)."""
  return flow / np.maximum(flow.sum(-1, keepdims=True), 1e-30)
