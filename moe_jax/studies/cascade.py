"""CascadeBERT against dynamic early exiting at equal speed-up, on real tweets and real encoders.

    python -m moe_jax.studies.cascade --out docs/cascade            # ~60 min on 2 free cores
    python -m moe_jax.studies.cascade --out DIR --quick             # the pipeline on the samples

Everything is trained through the "cascade" task (`moe_jax.cascade.task`) on
one training subset of the 3-class tweets (the same for every seed, so one set
of difficulty labels covers it) and scored on one held-out subset:

  difficulty      MiniLM-2L fine-tuned alone with 3 seeds: easy = right in all
  cascade         MiniLM-2L -> MiniLM-6L, jointly fine-tuned, ranking loss on
                  (lambda 0.5, epsilon 0.5: the official script's)
  cascade_no_dar  the same without the ranking loss (the calibration ablation)
  deebert         DeeBERT on MiniLM-6L (fine-tune, then off-ramps on the frozen model)
  pabee           PABEE on MiniLM-6L (joint, weighted by depth)

for each of 3 seeds; then, on seed 0, the real early exit is timed at a few
settings of each (analytic and measured speed-up side by side), and, beyond
the paper and on one seed, the three-stage cascade MiniLM-2L -> MiniLM-6L ->
MPNet-12L (all-mpnet-base-v2) where its packages are installed and the plan's
`extension_steps` asks for it, and MiniLM-2L -> a DeepSeekMoE encoder grown
from MiniLM (`studies.purify_moe`'s recipe), its cost counted in active
parameters. Both were added to the plan after the first run; with a
results.json of the plan but for the extension in --out, the rest is read back
from it (runs/ is not committed).

Runs are cached under --out/runs (git-ignored; the trainer resumes an
interrupted run, a finished one is read back), and `cascade_report` writes
RESULTS.md with 95% intervals over seeds and the claims' verdicts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import ml_collections
import numpy as np

from moe_jax.cascade import configs, difficulty, evaluate
from moe_jax.cascade import stages as stages_lib
from moe_jax.cascade import task
from moe_jax.classify import configs as classify_configs
from moe_jax.classify import datasets, metrics
from moe_jax.packages import resolve
from moe_jax.studies import common, purify_moe
from moe_jax.studies.cascade_report import report

MPNET = classify_configs.MPNET
METHODS = ("cascade", "cascade_no_dar", "deebert", "pabee")


@dataclasses.dataclass(frozen=True)
class Plan:
  dataset: str
  sample: bool  # the shipped sample instead of the full set
  seeds: tuple[int, ...]
  train_examples: int
  eval_examples: int
  steps: int
  batch: int
  seq_len: int
  difficulty_seeds: int
  small: str  # stage specs
  large: str
  learning_rate: float
  timing: dict  # method -> the settings timed for real on seed 0
  extension_steps: int  # the three-stage cascade with MPNet, seed 0 (0 = not run)


def plan(quick: bool, small: str = configs.MINILM_2L, large: str = classify_configs.MINILM) -> Plan:
  if quick:
    return Plan("tweets", True, (0,), 64, 40, 4, 8, 24, 2, small, large, 1e-4,
                {"cascade": (0.6,), "deebert": (0.5,), "pabee": (2,)}, 0)
  # Sized to fit about an hour on 2 CPU cores: a run of the two-stage cascade is ~1.2 s a step.
  # One epoch of 120 steps: at the classify default (5e-5) MiniLM-2L stays near the majority
  # class (0.43 on training), so the short schedule takes 1e-4 (chosen before any cascade ran).
  # The MPNet extension (120 steps, seed 0) was added after the first run, which read back.
  return Plan("tweets", False, (0, 1, 2), 1920, 800, 120, 16, 32, 3, small, large, 1e-4,
              {"cascade": (0.5, 0.7, 0.9), "deebert": (0.3, 0.6, 0.9), "pabee": (1, 2, 3)}, 120)


def run_config(p: Plan, method: str, seed: int, stages, difficulty_file: str = ""):
  """The "cascade" task's config for one run of the plan."""
  c = configs.cascade_config()
  c.seed = seed
  c.classify.dataset, c.classify.sample = p.dataset, p.sample
  c.classify.max_train_examples, c.classify.max_eval_examples = p.train_examples, p.eval_examples
  c.classify.subset_seed = 0
  c.data.batch_size, c.data.seq_len = p.batch, p.seq_len
  c.num_train_steps = p.steps
  c.checkpoint_every = max(p.steps // 2, 1)
  c.optimizer.warmup_steps = max(p.steps // 10, 1)
  c.optimizer.learning_rate = p.learning_rate
  c.cascade.method = "cascade" if method.startswith("cascade") else method
  c.cascade.stages = tuple(stages)
  c.cascade.dar_weight = 0.5 if method == "cascade" else 0.0
  c.cascade.difficulty_file = difficulty_file
  return c


def _run(cfg: ml_collections.ConfigDict, workdir: str, diff: str) -> dict:
  """A finished run's summary and scores; trains (or resumes) it first if needed.

  Every stage's (layer's) easy-vs-hard AUC is measured on the held-out examples with the
  difficulty labels `diff`, also for runs trained without them (no ranking loss).
  """
  if not os.path.exists(os.path.join(workdir, "eval_probs.npz")):
    task.run(cfg, workdir)
  with open(os.path.join(workdir, "summary.json"), encoding="utf-8") as f:
    summary = json.load(f)
  with np.load(os.path.join(workdir, "eval_probs.npz")) as f:
    scores = {k: f[k] for k in f.files}
  # Scored again from the saved probabilities, so the settings' grid is the config's of today.
  held = datasets.read_jsonl(os.path.join(workdir, "held_out.jsonl"))
  scores["difficulty"] = task.read_difficulty(diff, held)
  c = cfg.cascade
  grid = {"deebert": c.entropies, "pabee": range(1, len(scores["probs"]))}.get(c.method, c.thresholds)
  summary["metrics"] = evaluate.summarize(scores, c.method, list(grid), summary["labels"])
  # Reliability bins of every stage (layer) for the plots; the probabilities stay in the run.
  bins = [metrics.calibration_bins(p, scores["labels"]) for p in scores["probs"]]
  return {"metrics": summary["metrics"], "costs": scores["costs"],
          "reference": float(scores["reference"]),
          "bins": [{k: np.nan_to_num(v).tolist() for k, v in b.items()} for b in bins]}


def _timing(p: Plan, out: str, method: str, workdir: str) -> list:
  """Real early exit on seed 0's run at the plan's settings (cached)."""
  def measure():
    with open(os.path.join(workdir, "summary.json"), encoding="utf-8") as f:
      summary = json.load(f)
    stages = stages_lib.load(os.path.join(workdir, "stages"))
    held = datasets.read_jsonl(os.path.join(workdir, "held_out.jsonl"))
    rows = {"label": np.asarray(held.labels)}
    for k, r in enumerate(stages_lib.rows(held.texts, stages, summary["seq_len"])):
      rows.update({f"{f}_{k}": v for f, v in r.items()})
    kind = "cascade" if method.startswith("cascade") else method
    return evaluate.timed(stages, rows, kind, list(p.timing[kind]), batch_size=p.batch, repeats=1)
  return common.cached(os.path.join(out, "runs", "timing", f"{method}.json"), measure)


def _extension(p: Plan, out: str, diff: str) -> dict | None:
  """The three-stage cascade with MPNet-12L on seed 0 (None where MPNet is not installed)."""
  if not p.extension_steps:
    return None
  try:
    resolve(MPNET)
  except FileNotFoundError as e:
    print(f"[study] skipping the three-stage cascade: {e}")
    return None
  ext = dataclasses.replace(p, steps=p.extension_steps)
  cfg = run_config(ext, "cascade", p.seeds[0], (p.small, p.large, MPNET), diff)
  return _run(cfg, os.path.join(out, "runs", "extension", "cascade_mpnet"), diff)


def _moe_stage(p: Plan, out: str, diff: str) -> dict | None:
  """Beyond the paper, seed 0: MiniLM-2L -> a DeepSeekMoE encoder grown from MiniLM (the
  recipe of `studies.purify_moe`: its last four FFNs made 8 routed + 1 shared experts, trained
  on clean reviews), its cost counted in active parameters per token."""
  if not p.extension_steps:
    return None
  w_init, about = purify_moe.pretrain(purify_moe.plan(False), os.path.join(out, "runs", "moe_stage"),
                                      p.large)
  ext = dataclasses.replace(p, steps=p.extension_steps)
  cfg = run_config(ext, "cascade", p.seeds[0], (p.small, w_init), diff)
  return _run(cfg, os.path.join(out, "runs", "extension", "cascade_moe"), diff) | {"w_init": about}


def run_study(out: str, quick: bool, stages: tuple[str, str] | None = None) -> dict:
  """Every run (cached under out/runs), then results.json, RESULTS.md and the plots.

  stages: (small, large) specs instead of MiniLM-2L and MiniLM-6L (the tests pass tiny ones).
  """
  p = plan(quick, *(stages or ()))
  old = common.recorded(out, p, quick, free=("extension_steps",))  # runs/ is not committed
  common.check_plan(p, out)
  start = time.time() - old.get("seconds", 0.0)
  runs = os.path.join(out, "runs")
  diff_dir = os.path.join(runs, "difficulty")
  diff = os.path.join(diff_dir, difficulty.FILE)
  if not os.path.exists(diff) and (not old or p.extension_steps):
    print("[study] difficulty labels: the small model alone, several seeds", flush=True)
    difficulty.label(run_config(p, "cascade", 0, (p.small, p.large)), diff_dir, p.difficulty_seeds)
  results = {"plan": dataclasses.asdict(p), "quick": quick, "jax": jax.__version__,
             "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}", "seeds": {}}
  if old:  # the two-stage comparison as recorded; the extension runs below
    print(f"[study] the seeds and timings: read back from {os.path.join(out, 'results.json')}")
    results["seeds"], results["timing"], results["read_back"] = old["seeds"], old["timing"], True
  for seed in () if old else p.seeds:
    results["seeds"][seed] = {}
    for method in METHODS:
      print(f"[study] seed {seed}: {method} ({time.time() - start:.0f} s)", flush=True)
      stages = (p.small, p.large) if method.startswith("cascade") else (p.large,)
      cfg = run_config(p, method, seed, stages, diff if method == "cascade" else "")
      results["seeds"][seed][method] = _run(cfg, os.path.join(runs, f"seed{seed}", method), diff)
  if not old:
    print(f"[study] timing the real early exit ({time.time() - start:.0f} s)", flush=True)
    results["timing"] = {m: _timing(p, out, m, os.path.join(runs, f"seed{p.seeds[0]}", m))
                         for m in METHODS}
  results["extension"], results["seconds"] = None, time.time() - start
  path = common.write_report(out, results, report)  # a report before the optional extension
  print(f"[study] wrote {path}; beyond the paper: three stages with MPNet "
        f"({time.time() - start:.0f} s)", flush=True)
  results["extension"] = _extension(p, out, diff)
  results["moe_stage"] = _moe_stage(p, out, diff)
  results["seconds"] = time.time() - start
  path = common.write_report(out, results, report)
  print(f"[study] wrote {path} ({time.time() - start:.0f} s)")
  return results


def main(argv=None) -> int:
  return common.main("python -m moe_jax.studies.cascade", __doc__, run_study, report, argv)


if __name__ == "__main__":
  raise SystemExit(main())
