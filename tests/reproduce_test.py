"""`python -m moe_jax.studies.esft --quick`: the whole study end to end at toy size."""

import json
import subprocess
import sys

import numpy as np

from moe_jax.studies import esft as reproduce
from moe_jax.studies import stats


def test_quick_study(tmp_path, repo_root):
  proc = subprocess.run([sys.executable, "-m", "moe_jax.studies.esft", "--out", str(tmp_path),
                         "--quick"], capture_output=True, text=True, cwd=repo_root, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads((tmp_path / "results.json").read_text())
  text = (tmp_path / "RESULTS.md").read_text()
  for section in ("## H1", "## H2", "## H3", "## H4"):
    assert section in text
  assert set(r["pretrain"]) == {"fine", "coarse", "dense"}
  # Equal active FFN width across the three models, equal total expert width for the MoEs.
  assert len({v["active_ffn_width"] for v in r["pretrain"].values()}) == 1
  methods = {(x["model"], x["method"]) for x in r["adapt"]}
  assert methods == ({("fine", m) for m in reproduce.METHODS}
                     | {("coarse", m) for m in reproduce.COARSE_METHODS})
  by = {(x["model"], x["method"]): x for x in r["adapt"]}
  fft, tok = by[("fine", "fft")], by[("fine", "esft_token")]
  assert tok["trainable_params"] < fft["trainable_params"] == fft["total_params"]
  assert tok["optimizer_bytes"] < fft["optimizer_bytes"]
  assert tok["export_bytes"] < fft["export_bytes"]
  assert by[("fine", "random")]["experts_trained"] == tok["experts_trained"]
  assert by[("fine", "shared_only")]["experts_trained"] == 0
  for x in r["adapt"]:
    assert np.isfinite(x["intent_loss"]) and 0 <= x["intent_em"] <= 1
  for k in ("heatmap_intent.png", "heatmap_law.png"):
    assert (tmp_path / k).read_bytes()[:4] == b"\x89PNG"


def test_arithmetic_examples_are_correct():
  rng = np.random.default_rng(0)
  for _ in range(50):
    user, answer = reproduce.arithmetic_example(rng)
    expr = user["content"][len("Compute "):-1]
    assert answer["content"].endswith(f"The answer is {eval(expr)}.")  # noqa: S307 (digits and + - *)


def test_intent_scoring_ignores_spacing_and_slot_order():
  gold = '{"intent": "Alarm-Update", "slots": {"a": "今天", "b": "下午3点"}}。'
  assert reproduce._normalise_json_answer(gold) == reproduce._normalise_json_answer(
      '{"intent":"Alarm-Update","slots":{"b":"下午 3点","a":"今天"}}\nmore')
  assert reproduce._normalise_json_answer(gold) != reproduce._normalise_json_answer(
      '{"intent": "Alarm-Update", "slots": {"a": "今天"}}')
  assert reproduce._normalise_json_answer("not json") is None


def test_confidence_interval_by_hand():
  m, h = stats.mean_ci([1.0, 2.0, 3.0])
  assert m == 2.0 and abs(h - 4.303 * 1.0 / 3 ** 0.5) < 1e-9
  assert stats.verdict([1.0, 1.1, 0.9], [5.0, 5.1, 4.9], lower_is_better=True) == "held"
  assert stats.verdict([5.0, 5.1, 4.9], [1.0, 1.1, 0.9], lower_is_better=True) == "failed"
  assert stats.verdict([1.0, 3.0, 2.0], [2.0, 2.5, 1.5], lower_is_better=True) == "inconclusive"
