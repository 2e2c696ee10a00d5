"""Deep layers read the label words: A_l(q, p_i) as a classifier of the output (paper Sec. 2.3).

For each layer, the attention of the target q on each label position, summed
over heads (and over the demonstrations of each class when there are several),
is scored as a classifier of the model's *own* prediction (not the gold
label): the column of class 1 for two classes, else the C scores normalised to
sum to 1 and the one-vs-one AUC (Hand and Till; scikit-learn's `ovo`).
R_l = sum_{i<=l}(AUCROC_i - 0.5) / sum_i (AUCROC_i - 0.5).
"""

from __future__ import annotations

import numpy as np

from moe_jax.prm.discrimination import roc_auc  # the one AUC of the package


def anchor_attention(attention, q_index, label_pos, demo_labels, n_classes: int) -> np.ndarray:
  """[n, L, C] A_l(q, p_i) summed over heads and over each class's demonstrations.

  attention: per layer [n, N, T, S] query-pass probabilities whose key slots
  are the context positions (an uncompressed context); q_index: [n].
  """
  rows = np.arange(len(q_index))
  out = np.zeros((len(q_index), len(attention), n_classes))
  for l, a in enumerate(attention):
    at_q = np.asarray(a)[rows, :, q_index].sum(1)  # [n, S]
    for p, c in zip(label_pos, demo_labels):
      out[:, l, c] += at_q[:, p]
  return out


def auc(scores, positive) -> float:
  """Area under the ROC curve (ties count half); NaN when one class is absent."""
  return roc_auc(np.asarray(scores, np.float64), np.asarray(positive, bool))


def ovo_auc(scores, labels) -> float:
  """Macro one-vs-one AUC of [n, C] scores (each row normalised to sum 1) against labels [n]."""
  scores = np.asarray(scores, np.float64)
  scores = scores / np.maximum(scores.sum(1, keepdims=True), 1e-300)
  labels = np.asarray(labels)
  present = np.unique(labels)
  pairs = []
  for ai, a in enumerate(present):
    for b in present[ai + 1:]:
      m = (labels == a) | (labels == b)
      pairs.append((auc(scores[m, a], labels[m] == a) + auc(scores[m, b], labels[m] == b)) / 2)
  return float(np.mean(pairs)) if pairs else float("nan")


def auroc_per_layer(anchor_att: np.ndarray, predicted) -> np.ndarray:
  """[L] AUCROC_l of A_l(q, p_i) [n, L, C] against the model's predictions [n]."""
  n_classes = anchor_att.shape[-1]
  if n_classes == 2:
    return np.asarray([auc(anchor_att[:, l, 1], np.asarray(predicted) == 1)
                       for l in range(anchor_att.shape[1])])
  return np.asarray([ovo_auc(anchor_att[:, l], predicted) for l in range(anchor_att.shape[1])])


def cumulative_r(aucroc) -> np.ndarray:
  """[L] R_l, the share of the total above-chance AUC reached by layer l."""
  gain = np.asarray(aucroc, np.float64) - 0.5
  return np.cumsum(gain) / gain.sum()
