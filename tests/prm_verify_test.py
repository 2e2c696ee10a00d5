"""moe_jax.prm.verify: aggregations, best-of-N, votes and ORM by hand; evaluate, file reading, CLI.

Expected values are computed by hand (or, for the synthetic set, by a direct
restatement of each rule). The unit tests compare answers with `_equal`, a
stand-in for gsm8k.answers_equal ("1,000" == "1000.0"), so they do not depend
on it; the file-reading default and the CLI use the real gsm8k functions.
"""

import json

import numpy as np
import pytest

from moe_jax.prm import verify as V
from moe_jax.prm.__main__ import main as prm_cli
from moe_jax.prm.candidates import read_candidates
from moe_jax.prm.verify import Candidate, Problem


def _norm(a: str) -> str:
  a = a.strip().replace(",", "")
  try:
    return repr(float(a))
  except ValueError:
    return a


def _equal(a: str, b: str) -> bool:
  return _norm(a) == _norm(b)


def C(answer, scores=(), orm=None):  # pylint: disable=invalid-name
  return Candidate(answer=answer, step_scores=list(scores), orm_score=orm)


# ---------------------------------------------------------------- aggregation


def test_aggregate_each_method():
  s = [0.5, 0.25, 0.75]
  assert V.aggregate(s) == 0.25  # the paper's default: min
  assert V.aggregate(s, "min") == 0.25
  assert V.aggregate(s, "prod") == 0.09375
  assert V.aggregate(s, "mean") == 0.5
  assert V.aggregate(s, "last") == 0.75
  assert V.aggregate(s, "max") == 0.75
  assert V.aggregate([0.3], "prod") == 0.3
  assert V.aggregate(np.array([0.9, 0.1]), "last") == pytest.approx(0.1)


@pytest.mark.parametrize("scores,method,match", [
    ([], "min", "empty"), ([], "prod", "empty"), ([0.5], "median", "not one of"),
    ([0.5, float("nan")], "mean", "finite"), ([0.5, -0.1], "prod", "non-negative"),
    ([[0.5]], "min", "flat"),
])
def test_aggregate_errors(scores, method, match):
  with pytest.raises(ValueError, match=match):
    V.aggregate(scores, method)


def test_prod_underflow_ranks_in_log_space():
  a = [1e-3] * 200  # product 1e-600 underflows to 0.0
  b = [1e-3] * 199 + [2.5e-3]  # 2.5e-600, also 0.0 as a float
  assert V.aggregate(a, "prod") == 0.0 and V.aggregate(b, "prod") == 0.0
  assert V.best_of_n(Problem("x", [C("a", a), C("b", b)]), 2, "prod") == "b"
  # SC + PRM(prod) sums products: "b" = 2.5e-600 against "a" = 2e-600 (N=3), then 3e-600 (N=4).
  q = Problem("x", [C("b", b), C("a", a), C("a", a), C("a", a)])
  assert V.weighted_vote(q, 3, "prod", equal=_equal) == "b"
  assert V.weighted_vote(q, 4, "prod", equal=_equal) == "a"
  zero = Problem("x", [C("a", [0.0, 0.5]), C("b", [0.25])])  # a zero step: log-product -inf
  assert V.best_of_n(zero, 2, "prod") == "b"
  assert V.best_of_n(zero, 1, "prod") == "a"
  assert V.weighted_vote(zero, 1, "prod", equal=_equal) == "a"


# ---------------------------------------------------------------- selection


def _problem():
  # answers: 7, 8, 7, None, 8.0 (== 8), 9
  return Problem("8", [
      C("7", [0.9, 0.6], orm=0.50),   # min 0.6 prod 0.54 mean 0.75 last 0.6 max 0.9
      C("8", [0.7, 0.7], orm=0.75),   # min 0.7 prod 0.49 mean 0.7  last 0.7 max 0.7
      C("7", [0.5, 0.95], orm=0.25),  # min 0.5 prod .475 mean .725 last .95 max .95
      C(None, [0.99, 0.99], orm=0.9),  # unparseable, best by every score
      C("8.0", [0.8, 0.75], orm=0.0),  # min .75 prod 0.6 mean .775 last .75 max 0.8
      C("9", [0.1], orm=0.0),
  ])


def test_best_of_n_by_aggregation_and_prefix():
  p = _problem()
  assert V.best_of_n(p, 1) == "7"
  assert V.best_of_n(p, 2, "min") == "8"
  assert V.best_of_n(p, 2, "prod") == "7"
  assert V.best_of_n(p, 2, "mean") == "7"
  assert V.best_of_n(p, 3, "last") == "7"
  assert V.best_of_n(p, 3, "max") == "7"  # 0.95 beats 0.9
  assert V.best_of_n(p, 4) is None  # the verifier picked the unparseable one: no answer
  p.candidates[3].step_scores = [0.1]
  assert V.best_of_n(p, 5, "min") == "8.0"
  assert V.best_of_n(p, 5, "prod") == "8.0"
  assert V.best_of_n(p, 100, "max") == "7"  # n beyond the candidates uses them all


def test_best_of_n_ties_go_to_first():
  p = Problem("2", [C("1", [0.5, 0.9]), C("2", [0.9, 0.5]), C("3", [0.5])])
  assert V.best_of_n(p, 3, "min") == "1"
  assert V.best_of_n(p, 3, "max") == "1"
  assert V.best_of_n(p, 3, "mean") == "1"
  assert V.best_of_n(p, 3, "last") == "1"
  assert V.best_of_n(Problem("2", [C("2", [0.5]), C("1", [0.5])]), 2) == "2"


def test_orm_best_of_n():
  p = _problem()
  assert V.orm_best_of_n(p, 3) == "8"
  assert V.orm_best_of_n(p, 4) is None
  assert V.best_of_n(p, 3, "orm") == "8"
  tie = Problem("1", [C("2", orm=0.5), C("1", orm=0.5)])
  assert V.orm_best_of_n(tie, 2) == "2"
  missing = Problem("1", [C("2", orm=0.5), C("1")], where="f.jsonl:7")
  assert V.orm_best_of_n(missing, 1) == "2"
  with pytest.raises(ValueError, match=r"f.jsonl:7: candidate 1 has no \(finite\) orm_score"):
    V.orm_best_of_n(missing, 2)


def test_majority_vote_groups_ties_and_unparseable():
  p = _problem()
  assert V.majority_vote(p, 1, equal=_equal) == "7"
  assert V.majority_vote(p, 2, equal=_equal) == "7"  # 1-1 tie: "7" appears first
  assert V.majority_vote(p, 3, equal=_equal) == "7"  # 2-1
  assert V.majority_vote(p, 4, equal=_equal) == "7"  # None takes no part
  assert V.majority_vote(p, 5, equal=_equal) == "7"  # "8" and "8.0" group: 2-2 tie, "7" first
  p.candidates.append(C("8", [0.5]))
  assert V.majority_vote(p, 7, equal=_equal) == "8"  # 3-2; the group's first spelling
  assert V.majority_vote(p, 7, equal=str.__eq__) == "7"  # by exact string: 7:2, 8:2, 8.0:1
  assert V.majority_vote(Problem("1", [C(None), C(None)]), 2, equal=_equal) is None
  assert V.majority_vote(Problem("1", [C(None), C("3"), C("4"), C("4")]), 4, equal=_equal) == "4"


def test_weighted_vote():
  p = _problem()
  # n=3, min: "7" = 0.6 + 0.5 = 1.1, "8" = 0.7: "7" (majority would agree).
  assert V.weighted_vote(p, 3, "min", equal=_equal) == "7"
  # n=5, min: "7" = 1.1, "8" = 0.7 + 0.75 = 1.45: "8" while majority ties and says "7".
  assert V.weighted_vote(p, 5, "min", equal=_equal) == "8"
  assert V.majority_vote(p, 5, equal=_equal) == "7"
  # n=5, max: "7" = 0.9 + 0.95 = 1.85, "8" = 0.7 + 0.8 = 1.5.
  assert V.weighted_vote(p, 5, "max", equal=_equal) == "7"
  # ORM: "7" = 0.75, "8" = 0.75 + 0.0: tie, "7" first. The unparseable 0.9 counts for nothing.
  assert V.weighted_vote(p, 5, "orm", equal=_equal) == "7"
  tie = Problem("1", [C("2", [0.25]), C("1", [0.5]), C("2", [0.25])])
  assert V.weighted_vote(tie, 3, "min", equal=_equal) == "2"  # 0.5 vs 0.5: "2" first
  assert V.weighted_vote(tie, 2, "min", equal=_equal) == "1"
  assert V.weighted_vote(Problem("1", [C(None, [0.9])]), 1, equal=_equal) is None


def test_missing_step_scores_name_the_problem():
  p = Problem("1", [C("1", [0.5]), C("2")], where="c.jsonl:3")
  with pytest.raises(ValueError, match="c.jsonl:3: candidate 1 has no step scores"):
    V.best_of_n(p, 2)
  with pytest.raises(ValueError, match="c.jsonl:3: candidate 0: .*finite"):
    V.best_of_n(Problem("1", [C("1", [float("inf")])], where="c.jsonl:3"), 1)


def test_random_choice_and_pass_at_n():
  p = _problem()
  rng = np.random.default_rng(0)
  draws = {V.random_choice(p, 3, rng) for _ in range(200)}
  assert draws == {"7", "8"}  # only the first 3 candidates
  assert V.random_choice(p, 6, 5) == V.random_choice(p, 6, 5)  # a seed is reproducible
  assert not V.pass_at_n(p, 1, equal=_equal)
  assert V.pass_at_n(p, 2, equal=_equal)
  assert V.pass_at_n(Problem("8", [C("9"), C("8,000"), C(None), C("8.0")]), 4, equal=_equal)
  assert not V.pass_at_n(Problem("8", [C(None)]), 1, equal=_equal)


def test_no_candidates_and_bad_n():
  empty = Problem("1", [])
  assert V.best_of_n(empty, 4) is None
  assert V.majority_vote(empty, 4, equal=_equal) is None
  assert V.weighted_vote(empty, 4, equal=_equal) is None
  assert V.orm_best_of_n(empty, 4) is None
  assert V.random_choice(empty, 4, 0) is None
  assert not V.pass_at_n(empty, 4, equal=_equal)
  for fn in (V.best_of_n, V.weighted_vote):
    with pytest.raises(ValueError, match="'median' is not one of"):
      fn(empty, 1, "median")
  for bad in (0, -1, 1.5, True):
    with pytest.raises(ValueError, match="positive integer"):
      V.best_of_n(_problem(), bad)


# ---------------------------------------------------------------- evaluate


def test_evaluate_hand_made():
  problems = [
      _problem(),  # gold 8
      Problem("3", [C("3", [0.2], orm=0.1), C("4", [0.9], orm=0.2), C("3", [0.3], orm=0.3)]),
      Problem("5", []),  # no candidates: wrong everywhere
      Problem("1", [C(None, [0.5], orm=0.5), C("1", [0.4], orm=0.4)]),
  ]
  r = V.evaluate(problems, [1, 2, 4], equal=_equal)
  assert r["n_problems"] == 4 and r["n_candidates"] == 11
  assert r["no_candidates"] == 1 and r["unparseable"] == 2
  assert r["short"] == {1: 0, 2: 0, 4: 2}
  a = r["accuracy"]
  assert list(a) == ["prm_min", "prm_prod", "prm_mean", "prm_last", "prm_max", "prm_min+vote",
                     "majority", "orm", "orm+vote", "random", "null", "pass@n"]
  assert a["null"] == a["random"]  # candidates without texts are each a text of their own
  # Per problem at N = 1, 2, 4 (P1 gold 8; P2 gold 3; P3 empty; P4 gold 1):
  # prm_min: P1 7,8,None  P2 3,4,4  P4 None,None,None
  assert a["prm_min"] == {1: 1 / 4, 2: 1 / 4, 4: 0.0}
  # prm_prod: P1 7,7,None  P2 3,4,4  P4 None(.5>.4)
  assert a["prm_prod"] == {1: 1 / 4, 2: 0.0, 4: 0.0}
  # prm_min+vote: P1 7,8 (.7>.6),8 (.7 vs .6+.5=1.1 -> 7)  P2 3,4,3 (.5 vs .9 -> 4)  P4 None,1,1
  assert V.weighted_vote(problems[0], 4, equal=_equal) == "7"
  assert V.weighted_vote(problems[1], 4, equal=_equal) == "4"
  assert a["prm_min+vote"] == {1: 1 / 4, 2: 2 / 4, 4: 1 / 4}
  # majority: P1 7,7,7  P2 3,3,3  P4 None,1,1
  assert a["majority"] == {1: 1 / 4, 2: 2 / 4, 4: 2 / 4}
  # orm: P1 7,8,None  P2 3,4,3  P4 None,None,None
  assert a["orm"] == {1: 1 / 4, 2: 1 / 4, 4: 1 / 4}
  # orm+vote: P1 7,8,7 (.5+.25 vs .75: tie -> 7)  P2 3,4,3 (.4 vs .2)  P4 None,1,1
  assert a["orm+vote"] == {1: 1 / 4, 2: 2 / 4, 4: 2 / 4}
  # random: mean correctness of the first N: P1 0,1/2,1/4  P2 1,1/2,2/3  P4 0,1/2,1/2
  assert a["random"] == pytest.approx({1: 1 / 4, 2: 3 / 8, 4: (1 / 4 + 2 / 3 + 1 / 2) / 4})
  assert a["pass@n"] == {1: 1 / 4, 2: 3 / 4, 4: 3 / 4}


def test_evaluate_methods_and_defaults():
  plain = [Problem("1", [C("1"), C("2")])]
  r = V.evaluate(plain, [1, 2], equal=_equal)
  assert list(r["accuracy"]) == ["majority", "random", "null", "pass@n"]  # no scores: no RM rows
  r = V.evaluate(plain, [2], methods=["pass@n"], equal=_equal)
  assert r["accuracy"] == {"pass@n": {2: 1.0}}
  with pytest.raises(ValueError, match="unknown method"):
    V.evaluate(plain, [1], methods=["prm_median"], equal=_equal)
  with pytest.raises(ValueError, match="no step scores"):
    V.evaluate(plain, [1], methods=["prm_min"], equal=_equal)
  partial = [Problem("1", [C("1", [0.5])]), Problem("1", [C("1")], where="x.jsonl:2")]
  with pytest.raises(ValueError, match="x.jsonl:2: candidate 0 has no step scores"):
    V.evaluate(partial, [1], equal=_equal)
  with pytest.raises(ValueError, match="no problems"):
    V.evaluate([], [1], equal=_equal)
  with pytest.raises(ValueError, match="positive integer"):
    V.evaluate(plain, [0], equal=_equal)


def _synthetic(n_problems=200, n_cands=8, seed=0):
  """Correct candidates' 1-5 steps lie in [0.7, 0.94]; wrong ones open with 0.95, then go < 0.1.

  So by min, prod (>= 0.7^5 vs <= 0.095), mean (>= 0.7 vs <= 0.525) and last
  every correct candidate beats every wrong one, and by max every wrong one wins.

  Each candidate is correct with probability 0.4; a wrong one answers "W" (the
  one shared wrong answer), or is unparseable with probability 1/4.
  """
  rng = np.random.default_rng(seed)
  problems = []
  correct = np.zeros((n_problems, n_cands), bool)
  parsed = np.ones((n_problems, n_cands), bool)
  for i in range(n_problems):
    cands = []
    for j in range(n_cands):
      k = int(rng.integers(1, 6))
      if rng.random() < 0.4:
        correct[i, j] = True
        cands.append(C(str(i), rng.uniform(0.7, 0.94, k)))
      else:
        parsed[i, j] = rng.random() >= 0.25
        cands.append(C("W" if parsed[i, j] else None, [0.95] + list(rng.uniform(0.0, 0.1, k))))
    problems.append(Problem(str(i), cands))
  return problems, correct, parsed


def test_evaluate_synthetic_exact():
  problems, correct, parsed = _synthetic()
  ns = [1, 2, 4, 8]
  r = V.evaluate(problems, ns, equal=_equal)
  a = r["accuracy"]
  assert r["unparseable"] == int((~parsed).sum()) > 0
  for n in ns:
    c, p = correct[:, :n], parsed[:, :n]
    any_c, all_c = c.any(1), c.all(1)
    n_right, n_wrong = c.sum(1), (p & ~c).sum(1)
    # min, prod, mean, last: each correct candidate outscores each wrong one: right iff any correct.
    for agg in ("min", "prod", "mean", "last"):
      assert a[f"prm_{agg}"][n] == any_c.mean(), (agg, n)
    # max: every wrong one (0.95 first step) outscores every correct one -> right iff all correct.
    assert a["prm_max"][n] == all_c.mean()
    assert a["pass@n"][n] == any_c.mean()
    # majority: more right than "W", or a tie where the first parsed answer is right.
    first_parsed_right = np.array([row[pr][0] if pr.any() else False for row, pr in zip(c, p)])
    maj = (n_right > n_wrong) | ((n_right == n_wrong) & (n_right > 0) & first_parsed_right)
    assert a["majority"][n] == maj.mean()
    assert a["random"][n] == pytest.approx(c.mean(1).mean())
  assert a["prm_min"][8] > a["majority"][8]  # the constructed verifier beats SC here
  pass_n = [a["pass@n"][n] for n in ns]
  assert pass_n == sorted(pass_n) and pass_n[0] < pass_n[-1]


# ---------------------------------------------------------------- reading candidates


def _write(path, rows):
  path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n",
                  encoding="utf-8")
  return path


def test_read_candidates(tmp_path):
  f = _write(tmp_path / "c.jsonl", [
      {"question": "q1", "gold": "18", "candidates": [
          {"answer": "18", "step_scores": [0.9, 0.8], "orm_score": 0.7, "steps": ["a", "b"]},
          {"answer": None, "step_scores": [0.1]},
          {"text": "Step 1: 9 * 2 = 18. ки\nStep 2: The answer is: 18 ки"},
      ]},
      "",
      {"gold": 7, "candidates": []},
  ])
  extract = lambda t: t.rsplit("The answer is:", 1)[1].split()[0] if "The answer is:" in t else None
  probs = read_candidates(f, extract=extract)
  assert len(probs) == 2
  p, q = probs
  assert (p.gold, p.question, p.where) == ("18", "q1", f"{f}:1")
  assert p.candidates[0] == Candidate("18", [0.9, 0.8], 0.7, ["a", "b"])
  assert p.candidates[1] == Candidate(None, [0.1], None, [])
  steps = ["Step 1: 9 * 2 = 18.", "Step 2: The answer is: 18"]
  assert p.candidates[2] == Candidate("18", [], None, steps)
  assert (q.gold, q.candidates, q.where) == ("7", [], f"{f}:3")


def test_read_candidates_with_gsm8k_defaults(tmp_path):
  """Answers extracted by gsm8k.extract_answer from tagged text; evaluate with answers_equal."""
  f = _write(tmp_path / "c.jsonl", [{"question": "q", "gold": "1,000", "candidates": [
      {"text": "Step 1: 500 * 2 = 1000. ки\nStep 2: The answer is: 1000 ки",
       "step_scores": [0.9, 0.8]},
      {"text": "Step 1: I give up. ки", "step_scores": [0.95]},
      {"text": "Step 1: 2 * 2 = 4. ки\nStep 2: The answer is: $1,000.00 ки",
       "step_scores": [0.5, 0.5]},
  ]}])
  (p,) = read_candidates(f)
  assert [c.answer for c in p.candidates] == ["1000", None, "$1,000.00"]
  assert p.candidates[0].steps == ["Step 1: 500 * 2 = 1000.", "Step 2: The answer is: 1000"]
  r = V.evaluate([p], [1, 3])
  assert r["unparseable"] == 1
  assert r["accuracy"]["majority"] == {1: 1.0, 3: 1.0}  # "1000" and "$1,000.00" are one answer
  assert r["accuracy"]["prm_min"] == {1: 1.0, 3: 0.0}  # min 0.95 picks the unparseable one
  assert r["accuracy"]["random"] == pytest.approx({1: 1.0, 3: 2 / 3})


@pytest.mark.parametrize("line,match", [
    ("{not json", "malformed JSON"),
    ("[1, 2]", "expected an object"),
    ({"candidates": []}, "'gold' must be a string"),
    ({"gold": "1"}, "'candidates' must be a list"),
    ({"gold": "1", "candidates": [{"step_scores": [0.5]}]},
     "candidate 0 has none of 'answer', 'text' or 'steps'"),
    ({"gold": "1", "candidates": [{"answer": "1", "step_scores": []}]}, "non-empty list"),
    ({"gold": "1", "candidates": [{"answer": "1", "step_scores": [0.5, "x"]}]}, "step score 1"),
    ({"gold": "1", "candidates": [{"answer": "1", "orm_score": "high"}]}, "'orm_score'"),
    ({"gold": "1", "candidates": [{"answer": "1", "step_scores": [0.5], "steps": ["a", "b"]}]},
     "1 step scores for 2 steps"),
    ({"gold": "1", "candidates": [{"answer": ["1"]}]}, "'answer' must be a string or null"),
])
def test_read_candidates_errors_name_file_and_line(tmp_path, line, match):
  f = _write(tmp_path / "bad.jsonl", [{"gold": "1", "candidates": []}, line])
  with pytest.raises(ValueError, match=f"bad.jsonl:2: .*{match}"):
    read_candidates(f)


# ---------------------------------------------------------------- CLI


def test_cli_table_and_json(tmp_path, capsys):
  rows = [
      {"question": "q", "gold": "8", "candidates": [
          {"answer": "7", "step_scores": [0.9, 0.6]}, {"answer": "8", "step_scores": [0.7, 0.7]},
          {"answer": "7", "step_scores": [0.5, 0.95]}, {"answer": None, "step_scores": [0.2]},
          {"answer": "8.0", "step_scores": [0.8, 0.75]}]},
      {"question": "q", "gold": "3", "candidates": [
          {"answer": "3", "step_scores": [0.2]}, {"answer": "4", "step_scores": [0.9]},
          {"answer": "3", "step_scores": [0.3]}]},
      {"question": "q", "gold": "5", "candidates": []},
  ]
  f = _write(tmp_path / "c.jsonl", rows)
  out = tmp_path / "acc.json"
  assert prm_cli(["verify", "--candidates", str(f), "--out", str(out)]) == 0
  text = capsys.readouterr().out
  header = text.splitlines()[0].split()
  assert header == ["method", "N=1", "N=2", "N=4", "N=5"]  # powers of two, then the cap (5)
  table = text.split("\n\n")[0].splitlines()  # the accuracy table; the diagnostics follow
  row = {line.split()[0]: line.split()[1:] for line in table[1:] if line[:1].isalpha()}
  # prm_min: P1 7,8,8,8; P2 3,4,4,4 (N=5 uses all 3); P3 none -> 1/3, 1/3, 1/3, 1/3
  assert row["prm_min"] == ["33.3"] * 4
  assert row["pass@n"] == ["33.3", "66.7", "66.7", "66.7"]
  assert "1 problems without candidates" in text and "1 unparseable answers" in text
  assert "N=4: 1, N=5: 1" in text  # problem 2 has only 3 candidates
  result = json.loads(out.read_text())
  assert result["ns"] == [1, 2, 4, 5] and result["no_candidates"] == 1
  assert result["accuracy"]["prm_min"]["4"] == pytest.approx(1 / 3)
  assert prm_cli(["verify", "--candidates", str(f), "--max-n", "2", "--methods", "majority,pass@n"]) == 0
  text = capsys.readouterr().out
  assert text.splitlines()[0].split() == ["method", "N=1", "N=2"]
  assert [line.split()[0] for line in text.splitlines()[1:3]] == ["majority", "pass@n"]


def test_cli_errors(tmp_path, capsys):
  f = _write(tmp_path / "c.jsonl", [{"gold": "1", "candidates": [{"answer": "1"}]}, "{oops"])
  assert prm_cli(["verify", "--candidates", str(f)]) == 2
  assert f"{f}:2: malformed JSON" in capsys.readouterr().err
  g = _write(tmp_path / "g.jsonl", [{"gold": "1", "candidates": [{"answer": "1"}]}])
  assert prm_cli(["verify", "--candidates", str(g), "--methods", "prm_min"]) == 2
  assert f"{g}:1: candidate 0 has no step scores" in capsys.readouterr().err
  assert prm_cli(["verify", "--candidates", str(tmp_path / "missing.jsonl")]) == 2
  assert "missing.jsonl" in capsys.readouterr().err
