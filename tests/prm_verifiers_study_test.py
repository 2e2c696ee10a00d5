"""The reward-model verification study: its RM data by hand, and end to end in --quick mode."""

import json
import math

import numpy as np

from moe_jax.prm import arith, gsm8k
from moe_jax.studies import prm_verifiers as study


def test_rm_examples_slices_dedupes_and_adds_hard_negatives():
  p = study.plan(quick=True)  # recipe: the first 12 problems' first 3 samples
  problems = arith.make_split("rm_train", 12)
  gold = [q.gold_steps() for q in problems]
  wrong = [arith.stopped_early(q, 1) if q.k > 1 else ["Step 1: 1 + 1 = 3"] for q in problems]
  cands = [[g, g, w, g, w] for g, w in zip(gold, wrong)]  # copies; the 4th and 5th are past 3
  train, held = study.rm_examples(p, problems, cands, "recipe", min_held=4)
  # Two distinct texts per problem; the last 10% of 12 problems (problems 10 and 11) held out.
  assert [e.question for e in held] == [q.question for q in problems[10:] for _ in range(2)]
  assert len(train) == 20
  for e in train + held:
    q = next(q for q in problems if q.question == e.question)
    assert e.labels == arith.oracle_labels(q, e.steps)
  # More held out where 10% cannot fill min_held solutions.
  assert len(study.rm_examples(p, problems, cands, "recipe", min_held=7)[1]) == 8
  train, held = study.rm_examples(p, problems, cands, "hard_negatives", min_held=4)
  by_q = {}
  for e in train + held:
    by_q.setdefault(e.question, []).append(e)
  for q in problems:
    exs = by_q[q.question]
    # the two sampled texts, then the gold again, a slip (K steps) and an early stop (K > 1)
    assert exs[0].steps == exs[2].steps == q.gold_steps() and len(exs) == 4 + (q.k > 1)
    for e in exs[3:]:
      c = arith.check(q, e.steps)
      assert e.labels == arith.oracle_labels(q, e.steps) and min(e.labels) == 0.0
      assert (len(e.steps) < q.k) or not c.answer_correct  # a slip never lands on the answer


def test_quick_study_end_to_end_and_cached(tmp_path):
  out = tmp_path / "v"
  r = study.run_study(str(out), quick=True)
  text = (out / "RESULTS.md").read_text()
  assert "Does each scorer verify?" in text and "Claims and verdicts" in text
  saved = json.loads((out / "results.json").read_text())
  assert set(saved["scorers"]) == set(study.RMS) | {"gen_sum", "gen_mean"}
  ns = [str(n) for n in saved["plan"]["ns"]]
  bound = saved["baselines"]["pass@n"]
  for s in saved["scorers"].values():
    for n in ns:
      assert s["accuracy"][n][0] <= bound[n][0] + 1e-9
  # The generator's within-problem AUC by brute force from the cached candidates and likelihoods.
  test = arith.make_split("test", saved["plan"]["n_test"])
  cands = json.loads((out / "runs" / "test_candidates.json").read_text())
  ll = json.loads((out / "runs" / "test_loglik.json").read_text())
  aucs = []
  for q, sols, row in zip(test, cands, ll):
    texts = {}
    for s, (total, _) in zip(sols, row):
      texts.setdefault(tuple(s), (total, bool(s) and gsm8k.answers_equal(
          gsm8k.extract_answer(s[-1]) or "", str(q.answer))))
    pos = [t for t, right in texts.values() if right]
    neg = [t for t, right in texts.values() if not right]
    aucs.append(sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))
                if pos and neg else math.nan)
  got = saved["scorers"]["gen_sum"]["auc_per_problem"]
  assert np.allclose(np.asarray(got, float), np.asarray(aucs), equal_nan=True)
  # Every stage is cached: a rerun trains and samples nothing and gives the same figures.
  again = study.run_study(str(out), quick=True)
  assert json.dumps(again["scorers"], sort_keys=True) == json.dumps(r["scorers"], sort_keys=True)
