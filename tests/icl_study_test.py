"""The label-words-as-anchors study: its --quick mode end to end and cached, its claims by hand."""

import json
import math

import numpy as np
import pytest

from moe_jax.studies import common, icl_anchors, icl_anchors_report, stats


def test_paired_verdict_and_nan_handling_by_hand():
  # Mean 2, stdev 1, n = 3: half-width t(2) * 1 / sqrt(3) = 2.48 > 2, so not held.
  assert stats.paired_verdict([1.0, 2.0, 3.0]) == "inconclusive"
  assert stats.paired_verdict([1.9, 2.0, 2.1]) == "held"
  assert stats.paired_verdict([-1.9, -2.0, -2.1]) == "failed"
  assert stats.paired_verdict([2.0, float("nan")]) == "inconclusive"  # one defined value
  m, h = stats.mean_ci([1.0, float("nan"), 3.0])
  assert m == 2.0 and h == pytest.approx(12.706 * math.sqrt(2) / math.sqrt(2))
  assert stats.fmt([float("nan")]) == "n/a"


def _fake_results(n_layers: int = 6) -> dict:
  """A results dict shaped like run_study's, with known values, for the report by hand."""
  def run(seed, gain):
    flows = np.zeros((2, n_layers, 3))
    flows[:, : n_layers // 2] = [0.8, 0.1, 0.1]  # shallow: text -> label words
    flows[:, n_layers // 2:] = [0.1, 0.8, 0.1]  # deep: label words -> target
    comp = {m: {"label_loyalty": v, "word_loyalty": v, "accuracy": 0.5} for m, v in
            [("text_anchor", 0.5), ("hidden_random", 0.4), ("hidden_random_top", 0.45),
             ("hidden_anchor", 0.9)]}
    comp["speed"] = {"l_demo": 80, "l_x": 20, "kept": 16, "speedup": 2.0 + seed / 100,
                     "attended_ratio": 2.8}
    iso = {"label_first": {"label_loyalty": 0.3, "word_loyalty": 0.1},
           "label_last": {"label_loyalty": 0.95, "word_loyalty": 0.9},
           "random_first": {"label_loyalty": 0.97, "word_loyalty": 0.9},
           "random_last": {"label_loyalty": 0.99, "word_loyalty": 0.95}}
    auc = [float("nan")] * n_layers if seed == 44 else [0.5] * (n_layers // 2) + [0.8] * (n_layers // 2)
    return {"vanilla": {"accuracy": 0.5, "zero_shot_accuracy": 0.6, "shots5_accuracy": 0.55,
                        "aucroc": auc, "r": [0.0] * n_layers},
            "reweight": {"accuracy": 0.5 + gain}, "compression": comp, "isolation": iso,
            "flows": flows.tolist()}
  return {"plan": {"seeds": [42, 43, 44], "n_test": 8, "flow_examples": 2, "top_draws": 3,
                   "isolate_k": 2, "sample": True, "diagnose_task": "none"},
          "quick": True, "seconds": 60, "jax": "x", "devices": "cpu", "model": "m.gguf",
          "layers": n_layers, "heads": 2,
          "tasks": {"a": {s: run(s, g) for s, g in [(42, 0.10), (43, 0.11), (44, 0.12)]}}}


def test_report_judges_known_results(tmp_path):
  text = icl_anchors_report.report(_fake_results(), str(tmp_path))
  assert "re-weighting beats vanilla 1-shot ICL: held" in text
  assert "Hidden_anchor's label loyalty beats hidden_random's: held" in text
  assert "S_wp exceeds S_pq in the shallow layers (first 2): held" in text
  assert "S_pq exceeds S_wp in the deep layers (last 2): held" in text
  assert "than label words in the last layers: held" in text
  assert "Hidden_anchor is faster than vanilla ICL: held" in text
  assert "1 of 3 (task, seed) runs" in text  # seed 44's undefined AUC is counted, then left out
  # Seeds 42 and 43 agree exactly (0.8 - 0.5 each), seed 44's NaN does not spoil the mean.
  assert "higher in the deep half than in the shallow half: held** (0.300)" in text
  assert (tmp_path / "flows.png").stat().st_size > 0 and (tmp_path / "deep.png").stat().st_size > 0


@pytest.mark.slow
def test_quick_study_writes_results_and_reuses_its_runs(tmp_path, monkeypatch, smollm2_gguf):
  """The whole pipeline on a tiny random Llama with SmolLM2's tokenizer (the real model runs in
  the notebook's test; here the study's plumbing, caching and report are under test)."""
  from moe_jax.config import ModelConfig
  from moe_jax.model import init_model
  from moe_jax.tokenizer import load_tokenizer

  tok = load_tokenizer(str(smollm2_gguf))
  config = ModelConfig(model_type="llama", vocab_size=49152, hidden_size=32, intermediate_size=64,
                       num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
                       n_routed_experts=None, kv_lora_rank=None, tie_word_embeddings=True,
                       max_position_embeddings=2048, bos_token_id=1, eos_token_id=2)
  model = init_model(config, 0)
  results = icl_anchors.run_study(str(tmp_path), quick=True, model=model, tokenizer=tok)
  p = results["plan"]
  for name in p["tasks"]:
    assert sorted(results["tasks"][name]) == sorted(p["seeds"])
    for r in results["tasks"][name].values():
      assert 0 <= r["vanilla"]["accuracy"] <= 1 and 0 <= r["reweight"]["accuracy"] <= 1
      assert len(r["vanilla"]["aucroc"]) == results["layers"]
      assert np.allclose(np.sum(r["flows"], -1), 1.0)
  assert set(results["moe"]["seeds"]) == set(p["seeds"])
  text = (tmp_path / "RESULTS.md").read_text()
  for section in ("Anchor re-weighting", "context compression", "Speed-up", "Information flow",
                  "Isolating label words", "Deep layers", "anchors in a DeepSeekMoE"):
    assert section in text
  assert text.count("**Claim") >= 10
  # A second call recomputes nothing: every (task, seed, experiment) is read back.
  monkeypatch.setattr(icl_anchors.ex, "isolated", lambda *a, **k: pytest.fail("recomputed a run"))
  again = icl_anchors.run_study(str(tmp_path), quick=True, model=model, tokenizer=tok)
  dump = lambda x: json.dumps(x, sort_keys=True, default=common.jsonable)
  assert dump(again["tasks"]) == dump(results["tasks"])
