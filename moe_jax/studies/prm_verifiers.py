"""Reward models that verify: which levers make an ArithChain RM tell a problem's right candidates from its wrong ones.

    python -m moe_jax.studies.prm_verifiers --out DIR [--quick]

The Math-Shepherd reproduction (`moe_jax.studies.prm`) found every reward
model below a random pick at best-of-64. Its pooled AUCs looked fine; within
a problem they were chance. This study measures what matters for best-of-N,
discrimination within a problem (`moe_jax.prm.discrimination`), and tries
the levers in the order the evidence suggested, all on exact step labels
(free on ArithChain, so more data costs no rollouts):

1. generator: the reproduction's model and SFT data, trained on from its weak
   checkpoint in rounds until dev greedy accuracy reaches the spec's 35-70%
   calibration window (a rule fixed before the run); also a strong model
   trained far longer, as one RM's initialisation;
2. RM data: n_rm problems x n_cand sampled solutions, deduplicated, every
   step labelled by the exact checker; hard negatives built from each gold
   solution (one arithmetic slip carried through; stopped early with an
   intermediate value as the answer) beside the gold itself;
3. reward models, each initialised from the generator (so as large as it):
   "recipe" (the reproduction's: 300 problems x 8 samples, 80 steps),
   "more_data" (every sampled solution, trained far longer),
   "hard_negatives" (more_data plus the gold-derived solutions),
   "balanced" (the same data in rows of one right and one wrong solution of
   a problem), "pairwise" (balanced plus a ranking term between the two,
   beyond the paper) and "strong_init" (hard_negatives' data from the strong
   model: an RM that does the arithmetic better than the generator);
4. on held-out problems x 64 samples: each RM's and the generator's own
   log-likelihood's within-problem AUC, score-vs-length correlation, step
   AUC within (problem, step index) groups, best-of-N against majority vote,
   a random sample and a null RM, what the top pick is, and gold probes
   (does stopping early or one slip outscore the gold?).

Every stage is cached under DIR/runs; DIR/RESULTS.md states each claim's
verdict with 95% bootstrap intervals over problems.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Sequence

import jax
import numpy as np

from moe_jax import train_lib
from moe_jax.generate import loglikelihood
from moe_jax.model import Model
from moe_jax.prm import arith, discrimination, gsm8k, ppo, training, verify
from moe_jax.prm.data import Example
from moe_jax.studies import common, prm_bon
from moe_jax.studies import prm as repro
from moe_jax.studies.prm_bon import answer, bootstrap_ci
from moe_jax.studies.prm_verifiers_report import report


@dataclasses.dataclass(frozen=True)
class Plan:
  """Sizes: the generator's SFT, the RM data, each RM's steps, the test set."""
  strong_steps: int  # SFT steps after the weak checkpoint for the strong model (an RM init)
  round_steps: int  # the generator: the weak checkpoint trained in rounds of this many steps...
  max_rounds: int  # ...until its dev greedy accuracy reaches the calibration window (or this many)
  n_dev: int
  n_rm: int  # RM-train problems
  n_cand: int  # samples per RM-train problem
  recipe_problems: int  # the reproduction's RM recipe: its problems, samples and steps
  recipe_cands: int
  recipe_steps: int
  rm_steps: int  # the longer RM trainings
  pairs: int  # pair rows per problem for the balanced and pairwise RMs
  n_test: int
  n_test_cand: int
  ns: tuple[int, ...]
  bootstrap: int


def plan(quick: bool) -> Plan:
  """The full plan (about an hour on 2 CPU cores), or the --quick one that fits a test."""
  if quick:
    return Plan(8, 4, 2, 8, 12, 4, 12, 3, 3, 6, 2, 6, 8, (1, 4, 8), 200)
  return Plan(1800, 300, 6, 200, 1500, 16, 300, 8, 80, 500, 8, 400, 64, (1, 4, 16, 64), 2000)


@dataclasses.dataclass(frozen=True)
class RM:
  """One reward model's recipe.

  data: "recipe" (the reproduction's slice of the sampled solutions), "all" (every sampled
    solution) or "all+hard" (plus the gold, a slipped gold and a stopped-early gold per problem).
  steps: the Plan field giving its training steps.
  pairs: train on rows of one right and one wrong solution of a problem (batches balanced by
    problem; `training.pair_rows`), Plan.pairs of them per problem.
  rank_weight: with pairs, the weight of a pairwise ranking term between the two.
  init: "generator", or "strong" (the longer-trained SFT model, which does the arithmetic better).
  """
  data: str
  steps: str = "rm_steps"
  pairs: bool = False
  rank_weight: float = 0.0
  init: str = "generator"


RMS = {"recipe": RM("recipe", "recipe_steps"), "more_data": RM("all"), "hard_negatives": RM("all+hard"),
       "balanced": RM("all+hard", pairs=True), "pairwise": RM("all+hard", pairs=True, rank_weight=1.0),
       "strong_init": RM("all+hard", init="strong")}
WINDOW = (0.35, 0.70)  # the spec's calibration window for the generator's greedy accuracy


def base_plan(p: Plan, quick: bool) -> repro.Plan:
  """The reproduction's plan (model, SFT data, batch, sampling) with this study's SFT length."""
  return dataclasses.replace(repro.plan(quick), strong_steps=p.strong_steps)


# -- data -----------------------------------------------------------------------------

def hard_negatives(q: arith.Problem, rng: np.random.Generator) -> list[list[str]]:
  """The gold, the gold with one slip (a random step and delta that keep it valid) and, for
  K >= 2, the gold stopped early at a random step."""
  out = [q.gold_steps()]
  for _ in range(20):
    steps = arith.slipped(q, int(rng.integers(q.k)), int(rng.choice([-3, -2, -1, 1, 2, 3])))
    if steps is not None:
      out.append(steps)
      break
  if q.k >= 2:
    out.append(arith.stopped_early(q, int(rng.integers(1, q.k))))
  return out


def rm_examples(p: Plan, problems, cands, name: str, min_held: int) -> tuple[list[Example], list[Example]]:
  """(train, held-out) examples for RM `name`, exact labels. The last 10% of its problems are
  held out, or more where that leaves fewer than `min_held` solutions (a few batches)."""
  data = RMS[name].data
  n = p.recipe_problems if data == "recipe" else len(problems)
  rng = np.random.default_rng(5)
  per_problem = []
  for i in range(n):
    sols = cands[i][:p.recipe_cands] if data == "recipe" else cands[i]
    sols = [list(s) for s in dict.fromkeys(tuple(s) for s in sols if s)]
    if data == "all+hard":
      sols += hard_negatives(problems[i], rng)
    per_problem.append([Example(problems[i].question, s, arith.oracle_labels(problems[i], s)) for s in sols])
  cut = max(1, int(0.9 * n))
  while cut > 1 and sum(len(x) for x in per_problem[cut:]) < min_held:
    cut -= 1
  return [e for x in per_problem[:cut] for e in x], [e for x in per_problem[cut:] for e in x]


def train_rm(p: Plan, quick: bool, out: str, name: str, init: Model, tok, problems, cands) -> Model:
  """RM `name` trained from `init` on exact labels (cached as a model directory)."""
  def fit():
    base = base_plan(p, quick)
    spec = RMS[name]
    cfg = repro.rm_config(dataclasses.replace(base, rm_steps=getattr(p, spec.steps)), False, "soft")
    cfg.prm.update(pairs_per_question=p.pairs if spec.pairs else 0, rank_weight=spec.rank_weight)
    train, held = rm_examples(p, problems, cands, name, 4 * cfg.data.batch_size)
    mesh = train_lib.make_mesh(cfg)
    model, _, summary = training.fit(cfg, os.path.join(out, "work", name), init, tok, train,
                                     held, mesh, name)
    common.cached(os.path.join(out, "work", name, "summary.json"),
                  lambda: {"train_solutions": len(train), "held_out_solutions": len(held),
                           **{k: summary[k] for k in ("metrics_before", "metrics_after") if k in summary}})
    return model
  return repro.cached_model(os.path.join(out, "models", name), fit)


def gen_loglik(model: Model, tok, problems, cands) -> list[list[list[float]]]:
  """[summed log-likelihood, tokens] the generator gives each candidate (a problem's copies once)."""
  keys = list(dict.fromkeys((i, tuple(s)) for i, sols in enumerate(cands) for s in sols))
  bos = [] if tok.bos_id is None else [tok.bos_id]
  prompts = [bos + tok.encode(ppo.prompt_text(problems[i].question)) for i, _ in keys]
  conts = [tok.encode(" " + "\n".join(s)) + [tok.eos_id] for _, s in keys]
  sums = loglikelihood(model, prompts, conts, batch_size=128)
  got = {k: [float(v), len(c)] for k, v, c in zip(keys, sums, conts)}
  return [[got[(i, tuple(s))] for s in sols] for i, sols in enumerate(cands)]


def generator(p: Plan, base: repro.Plan, runs: str, tok, splits, prompt_len) -> tuple[Model, Model, list]:
  """(generator, strong model, rounds): the weak checkpoint trained round by round until its dev
  greedy accuracy reaches the calibration window (the first round that does; else the last),
  and the strong model (weak + strong_steps in one run). Rounds: [{"steps", "greedy"}]."""
  weak, strong = repro.sft(base, runs, tok, splits["sft"])
  model, rounds = weak, []
  for k in range(1, p.max_rounds + 1):
    model = repro.cached_model(os.path.join(runs, "models", f"round_{k}"), lambda m=model, k=k: repro.sft_more(
        base, runs, tok, splits["sft"], f"round_{k}", m, p.round_steps, 2e-3))
    acc = common.cached(os.path.join(runs, f"round_{k}.json"), lambda m=model: repro.accuracy(
        m, tok, splits["dev"], base, prompt_len))
    rounds.append({"steps": base.weak_steps + k * p.round_steps, "greedy": acc})
    print(f"[study] generator round {k}: dev greedy accuracy {acc:.3f}", flush=True)
    if acc >= WINDOW[0]:
      break
  return model, strong, rounds


# -- measurement ----------------------------------------------------------------------

def _problems(test, cands, scores, loglik, tok, gen_score: str) -> list[verify.Problem]:
  """verify.Problems with the RM's step scores and, as the ORM slot, a generator score."""
  out = []
  for q, sols, sc, ll in zip(test, cands, scores, loglik):
    cs = []
    for s, x, (total, n) in zip(sols, sc, ll):
      cs.append(verify.Candidate(answer(s), list(x), orm_score=total if gen_score == "sum" else total / n,
                                 steps=list(s), step_labels=arith.oracle_labels(q, s) if s else [],
                                 length=len(tok.encode("\n".join(s)))))
    out.append(verify.Problem(str(q.answer), cs, q.question))
  return out


def scorer_metrics(problems: Sequence[verify.Problem], method: str, ns, boot) -> dict:
  """One scorer's within-problem figures (with bootstrap CIs), best-of-N hits and top-pick habits."""
  rows = [discrimination.per_problem(q, method, gsm8k.answers_equal) for q in problems]
  auc = np.asarray([r["auc"] for r in rows])
  r = verify.evaluate(problems, ns, ["prm_min" if method == "min" else "orm"], per_problem=True)
  hits = next(iter(r["hits"].values()))
  top = [int(np.argmax(verify.solution_scores(q, None, method))) for q in problems]
  lengths = [np.asarray([c.length for c in q.candidates]) for q in problems]
  return {"auc_per_problem": auc.tolist(), "auc": bootstrap_ci(auc, boot),
          "corr_length": bootstrap_ci(np.asarray([x["corr_length"] for x in rows]), boot),
          "corr_right": bootstrap_ci(np.asarray([x["corr_right"] for x in rows]), boot),
          "hits": hits, "accuracy": {n: bootstrap_ci(np.asarray(h), boot) for n, h in hits.items()},
          "top_is_shortest": float(np.mean([L[t] == L.min() for t, L in zip(top, lengths)]))}


def probes(rm: Model | None, tok, test, generator: Model) -> dict:
  """How often a stopped-early and a slipped gold outscore the full gold, over the test problems
  where each probe exists: {scorer: {"early_beats_gold", "slip_beats_gold"}} for the RM (min
  step score) or, without one, for the generator's summed and per-token log-likelihood."""
  rng = np.random.default_rng(9)
  sols = [hard_negatives(q, rng) for q in test]  # the gold, then a slip (K steps), an early stop (< K)
  if rm is None:
    ll = gen_loglik(generator, tok, test, sols)
    scores = {"gen_sum": [[t for t, _ in row] for row in ll], "gen_mean": [[t / n for t, n in row] for row in ll]}
  else:
    scores = {"rm": [[min(x) for x in row] for row in prm_bon.score_all(rm, tok, test, sols)]}
  out = {}
  for name, score in scores.items():
    slip, early = [], []
    for q, s, sc in zip(test, sols, score):
      for steps, x in zip(s[1:], sc[1:]):
        (early if len(steps) < q.k else slip).append(x > sc[0])
    out[name] = {"slip_beats_gold": float(np.mean(slip)) if slip else float("nan"),
                 "early_beats_gold": float(np.mean(early)) if early else float("nan")}
  return out


def _paired(a: Sequence[float], b: Sequence[float], boot) -> list[float]:
  """bootstrap_ci of a - b over problems (NaN where either is undefined)."""
  return bootstrap_ci(np.asarray(a, np.float64) - np.asarray(b, np.float64), boot)


def measure(p: Plan, test, cands, scores: dict, loglik, tok) -> dict:
  """Every scorer's figures on the test candidates, the baselines and the paired contrasts."""
  boot = np.random.default_rng(0).integers(0, len(test), size=(p.bootstrap, len(test)))
  ns, top = list(p.ns), p.ns[-1]
  scorers = {}
  for name, sc in scores.items():
    problems = _problems(test, cands, sc, loglik, tok, "sum")
    scorers[name] = scorer_metrics(problems, "min", ns, boot)
    scorers[name]["step_auc"] = discrimination.step_auc(problems)
    vote = verify.evaluate(problems, ns, ["prm_min+vote"], per_problem=True)["hits"]["prm_min+vote"]
    scorers[name]["vote_accuracy"] = {n: bootstrap_ci(np.asarray(h), boot) for n, h in vote.items()}
  for g in ("sum", "mean"):
    problems = _problems(test, cands, next(iter(scores.values())), loglik, tok, g)
    scorers[f"gen_{g}"] = scorer_metrics(problems, "orm", ns, boot)
  base = verify.evaluate(problems, ns, ["majority", "random", "null", "pass@n"], per_problem=True)
  baselines = {m: {n: bootstrap_ci(np.asarray(h), boot) for n, h in hs.items()} for m, hs in base["hits"].items()}
  auc = lambda name: scorers[name]["auc_per_problem"]
  hit = lambda name: (scorers[name]["hits"] if name in scorers else base["hits"][name])[top]
  contrasts = {}
  for name in scores:
    contrasts[f"{name}: within-problem AUC - generator log-likelihood's"] = _paired(auc(name), auc("gen_sum"), boot)
    contrasts[f"{name}: best-of-{top} - majority vote"] = _paired(hit(name), hit("majority"), boot)
    contrasts[f"{name}: best-of-{top} - null RM"] = _paired(hit(name), hit("null"), boot)
  for a, b in (("more_data", "recipe"), ("hard_negatives", "more_data"), ("balanced", "hard_negatives"),
               ("pairwise", "balanced"), ("strong_init", "hard_negatives")):
    if a in scores and b in scores:
      contrasts[f"within-problem AUC: {a} - {b}"] = _paired(auc(a), auc(b), boot)
  contrasts[f"generator log-likelihood: best-of-{top} - majority vote"] = _paired(hit("gen_sum"), hit("majority"), boot)
  texts = discrimination.within_problem(problems, "orm", gsm8k.answers_equal)
  for v in scorers.values():
    v.pop("hits")
  return {"scorers": scorers, "baselines": baselines, "contrasts": contrasts,
          "texts": {k: v for k, v in texts.items() if k.startswith(("distinct", "samples"))},
          "test_candidate_accuracy": float(np.mean([c.answer is not None and gsm8k.answers_equal(c.answer, q.gold)
                                                    for q in problems for c in q.candidates]))}


# -- the study ------------------------------------------------------------------------

def run_study(out: str, quick: bool) -> dict:
  """Runs (or resumes from out/runs) every stage; writes RESULTS.md and results.json."""
  p = plan(quick)
  base = base_plan(p, quick)
  common.check_plan(p, out)
  runs = os.path.join(out, "runs")
  t0 = time.time() - common.prior_wall(out, p, quick)
  tok = arith.ArithTokenizer()
  splits = {"sft": arith.make_split("sft", base.n_sft), "dev": arith.make_split("dev", p.n_dev),
            "rm": arith.make_split("rm_train", p.n_rm), "test": arith.make_split("test", p.n_test)}
  prompt_len = repro.prompt_len_for(tok, [q for s in splits.values() for q in s])
  stage = lambda what: print(f"[study] {what} ({time.time() - t0:.0f} s)", flush=True)
  gen, strong, rounds = generator(p, base, runs, tok, splits, prompt_len)
  stage("generator trained")
  dev = splits["dev"]
  calib = common.cached(os.path.join(runs, "calibration.json"), lambda: {
      "greedy": repro.accuracy(gen, tok, dev, base, prompt_len),
      "sampled": repro.accuracy(gen, tok, dev, base, prompt_len, 1.0, 1)})
  print(f"[study] generator dev accuracy: {calib}")
  rm_cands = common.cached(os.path.join(runs, "rm_candidates.json"), lambda: repro.sample(
      gen, tok, splits["rm"], p.n_cand, 1.0, 11, base, prompt_len))
  stage("RM data sampled")
  test, test_cands = splits["test"], common.cached(os.path.join(runs, "test_candidates.json"), lambda: repro.sample(
      gen, tok, splits["test"], p.n_test_cand, 1.0, 23, base, prompt_len))
  loglik = common.cached(os.path.join(runs, "test_loglik.json"), lambda: gen_loglik(gen, tok, test, test_cands))
  stage("test candidates sampled and their likelihood computed")
  scores, probe = {}, common.cached(os.path.join(runs, "probes_gen.json"), lambda: probes(None, tok, test, gen))
  for name in RMS:
    rm = train_rm(p, quick, runs, name, strong if RMS[name].init == "strong" else gen, tok,
                  splits["rm"], rm_cands)
    scores[name] = common.cached(os.path.join(runs, f"test_scores_{name}.json"),
                                 lambda rm=rm: prm_bon.score_all(rm, tok, test, test_cands))
    probe[name] = common.cached(os.path.join(runs, f"probes_{name}.json"),
                                lambda rm=rm: probes(rm, tok, test, gen))["rm"]
    stage(f"RM {name} trained and scored")
  reference = repro.plan(quick)
  results = {"quick": quick, "plan": dataclasses.asdict(p), "base_plan": dataclasses.asdict(base),
             "reproduction_sft_steps": reference.weak_steps + reference.strong_steps,
             "jax": jax.__version__, "cpus": os.cpu_count(), "device": str(jax.devices()[0].device_kind),
             "calibration": calib, "rounds": rounds, "strong_calibration": common.cached(
                 os.path.join(runs, "calibration_strong.json"), lambda: {
                     "greedy": repro.accuracy(strong, tok, dev, base, prompt_len)}),
             "probes": probe, "rms": {n: dataclasses.asdict(spec) for n, spec in RMS.items()},
             "rm_summaries": {n: common.cached(os.path.join(runs, "work", n, "summary.json"), dict) for n in RMS},
             **measure(p, test, test_cands, scores, loglik, tok)}
  return common.finish(out, results, report, t0)


def main(argv=None) -> int:
  """The command line: `python -m moe_jax.studies.prm_verifiers --out DIR [--quick] [--report-only]`."""
  return common.main("python -m moe_jax.studies.prm_verifiers", __doc__, run_study, report, argv)


if __name__ == "__main__":
  sys.exit(main())
