"""`python -m moe_jax.studies.purify --quick`'s pipeline on a tiny encoder: every defence, the sweep,
the report, and a second call that recomputes nothing."""

import json
import shutil

import pytest

from moe_jax.studies import purify as study
from moe_jax.studies import purify_report


def test_quick_study_writes_results_and_reuses_its_runs(tiny_encoder_dir, tmp_path, monkeypatch):
  results = study.run_study(str(tmp_path), quick=True, pretrained=tiny_encoder_dir)
  p = study.plan(True)
  (key,) = results["main"]
  runs = results["main"][key]
  assert sorted(runs) == [str(s) for s in p.seeds]
  for r in runs.values():
    assert set(study.DEFENCES) <= set(r)
    for d in study.DEFENCES:
      m = r[d]["metrics_after"]
      assert 0 <= m["accuracy"] <= 1 and 0 <= m["asr"] <= 1
    assert r["none"]["metrics_after"] == r["none"]["metrics_suspect"]  # no defence, no change
    assert r["ratio"]["detect"]["selected"] == round(p.rho * r["ratio"]["detect"]["dims"])
    assert r["pruning"]["detect"]["pruned_neurons"]
  assert results["sweep"] == {}  # the quick plan sweeps no rho; the full one does
  assert study.plan(False).sweep
  text = (tmp_path / "RESULTS.md").read_text()
  for section in ("Every defence at one rho", "## Claims", "Where the reset dimensions sit",
                  "trade-off over rho"):
    assert section in text
  assert text.count("**Claim") == 2
  assert (tmp_path / "purify_tradeoff.png").read_bytes()[:4] == b"\x89PNG"
  # A second call recomputes nothing: every attack and defence is read back.
  monkeypatch.setattr(study.purify_task, "run", lambda *a, **k: pytest.fail("recomputed a defence"))
  monkeypatch.setattr(study.attacker, "run", lambda *a, **k: pytest.fail("recomputed an attack"))
  again = study.run_study(str(tmp_path), quick=True, pretrained=tiny_encoder_dir)
  assert json.dumps(again["main"], sort_keys=True) == json.dumps(results["main"], sort_keys=True)
  # A fresh clone has results.json but no runs/: a settings superset reads the recorded ones back.
  shutil.rmtree(tmp_path / "runs")
  again = study.run_study(str(tmp_path), quick=True, pretrained=tiny_encoder_dir)
  assert again["read_back"] == [key] and again["main"] == json.loads(json.dumps(results["main"]))
  assert "Read back from the committed results.json" in (tmp_path / "RESULTS.md").read_text()
  # --report-only rewrites RESULTS.md from results.json alone.
  (tmp_path / "RESULTS.md").unlink()
  assert study.main(["--out", str(tmp_path), "--report-only"]) == 0
  assert (tmp_path / "RESULTS.md").read_text() == purify_report.report(
      json.loads((tmp_path / "results.json").read_text()), str(tmp_path))
