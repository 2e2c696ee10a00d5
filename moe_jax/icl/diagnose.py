"""Error diagnosis from the anchors' keys (paper Sec. 3.3, App. J/K; official `Error_analysis.ipynb`).

The query vectors of the target q over the test set, centred, give the top-M
principal directions v_m with standard deviations sigma_m; each label
position's key k_{p_i} becomes khat_i = (sigma_m v_m^T k_{p_i})_m. Predicted
confusion: ||khat_i - khat_j|| / max_{s != t} ||khat_s - khat_t|| (0: most
confusable). Real confusion: the AUC of separating the test examples of class i
from those of class j by the model's p_i / (p_i + p_j) (the code's p_i / p_j
ranks the same). Both are [C, C] with an empty diagonal.
"""

from __future__ import annotations

import numpy as np

from moe_jax.icl.deep import auc


def predicted_confusion(keys: np.ndarray, queries: np.ndarray, m: int = 10) -> np.ndarray:
  """keys: [C, D] at the label positions; queries: [n, D] at q -> [C, C] predicted confusion."""
  q = np.asarray(queries, np.float64)
  q = q - q.mean(0)
  _, sv, vt = np.linalg.svd(q, full_matrices=False)
  m = min(m, len(sv))
  sigma = sv[:m] / np.sqrt(max(len(q) - 1, 1))  # standard deviation along each direction
  khat = sigma[None] * (np.asarray(keys, np.float64) @ vt[:m].T)  # [C, M]
  dist = np.linalg.norm(khat[:, None] - khat[None], axis=-1)
  off = ~np.eye(len(khat), dtype=bool)
  out = dist / dist[off].max()
  out[~off] = np.nan
  return out


def real_confusion(probs: np.ndarray, labels) -> np.ndarray:
  """probs: [n, C] over the label words; labels: [n] gold -> [C, C] pairwise AUCs."""
  probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
  c = probs.shape[1]
  out = np.full((c, c), np.nan)
  for i in range(c):
    for j in range(c):
      if i != j:
        m = (labels == i) | (labels == j)
        score = probs[m, i] / np.maximum(probs[m, i] + probs[m, j], 1e-300)
        out[i, j] = auc(score, labels[m] == i)
  return out


def agreement(pred: np.ndarray, real: np.ndarray) -> float:
  """Spearman correlation of the two matrices over the class pairs i < j (NaN if < 3 pairs)."""
  iu = np.triu_indices(len(pred), 1)
  a, b = pred[iu], (real[iu] + real.T[iu]) / 2
  if len(a) < 3:
    return float("nan")
  rank = lambda x: np.argsort(np.argsort(x)).astype(np.float64)
  return float(np.corrcoef(rank(a), rank(b))[0, 1])
