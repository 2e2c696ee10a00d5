"""Best-of-N verification from per-step PRM scores (Math-Shepherd Sec. 3.4; spec B and E5).

Pure numpy, no model code. A problem holds a gold answer and N sampled
candidates; each candidate holds its final answer (None where it could not
be parsed; answers are compared and grouped with gsm8k.answers_equal), the
PRM's per-step scores (P("+") at each step tag) and optionally an ORM score.
Over the first n candidates:

  * `best_of_n`: the answer of the candidate with the highest solution score,
    `aggregate(step_scores, method)`; the paper uses the minimum.
  * `majority_vote`: self-consistency, the most frequent parsed answer.
  * `weighted_vote`: SC + RM, argmax_a sum_i 1[a_i = a] * score_i.
  * `orm_best_of_n`, `random_choice`, `pass_at_n`: the baselines and the bound.

Accuracy alone hides whether a reward model verifies; `moe_jax.prm.discrimination`
measures that (within-problem AUC, score-vs-length correlation, step AUC).

`evaluate` gives every method's accuracy for each N. Candidate files are read
by `moe_jax.prm.candidates`; `python -m moe_jax.prm verify` runs both:

    python -m moe_jax.prm verify --candidates cands.jsonl --max-n 64 --out acc.json

Conventions (each also stated where it applies):
  * Ties go to the earliest: the first candidate for best-of-N, and for votes
    the answer whose first appearance comes first.
  * An unparseable answer (None) never matches the gold. Best-of-N may still
    pick it (the verifier chose a solution with no answer: counted wrong);
    the votes ignore it.
  * A problem with no candidates has no answer: every method counts it wrong,
    and `evaluate` reports how many there were.
  * `evaluate`'s "random" is the exact expected accuracy of one uniformly drawn
    candidate among the first n (their mean correctness), not a sample; its
    "null" is the same for a null reward model, one that gives each distinct
    solution text a random score: it picks uniformly among the distinct texts,
    so its expected accuracy is their mean correctness. Sampled right answers
    are often the same few texts repeated, so "null" can sit far below
    "random": it is the bar a reward model's best-of-N must clear to show any
    verification at all.
  * n beyond a problem's candidates uses all of them; `evaluate` reports how
    many problems were short of each n.
  * "prod" is compared in log space (sum of log scores), so products that
    underflow to 0.0 still rank correctly; `aggregate` returns the plain product.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterable, Sequence

import numpy as np


AGGREGATIONS = ("min", "prod", "mean", "last", "max")
# evaluate() method names: PRM best-of-N per aggregation, SC + PRM per aggregation, baselines.
METHODS = (tuple(f"prm_{a}" for a in AGGREGATIONS) + tuple(f"prm_{a}+vote" for a in AGGREGATIONS)
           + ("majority", "orm", "orm+vote", "random", "null", "pass@n"))

Equal = Callable[[str, str], bool]


@dataclasses.dataclass
class Candidate:
  """One sampled solution.

  answer: the normalised final answer, None if it could not be parsed.
  step_scores: the PRM's score for each step (empty: not scored yet).
  orm_score: the outcome reward model's score for the whole solution, if any.
  steps: the solution's step texts (to score it with a PRM, and to tell
    identical solutions apart: two candidates are the same text when their
    steps are equal; a candidate without steps is a text of its own).
  step_labels: the exact label of each step (1 good, 0 bad), if known; only
    `discrimination`'s step AUC reads them.
  length: the solution's length in tokens, if known (else `discrimination`
    counts whitespace-separated words of its steps).
  """

  answer: str | None
  step_scores: list[float]
  orm_score: float | None = None
  steps: list[str] = dataclasses.field(default_factory=list)
  step_labels: list[float] = dataclasses.field(default_factory=list)
  length: int | None = None


@dataclasses.dataclass
class Problem:
  """A question's gold answer and its candidates; `where` ("file:line") names it in errors."""

  gold: str
  candidates: list[Candidate]
  question: str = ""
  where: str = ""


def _default_equal() -> Equal:
  from moe_jax.prm.gsm8k import answers_equal  # pylint: disable=import-outside-toplevel
  return answers_equal


def _check_scores(step_scores: Sequence[float], method: str) -> np.ndarray:
  if method not in AGGREGATIONS:
    raise ValueError(f"aggregation {method!r} is not one of {AGGREGATIONS}")
  s = np.asarray(step_scores, dtype=np.float64)
  if s.ndim != 1:
    raise ValueError(f"step scores must be a flat list of numbers, got shape {s.shape}")
  if s.size == 0:
    raise ValueError("cannot aggregate an empty list of step scores")
  if not np.all(np.isfinite(s)):
    raise ValueError(f"step scores must be finite, got {s.tolist()}")
  if method == "prod" and np.any(s < 0):
    raise ValueError(f"'prod' needs non-negative step scores (probabilities), got {s.tolist()}")
  return s


def aggregate(step_scores: Sequence[float], method: str = "min") -> float:
  """A solution's score from its step scores: "min" (the paper), "prod", "mean", "last" or "max".

  Raises ValueError on an empty list, non-finite scores, an unknown method, or
  negative scores with "prod". "prod" is the plain product, which can underflow
  to 0.0 over many small scores; the selection functions rank by its logarithm.
  """
  s = _check_scores(step_scores, method)
  if method == "min":
    return float(s.min())
  if method == "prod":
    return float(np.prod(s))
  if method == "mean":
    return float(s.mean())
  if method == "last":
    return float(s[-1])
  return float(s.max())


def _log_prod(step_scores: Sequence[float]) -> float:
  s = _check_scores(step_scores, "prod")
  with np.errstate(divide="ignore"):
    return float(np.sum(np.log(s)))


def _name(problem: Problem) -> str:
  return problem.where or f"problem with gold {problem.gold!r}"


def _check_n(n: int) -> None:
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
    raise ValueError(f"n must be a positive integer, got {n!r}")


def _check_method(method: str) -> None:
  if method not in AGGREGATIONS + ("orm",):
    raise ValueError(f"method {method!r} is not one of {AGGREGATIONS + ('orm',)}")


def solution_scores(problem: Problem, n: int | None, method: str) -> np.ndarray:
  """Ranking keys of the first n (None: all) candidates: the step scores' aggregate by `method`
  (its log for "prod") or, for method "orm", the ORM score. Raises ValueError naming the
  problem and candidate that lacks the scores."""
  _check_method(method)
  cands = problem.candidates if n is None else problem.candidates[:n]
  keys = np.empty(len(cands))
  for i, c in enumerate(cands):
    if method == "orm":
      if c.orm_score is None or not math.isfinite(c.orm_score):
        raise ValueError(f"{_name(problem)}: candidate {i} has no (finite) orm_score")
      keys[i] = c.orm_score
      continue
    if not c.step_scores:
      raise ValueError(f"{_name(problem)}: candidate {i} has no step scores")
    try:
      keys[i] = _log_prod(c.step_scores) if method == "prod" else aggregate(c.step_scores, method)
    except ValueError as e:
      raise ValueError(f"{_name(problem)}: candidate {i}: {e}") from None
  return keys


def _groups(answers: Sequence[str | None], equal: Equal) -> tuple[np.ndarray, list[str]]:
  """Group ids (-1 for None) in order of first appearance, and each group's first answer.

  An answer joins the group of the first earlier group whose first answer equals it.
  """
  ids = np.full(len(answers), -1, dtype=np.int64)
  reps: list[str] = []
  seen: dict[str, int] = {}
  for i, a in enumerate(answers):
    if a is None:
      continue
    if a not in seen:
      seen[a] = next((g for g, r in enumerate(reps) if equal(r, a)), len(reps))
      if seen[a] == len(reps):
        reps.append(a)
    ids[i] = seen[a]
  return ids, reps


def distinct_texts(candidates: Sequence[Candidate]) -> np.ndarray:
  """Group ids [len(candidates)] by solution text (equal steps), numbered in order of first
  appearance; a candidate without steps is a text of its own."""
  ids, seen = np.empty(len(candidates), np.int64), {}
  for i, c in enumerate(candidates):
    key = tuple(c.steps) if c.steps else ("#", i)
    ids[i] = seen.setdefault(key, len(seen))
  return ids


def _vote(ids: np.ndarray, weights: np.ndarray | None, n: int, log_space: bool = False) -> int:
  """The winning group among the first n candidates (-1 if none parsed); ties to the earliest."""
  ids = ids[:n]
  parsed = ids >= 0
  if not parsed.any():
    return -1
  k = int(ids.max()) + 1  # groups are numbered in order of first appearance, so 0..k-1 are present
  if weights is None:
    totals = np.bincount(ids[parsed], minlength=k).astype(np.float64)
  elif log_space:  # log of the sum of products, from log-products
    w = weights[:n]
    totals = np.array([np.logaddexp.reduce(w[ids == g]) for g in range(k)])
  else:
    totals = np.bincount(ids[parsed], weights=weights[:n][parsed], minlength=k)
  return int(np.argmax(totals))


def _prefix(problem: Problem, n: int) -> list[Candidate]:
  _check_n(n)
  return problem.candidates[:n]


def best_of_n(problem: Problem, n: int, method: str = "min") -> str | None:
  """The answer of the best-scoring of the first n candidates (ties: the first).

  method: an aggregation of the step scores (see `aggregate`), or "orm" for the
  ORM score. Returns None when there are no candidates or the chosen one's
  answer was unparseable.
  """
  _check_method(method)
  cands = _prefix(problem, n)
  if not cands:
    return None
  return cands[int(np.argmax(solution_scores(problem, n, method)))].answer


def orm_best_of_n(problem: Problem, n: int) -> str | None:
  """The answer of the first n candidates' highest ORM score (ties: the first)."""
  return best_of_n(problem, n, "orm")


def majority_vote(problem: Problem, n: int, equal: Equal | None = None) -> str | None:
  """Self-consistency: the most frequent parsed answer among the first n candidates.

  Answers are grouped with `equal` (default: gsm8k.answers_equal); ties go to
  the answer that appears first; the group's first spelling is returned. None
  if no candidate's answer was parsed.
  """
  cands = _prefix(problem, n)
  ids, reps = _groups([c.answer for c in cands], equal or _default_equal())
  g = _vote(ids, None, n)
  return None if g < 0 else reps[g]


def weighted_vote(problem: Problem, n: int, method: str = "min",
                  equal: Equal | None = None) -> str | None:
  """SC + RM: argmax over parsed answers of the summed scores of the first n candidates giving it.

  method: an aggregation of the step scores, or "orm". Ties go to the answer
  that appears first. Unparseable candidates take no part; None if none parsed.
  """
  _check_method(method)
  cands = _prefix(problem, n)
  if not cands:
    return None
  ids, reps = _groups([c.answer for c in cands], equal or _default_equal())
  g = _vote(ids, solution_scores(problem, n, method), n, log_space=method == "prod")
  return None if g < 0 else reps[g]


def random_choice(problem: Problem, n: int, rng: np.random.Generator | int | None = None
                  ) -> str | None:
  """The answer of one of the first n candidates, drawn uniformly with `rng` (Generator or seed)."""
  cands = _prefix(problem, n)
  if not cands:
    return None
  rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
  return cands[int(rng.integers(len(cands)))].answer


def pass_at_n(problem: Problem, n: int, equal: Equal | None = None) -> bool:
  """Whether any of the first n candidates' answers equals the gold (the upper bound)."""
  equal = equal or _default_equal()
  return any(c.answer is not None and equal(c.answer, problem.gold) for c in _prefix(problem, n))


def _default_methods(problems: Sequence[Problem]) -> list[str]:
  cands = [c for p in problems for c in p.candidates]
  methods = []
  if any(c.step_scores for c in cands):
    methods += [f"prm_{a}" for a in AGGREGATIONS] + ["prm_min+vote"]
  methods.append("majority")
  if any(c.orm_score is not None for c in cands):
    methods += ["orm", "orm+vote"]
  return methods + ["random", "null", "pass@n"]


def evaluate(problems: Sequence[Problem], ns: Iterable[int], methods: Sequence[str] | None = None,
             equal: Equal | None = None, per_problem: bool = False) -> dict:
  """Accuracy of each method for each N, over the first N candidates of every problem.

  methods: names from METHODS: "prm_<agg>" (best-of-N by an aggregation),
  "prm_<agg>+vote" (SC + PRM), "majority" (SC), "orm", "orm+vote" (SC + ORM),
  "random" (the expected accuracy of one uniformly drawn candidate, i.e. the
  mean correctness of the first N, exact rather than sampled), "null" (the
  expected accuracy of a random score per distinct text: the mean correctness
  of the distinct texts among the first N) and "pass@n".
  Default: the PRM methods if any candidate has step scores, the ORM ones if
  any has an ORM score, and the rest. A method whose scores some candidate
  lacks raises ValueError naming it.
  equal: answer comparison, default gsm8k.answers_equal; it also groups votes.

  Returns {"accuracy": {method: {n: fraction}}, "n_problems", "n_candidates",
  "no_candidates" (problems without candidates: counted wrong by every method,
  kept in the denominator), "unparseable" (candidates whose answer is None:
  never correct), "short": {n: problems with some but fewer than n candidates}}.
  """
  ns = list(ns)
  for n in ns:
    _check_n(n)
  if not ns:
    raise ValueError("no N to evaluate")
  problems = list(problems)
  if not problems:
    raise ValueError("no problems to evaluate")
  methods = list(methods) if methods is not None else _default_methods(problems)
  if not methods:
    raise ValueError("no methods to evaluate")
  unknown = [m for m in methods if m not in METHODS]
  if unknown:
    raise ValueError(f"unknown method(s) {unknown}; known: {list(METHODS)}")
  equal = equal or _default_equal()
  hits = {m: {n: np.zeros(len(problems)) for n in ns} for m in methods}
  for i, p in enumerate(problems):
    cands = p.candidates
    if not cands:
      continue
    correct = np.array([c.answer is not None and bool(equal(c.answer, p.gold)) for c in cands])
    ids, reps = _groups([c.answer for c in cands], equal)
    texts = distinct_texts(cands)
    rep_correct = [bool(equal(r, p.gold)) for r in reps]
    keys: dict[str, np.ndarray] = {}
    for m in methods:
      score = m.split("+")[0].removeprefix("prm_")
      if score in AGGREGATIONS + ("orm",) and score not in keys:
        keys[score] = solution_scores(p, None, score)
    for n in ns:
      k = min(n, len(cands))
      for m in methods:
        if m == "pass@n":
          hit = float(correct[:k].any())
        elif m == "random":
          hit = float(correct[:k].mean())
        elif m == "null":  # mean correctness of the distinct texts among the first k
          first = np.unique(texts[:k], return_index=True)[1]
          hit = float(correct[:k][first].mean())
        elif m == "majority":
          g = _vote(ids, None, k)
          hit = float(g >= 0 and rep_correct[g])
        elif m.endswith("+vote"):
          score = m.split("+")[0].removeprefix("prm_")
          g = _vote(ids, keys[score], k, log_space=score == "prod")
          hit = float(g >= 0 and rep_correct[g])
        else:
          hit = float(correct[int(np.argmax(keys[m.removeprefix("prm_")][:k]))])
        hits[m][n][i] = hit
  return {
      "accuracy": {m: {n: float(v.mean()) for n, v in hits[m].items()} for m in methods},
      "n_problems": len(problems),
      "n_candidates": sum(len(p.candidates) for p in problems),
      "no_candidates": sum(not p.candidates for p in problems),
      "unparseable": sum(c.answer is None for p in problems for c in p.candidates),
      "short": {n: sum(0 < len(p.candidates) < n for p in problems) for n in ns},
      **({"hits": {m: {n: v.tolist() for n, v in hits[m].items()} for m in methods}}
         if per_problem else {}),
  }


def format_table(result: dict) -> str:
  """The accuracy table (percent), one row per method and one column per N, with the counts."""
  acc = result["accuracy"]
  ns = list(next(iter(acc.values())))
  width = max(len("method"), *(len(m) for m in acc))
  lines = ["  ".join([f"{'method':<{width}}"] + [f"{'N=' + str(n):>7}" for n in ns])]
  for m, row in acc.items():
    lines.append("  ".join([f"{m:<{width}}"] + [f"{100 * row[n]:7.1f}" for n in ns]))
  lines.append(f"{result['n_problems']} problems, {result['n_candidates']} candidates; "
               f"{result['no_candidates']} problems without candidates (counted wrong); "
               f"{result['unparseable']} unparseable answers (never correct)")
  short = {n: k for n, k in result["short"].items() if k}
  if short:
    lines.append("problems with fewer than N candidates (all used): "
                 + ", ".join(f"N={n}: {k}" for n, k in short.items()))
  return "\n".join(lines)
