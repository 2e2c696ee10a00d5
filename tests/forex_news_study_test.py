"""The forex-news study's --quick mode end to end (tiny encoder), its cache, and its claims by hand."""

import json

import pytest

from moe_jax.studies import forex_news as study
from moe_jax.studies import forex_news_report as report


def test_quick_study_writes_results_and_reuses_its_runs(tiny_encoder_dir, tmp_path, monkeypatch):
  results = study.run_study(str(tmp_path), quick=True, encoder=tiny_encoder_dir)
  runs = results["runs"]
  assert {r["system"] for r in runs} == set(report.SYSTEMS)
  assert len(runs) == len(report.SYSTEMS) * results["plan"]["seeds"]
  for r in runs:
    assert 0 <= r["accuracy"] <= 1 and -1 <= r["mcc"] <= 1
    assert 0 < r["crucial_items"] < 1 and 0 <= r["crucial_mass"] <= 1
    assert r["held_out"][0] <= r["held_out"][1] < results["plan"]["until"]
    shares = sum(c["mass_share"] for c in r["categories"].values())
    assert shares == pytest.approx(1.0, abs=1e-4)
  text = (tmp_path / "RESULTS.md").read_text()
  assert "--quick" in text and "| category grouping beats time grouping (paper) |" in text
  monkeypatch.setattr(study.forex_task, "run", lambda *a: pytest.fail("retrained a cached run"))
  again = study.run_study(str(tmp_path), quick=True, encoder=tiny_encoder_dir)
  assert again["runs"] == runs
  assert json.loads((tmp_path / "results.json").read_text())["runs"] == runs


def _run(system, seed, acc, mass=None, dropped=None):
  cats = {c: {"mass_share": (mass or {}).get(c, 0.1), "accuracy_dropped": (dropped or {}).get(c, acc),
              "kept_share": 1.0, "items": 10} for c in ("central bank", "macro data", "trade")}
  return {"system": system, "seed": seed, "accuracy": acc, "up_share": 0.5, "categories": cats}


def test_claims_by_hand():
  runs = []
  for seed, (a, b) in enumerate([(0.80, 0.60), (0.82, 0.61), (0.78, 0.62)]):
    runs += [_run("category", seed, a, {"central bank": 0.5, "macro data": 0.3, "trade": 0.2},
                  {"central bank": a - 0.2, "macro data": a - 0.1, "trade": a - 0.01}),
             _run("time", seed, b)]
  r = {"runs": runs}
  diffs = report._diffs(r, "category", "time")
  assert diffs == pytest.approx([0.20, 0.21, 0.16])
  mass, cost = report._influence_diffs(r)
  assert mass == pytest.approx([0.2] * 3)  # mean(0.5, 0.3) - 0.2
  assert cost == pytest.approx([0.14] * 3)  # mean(0.2, 0.1) - 0.01
  text = "\n".join(report._claims(r))
  assert "| category grouping beats time grouping (paper) | 0.190 ± 0.066 | held |" in text
