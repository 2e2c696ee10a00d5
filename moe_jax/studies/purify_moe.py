"""Fine-purifying on a DeepSeekMoE encoder: does a backdoor sit in a few routed experts, and does
resetting whole experts purify as well as resetting dimensions?

    python -m moe_jax.studies.purify_moe --out docs/purify_moe      # ~30 min on 2 cores
    python -m moe_jax.studies.purify_moe --out DIR --quick          # the pipeline on the samples

Beyond the paper. No pre-trained DeepSeekMoE encoder ships in a package, so
w_init is built here: all-MiniLM-L6-v2 with the FFNs of its last four layers
made DeepSeekMoE layers (8 routed experts of 192, top-2, and 1 shared; router
and experts initialised at random, every other tensor MiniLM's), trained on
the clean reviews set. From it, for each seed, `studies.purify`'s attack code
makes

  suspect   BadWords-poisoned 3-class tweets, fine-tuned from w_init;
  control   the same fine-tune with nothing poisoned (rate 0),

and the defences none, finetune, mixing, ratio and experts (whole routed
experts, those of the largest mean ratio score, as many as rho of the
dimensions: `moe_jax.purify.indicators.select_experts`) run on the suspect at
the plan's rho, each followed by the clean fine-tune. The control gets the
ratio's scoring alone: where the indicator's mass sits without a backdoor.

Runs are cached under --out/runs like `studies.purify`'s; RESULTS.md reports
ACC / ASR with 95% intervals over seeds, the per-expert indicator mass, and
two claims marked held / failed / inconclusive.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time

import jax
import numpy as np

from moe_jax import train_lib
from moe_jax.classify import configs as classify_configs
from moe_jax.classify import task as classify_task
from moe_jax.esft.scoring import score_experts
from moe_jax.hf import from_pretrained, save_pretrained
from moe_jax.layers import layer_name
from moe_jax.model import Model, init_variables
from moe_jax.packages import resolve
from moe_jax.purify import attacker, evaluate, indicators
from moe_jax.studies import common, stats
from moe_jax.studies import purify as purify_study
from moe_jax.studies.purify_report import main_table
from moe_jax.tokenizer import load_tokenizer

DEFENCES = ("none", "finetune", "mixing", "ratio", "experts")
MARGIN = 0.05  # "as well as": whole experts' ASR at most 5 points above the ratio's (upper 95% bound)


@dataclasses.dataclass(frozen=True)
class Plan:
  study: purify_study.Plan  # the attack, the defences and their clean fine-tune
  moe: tuple[tuple[str, int], ...]  # the fields that make the encoder's upper FFNs MoE layers
  pretrain_set: str  # w_init's clean task
  pretrain_examples: int
  pretrain_steps: int
  pretrain_lr: float


def plan(quick: bool) -> Plan:
  if quick:  # a test's tiny encoder: 2 layers, the second MoE; rho 0.002 is one of its experts
    moe = dict(n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2,
               moe_intermediate_size=16, first_k_dense_replace=1)
    return Plan(dataclasses.replace(purify_study.plan(True), learning_rate=1e-3, rho=0.002),
                tuple(sorted(moe.items())), "reviews", 96, 4, 1e-3)
  # Set before any run: MiniLM's last 4 FFNs become 8 routed experts of 192 (top-2; all 8 are
  # MiniLM's 1536 in width) + 1 shared, trained with the rest on 4000 clean reviews for 400
  # steps at 2e-4; the attack and the clean fine-tune are the MiniLM study's (BadWords on the
  # tweets, 120 steps at 1e-4; 30 clean steps), at its rho 0.05.
  moe = dict(n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2,
             moe_intermediate_size=192, first_k_dense_replace=2)
  study = dataclasses.replace(purify_study.plan(False), settings=(("tweets", "badwords"),), sweep=())
  return Plan(study, tuple(sorted(moe.items())), "reviews", 4000, 400, 2e-4)


def graft(source: Model, config) -> tuple[Model, int]:
  """(a model of `config` holding every tensor of `source` it has by name and shape, the rest
  its own random init; how many tensors came from `source`)."""
  mine = indicators.named(init_variables(config, 0)["params"])
  theirs = indicators.named(source.params)
  taken = {n: theirs[n] for n, x in mine.items() if n in theirs and np.shape(theirs[n]) == np.shape(x)}
  return Model(config, {"params": indicators.unflatten({**mine, **taken})}), len(taken)


def pretrain(p: Plan, out: str, source: str) -> tuple[str, dict]:
  """(w_init's directory, what it is): the encoder at `source` with its upper FFNs made MoE
  layers (random experts and router), trained on the clean pre-training set; MiniLM's
  tokenizer.json sits beside it (the attack and the defences read both from one directory)."""
  where = os.path.join(out, "runs", "pretrain")
  hf_dir, init_dir = os.path.join(where, "hf"), os.path.join(where, "init")
  src_dir = train_lib.resolve_data_path(source)

  def build():
    src = from_pretrained(src_dir)
    model, taken = graft(src, src.config.replace(**dict(p.moe)))
    save_pretrained(model, init_dir)
    shutil.copyfile(os.path.join(src_dir, "tokenizer.json"), os.path.join(init_dir, "tokenizer.json"))
    c = classify_configs.classify_config()
    c.init_from = c.data.tokenizer = init_dir
    c.classify.update(dict(dataset=p.pretrain_set, sample=p.study.sample,
                           max_train_examples=p.pretrain_examples,
                           max_eval_examples=p.study.eval_examples))
    c.data.update(dict(seq_len=p.study.seq_len, batch_size=p.study.batch))
    c.num_train_steps = c.checkpoint_every = p.pretrain_steps
    c.optimizer.learning_rate, c.optimizer.warmup_steps = p.pretrain_lr, max(1, p.pretrain_steps // 10)
    c.export_hf = True
    summary = classify_task.run(c, where)
    shutil.copyfile(os.path.join(src_dir, "tokenizer.json"), os.path.join(hf_dir, "tokenizer.json"))
    return {"tensors_from_source": taken, "tensors": len(indicators.named(model.params)),
            "accuracy": summary["metrics_after"]["accuracy"]}
  return hf_dir, common.cached(os.path.join(where, "w_init.json"), build)


def cls_routing(attack_dir: str, seq_len: int) -> dict[str, list[float]]:
  """{layer: [E] the share of the defender's clean examples whose [CLS] token each routed expert
  takes} for the suspect of `attack_dir`. Only [CLS] reaches the classifier from the last layer,
  so there an expert it never takes cannot move a prediction (nor get a gradient)."""
  data = attacker.read(attack_dir)
  model = evaluate.load_suspect(data.suspect_dir)
  rows = classify_task.labelled_rows(data.clean, load_tokenizer(resolve(data.info["tokenizer"])),
                                     model.config, seq_len)
  first = np.zeros(rows["segment_ids"].shape, bool)
  first[:, 0] = True  # [CLS]
  batches = ({k: rows[k][i:i + 16] for k in ("tokens", "positions", "segment_ids")}
             | {"score_mask": first[i:i + 16]} for i in range(0, len(first), 16))
  scores = score_experts(model, batches, len(first))
  k = model.config.num_experts_per_tok  # token scores sum to 1 over experts; a [CLS] takes k
  return {layer_name(layer): (k * t).tolist() for layer, t in scores.token.items()}


def run_study(out: str, quick: bool, pretrained: str = classify_configs.MINILM) -> dict:
  """Runs (or resumes from `out`) w_init, the attacks, the control and the defences; writes
  results.json and RESULTS.md. pretrained: the encoder w_init grows from (a test's tiny one)."""
  p = plan(quick)
  t0 = time.time() - common.prior_wall(out, p, quick)
  common.check_plan(p, out)
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.join(out, "runs", "jit_cache"))
  w_init, about = pretrain(p, out, pretrained)
  s, control_plan = p.study, dataclasses.replace(p.study, rate=0.0)
  control_out = os.path.join(out, "runs", "control")
  results: dict = {"plan": dataclasses.asdict(p), "quick": quick, "main": {}, "control": {},
                   "w_init": about}
  for dataset, attack in s.settings:
    key = f"{dataset}/{attack}"
    for seed in s.seeds:
      print(f"[study] {key} / seed {seed} ({time.time() - t0:.0f} s)", flush=True)
      suspect, info = purify_study.attack_run(s, out, dataset, attack, seed, w_init)
      row = {"attack": info, "cls_routing": common.cached(
          os.path.join(suspect, os.pardir, "cls_routing.json"), lambda: cls_routing(suspect, s.seq_len))}
      for defence in DEFENCES:
        row[defence] = purify_study.defence_run(s, out, dataset, attack, seed, defence, s.rho,
                                                suspect, w_init)
      results["main"].setdefault(key, {})[str(seed)] = row
      clean, clean_info = purify_study.attack_run(control_plan, control_out, dataset, attack, seed, w_init)
      results["control"].setdefault(key, {})[str(seed)] = {
          "attack": clean_info, "ratio": purify_study.defence_run(
              control_plan, control_out, dataset, attack, seed, "ratio", s.rho, clean, w_init)}
      common.write_report(out, results, report)
  return common.finish(out, results, report, t0)


# The report ---------------------------------------------------------------------------

def concentration(experts: dict) -> float:
  """The top expert's share of its layer's indicator mass, averaged over the MoE layers (1/E
  when the mass is spread evenly, 1 when one expert holds it all)."""
  shares = [max(v["mass"]) / sum(v["mass"]) for v in experts.values() if sum(v["mass"]) > 0]
  return float(np.mean(shares)) if shares else float("nan")


def _experts_lines(key: str, runs: dict, control: dict, moe: dict) -> list[str]:
  e = len(next(iter(next(iter(runs.values()))["ratio"]["detect"]["experts"].values()))["mass"])
  conc = [concentration(r["ratio"]["detect"]["experts"]) for r in runs.values()]
  conc_c = [concentration(c["ratio"]["detect"]["experts"]) for c in control.values()]
  lines = [f"### Where the indicator's mass sits among the routed experts ({key})", "",
           f"The top expert's share of its MoE layer's mass (mean ratio score per expert), "
           f"averaged over layers; 1/E = {1 / e:.3f} when spread evenly.", "",
           "| model | top expert's share |", "|---|---:|",
           f"| suspect (poisoned) | {stats.fmt(conc, digits=3)} |",
           f"| control (nothing poisoned) | {stats.fmt(conc_c, digits=3)} |", "",
           "| seed | experts the whole-expert defence reset (layer: ids) |", "|---|---|"]
  for seed, r in runs.items():
    cls = r.get("cls_routing", {})
    cells = []
    for layer, v in r["experts"]["detect"]["experts"].items():
      ids = [i for i, n in enumerate(v["selected"]) if n]
      if ids:
        cells.append(f"{layer}: " + ", ".join(
            f"{i}" + (f" ({100 * cls[layer][i]:.0f}%)" if layer in cls else "") for i in ids))
    lines.append(f"| {seed} | " + "; ".join(cells) + " |")
  lines += ["", "In brackets: the share of the defender's clean examples whose [CLS] token the expert "
            "takes (the classifier reads [CLS] alone from the last layer)."]
  same = sum(all(r["experts"]["metrics_reset"][f] == r["none"]["metrics_suspect"][f]
                 for f in ("accuracy", "asr")) for r in runs.values())
  zero = {d: [r[d]["detect"].get("zero_curvature_selected", float("nan")) for r in runs.values()]
          for d in ("ratio", "experts")}
  lines += ["", f"The whole-expert reset left every prediction as the suspect's (ACC and ASR after "
            f"the reset equal to the suspect's) in {same} of {len(runs)} seeds. Reset dimensions "
            f"of zero clean curvature: {stats.fmt(zero['ratio'], pct=True, digits=1)}% of the "
            f"ratio's, {stats.fmt(zero['experts'], pct=True, digits=1)}% of the whole experts'."]
  last, shares = None, []
  for r in runs.values():
    experts = r["experts"]["detect"]["experts"]
    last = max(experts, key=lambda name: int(name.split("_")[1]))
    shares += [r["cls_routing"][last][i] for i, n in enumerate(experts[last]["selected"])
               if n and "cls_routing" in r]
  chosen = sum(1 for r in runs.values() for v in r["experts"]["detect"]["experts"].values()
               for n in v["selected"] if n)
  if same == len(runs) and shares:
    lines += ["", f"Reading: {len(shares)} of the {chosen} experts reset sit in the last MoE layer "
              f"({last}), from which the classifier reads [CLS] alone; [CLS] takes them in "
              f"{100 * np.mean(shares):.0f}% of the clean examples on average (a fair share is "
              f"top-k / E = {100 * moe['num_experts_per_tok'] / moe['n_routed_experts']:.0f}%). "
              "Such an expert gets little gradient from any example (small clean curvature, small "
              "drift), the ratio's mean score ranks it first, and its reset moved no prediction. "
              "A rule that weighs experts by the pooled token's routed load, or skips those it "
              "cannot reach, was not run."]
  return lines + [""]


def _claims(results: dict) -> list[str]:
  conc, asr, acc = [], [], []
  for key, runs in results["main"].items():
    for seed, r in runs.items():
      c = results["control"].get(key, {}).get(seed)
      if c is not None:
        conc.append(concentration(r["ratio"]["detect"]["experts"])
                    - concentration(c["ratio"]["detect"]["experts"]))
      asr.append(r["experts"]["metrics_after"]["asr"] - r["ratio"]["metrics_after"]["asr"])
      acc.append(r["experts"]["metrics_after"]["accuracy"] - r["ratio"]["metrics_after"]["accuracy"])
  m, h = stats.mean_ci(asr)
  m_acc, _ = stats.mean_ci(acc)
  if len(asr) < 2:
    v = "inconclusive"
  elif m + h <= MARGIN and m_acc >= -0.02:
    v = "held"
  elif m - h > MARGIN:
    v = "failed"
  else:
    v = "inconclusive"
  noop = all(all(r["experts"]["metrics_reset"][f] == r["none"]["metrics_suspect"][f]
                 for f in ("accuracy", "asr")) for runs in results["main"].values() for r in runs.values())
  if v == "held" and noop:
    v = "held by the rule, but vacuously: the whole-expert reset changed no prediction, so it " \
        "matched the ratio by matching plain fine-tuning"
  return [f"**Claim: the backdoor concentrates its indicator mass in a few routed experts: "
          f"{stats.paired_verdict(conc)}.** The suspect's top-expert share minus the control's: "
          f"{stats.fmt(conc, digits=3)} (n = {len(conc)} seeds).", "",
          f"**Claim: resetting whole experts chosen by the indicator purifies as well as the "
          f"dimension-level ratio at equal rho: {v}.** ASR after the clean fine-tune, whole experts "
          f"minus the ratio's: {stats.fmt(asr, pct=True, digits=1)} points (held: the interval's "
          f"upper end at most {100 * MARGIN:.0f} points and accuracy within 2 points; failed: its "
          f"lower end above {100 * MARGIN:.0f}); accuracy, whole experts minus the ratio's: "
          f"{stats.fmt(acc, pct=True, digits=1)}.", ""]


def report(results: dict, out: str) -> str:
  del out
  p, s = results["plan"], results["plan"]["study"]
  moe, w = dict(p["moe"]), results.get("w_init", {})
  lines = ["# Fine-purifying on a DeepSeekMoE encoder: experts as the unit of defence", "",
           common.written_by("moe_jax.studies.purify_moe", results.get("quick")),
           "", "w_init, built here (no pre-trained MoE encoder ships in a package): the encoder "
           f"(all-MiniLM-L6-v2 but in a test) with its FFNs from layer {moe['first_k_dense_replace']} "
           f"on made DeepSeekMoE layers of {moe['n_routed_experts']} routed experts "
           f"(top-{moe['num_experts_per_tok']}) and {moe['n_shared_experts']} shared, of width "
           f"{moe['moe_intermediate_size']}, initialised at random (the other "
           f"{w.get('tensors_from_source', '?')} of {w.get('tensors', '?')} tensors are the encoder's), "
           f"then trained on {p['pretrain_examples']} clean {p['pretrain_set']} examples for "
           f"{p['pretrain_steps']} steps at {p['pretrain_lr']:g}"
           + (f" (held-out accuracy {w['accuracy']:.3f})" if "accuracy" in w else "") + ". "
           f"The attacker fine-tunes it on {s['train_examples'] - s['clean_examples']} tweets with "
           f"{100 * s['rate']:.0f}% BadWords-poisoned, {s['attack_steps']} steps of {s['batch']} x "
           f"{s['seq_len']} tokens at {s['learning_rate']:g}; the control, the same with nothing "
           f"poisoned. Defender: {s['clean_examples']} clean examples, {s['clean_steps']} steps of "
           f"clean fine-tuning after each defence. Seeds {list(s['seeds'])}; ± is the 95% interval. "
           "ACC and ASR as in `docs/purify`.", "", "## Every defence at one rho", ""]
  for key, runs in results["main"].items():
    lines += main_table(key, runs, s)
    lines += _experts_lines(key, runs, results["control"].get(key, {}), moe)
  if results["main"]:
    lines += ["## Claims", ""] + _claims(results)
  if "wall_s" in results:
    lines.append(f"Wall time: {results['wall_s'] / 60:.0f} min.")
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  return common.main("python -m moe_jax.studies.purify_moe", __doc__, run_study, report, argv)


if __name__ == "__main__":
  raise SystemExit(main())
