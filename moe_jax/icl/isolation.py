"""Isolating label words in shallow or deep layers, and the loyalty it leaves (paper Sec. 2.2).

The paper sets A_l(p, i) = 0 for i < p at every label position p; the official
code (`attentioner.py`) instead adds -10000 to the *pre-softmax* scores of
rows p .. p + window (window 0) for the columns before p, so a label token
attends only to itself. That is the default here (`isolation_bias`); it is
applied in the first or the last k layers (`--mask_layer_num`, default 5).
The control isolates as many random non-label positions.

Label loyalty: the fraction of queries whose predicted label (argmax over the
label words) is unchanged. Word loyalty: the Jaccard similarity of the top-k
vocabulary tokens at q (the paper says top 5, one notebook uses 10: `k`).
"""

from __future__ import annotations

import numpy as np

from moe_jax.attention import Hooks

OFFICIAL_BIAS = -10000.0


def layer_range(n_layers: int, k: int, where: str) -> range:
  """The first or the last k layers."""
  if where not in ("first", "last"):
    raise ValueError(f"isolation layers: where must be 'first' or 'last', got {where!r}")
  if not 0 < k <= n_layers:
    raise ValueError(f"isolation layers: k must be in 1..{n_layers}, got {k}")
  return range(k) if where == "first" else range(n_layers - k, n_layers)


def isolation_bias(n_layers: int, length: int, positions, layers, window: int = 0,
                   value: float = OFFICIAL_BIAS) -> Hooks:
  """Hooks whose bias [L, 1, 1, T, T] stops rows p..p+window looking at columns < p in `layers`."""
  bias = np.zeros((length, length), np.float32)
  for p in np.asarray(positions, int):
    bias[p:p + window + 1, :p] = value
  full = np.zeros((n_layers, 1, 1, length, length), np.float32)
  full[list(layers)] = bias
  return Hooks(bias=full)


def random_positions(candidates, exclude, n: int, rng: np.random.Generator) -> np.ndarray:
  """n distinct positions from `candidates` minus `exclude` (the random-token control)."""
  pool = np.setdiff1d(np.asarray(candidates), np.asarray(exclude))
  if len(pool) < n:
    raise ValueError(f"only {len(pool)} non-label positions to isolate, {n} asked for")
  return np.sort(rng.choice(pool, n, replace=False))


def label_loyalty(pred_a, pred_b) -> np.ndarray:
  """[n] 1 where the two predicted labels agree."""
  return (np.asarray(pred_a) == np.asarray(pred_b)).astype(np.float64)


def word_loyalty(logits_a, logits_b, k: int = 5) -> np.ndarray:
  """[n] Jaccard similarity of the top-k tokens of two [n, V] logit arrays."""
  top = lambda x: np.argsort(-np.asarray(x), -1)[:, :k]
  return jaccard(top(logits_a), top(logits_b))


def jaccard(top_a, top_b) -> np.ndarray:
  """[n] Jaccard similarity of the rows of two [n, k] token-id arrays."""
  return np.asarray([len(set(x) & set(y)) / len(set(x) | set(y)) for x, y in zip(top_a, top_b)])
