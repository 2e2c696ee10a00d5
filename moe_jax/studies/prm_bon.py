"""The Math-Shepherd study's best-of-N measurements over scored test candidates.

Pure functions of the problems, their candidates and each reward model's
step scores (`score_all` makes those): accuracy by method and N with paired
bootstrap intervals, accuracy by problem length, and each RM's step and
solution metrics against the exact checker.
"""

from __future__ import annotations

import warnings

import numpy as np

from moe_jax.model import Model
from moe_jax.prm import arith, gsm8k, reward, scoring, verify


def answer(steps) -> str | None:
  """The final answer a solution (its step texts) states, or None."""
  return gsm8k.extract_answer(steps[-1]) if steps else None


def score_all(rm: Model, tok, problems, cands) -> list[list[list[float]]]:
  """The RM's step scores for every candidate; a problem's identical candidates are scored once."""
  keys = list(dict.fromkeys((i, tuple(s)) for i, sols in enumerate(cands) for s in sols if s))
  scores = scoring.score_solutions(rm, tok, [(problems[i].question, s) for i, s in keys],
                                   seq_len=384, batch_size=32)
  scored = dict(zip(keys, scores))
  return [[scored[(i, tuple(s))] if s else [0.0] for s in sols] for i, sols in enumerate(cands)]


def verification(problems, cands, scores: dict, ns, bootstrap: int) -> dict:
  """Accuracy by method and N, with bootstrap CIs and paired differences."""
  golds = [str(q.answer) for q in problems]

  def vproblems(prm: str):
    return [verify.Problem(g, [verify.Candidate(answer(s), scores[prm][i][j],
                                                orm_score=scores["orm"][i][j][-1])
                               for j, s in enumerate(sols)])
            for i, (g, sols) in enumerate(zip(golds, cands))]

  table = {}
  base = verify.evaluate(vproblems("prm_he"), ns, [f"prm_{a}" for a in verify.AGGREGATIONS]
                         + ["prm_min+vote", "majority", "orm", "orm+vote", "random", "pass@n"],
                         per_problem=True)
  for m, v in base["hits"].items():
    table["prm_he" + m[3:] if m.startswith("prm_") else m] = v
  for prm in ("prm_se", "prm_oracle"):
    r = verify.evaluate(vproblems(prm), ns, ["prm_min", "prm_min+vote"], per_problem=True)
    table[prm + "_min"], table[prm + "_min+vote"] = r["hits"]["prm_min"], r["hits"]["prm_min+vote"]
  rng = np.random.default_rng(0)
  boot = rng.integers(0, len(problems), size=(bootstrap, len(problems)))
  acc = {m: {n: bootstrap_ci(np.asarray(h[n]), boot) for n in ns} for m, h in table.items()}
  pairs = [("prm_he_min", "orm"), ("prm_he_min", "majority"), ("orm", "majority"),
           ("majority", "random"), ("prm_se_min", "prm_he_min"), ("prm_oracle_min", "prm_he_min"),
           ("prm_he_min+vote", "prm_he_min")]
  diffs = {f"{a} - {b}": {n: bootstrap_ci(np.asarray(table[a][n]) - np.asarray(table[b][n]), boot) for n in ns}
           for a, b in pairs}
  return {"accuracy": acc, "differences": diffs, "hits": table}


def bootstrap_ci(x: np.ndarray, boot: np.ndarray) -> list[float]:
  """[mean, low, high] with a 95% percentile bootstrap over problems (boot: [resamples, problems]
  indices); NaNs (a figure a problem does not define) are left out of each mean."""
  if np.isnan(x).all():
    return [float("nan")] * 3
  with warnings.catch_warnings():  # a resample with no defined value has no mean: left out
    warnings.simplefilter("ignore", RuntimeWarning)
    means = np.nanmean(x[boot], 1)
  return [float(np.nanmean(x)), float(np.nanpercentile(means, 2.5)), float(np.nanpercentile(means, 97.5))]


def by_k(problems, hits: dict, n: int, buckets) -> dict:
  """Each method's accuracy at N=n within each bucket of problem lengths K."""
  out = {}
  for name, ks in buckets.items():
    sel = np.asarray([q.k in ks for q in problems])
    if sel.any():
      out[name] = {m: float(np.asarray(h[n])[sel].mean()) for m, h in hits.items()} | {"problems": int(sel.sum())}
  return out


def rm_step_metrics(problems, cands, scores) -> dict:
  """Each RM's step classification against the exact labels, over all test candidates."""
  g = [x for i, sols in enumerate(cands) for s in sols if s for x in arith.oracle_labels(problems[i], s)]
  out = {}
  for name, sc in scores.items():
    probs = [x for i, sols in enumerate(cands) for j, s in enumerate(sols) if s for x in sc[i][j]]
    out[name] = reward.metrics(np.asarray(probs), np.asarray(g))
  return out


def rm_solution_metrics(problems, cands, scores) -> dict:
  """How each RM's solution score (min over steps; the ORM's last) separates right from wrong answers.

  AUC over all candidates, the mean score of right and wrong ones, and how often the
  best-scored candidate of a problem is right where a right one exists: a verifier can
  rank well on average and still pick badly at the top of 64.
  """
  right = [[gsm8k.answers_equal(answer(s), str(q.answer)) for s in sols] for q, sols in zip(problems, cands)]
  flat_right = np.asarray([r for rs in right for r in rs])
  out = {}
  for name, sc in scores.items():
    agg = (lambda x: x[-1]) if name == "orm" else min
    per = [[agg(x) for x in row] for row in sc]
    flat = np.asarray([x for row in per for x in row])
    top = [rs[int(np.argmax(row))] for rs, row in zip(right, per) if any(rs)]
    out[name] = {"auc": reward.roc_auc(flat, flat_right),
                 "mean_score_right": float(flat[flat_right].mean()),
                 "mean_score_wrong": float(flat[~flat_right].mean()),
                 "top_right_where_possible": float(np.mean(top)),
                 "random_right_where_possible": float(np.mean([np.mean(rs) for rs in right if any(rs)]))}
  return out


def measure(test, test_cands, scores: dict, ood, ood_cands, ood_scores: dict, ns, bootstrap: int) -> dict:
  """Every best-of-N figure of the study: each RM's step and solution metrics on the test
  candidates, accuracy by method and N on the test and the longer (ood) problems, and by length."""
  bon = verification(test, test_cands, scores, ns, bootstrap)
  ood_bon = verification(ood, ood_cands, ood_scores, ns, bootstrap)
  return {
      "rm_step_metrics": rm_step_metrics(test, test_cands, scores),
      "rm_solution_metrics": rm_solution_metrics(test, test_cands, scores),
      "bon": {k: v for k, v in bon.items() if k != "hits"},
      "bon_by_k": by_k(test, bon["hits"], ns[-1], {"K 2-3": (2, 3), "K 4-5": (4, 5), "K 6": (6,)}),
      "ood": {k: v for k, v in ood_bon.items() if k != "hits"},
      "test_candidate_accuracy": float(np.mean([gsm8k.answers_equal(answer(s), str(q.answer))
                                                for q, sols in zip(test, test_cands) for s in sols])),
  }
