"""Does a reward model verify? How well its scores separate a problem's right candidates from its wrong ones.

Best-of-N accuracy mixes two things: how often a problem has a right
candidate, and whether the reward model (RM) can find it. A pooled AUC over
all candidates mixes two more: telling easy problems from hard ones (which
any RM that scores long solutions low does) and telling good solutions from
bad ones (verification). These metrics keep only the second. Pure numpy over
`verify.Problem`s; `python -m moe_jax.prm verify` prints them.

  * within-problem AUC: for each problem with both right and wrong distinct
    texts, P(score of a right text > score of a wrong one), ties half; the
    mean over those problems. 0.5 is an RM that cannot verify.
  * within-problem correlations of the score with the solution's length and
    with being right (Pearson over the problem's distinct texts, averaged over
    problems where both vary): an RM that prefers short solutions shows a
    negative length correlation larger than its right-answer one.
  * step AUC, pooled over all steps and within (problem, step index) groups,
    against exact step labels (`Candidate.step_labels`), over distinct step
    prefixes: the pooled figure rewards knowing which problems and which step
    positions tend to fail; the grouped one only knowing which of the same
    problem's k-th steps are wrong.

Everything is over distinct texts: sampled right answers tend to be a few
texts repeated many times, and an RM gives a text one score however often it
was sampled (a text's score is the mean of its copies' scores).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Sequence

import numpy as np

from moe_jax.prm import verify
from moe_jax.prm.verify import Problem

Equal = Callable[[str, str], bool]


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
  """Probability a random positive outscores a random negative (ties count half); nan without both."""
  scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
  pos, neg = scores[positive], scores[~positive]
  if not len(pos) or not len(neg):
    return float("nan")
  values = np.concatenate([pos, neg])
  order = np.argsort(values, kind="mergesort")
  ranks = np.empty(len(values))
  sorted_values = values[order]
  i = 0
  while i < len(values):  # average ranks over ties
    j = i
    while j + 1 < len(values) and sorted_values[j + 1] == sorted_values[i]:
      j += 1
    ranks[order[i:j + 1]] = (i + j) / 2 + 1
    i = j + 1
  return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def _length(c: verify.Candidate) -> int:
  return c.length if c.length is not None else len(" ".join(c.steps).split())


def _corr(x: np.ndarray, y: np.ndarray) -> float:
  """Pearson correlation, nan when either side is constant (or there are fewer than 3 points)."""
  if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
    return float("nan")
  return float(np.corrcoef(x, y)[0, 1])


def _mean(values: list[float]) -> tuple[float, int]:
  kept = [v for v in values if not np.isnan(v)]
  return (float(np.mean(kept)) if kept else float("nan")), len(kept)


def per_problem(problem: Problem, method: str, equal: Equal) -> dict:
  """One problem's distinct texts: their score, length and rightness, and the AUC and correlations."""
  texts = verify.distinct_texts(problem.candidates)
  first = np.unique(texts, return_index=True)[1]
  scores = verify.solution_scores(problem, None, method)
  score = np.bincount(texts, weights=scores) / np.bincount(texts)  # a text's mean score
  right = np.asarray([problem.candidates[i].answer is not None
                      and bool(equal(problem.candidates[i].answer, problem.gold)) for i in first])
  length = np.asarray([_length(problem.candidates[i]) for i in first], np.float64)
  return {"score": score, "right": right, "length": length, "auc": roc_auc(score, right),
          "corr_length": _corr(score, length), "corr_right": _corr(score, right.astype(np.float64))}


def within_problem(problems: Sequence[Problem], method: str = "min", equal: Equal | None = None) -> dict:
  """Within-problem AUC and correlations of one score (`method`: an aggregation or "orm").

  Returns {"auc", "auc_problems" (problems with right and wrong texts),
  "corr_length", "corr_right" (means over problems where both sides vary) and
  their problem counts, "distinct_right", "distinct_wrong" (mean distinct texts
  per problem), "samples_right", "samples_wrong" (mean candidates)}.
  """
  equal = equal or verify._default_equal()  # pylint: disable=protected-access
  rows = [per_problem(p, method, equal) for p in problems if p.candidates]
  if not rows:
    raise ValueError("no problem has candidates")
  auc, n_auc = _mean([r["auc"] for r in rows])
  corr_length, n_length = _mean([r["corr_length"] for r in rows])
  corr_right, n_right = _mean([r["corr_right"] for r in rows])
  samples = [np.asarray([c.answer is not None and bool(equal(c.answer, p.gold)) for c in p.candidates])
             for p in problems if p.candidates]
  return {"auc": auc, "auc_problems": n_auc, "corr_length": corr_length, "length_problems": n_length,
          "corr_right": corr_right, "right_problems": n_right,
          "distinct_right": float(np.mean([r["right"].sum() for r in rows])),
          "distinct_wrong": float(np.mean([(~r["right"]).sum() for r in rows])),
          "samples_right": float(np.mean([s.sum() for s in samples])),
          "samples_wrong": float(np.mean([(~s).sum() for s in samples]))}


def step_auc(problems: Sequence[Problem]) -> dict:
  """Step AUC against `step_labels` (>= 0.5 is good), pooled and within (problem, step index) groups.

  Over distinct (problem, step prefix) pairs; candidates without labels or
  scores are left out. Returns {"pooled", "within" (mean over groups holding
  both labels), "groups", "steps"}; nan where no step has a label.
  """
  seen: dict[tuple, tuple[float, bool]] = {}  # (problem, step index, prefix) -> (score, good)
  for i, p in enumerate(problems):
    for j, c in enumerate(p.candidates):
      if not c.step_labels or not c.step_scores:
        continue
      for k, (s, y) in enumerate(zip(c.step_scores, c.step_labels)):
        prefix = tuple(c.steps[:k + 1]) if c.steps else ("#", j)
        seen.setdefault((i, k, prefix), (s, y >= 0.5))
  groups = defaultdict(list)
  for (i, k, _), v in seen.items():
    groups[(i, k)].append(v)
  if not seen:
    nan = float("nan")
    return {"pooled": nan, "within": nan, "groups": 0, "steps": 0}
  s, y = map(np.asarray, zip(*seen.values()))
  within, n = _mean([roc_auc(*map(np.asarray, zip(*g))) for g in groups.values()])
  return {"pooled": roc_auc(s, y), "within": within, "groups": n, "steps": len(seen)}


def scores_available(problems: Sequence[Problem]) -> list[str]:
  """The scores every candidate has: the step-score aggregations and "orm"."""
  cands = [c for p in problems for c in p.candidates]
  out = list(verify.AGGREGATIONS) if cands and all(c.step_scores for c in cands) else []
  return out + (["orm"] if cands and all(c.orm_score is not None for c in cands) else [])


def diagnose(problems: Sequence[Problem], methods: Sequence[str] | None = None,
             equal: Equal | None = None) -> dict:
  """`within_problem` for each score (default: all the candidates have) and the step AUCs."""
  methods = scores_available(problems) if methods is None else list(methods)
  return {"within_problem": {m: within_problem(problems, m, equal) for m in methods},
          "step_auc": step_auc(problems)}


def format_diagnostics(d: dict) -> str:
  """The diagnostics as a small table, one row per score, and the step AUCs."""
  lines = []
  rows = d["within_problem"]
  if rows:
    first = next(iter(rows.values()))
    lines.append(f"distinct texts per problem: right {first['distinct_right']:.1f} "
                 f"(from {first['samples_right']:.1f} samples), wrong {first['distinct_wrong']:.1f} "
                 f"(from {first['samples_wrong']:.1f})")
    lines.append(f"{'score':<10}  {'within-problem AUC':>18}  {'corr(score, length)':>19}  "
                 f"{'corr(score, right)':>18}")
    for m, r in rows.items():
      name = m if m == "orm" else f"prm_{m}"
      lines.append(f"{name:<10}  {r['auc']:>10.3f} ({r['auc_problems']:>4})  "
                   f"{r['corr_length']:>11.3f} ({r['length_problems']:>4})  "
                   f"{r['corr_right']:>10.3f} ({r['right_problems']:>4})")
    lines.append("(in brackets: the problems each mean is over; over distinct texts; 0.5 AUC: no verification)")
  s = d["step_auc"]
  if s["steps"]:
    lines.append(f"step AUC against step_labels: pooled {s['pooled']:.3f} over {s['steps']} distinct steps; "
                 f"within (problem, step index) {s['within']:.3f} over {s['groups']} groups")
  return "\n".join(lines)
