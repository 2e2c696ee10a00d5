"""Classification metrics: accuracy, macro-F1, expected calibration error, confusion matrix.

Everything takes host arrays: `probs` [N, C] (rows sum to 1) and `labels` [N]
int ids. `report` gathers them into the dict a run writes to `metrics.json`;
`plot` draws the confusion matrix and the reliability diagram a reader would
rather look at than a table.
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
  """[C, C] counts: row = the true class, column = the predicted one."""
  m = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(m, (np.asarray(labels, np.int64), np.asarray(preds, np.int64)), 1)
  return m


def mcc(labels: np.ndarray, preds: np.ndarray) -> float:
  """Matthews correlation of binary labels and predictions (0 when a margin of the table is empty)."""
  (tn, fp), (fn, tp) = confusion_matrix(labels, preds, 2).astype(np.float64)
  denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
  return float((tp * tn - fp * fn) / denom) if denom else 0.0


def macro_f1(confusion: np.ndarray) -> float:
  """The unweighted mean over classes of F1 = 2 TP / (2 TP + FP + FN).

  A class that never occurs and is never predicted has no F1 and is left out
  of the mean (scikit-learn instead counts it as 0 with a warning).
  """
  tp = np.diag(confusion).astype(np.float64)
  fp = confusion.sum(0) - tp
  fn = confusion.sum(1) - tp
  denom = 2 * tp + fp + fn
  present = denom > 0
  return float(np.mean(2 * tp[present] / denom[present])) if present.any() else float("nan")


def calibration_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict:
  """Top-label confidence in `n_bins` equal-width bins over (0, 1]: count, confidence, accuracy."""
  probs = np.asarray(probs, np.float64)
  conf = probs.max(-1)
  correct = probs.argmax(-1) == np.asarray(labels)
  # Bin b holds confidences in (b/n, (b+1)/n]; the top label's probability is at least 1/C > 0.
  which = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
  count = np.bincount(which, minlength=n_bins)
  with np.errstate(invalid="ignore"):
    mean_conf = np.bincount(which, conf, n_bins) / count
    accuracy = np.bincount(which, correct.astype(np.float64), n_bins) / count
  return {"count": count, "confidence": mean_conf, "accuracy": accuracy}


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
  """ECE: sum over bins of (share of examples) x |accuracy - mean confidence| (Guo et al., 2017)."""
  b = calibration_bins(probs, labels, n_bins)
  used = b["count"] > 0
  weights = b["count"][used] / b["count"].sum()
  return float(np.sum(weights * np.abs(b["accuracy"][used] - b["confidence"][used])))


def report(probs: np.ndarray, labels: np.ndarray, label_names) -> dict:
  """Every metric of a labelled prediction set, JSON-ready."""
  probs, labels = np.asarray(probs, np.float64), np.asarray(labels, np.int64)
  if probs.ndim != 2 or len(probs) != len(labels) or probs.shape[1] != len(label_names):
    raise ValueError(f"probs {probs.shape} and labels {labels.shape} do not match "
                     f"{len(label_names)} classes")
  preds = probs.argmax(-1)
  cm = confusion_matrix(labels, preds, len(label_names))
  nll = -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0))
  return {"examples": int(len(labels)), "accuracy": float(np.mean(preds == labels)),
          "macro_f1": macro_f1(cm), "ece": expected_calibration_error(probs, labels),
          "log_loss": float(nll.mean()), "labels": list(label_names), "confusion": cm.tolist()}


def plot(metrics: dict, probs: np.ndarray, labels: np.ndarray, path: str, title: str = "") -> str:
  """Confusion matrix (row-normalised) beside the reliability diagram, as one PNG at `path`."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  names, cm = metrics["labels"], np.asarray(metrics["confusion"], np.float64)
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(6 + 0.35 * len(names), 4.5))
  share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
  ax1.imshow(share, cmap="Blues", vmin=0, vmax=1)
  ax1.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
  ax1.set_yticks(range(len(names)), names, fontsize=7)
  ax1.set_xlabel("predicted")
  ax1.set_ylabel("true")
  ax1.set_title(f"accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}")
  b = calibration_bins(probs, labels)
  centers = (np.arange(len(b["count"])) + 0.5) / len(b["count"])
  used = b["count"] > 0
  ax2.bar(centers[used], b["accuracy"][used], width=1 / len(b["count"]), edgecolor="k",
          alpha=0.7, label="accuracy")
  ax2.plot([0, 1], [0, 1], "k--", label="perfect calibration")
  ax2.set_xlabel("confidence (top label)")
  ax2.set_ylabel("accuracy")
  ax2.set_title(f"reliability: ECE {metrics['ece']:.3f}")
  ax2.legend(loc="upper left", fontsize=8)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
