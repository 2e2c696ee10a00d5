"""The reward-model verification study's report: RESULTS.md from results.json, one function per section."""

from __future__ import annotations

import math

from moe_jax.studies import common

NAMES = {"recipe": "RM, the reproduction's recipe (300 problems x 8 samples, 80 steps)",
         "more_data": "RM, every sampled solution, trained longer",
         "hard_negatives": "RM, + gold, slipped gold, stopped-early gold",
         "balanced": "RM, same data, rows of a right + a wrong solution of one problem",
         "pairwise": "RM, balanced + pairwise ranking term (beyond the paper)",
         "strong_init": "RM, hard_negatives' data, from the strong model",
         "gen_sum": "generator log-likelihood (sum)", "gen_mean": "generator log-likelihood (per token)"}
WINDOW = {"greedy": (0.35, 0.70), "sampled": (0.25, 0.60)}  # the spec's calibration window


def _ci(c, pct: bool = False, digits: int = 3) -> str:
  """"m [lo, hi]" from [mean, low, high]."""
  if c is None or math.isnan(c[0]):
    return "n/a"
  s = 100 if pct else 1
  d = 1 if pct else digits
  return f"{c[0] * s:.{d}f} [{c[1] * s:.{d}f}, {c[2] * s:.{d}f}]"


def _f(x, digits: int = 3) -> str:
  return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def verdict(c, above: float = 0.0) -> str:
  """held if the interval lies above `above`, failed if below, else inconclusive."""
  if c is None or math.isnan(c[1]) or math.isnan(c[2]):
    return "inconclusive"
  return "held" if c[1] > above else "failed" if c[2] < above else "inconclusive"


def _setup(r: dict) -> list[str]:
  p, b, cal = r["plan"], r["base_plan"], r["calibration"]
  inside = all(WINDOW[k][0] <= cal[k] <= WINDOW[k][1] for k in WINDOW)
  t = r["texts"]
  return [
      "# Reward models that verify: within-problem discrimination on ArithChain", "",
      common.written_by("moe_jax.studies.prm_verifiers", r["quick"])
      + f" jax {r['jax']}, {r['device']}, {r['cpus']} CPUs; {r.get('wall_s', 0) / 60:.0f} min.", "",
      "Follows up the Math-Shepherd reproduction (`../RESULTS.md`): there every RM picked worse than a "
      "random sample at best-of-64. The metric that decides best-of-N is discrimination *within* a "
      "problem, so every scorer is judged on it here. 95% intervals are percentile bootstraps over "
      f"the {p['n_test']} test problems ({p['bootstrap']} resamples; paired for differences). "
      "All labels are the exact checker's (ArithChain, `moe_jax.prm.arith`, is generated here); every "
      "RM starts from the generator, so it is exactly as large.", "",
      "## 1. Generator", "",
      f"The reproduction's model ({b['hidden']} wide, {b['layers']} layers, DeepSeekMoE with MLA) and SFT data "
      f"({b['n_sft']:,} gold solutions; the reproduction's generator had {r['reproduction_sft_steps']:,} "
      f"SFT steps). The rule, fixed before the run: from the weak checkpoint ({b['weak_steps']} steps), "
      f"train in rounds of {p['round_steps']} steps until dev greedy accuracy reaches 35%; the first "
      "round that does is the generator. Rounds: "
      + ", ".join(f"{x['steps']:,} steps {100 * x['greedy']:.1f}%" for x in r["rounds"]) + ". "
      f"The strong model (one run of {b['weak_steps'] + p['strong_steps']:,} steps, one RM's "
      f"initialisation) reaches {100 * r['strong_calibration']['greedy']:.1f}% greedy.", "",
      "| | dev greedy | dev sampled (T=1) | test candidates right |", "|---|---|---|---|",
      f"| generator | {100 * cal['greedy']:.1f}% | {100 * cal['sampled']:.1f}% | "
      f"{100 * r['test_candidate_accuracy']:.1f}% |", "",
      "The spec's calibration window is 35-70% greedy, 25-60% sampled: this generator is "
      + ("inside it." if inside else "outside it."), "",
      f"Per test problem ({p['n_test_cand']} samples): right answers come as {t['samples_right']:.1f} samples in "
      f"{t['distinct_right']:.1f} distinct texts, wrong ones as {t['samples_wrong']:.1f} samples in "
      f"{t['distinct_wrong']:.1f} distinct texts. A verifier sees each text once, so a null RM (a random "
      "score per distinct text) picks below a random sample, and majority vote gains from the repeats.", ""]


def _discrimination(r: dict) -> list[str]:
  out = ["## 2. Does each scorer verify?", "",
         "Over distinct texts of the same problem. AUC: right above wrong (0.5 = no verification). "
         "corr: Pearson within a problem, averaged. Step AUC against exact labels, pooled and within "
         "(problem, step index) groups. Top = shortest: how often the top-scored of a problem's "
         "candidates is (one of) its shortest. Probes on the test problems' gold: how often the gold "
         "stopped early (an intermediate value as the answer) or with one slip outscores the full gold.", "",
         "| scorer | within-problem AUC | corr(score, length) | corr(score, right) | step AUC pooled "
         "| step AUC within groups | top = shortest | early > gold | slip > gold |",
         "|---|---|---|---|---|---|---|---|---|"]
  for name, s in r["scorers"].items():
    step = s.get("step_auc", {})
    pr = r["probes"].get(name, {})
    out.append(f"| {NAMES.get(name, name)} | {_ci(s['auc'])} | {_f(s['corr_length'][0])} | "
               f"{_f(s['corr_right'][0])} | {_f(step.get('pooled'))} | {_f(step.get('within'))} | "
               f"{100 * s['top_is_shortest']:.0f}% | {_f(pr.get('early_beats_gold'), 2)} | "
               f"{_f(pr.get('slip_beats_gold'), 2)} |")
  return out + [""]


def _best_of_n(r: dict) -> list[str]:
  ns = [str(n) for n in r["plan"]["ns"]]
  out = ["## 3. Best-of-N", "", "Accuracy % [95% CI]; RMs take the minimum step score.", "",
         "| method | " + " | ".join(f"N={n}" for n in ns) + " |", "|---|" + "---|" * len(ns)]
  row = lambda name, acc: out.append(f"| {name} | " + " | ".join(_ci(acc[n], pct=True) for n in ns) + " |")
  b = r["baselines"]
  for m in ("random", "null", "majority"):
    row({"null": "null RM (random score per distinct text)"}.get(m, m), b[m])
  for name, s in r["scorers"].items():
    row(NAMES.get(name, name), s["accuracy"])
    if "vote_accuracy" in s:
      row(f"{name} + vote", s["vote_accuracy"])
  row("pass@N", b["pass@n"])
  return out + [""]


def _training(r: dict) -> list[str]:
  out = ["## 4. The RMs' training", "",
         "| RM | train solutions | held-out solutions | held-out step AUC before | after | held-out log-loss after |",
         "|---|---|---|---|---|---|"]
  for name, s in r["rm_summaries"].items():
    before, after = s.get("metrics_before", {}), s.get("metrics_after", {})
    out.append(f"| {name} | {s.get('train_solutions', 'n/a')} | {s.get('held_out_solutions', 'n/a')} | "
               f"{_f(before.get('auc'))} | {_f(after.get('auc'))} | {_f(after.get('log_loss'))} |")
  return out + [""]


def _claims(r: dict) -> list[str]:
  out = ["## 5. Claims and verdicts", "",
         "Each lever is judged on within-problem AUC, the go/no-go metric; held = the 95% interval "
         "lies above 0 (above 0.5 for an AUC), failed = below.", "",
         "| claim | estimate [95% CI] | verdict |", "|---|---|---|"]
  for name, s in r["scorers"].items():
    if name.startswith("gen_"):
      continue
    out.append(f"| {name} verifies (within-problem AUC > 0.5) | {_ci(s['auc'])} | {verdict(s['auc'], 0.5)} |")
  for text, c in r["contrasts"].items():
    pct = "best-of" in text
    out.append(f"| {text} > 0 | {_ci(c, pct=pct)}{' points' if pct else ''} | {verdict(c)} |")
  gen = r["scorers"].get("gen_sum")
  if gen:
    out.append(f"| generator log-likelihood verifies (within-problem AUC > 0.5) | {_ci(gen['auc'])} | "
               f"{verdict(gen['auc'], 0.5)} |")
  return out + [""]


def _summary(r: dict) -> list[str]:
  """What the tables say, in sentences built from the figures."""
  rms = {n: s for n, s in r["scorers"].items() if not n.startswith("gen_")}
  gen, top = r["scorers"]["gen_sum"], str(r["plan"]["ns"][-1])
  best = max(rms, key=lambda n: rms[n]["auc"][0])
  maj, null = r["baselines"]["majority"][top][0], r["baselines"]["null"][top][0]
  accs = [s["accuracy"][top][0] for s in rms.values()]
  slips = [r["probes"][n]["slip_beats_gold"] for n in rms if n in r["probes"]]
  hard = {n for n, spec in r.get("rms", {}).items() if spec["data"] == "all+hard"}
  early = lambda with_hard: [r["probes"][n]["early_beats_gold"] for n in rms
                             if n in r["probes"] and (n in hard) == with_hard]
  span = lambda v: f"{min(v):.2f}-{max(v):.2f}" if v else "n/a"
  helped = [t for t, c in r["contrasts"].items() if t.startswith("within-problem AUC:") and verdict(c) == "held"]
  return ["## Summary", "",
          f"- The best RM's within-problem AUC is {_ci(rms[best]['auc'])} ({best}); the generator's own "
          f"log-likelihood, with no RM training, reaches {_ci(gen['auc'])}. Every RM's best-of-{top} "
          f"({100 * min(accs):.1f}-{100 * max(accs):.1f}%) is below majority vote ({100 * maj:.1f}%); the "
          f"null RM picks {100 * null:.1f}%.",
          "- Levers that raised within-problem AUC beyond their intervals: "
          + (", ".join(t.split(": ", 1)[1] for t in helped) if helped else "none") + ".",
          f"- On the gold probes, the gold stopped early outscores the full gold for {span(early(False))} "
          f"of problems with RMs trained without stopped-early golds and {span(early(True))} with them; "
          "a one-number slip outscores the gold for "
          f"{min(slips):.2f}-{max(slips):.2f} of problems, against the generator's "
          f"{r['probes']['gen_sum']['slip_beats_gold']:.2f}: the RMs do not check the arithmetic that the "
          "model they start from can do.", ""]


def _departures(r: dict) -> list[str]:
  return ["## What was not tried, and where data was built here", "",
          "- Every RM fine-tunes all of the generator's weights at the reproduction's RM learning rate "
          "(1e-3, cosine); a lower rate, or reading the generator's own next-token check, was not tried. "
          "The plan was fixed before the run and not retuned.",
          "- The balanced and pairwise RMs see the same problems and solutions as hard_negatives, "
          f"drawn as {r['plan']['pairs']} random (right, wrong) pairs per problem; right = the last "
          "step's exact label is good (the whole process is right).",
          "- One seed per RM; the intervals cover the test problems, not training variance.",
          "- ArithChain and every label are generated here (values 0..99, operands up to 10, as in the "
          "reproduction); no public PRM data is used.", ""]


def report(r: dict, out: str = "") -> str:
  """RESULTS.md as a string."""
  del out
  return "\n".join(_setup(r) + _summary(r) + _discrimination(r) + _best_of_n(r) + _training(r)
                   + _claims(r) + _departures(r))
