"""The classification study's --quick mode end to end, its cache, and its pieces by hand."""

import json

import numpy as np
import pytest

from moe_jax.studies import classification, classification_report


def test_logistic_regression_matches_a_float64_gradient_check():
  """The L-BFGS fit reaches a stationary point of the penalised loss: gradient ~ 0 there,
  computed independently with a per-example loop."""
  import scipy.sparse

  rng = np.random.default_rng(0)
  x = scipy.sparse.csr_matrix((rng.random((60, 8)) < 0.3).astype(np.float64))
  y = rng.integers(0, 3, 60)
  w = classification.fit_logistic_regression(x, y, 3, c=1.0)
  dense = x.toarray()
  grad = np.zeros_like(w)
  for i in range(60):
    z = dense[i] @ w[:-1] + w[-1]
    p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    p[y[i]] -= 1
    grad[:-1] += np.outer(dense[i], p)
    grad[-1] += p
  grad[:-1] += w[:-1]  # d/dW of |W|^2 / (2C)
  assert np.abs(grad).max() < 1e-3


def test_quick_study_writes_results_and_reuses_its_runs(tmp_path, monkeypatch):
  pytest.importorskip("torch")  # not needed; the MiniLM package is
  from moe_jax.classify import configs
  from moe_jax import train_lib

  try:
    train_lib.resolve_data_path(configs.MINILM)
  except FileNotFoundError as e:
    pytest.skip(str(e))
  results = classification.run_study(str(tmp_path), quick=True)
  runs = results["runs"]
  assert {r["system"] for r in runs} == set(classification_report.SYSTEMS)
  assert len(runs) == 3 * results["plan"]["seeds"]
  for r in runs:
    assert 0 <= r["accuracy"] <= 1 and r["examples"] == results["plan"]["eval_examples"]
  text = (tmp_path / "RESULTS.md").read_text()
  assert "| tweets | fine-tuned MiniLM beats bag-of-words |" in text
  # A second call trains nothing: every run is read back from its cache.
  monkeypatch.setattr(classification.task, "run", lambda *a: pytest.fail("retrained a cached run"))
  again = classification.run_study(str(tmp_path), quick=True)
  assert again["runs"] == runs
  assert json.loads((tmp_path / "results.json").read_text())["runs"] == runs


def test_accuracy_interval_and_claims_by_hand():
  m, h = classification_report.accuracy_interval([0.7, 0.8, 0.9], 100)
  seeds = 4.303 * 0.1 / 3 ** 0.5  # t(2) x stdev / sqrt(3)
  test = 1.96 * (0.8 * 0.2 / 100) ** 0.5
  assert m == pytest.approx(0.8) and h == pytest.approx((seeds ** 2 + test ** 2) ** 0.5)
  assert classification_report._claim((0.80, 0.03), (0.70, 0.04)) == "held"  # 0.10 > 0.05
  assert classification_report._claim((0.70, 0.03), (0.80, 0.04)) == "failed"
  assert classification_report._claim((0.74, 0.03), (0.70, 0.04)) == "inconclusive"  # 0.04 < 0.05
