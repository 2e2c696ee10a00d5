"""moe_jax.prm.discrimination and the verify command's "null" baseline, against brute force.

A small hand-made candidate file (duplicates, ties, a problem with only wrong
answers, explicit and word-counted lengths, exact step labels) is read by the
library; every figure is recomputed here straight from the raw JSON rows with
plain loops: pairs of distinct texts for the AUCs, sums for the correlations.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from moe_jax.prm import discrimination as D
from moe_jax.prm import verify as V
from moe_jax.prm.__main__ import main as prm_cli
from moe_jax.prm.candidates import read_candidates


def _c(steps, answer, scores, labels, length=None, orm=None):
  c = {"steps": steps, "answer": answer, "step_scores": scores, "step_labels": labels}
  if length is not None:
    c["length"] = length
  if orm is not None:
    c["orm_score"] = orm
  return c


ROWS = [
    {"question": "a", "gold": "8", "candidates": [
        _c(["s1", "s2 is 8"], "8", [0.9, 0.6], [1, 1], orm=0.7),
        _c(["s1", "s2 is 8"], "8", [0.9, 0.6], [1, 1], orm=0.7),  # a copy of the first
        _c(["s1", "t2 is 7"], "7", [0.9, 0.7], [1, 0], orm=0.9),
        _c(["u1 x y", "u2 is 7", "u3"], "7", [0.4, 0.8, 0.9], [0, 0, 0], orm=0.2),
        _c(["s1", "s2 is 8"], "8", [0.9, 0.6], [1, 1], orm=0.7),
        _c(["v1", "is 8"], "8", [0.5, 0.5], [1, 1], length=30, orm=0.6),
        _c(["w1 w w w", "is 9"], "9", [0.6, 0.6], [1, 0], orm=0.6),
    ]},
    {"question": "b", "gold": "3", "candidates": [  # no right answer: no within-problem AUC
        _c(["p1", "is 4"], "4", [0.3, 0.2], [1, 0], orm=0.1),
        _c(["p1", "is 5 5"], "5", [0.3, 0.6], [1, 0], orm=0.3),
        _c(["q1 q", "is 4"], "4", [0.8, 0.1], [0, 0], orm=0.5),
    ]},
    {"question": "c", "gold": "5", "candidates": [
        _c(["r1", "is 5"], "5", [0.5, 0.4], [1, 1], orm=0.4),
        _c(["r1", "is 6 6 6"], "6", [0.5, 0.4], [1, 0], orm=0.4),  # ties the right one
        _c(["z1", "z2", "is 5"], "5", [0.2, 0.3, 0.9], [0, 0, 0], orm=0.8),  # right by luck
        _c(["r1", "is 5"], "5", [0.5, 0.4], [1, 1], orm=0.4),
        _c(["y1 y", "is 7"], "7", [0.1, 0.9], [1, 0], orm=0.0),
    ]},
]


def _distinct(cands):
  """{steps tuple: first candidate} in order of first appearance."""
  out = {}
  for c in cands:
    out.setdefault(tuple(c["steps"]), c)
  return out


def _score(c, method):
  return c["orm_score"] if method == "orm" else {"min": min, "max": max}[method](c["step_scores"])


def _pearson(x, y):
  n = len(x)
  mx, my = sum(x) / n, sum(y) / n
  sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
  sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
  return float("nan") if n < 3 or sxx == 0 or syy == 0 else sxy / math.sqrt(sxx * syy)


def _pair_auc(pos, neg):
  return sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg) / (len(pos) * len(neg))


def _brute_within(method):
  aucs, lens, rights = [], [], []
  for row in ROWS:
    texts = list(_distinct(row["candidates"]).values())
    score = [_score(c, method) for c in texts]
    right = [c["answer"] == row["gold"] for c in texts]
    length = [c.get("length", len(" ".join(c["steps"]).split())) for c in texts]
    pos = [s for s, r in zip(score, right) if r]
    neg = [s for s, r in zip(score, right) if not r]
    if pos and neg:
      aucs.append(_pair_auc(pos, neg))
    for out, other in ((lens, length), (rights, [float(r) for r in right])):
      v = _pearson(score, other)
      if not math.isnan(v):
        out.append(v)
  mean = lambda v: sum(v) / len(v)
  return mean(aucs), len(aucs), mean(lens), len(lens), mean(rights), len(rights)


@pytest.fixture
def problems(tmp_path):
  f = tmp_path / "cands.jsonl"
  f.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n", encoding="utf-8")
  return f, read_candidates(f)


@pytest.mark.parametrize("method", ["min", "max", "orm"])
def test_within_problem_against_pairs_and_sums(problems, method):
  _, probs = problems
  r = D.within_problem(probs, method, equal=str.__eq__)
  auc, n_auc, corr_len, n_len, corr_right, n_right = _brute_within(method)
  assert (r["auc_problems"], r["length_problems"], r["right_problems"]) == (n_auc, n_len, n_right)
  assert n_auc == 2  # problem b has no right answer
  assert r["auc"] == pytest.approx(auc)
  assert r["corr_length"] == pytest.approx(corr_len)
  assert r["corr_right"] == pytest.approx(corr_right)
  # a: 2 right texts (one sampled 3 times), 3 wrong; b: 0 and 3; c: 2 right (one twice), 2 wrong
  assert r["distinct_right"] == pytest.approx(4 / 3) and r["distinct_wrong"] == pytest.approx(8 / 3)
  assert r["samples_right"] == pytest.approx(7 / 3) and r["samples_wrong"] == pytest.approx(8 / 3)


def test_within_problem_auc_by_hand(problems):
  _, probs = problems
  # min scores. a: right {0.6, 0.5}, wrong {0.7, 0.4, 0.6}: pairs 0.6>0.4, 0.6=0.6, 0.5>0.4 -> 2.5/6
  # c: right {0.4, 0.2}, wrong {0.4, 0.1}: 0.4=0.4, 0.4>0.1, 0.2>0.1 -> 2.5/4
  assert D.within_problem(probs, "min", equal=str.__eq__)["auc"] == pytest.approx((2.5 / 6 + 2.5 / 4) / 2)


def test_step_auc_pooled_and_within_groups(problems):
  _, probs = problems
  seen = {}  # (problem, index, prefix) -> (score, label)
  for i, row in enumerate(ROWS):
    for c in row["candidates"]:
      for k in range(len(c["steps"])):
        seen.setdefault((i, k, tuple(c["steps"][:k + 1])), (c["step_scores"][k], c["step_labels"][k] >= 0.5))
  pos = [s for s, y in seen.values() if y]
  neg = [s for s, y in seen.values() if not y]
  groups = {}
  for (i, k, _), v in seen.items():
    groups.setdefault((i, k), []).append(v)
  within = [_pair_auc([s for s, y in g if y], [s for s, y in g if not y])
            for g in groups.values() if any(y for _, y in g) and not all(y for _, y in g)]
  r = D.step_auc(probs)
  assert r["steps"] == len(seen) == 23  # 10 + 5 + 8 distinct prefixes
  assert r["pooled"] == pytest.approx(_pair_auc(pos, neg))
  assert r["groups"] == len(within) and r["within"] == pytest.approx(sum(within) / len(within))


def test_roc_auc_matches_pairs():
  rng = np.random.default_rng(0)
  s = rng.integers(0, 5, 40).astype(float)  # many ties
  y = rng.random(40) < 0.4
  assert D.roc_auc(s, y) == pytest.approx(_pair_auc(s[y].tolist(), s[~y].tolist()))
  assert math.isnan(D.roc_auc(s, np.ones(40, bool)))


def test_null_baseline_is_uniform_over_distinct_texts(problems):
  _, probs = problems
  ns = [1, 2, 4, 7]
  acc = V.evaluate(probs, ns, ["null", "random"], equal=str.__eq__)["accuracy"]
  for n in ns:
    null, rand = [], []
    for row in ROWS:
      first = row["candidates"][:n]
      texts = _distinct(first).values()
      null.append(sum(c["answer"] == row["gold"] for c in texts) / len(texts))
      rand.append(sum(c["answer"] == row["gold"] for c in first) / len(first))
    assert acc["null"][n] == pytest.approx(sum(null) / 3), n
    assert acc["random"][n] == pytest.approx(sum(rand) / 3), n
  # Right answers repeat here, so a random score per text does worse than a random sample.
  assert acc["null"][7] < acc["random"][7]


def test_null_is_what_a_random_scorer_averages_to(problems):
  """Monte Carlo: best-of-N with a fresh random score per distinct text converges to "null"."""
  _, probs = problems
  rng = np.random.default_rng(1)
  hits = []
  for _ in range(4000):
    for p in probs:
      texts = V.distinct_texts(p.candidates)
      score = rng.random(texts.max() + 1)[texts]
      hits.append(p.candidates[int(np.argmax(score))].answer == p.gold)
  want = V.evaluate(probs, [7], ["null"], equal=str.__eq__)["accuracy"]["null"][7]
  assert np.mean(hits) == pytest.approx(want, abs=0.015)


def test_texts_without_steps_are_their_own():
  cands = [V.Candidate("1", [0.5]), V.Candidate("1", [0.5]), V.Candidate("2", [0.4], steps=["x"]),
           V.Candidate("2", [0.4], steps=["x"])]
  assert V.distinct_texts(cands).tolist() == [0, 1, 2, 2]


def test_cli_prints_and_writes_the_diagnostics(problems, tmp_path, capsys):
  f, _ = problems
  out = tmp_path / "r.json"
  assert prm_cli(["verify", "--candidates", str(f), "--out", str(out)]) == 0
  text = capsys.readouterr().out
  assert "Does the reward model verify?" in text
  table = text.split("\n\n")[0].splitlines()
  assert any(line.split()[0] == "null" for line in table[1:])
  result = json.loads(out.read_text())
  auc = _brute_within("min")[0]
  assert result["diagnostics"]["within_problem"]["min"]["auc"] == pytest.approx(auc)
  diag = text.split("Does the reward model verify?")[1].splitlines()
  row = next(line.split() for line in diag if line.startswith("prm_min"))
  assert row[1] == f"{auc:.3f}" and row[2:4] == ["(", "2)"]
  assert "orm" in result["diagnostics"]["within_problem"]
  assert "within (problem, step index)" in text


def test_step_labels_and_length_are_checked(tmp_path):
  bad = [
      ({"steps": ["a"], "answer": "1", "step_labels": [2]}, "step labels must lie in"),
      ({"steps": ["a"], "answer": "1", "step_labels": [1, 0]}, "2 step labels for 1 steps"),
      ({"steps": ["a"], "answer": "1", "step_labels": "good"}, "'step_labels' must be a list"),
      ({"steps": ["a"], "answer": "1", "length": -1}, "'length' must be a non-negative integer"),
  ]
  for cand, match in bad:
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"gold": "1", "candidates": [cand]}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"bad.jsonl:1: candidate 0: .*{match}"):
      read_candidates(f)
