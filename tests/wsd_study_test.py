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


def test_claims_per_encoder():
  """Each encoder's claims read its own runs only (a run without an encoder is the plan's first)."""
  up = _results(pred=[(0.60, 0.50), (0.62, 0.52), (0.61, 0.51)],
                gold=[(0.60, 0.50), (0.62, 0.52), (0.61, 0.51)],
                base=[(0.50, 0.50), (0.51, 0.52), (0.52, 0.51)],
                f_acc=[0.7, 0.7, 0.7], f_maj=[0.6, 0.62, 0.61])
  down = _results(pred=[(0.40, 0.50), (0.41, 0.52), (0.42, 0.51)],
                  gold=[(0.40, 0.50), (0.41, 0.52), (0.42, 0.51)],
                  base=[(0.50, 0.50), (0.51, 0.52), (0.52, 0.51)],
                  f_acc=[0.5, 0.5, 0.5], f_maj=[0.6, 0.62, 0.61])
  r = {"plan": {"encoders": ["minilm", "e5"]},
       "runs": up["runs"] + [{**x, "encoder": "e5"} for x in down["runs"]]}
  first = lambda enc: [c["verdict"] for c in wsd_report.claims(r, enc)]
  # minilm: sense +0.10 held, pair F1 0 (interval 0 ± 0) inconclusive, gold = predicted held,
  # predictor 0.7 vs ~0.61 held; e5: sense -0.10 failed, predictor 0.5 vs ~0.61 failed.
  assert first("minilm") == ["held", "inconclusive", "held", "held", "held"]
  assert first("e5") == ["failed", "inconclusive", "held", "held", "failed"]
  with_chance = [{**x, "metrics": {k: {**m, "chance_sense_accuracy": 0.45}
                                   for k, m in x["metrics"].items()}} for x in r["runs"]]
  assert "**What e5 shows.**" in wsd_report.shows({**r, "runs": with_chance}, "e5")


def test_one_encoder_cache_moves_and_results_json_is_read_back(tmp_path, monkeypatch):
  """A plan that only adds encoders keeps the older runs: the one-encoder cache moves under
  runs/minilm/, and without runs/ the committed results.json's runs stand in for them."""
  import dataclasses

  p = wsd.plan(False)
  old = {k: v for k, v in dataclasses.asdict(p).items() if k != "encoders"}
  old["encoder"] = "minilm"
  (tmp_path / "runs" / "formbert" / "seed0").mkdir(parents=True)
  (tmp_path / "runs" / "formbert" / "seed0" / "summary.json").write_text("{}")
  (tmp_path / "runs" / "plan.json").write_text(json.dumps(old))
  wsd.check_plan(p, str(tmp_path))
  assert (tmp_path / "runs" / "minilm" / "formbert" / "seed0" / "summary.json").exists()
  assert not (tmp_path / "runs" / "formbert").exists()
  assert json.loads((tmp_path / "runs" / "plan.json").read_text())["encoders"] == ["minilm", "e5"]
  with pytest.raises(SystemExit, match="another plan"):  # a changed setting is still refused
    wsd.check_plan(dataclasses.replace(p, steps=7), str(tmp_path))
  run = {"system": "baseline", "seed": 2, "metrics": {"none": {}}, "wall_s": 1.0}
  (tmp_path / "results.json").write_text(json.dumps({"plan": old, "quick": False, "runs": [run]}))
  got = wsd._recorded_runs(str(tmp_path), p, False)
  assert got == {("minilm", "baseline", 2): {"encoder": "minilm", **run}}
  assert wsd._recorded_runs(str(tmp_path), dataclasses.replace(p, steps=7), False) == {}
  monkeypatch.setattr(wsd.task, "run", lambda *a: pytest.fail("retrained a recorded run"))
  assert wsd._run(p, str(tmp_path), "minilm", "baseline", 2, got) == got[("minilm", "baseline", 2)]
