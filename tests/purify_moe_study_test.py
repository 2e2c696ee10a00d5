"""`python -m moe_jax.studies.purify_moe --quick`'s pipeline: w_init built, attack and control,
every defence (whole experts included) on a tiny MoE encoder, the report, and a rerun that
recomputes nothing."""

import json

import pytest

from moe_jax.studies import purify_moe as study


def test_quick_moe_study_writes_results_and_reuses_its_runs(tiny_encoder_dir, tmp_path, monkeypatch):
  results = study.run_study(str(tmp_path), quick=True, pretrained=tiny_encoder_dir)
  p = study.plan(True)
  (key,) = results["main"]
  for seed, r in results["main"][key].items():
    assert set(study.DEFENCES) <= set(r)
    assert r["attack"]["poisoned"] > 0 and results["control"][key][seed]["attack"]["poisoned"] == 0
    experts = r["experts"]["detect"]["experts"]
    # Whole experts only: each expert's selected count is 0 or all of its dimensions.
    per_expert = {n for v in experts.values() for n in v["selected"]}
    assert len(per_expert - {0}) == 1 and r["experts"]["detect"]["selected"] == max(per_expert) * sum(
        1 for v in experts.values() for n in v["selected"] if n)
    assert 1 / dict(p.moe)["n_routed_experts"] <= study.concentration(r["ratio"]["detect"]["experts"]) <= 1
  assert 0 < results["w_init"]["tensors_from_source"] < results["w_init"]["tensors"]
  text = (tmp_path / "RESULTS.md").read_text()
  for section in ("Every defence at one rho", "routed experts", "## Claims", "whole routed experts"):
    assert section in text
  assert text.count("**Claim") == 2
  monkeypatch.setattr(study.purify_study.purify_task, "run", lambda *a, **k: pytest.fail("recomputed"))
  monkeypatch.setattr(study.purify_study.attacker, "run", lambda *a, **k: pytest.fail("recomputed"))
  monkeypatch.setattr(study.classify_task, "run", lambda *a, **k: pytest.fail("retrained w_init"))
  again = study.run_study(str(tmp_path), quick=True, pretrained=tiny_encoder_dir)
  assert json.dumps(again["main"], sort_keys=True) == json.dumps(results["main"], sort_keys=True)


def test_the_claims_by_hand():
  suspect = {"asr": 0.9, "accuracy": 0.8}

  def run(asr_ratio, asr_experts, conc, reset=None):
    mass = [conc, (1 - conc) / 3, (1 - conc) / 3, (1 - conc) / 3]
    return {"none": {"metrics_suspect": suspect},
            "ratio": {"metrics_after": {"asr": asr_ratio, "accuracy": 0.8},
                      "detect": {"experts": {"layers_1": {"mass": mass, "selected": [0] * 4}}}},
            "experts": {"metrics_after": {"asr": asr_experts, "accuracy": 0.8},
                        "metrics_reset": reset or {"asr": 0.7, "accuracy": 0.75}}}
  main = {"k": {"0": run(0.30, 0.31, 0.7), "1": run(0.20, 0.22, 0.8), "2": run(0.40, 0.40, 0.75)}}
  control = {"k": {s: {"ratio": run(0, 0, c)["ratio"]} for s, c in (("0", .3), ("1", .35), ("2", .3))}}
  text = "\n".join(study._claims({"main": main, "control": control}))
  assert "in a few routed experts: held" in text and "at equal rho: held" in text
  main["k"]["1"] = run(0.20, 0.60, 0.8)
  main["k"]["0"] = run(0.30, 0.70, 0.7)
  main["k"]["2"] = run(0.40, 0.85, 0.75)
  assert "at equal rho: failed" in "\n".join(study._claims({"main": main, "control": control}))
  # A reset that changed no prediction matches by matching plain fine-tuning: said so.
  main = {"k": {s: run(0.3, 0.3, 0.7, reset=suspect) for s in ("0", "1", "2")}}
  assert "held by the rule, but vacuously" in "\n".join(study._claims({"main": main, "control": control}))
