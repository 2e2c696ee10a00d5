"""The stock-events study's --quick mode end to end, its cache, and its claim verdicts by hand."""

import json

import pytest

from moe_jax.studies import stock_events, stock_events_report


def test_quick_study_writes_results_and_reuses_its_runs(tmp_path, monkeypatch, minilm_dir):
  del minilm_dir  # the tiny encoder reads MiniLM's tokenizer
  results = stock_events.run_study(str(tmp_path), quick=True)
  runs = results["runs"]
  assert [r["system"] for r in runs] == list(results["plan"]["systems"])
  for r in runs:
    assert 0 <= r["all"]["accuracy"] <= 1 and -1 <= r["all"]["mcc"] <= 1
    assert r["all"]["examples"] == results["worlds"][0]["held"]
  text = (tmp_path / "RESULTS.md").read_text()
  assert "--quick" in text and "what this can and cannot show" in text
  # A second call trains nothing: every run is read back from its cache.
  monkeypatch.setattr(stock_events.stock_task, "run", lambda *a: pytest.fail("retrained a run"))
  again = stock_events.run_study(str(tmp_path), quick=True)
  assert again["runs"] == runs
  assert json.loads((tmp_path / "results.json").read_text())["runs"] == runs


def _runs(system, accs):
  return [{"system": system, "seed": s, "all": {"accuracy": a, "mcc": a}} for s, a in enumerate(accs)]


def test_claim_verdicts_are_paired_by_seed():
  # b varies a lot across seeds, but a beats it by 0.015-0.025 on each: paired, that holds
  # (mean 0.02, half-width 4.303 x 0.005 / sqrt(3) = 0.012), unpaired it would not.
  runs = _runs("sspm", [0.62, 0.725, 0.845]) + _runs("raw", [0.60, 0.70, 0.83])
  verdict, diff = stock_events_report.claim_verdict(runs, "sspm", "raw", "all", "accuracy")
  assert verdict == "held" and diff.startswith("0.020")
  assert stock_events_report.claim_verdict(runs, "raw", "sspm", "all", "accuracy")[0] == "failed"
  runs = _runs("sspm", [0.62, 0.68, 0.84]) + _runs("raw", [0.60, 0.70, 0.83])
  assert stock_events_report.claim_verdict(runs, "sspm", "raw", "all", "mcc")[0] == "inconclusive"
  assert stock_events_report.claim_verdict(runs, "msspm", "raw", "all", "mcc")[0] == "n/a"
