"""Fine-purifying against fine-tuning, Fine-mixing, Fine-pruning and a magnitude mask, on real data.

    python -m moe_jax.studies.purify --out docs/purify              # about 1.5 hours on 2 free cores
    python -m moe_jax.studies.purify --out DIR --quick              # the pipeline on the samples

For each attack setting (BadWords, a trigger sentence and a bias word on the
3-class tweets; BadWords on the reviews) and each seed, `python -m
moe_jax.purify attack`'s code poisons a share of a real training subset and
fine-tunes all-MiniLM-L6-v2 on it (the suspect); then every defence of
`moe_jax.purify.defences` runs through the "purify" task at one rho fixed
before any run (the plan's), each followed by the same clean fine-tune on the
defender's 64 clean examples. On BadWords/tweets the indicators are also swept
over rho (the ACC-ASR trade-off). No official code exists: the indicator is a
reconstruction, compared as an ablation.

Runs are cached under --out/runs (each finished defence's metrics as JSON; an
interrupted training run resumes), and `purify_report` writes RESULTS.md with
95% intervals over seeds and the claim's verdicts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import ml_collections

from moe_jax.purify import attacker, configs
from moe_jax.purify import task as purify_task
from moe_jax.studies import common
from moe_jax.studies.purify_report import report

DEFENCES = ("none", "finetune", "mixing", "magnitude", "ratio", "pruning")  # logratio = ratio's masks
SWEPT = ("mixing", "magnitude", "ratio")


@dataclasses.dataclass(frozen=True)
class Plan:
  settings: tuple[tuple[str, str], ...]  # (dataset, attack)
  sample: bool  # the shipped samples instead of the full sets
  seeds: tuple[int, ...]
  train_examples: int
  eval_examples: int
  clean_examples: int
  rate: float  # poisoning rate
  attack_steps: int
  clean_steps: int
  batch: int
  seq_len: int
  learning_rate: float
  rho: float  # the main table's
  sweep: tuple[float, ...]  # rhos of the trade-off curves (BadWords on the first dataset)


def plan(quick: bool) -> Plan:
  if quick:
    return Plan((("tweets", "badwords"),), True, (0,), 96, 48, 16, 0.2, 6, 2, 8, 24, 1e-4, 0.05, ())
  # rho 0.05 and the sizes were set before any defence ran, to fit about an hour on 2 cores:
  # 1600 examples and 120 steps of 16 at 1e-4 (the cascade study's rate for MiniLM on these
  # tweets) teach it the trigger; 64 clean examples, 30 clean steps. The trigger-sentence and
  # bias-word attacks were added at the same sizes after the first run (BadWords on both sets).
  return Plan((("tweets", "badwords"), ("tweets", "sentence"), ("tweets", "bias"),
               ("reviews", "badwords")), False,
              (0, 1, 2), 1600, 600, 64, 0.1, 120, 30, 16, 32, 1e-4, 0.05, (0.2,))


def _config(p: Plan, dataset: str, attack: str, seed: int,
            pretrained: str | None = None) -> ml_collections.ConfigDict:
  c = configs.purify_config()
  if pretrained:  # a test's tiny encoder (with its tokenizer.json) in MiniLM's place
    c.purify.pretrained, c.data.tokenizer = pretrained, pretrained
  c.seed = seed
  c.classify.dataset, c.classify.sample = dataset, p.sample
  c.classify.max_train_examples, c.classify.max_eval_examples = p.train_examples, p.eval_examples
  c.classify.subset_seed = seed
  c.data.batch_size, c.data.seq_len = p.batch, p.seq_len
  c.optimizer.learning_rate = p.learning_rate
  c.optimizer.warmup_steps = max(1, p.attack_steps // 10)
  c.checkpoint_every = 10 * p.attack_steps  # one at the end: short runs
  c.keep_checkpoints = 1
  c.purify.update(attack=attack, rate=p.rate, clean_examples=p.clean_examples,
                  attack_steps=p.attack_steps, rho=p.rho)
  return c


def attack_run(p: Plan, out: str, dataset: str, attack: str, seed: int,
            pretrained: str | None) -> tuple[str, dict]:
  where = os.path.join(out, "runs", f"{dataset}_{attack}", f"seed_{seed}", "attack")
  path = os.path.join(where, attacker.ATTACK_FILE)
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      info = json.load(f)
    if "suspect" in info:
      return where, info
  return where, attacker.run(_config(p, dataset, attack, seed, pretrained), where)


def defence_run(p: Plan, out: str, dataset: str, attack: str, seed: int, defence: str, rho: float,
            suspect: str, pretrained: str | None) -> dict:
  name = f"{defence}_rho{rho:g}" if defence not in ("none", "finetune") else defence
  where = os.path.join(out, "runs", f"{dataset}_{attack}", f"seed_{seed}", name)

  def run():
    c = _config(p, dataset, attack, seed, pretrained)
    c.purify.update(suspect=suspect, defence=defence, rho=rho)
    c.num_train_steps = p.clean_steps
    c.optimizer.warmup_steps = max(1, p.clean_steps // 10)
    c.export_hf = False
    t0 = time.time()
    s = purify_task.run(c, where)
    with open(os.path.join(where, purify_task.DETECT_FILE), encoding="utf-8") as f:
      detect = json.load(f)
    return {k: s[k] for k in ("metrics_suspect", "metrics_reset", "metrics_after")} | {
        "detect": detect, "wall_s": time.time() - t0}
  return common.cached(os.path.join(where, "result.json"), run)


def recorded(out: str, p: Plan, quick: bool) -> dict:
  """The committed results.json's runs when its plan is `p` but for fewer settings, else {}
  (`studies.common.recorded`): a plan that adds a setting runs just the new one, and the
  report says which were read back."""
  old = common.recorded(out, p, quick, free=("settings",))
  if not set(map(tuple, old.get("plan", {}).get("settings", []))) <= set(p.settings):
    return {}
  return old


def run_study(out: str, quick: bool, pretrained: str | None = None) -> dict:
  """Runs (or resumes from `out`) every attack and defence; writes results.json and RESULTS.md.

  pretrained: an encoder directory in MiniLM's place (a test's tiny one)."""
  p = plan(quick)
  common.check_plan(p, out)
  # Every defence compiles the same train step for the same model: compile it once, on disk.
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.join(out, "runs", "jit_cache"))
  results: dict = {"plan": dataclasses.asdict(p), "quick": quick, "main": {}, "sweep": {}}
  old = recorded(out, p, quick)
  t0 = time.time() - old.get("wall_s", 0.0)  # the wall time of what is read back counts too
  for dataset, attack in p.settings:
    key = f"{dataset}/{attack}"
    if key in old.get("main", {}):
      print(f"[study] {key}: read back from {os.path.join(out, 'results.json')}", flush=True)
      results["main"][key] = old["main"][key]
      results.setdefault("read_back", []).append(key)
      if (dataset, attack) == p.settings[0]:
        results["sweep"] = old["sweep"]
      continue
    for seed in p.seeds:
      print(f"[study] {key} / seed {seed}: attack ({time.time() - t0:.0f} s)", flush=True)
      suspect, info = attack_run(p, out, dataset, attack, seed, pretrained)
      row = {"attack": info}
      for defence in DEFENCES:
        print(f"[study] {key} / seed {seed}: {defence} ({time.time() - t0:.0f} s)", flush=True)
        row[defence] = defence_run(p, out, dataset, attack, seed, defence, p.rho, suspect, pretrained)
      results["main"].setdefault(key, {})[str(seed)] = row
      if (dataset, attack) == p.settings[0]:
        for defence in SWEPT:
          for rho in p.sweep:
            print(f"[study] {key} / seed {seed}: {defence} at rho {rho} ({time.time() - t0:.0f} s)",
                  flush=True)
            results["sweep"].setdefault(defence, {}).setdefault(f"{rho:g}", {})[str(seed)] = defence_run(
                p, out, dataset, attack, seed, defence, rho, suspect, pretrained)
      common.write_report(out, results, report)
  return common.finish(out, results, report, t0)


def main(argv=None) -> int:
  return common.main("python -m moe_jax.studies.purify", __doc__, run_study, report, argv)


if __name__ == "__main__":
  raise SystemExit(main())
