"""The offline Math-Shepherd reproduction, end to end in --quick mode, and its pieces against the exact checker."""

import json

import numpy as np
import pytest

from moe_jax.prm import arith
from moe_jax.studies import prm as reproduce


def test_labels_from_rollouts_against_exact_labels():
  """HE/SE from given rollout outcomes, by hand, and their quality against the checker's labels."""
  q = arith.make_split("test", 1, ks=(3,))[0]
  gold = q.gold_steps()
  slip = gold[:1] + [gold[1].replace(f"= {q.values[2]}", f"= {q.values[2] + 1}")] + gold[2:]
  outcomes = {(0, tuple(gold[:1])): np.array([True, False, False, True]),
              (0, tuple(gold[:2])): np.array([True, True, True, True]),
              (0, tuple(slip[:2])): np.array([False, True, False, False])}  # a lucky recovery
  rows = reproduce.label_candidates([[gold, slip]], [q], outcomes, 4)
  assert rows[0]["hard"] == [1.0, 1.0, 1.0] and rows[0]["soft"] == [0.5, 1.0, 1.0]
  assert rows[0]["exact"] == [1.0, 1.0, 1.0]
  # The slip's last step still states the gold answer: right answer, wrong process. The
  # automatic labels (a lucky rollout, then the answer check) call every step good.
  assert rows[1]["hard"] == [1.0, 1.0, 1.0] and rows[1]["soft"] == [0.5, 0.25, 1.0]
  assert rows[1]["exact"] == [1.0, 0.0, 0.0]
  quality = reproduce.label_quality(rows)
  assert quality["steps"] == 6 and quality["bad_share"] == pytest.approx(2 / 6)
  assert quality["he_accuracy"] == pytest.approx(4 / 6)
  assert quality["he_false_positive_rate"] == 1.0
  assert quality["he_false_negative_rate"] == 0.0
  se = np.clip([0.5, 1, 1, 0.5, 0.25, 1], 0.01, 0.99)
  g = np.array([1, 1, 1, 1, 0, 0])
  assert quality["se_cross_entropy"] == pytest.approx(-np.mean(g * np.log(se) + (1 - g) * np.log(1 - se)))


def test_quick_reproduction_runs_end_to_end(tmp_path):
  out = tmp_path / "repro"
  result = reproduce.run_study(str(out), quick=True)
  for name in ("RESULTS.md", "results.json", "accuracy_vs_n.png"):
    assert (out / name).stat().st_size > 0
  saved = json.loads((out / "results.json").read_text())
  assert set(saved["bon"]["accuracy"]) >= {"random", "majority", "orm", "prm_he_min", "prm_se_min",
                                          "prm_oracle_min", "pass@n"}
  acc = saved["bon"]["accuracy"]
  for n in ("1", "4", "8"):
    # pass@N bounds every selector, and grows with N.
    assert all(acc[m][n][0] <= acc["pass@n"][n][0] + 1e-9 for m in acc)
  assert acc["pass@n"]["8"][0] >= acc["pass@n"]["1"][0]
  assert set(saved["labels"]["by_n"]["strong"]) == {"1", "2", "4"}
  assert {"before", "step_ppo", "orm_ppo"} <= set(saved["ppo"])
  assert len(saved["ppo"]["step_ppo"]["history"]) == result["plan"]["ppo_iters"]
  text = (out / "RESULTS.md").read_text()
  assert "Best-of-N" in text and "Step-by-step PPO" in text
  # Every stage is cached: a rerun redoes nothing and reproduces the report.
  again = reproduce.run_study(str(out), quick=True)
  assert json.loads(json.dumps(again["bon"])) == json.loads(json.dumps(result["bon"]))
