"""RESULTS.md of the Fine-purifying study (`moe_jax.studies.purify`): tables, the trade-off plot, verdicts."""

from __future__ import annotations

import os

import numpy as np

from moe_jax.studies import common, stats

NAMES = {"none": "no defence (the suspect)", "finetune": "fine-tuning on the clean set",
         "mixing": "Fine-mixing (random mask)", "magnitude": "magnitude mask (absolute drift)",
         "ratio": "drift / curvature (Fine-purifying)",
         "pruning": "Fine-pruning (FFN neurons)",
         "experts": "whole routed experts (by the ratio's mass)"}


def _values(runs: dict, defence: str, when: str, field: str) -> list[float]:
  return [r[defence][f"metrics_{when}"].get(field, float("nan")) for r in runs.values()]


def main_table(key: str, runs: dict, p: dict) -> list[str]:
  lines = [f"### {key}", "",
           f"rho {p['rho']} (of the dimensions reset; of the FFN neurons pruned); the suspect's "
           f"ACC {stats.fmt(_values(runs, 'none', 'suspect', 'accuracy'), pct=True, digits=1)}, "
           f"ASR {stats.fmt(_values(runs, 'none', 'suspect', 'asr'), pct=True, digits=1)} (the same "
           f"examples without the trigger predicted as the target: "
           f"{stats.fmt(_values(runs, 'none', 'suspect', 'clean_target_rate'), pct=True, digits=1)}).",
           "",
           "| defence | ACC after reset | ASR after reset | ACC after clean fine-tune | ASR after clean fine-tune |",
           "|---|---:|---:|---:|---:|"]
  for d in NAMES:
    if d not in next(iter(runs.values())):
      continue
    cells = [stats.fmt(_values(runs, d, w, f), pct=True, digits=1)
             for w in ("reset", "after") for f in ("accuracy", "asr")]
    lines.append(f"| {NAMES[d]} | " + " | ".join(cells) + " |")
  return lines + [""]


def _claim(results: dict, other: str) -> tuple[str, str]:
  """Ratio against `other` at equal rho, paired over every setting and seed."""
  asr, acc = [], []
  for runs in results["main"].values():
    for r in runs.values():
      asr.append(r[other]["metrics_after"]["asr"] - r["ratio"]["metrics_after"]["asr"])
      acc.append(r["ratio"]["metrics_after"]["accuracy"] - r[other]["metrics_after"]["accuracy"])
  v = stats.paired_verdict(asr)
  m_acc, _ = stats.mean_ci(acc)
  if v == "held" and m_acc < -0.02:
    v = "inconclusive"  # lower ASR bought with accuracy
  text = (f"ASR of {NAMES[other]} minus the ratio's: {stats.fmt(asr, pct=True, digits=1)} points "
          f"(n = {len(asr)} setting x seed pairs); the ratio's accuracy minus it: "
          f"{stats.fmt(acc, pct=True, digits=1)}")
  return v, text


def _plot(results: dict, out: str, swept=("mixing", "magnitude", "ratio")) -> str | None:
  if not results["main"]:
    return None
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(5.5, 4))
  first = next(iter(results["main"].values()))
  for defence in swept:
    pts = {float(k): v for k, v in results["sweep"].get(defence, {}).items()}
    pts[results["plan"]["rho"]] = {s: r[defence] for s, r in first.items()}
    rhos = sorted(pts)
    acc = [np.mean([r["metrics_after"]["accuracy"] for r in pts[k].values()]) for k in rhos]
    asr = [np.mean([r["metrics_after"]["asr"] for r in pts[k].values()]) for k in rhos]
    ax.plot(asr, acc, "o-", label=NAMES[defence])
    for x, y, k in zip(asr, acc, rhos):
      ax.annotate(f"{k:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
  ax.set_xlabel("attack success rate after the clean fine-tune")
  ax.set_ylabel("clean accuracy")
  ax.set_title(f"{next(iter(results['main']))}: rho sweep (labels), mean over seeds")
  ax.legend(fontsize=7)
  fig.tight_layout()
  path = os.path.join(out, "purify_tradeoff.png")
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def _where(results: dict) -> list[str]:
  key, runs = next(iter(results["main"].items()))
  shares: dict = {}
  for r in runs.values():
    for row in r["ratio"]["detect"].get("distribution", []):
      shares.setdefault((row["layer"], row["module"]), []).append(row["selected_share"])
  lines = [f"## Where the reset dimensions sit ({key}, the ratio at rho {results['plan']['rho']})", "",
           "| layer | module | share of the reset dimensions |", "|---|---|---:|"]
  for (layer, module), v in sorted(shares.items()):
    lines.append(f"| {layer} | {module} | {stats.fmt(v, pct=True, digits=1)} |")
  lines += ["", "Every setting (the ratio at the same rho; n/a: not recorded by that run):", "",
            "| setting | share in the embeddings | trigger rows' dimensions reset | all word rows' "
            "dimensions reset | reset dimensions of zero clean curvature |", "|---|---:|---:|---:|---:|"]
  for k, rs in results["main"].items():
    reps = [r["ratio"]["detect"] for r in rs.values()]
    emb_share = [sum(row["selected_share"] for row in rep.get("distribution", [])
                     if row["module"] == "embeddings") for rep in reps]
    cells = [emb_share] + [[rep.get("trigger_rows", {}).get(f, float("nan")) for rep in reps]
                           for f in ("trigger_rows_selected", "all_rows_selected")]
    cells.append([rep.get("zero_curvature_selected", float("nan")) for rep in reps])
    lines.append(f"| {k} | " + " | ".join(stats.fmt(c, pct=True, digits=1) for c in cells) + " |")
  emb = [v for (layer, module), v in shares.items() if module == "embeddings"]
  if emb and np.mean(emb[0]) > 0.9:
    p = results["plan"]
    lines += ["", f"Reading: the clean set's {p['clean_examples']} examples of at most "
              f"{p['seq_len']} tokens touch at most {p['clean_examples'] * p['seq_len']:,} of the "
              "30,522 word-embedding rows; every other row has a clean curvature of exactly 0. In the "
              "attacker's fine-tune those rows moved by their gradient where the attacker's data "
              "holds the token (the triggers' rows so) and by AdamW's decoupled weight decay alone "
              "elsewhere (0.01 on matrices), so drift^2 / (H + eps), with eps a tiny multiple of "
              "the mean H, ranks them above every dimension the clean set sees, and a small rho is "
              "spent on them. The trigger rows are among them, "
              "yet the attack survives their reset: the poisoned layers answer the pre-trained "
              "trigger embeddings too. This is a property of the reconstructed indicator with "
              "weight decay; a variant that ignores zero-curvature dimensions was not run."]
  return lines + [""]


def report(results: dict, out: str) -> str:
  p = results["plan"]
  lines = ["# Fine-purifying: drift against clean curvature, against random and magnitude masks", "",
           common.written_by("moe_jax.studies.purify", results.get("quick")),
           "", f"Model: all-MiniLM-L6-v2 (the pre-trained w_init), fine-tuned by the attacker on "
           f"{p['train_examples'] - p['clean_examples']} examples with {100 * p['rate']:.0f}% poisoned, "
           f"{p['attack_steps']} steps of {p['batch']} x {p['seq_len']} tokens at {p['learning_rate']:g}. "
           f"Defender: {p['clean_examples']} clean examples (no trigger), {p['clean_steps']} steps of "
           f"clean fine-tuning after each defence. Seeds {list(p['seeds'])}; ± is the 95% interval.",
           "", "ACC: accuracy on the clean held-out set; ASR: the share of its non-target examples, "
           "trigger inserted, predicted as the target (for the bias word: the bias flip rate). "
           "The attacks and the indicator are reconstructions (no official code): see "
           "`moe_jax.purify`. The indicator's log form selects exactly the ratio's dimensions (a "
           "monotone map; `tests/purify_test.py` checks it), so it is not run apart.", "",
           "## Every defence at one rho", ""]
  if results.get("read_back"):
    lines += [f"Read back from the committed results.json of an earlier run of this plan with "
              f"fewer settings (its runs/ cache is not committed): {', '.join(results['read_back'])}. "
              "Those runs predate the measurement of the clean target rate (n/a below).", ""]
  for key, runs in results["main"].items():
    lines += main_table(key, runs, p)
  lines += ["## Claims", ""]
  for other in ("mixing", "magnitude"):
    if not results["main"]:
      break
    v, text = _claim(results, other)
    lines.append(f"**Claim: the drift/curvature indicator purifies better than {NAMES[other]} at "
                 f"equal rho, with a small clean set: {v}.** {text}.")
    lines.append("")
  if results["main"]:
    lines += _where(results)
  png = _plot(results, out)
  if png:
    lines += ["## The ACC-ASR trade-off over rho", "", f"![trade-off]({os.path.basename(png)})", ""]
  if "wall_s" in results:
    lines.append(f"Wall time: {results['wall_s'] / 60:.0f} min.")
  return "\n".join(lines) + "\n"
