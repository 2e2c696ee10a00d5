"""The FormBERT study's --quick mode end to end, its cache, and its verdicts by hand."""

import json

import pytest

from moe_jax.studies import wsd, wsd_report


def test_quick_study_writes_results_and_reuses_its_runs(tmp_path, monkeypatch, minilm_dir):
  del minilm_dir  # the quick plan reads its tokenizer.json
  results = wsd.run_study(str(tmp_path), quick=True)
  runs = results["runs"]
  assert [(r["system"], r["seed"]) for r in runs] == [("formbert", 0), ("baseline", 0)]
  assert set(runs[0]["metrics"]) == {"predicted", "gold"} and set(runs[1]["metrics"]) == {"none"}
  text = (tmp_path / "RESULTS.md").read_text()
  assert text.startswith("Written by `python -m moe_jax.studies.wsd` --quick")
  assert "| FormBERT, gold formations (upper bound) |" in text
  assert "| formations help: FormBERT (predicted) beats no formations on sense accuracy | " in text
  # A second call trains nothing: every run is read back from its cache.
  monkeypatch.setattr(wsd.task, "run", lambda *a: pytest.fail("retrained a cached run"))
  again = wsd.run_study(str(tmp_path), quick=True)
  assert again["runs"] == runs
  assert json.loads((tmp_path / "results.json").read_text())["runs"] == runs


def _results(pred, gold, base, f_acc, f_maj):
  runs = []
  for s in range(len(pred)):
    runs.append({"system": "formbert", "seed": s, "metrics": {
        "predicted": {"sense_accuracy": pred[s][0], "pair_f1": pred[s][1],
                      "formation_accuracy": f_acc[s], "formation_majority": f_maj[s]},
        "gold": {"sense_accuracy": gold[s][0], "pair_f1": gold[s][1]}}})
    runs.append({"system": "baseline", "seed": s, "metrics": {
        "none": {"sense_accuracy": base[s][0], "pair_f1": base[s][1]}}})
  return {"runs": runs}


def test_claims_by_hand():
  r = _results(pred=[(0.60, 0.50), (0.62, 0.52), (0.61, 0.51)],
               gold=[(0.60, 0.505), (0.62, 0.525), (0.61, 0.515)],
               base=[(0.50, 0.55), (0.51, 0.58), (0.52, 0.56)],
               f_acc=[0.5, 0.5, 0.5], f_maj=[0.6, 0.62, 0.61])
  got = {c["claim"].split(":")[0] + c["claim"][-12:]: c["verdict"] for c in wsd_report.claims(r)}
  verdicts = [c["verdict"] for c in wsd_report.claims(r)]
  # sense: +0.10, +0.11, +0.09 -> held; pair F1: -0.05, -0.06, -0.05 -> failed;
  # gold - predicted pair F1 = 0.005 each (interval 0.005 ± 0) -> within 0.02: held;
  # sense equal -> within 0.02: held; predictor 0.5 vs majority ~0.61 -> failed.
  assert verdicts == ["held", "failed", "held", "held", "failed"], got
  assert wsd_report.equivalence_verdict([0.05, 0.06, 0.055]) == "failed"
  assert wsd_report.equivalence_verdict([0.0, 0.04, -0.04]) == "inconclusive"
