"""Classification metrics against per-example loops written from their definitions."""

import math

import numpy as np
import pytest

from moe_jax.classify import metrics


def _random_case(n=300, c=4, seed=0):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(n, c)) * 2
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  labels = rng.integers(0, c, n)
  return probs, labels


def test_confusion_and_macro_f1_by_loops():
  probs, labels = _random_case()
  preds = probs.argmax(-1)
  cm = metrics.confusion_matrix(labels, preds, 4)
  for t in range(4):
    for p in range(4):
      assert cm[t, p] == sum(1 for a, b in zip(labels, preds) if a == t and b == p)
  f1s = []
  for k in range(4):
    tp = sum(1 for a, b in zip(labels, preds) if a == k and b == k)
    fp = sum(1 for a, b in zip(labels, preds) if a != k and b == k)
    fn = sum(1 for a, b in zip(labels, preds) if a == k and b != k)
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    f1s.append(2 * precision * recall / (precision + recall))
  assert metrics.macro_f1(cm) == pytest.approx(sum(f1s) / 4, abs=1e-12)


def test_macro_f1_skips_a_class_never_seen_nor_predicted():
  cm = metrics.confusion_matrix([0, 0, 1, 1], [0, 1, 1, 1], 3)
  f1_0, f1_1 = 2 * 1 / (2 * 1 + 0 + 1), 2 * 2 / (2 * 2 + 1 + 0)
  assert metrics.macro_f1(cm) == pytest.approx((f1_0 + f1_1) / 2)


def test_ece_by_loop():
  probs, labels = _random_case(n=500, c=3, seed=1)
  n_bins = 15
  total = 0.0
  for b in range(n_bins):
    lo, hi = b / n_bins, (b + 1) / n_bins
    members = [i for i in range(len(labels)) if lo < probs[i].max() <= hi]
    if not members:
      continue
    acc = np.mean([probs[i].argmax() == labels[i] for i in members])
    conf = np.mean([probs[i].max() for i in members])
    total += len(members) / len(labels) * abs(acc - conf)
  assert metrics.expected_calibration_error(probs, labels, n_bins) == pytest.approx(total, abs=1e-12)


def test_ece_of_perfectly_calibrated_and_overconfident_sets():
  # Confidence 0.75 and exactly 3 of 4 right: calibrated. Confidence 1.0, half right: ECE 0.5.
  probs = np.array([[0.75, 0.25]] * 4)
  assert metrics.expected_calibration_error(probs, np.array([0, 0, 0, 1])) == pytest.approx(0.0)
  sure = np.array([[1.0, 0.0]] * 4)
  assert metrics.expected_calibration_error(sure, np.array([0, 0, 1, 1])) == pytest.approx(0.5)


def test_report_and_plot(tmp_path):
  probs, labels = _random_case(n=120, c=3, seed=2)
  m = metrics.report(probs, labels, ["a", "b", "c"])
  assert m["examples"] == 120 and m["labels"] == ["a", "b", "c"]
  assert m["accuracy"] == pytest.approx(np.mean(probs.argmax(-1) == labels))
  want_nll = -np.mean([math.log(probs[i, labels[i]]) for i in range(120)])
  assert m["log_loss"] == pytest.approx(want_nll)
  assert np.asarray(m["confusion"]).sum() == 120
  png = metrics.plot(m, probs, labels, str(tmp_path / "p.png"), "test")
  assert (tmp_path / "p.png").stat().st_size > 10_000 and png.endswith("p.png")
  with pytest.raises(ValueError, match="3 classes"):
    metrics.report(probs[:, :2], labels, ["a", "b", "c"])
