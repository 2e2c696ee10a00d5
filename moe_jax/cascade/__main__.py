"""Command line: difficulty labels, and a trained cascade (or early-exit model) at many settings.

    python -m moe_jax.cascade difficulty --config=configs/cascade_tweets.py --workdir=DIR [--seeds=3]
    python -m moe_jax.cascade evaluate --workdir=RUN [--settings=0.6,0.7,0.8,0.9] [--batch_size=32]

`difficulty` fine-tunes the config's first stage alone with several seeds and
writes DIR/difficulty.jsonl (set `--config.cascade.difficulty_file` to it for
training). `evaluate` reads a finished "cascade" run (its stages/, held_out.jsonl
and summary.json), runs real early exit at each setting (tau for a cascade,
entropy S for DeeBERT, patience for PABEE; default: the run's own), and prints
accuracy, the analytic and the measured wall-clock speed-up; it writes
RUN/timing.json.
"""

from __future__ import annotations

import json
import os

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "difficulty: where to write; evaluate: a finished run.")
config_flags.DEFINE_config_file("config", None, "difficulty: the cascade's training config.")
flags.DEFINE_integer("seeds", 3, "difficulty: seeds of the small model alone.")
flags.DEFINE_list("settings", None, "evaluate: thresholds, entropies or patiences.")
flags.DEFINE_integer("batch_size", 32, "evaluate: rows per forward pass.")
flags.DEFINE_integer("repeats", 2, "evaluate: timed runs per setting (the best is kept).")
flags.mark_flags_as_required(["workdir"])


def _evaluate() -> None:
  import numpy as np

  from moe_jax.cascade import evaluate
  from moe_jax.cascade import stages as stages_lib
  from moe_jax.classify import datasets

  run = FLAGS.workdir
  with open(os.path.join(run, "summary.json")) as f:
    summary = json.load(f)
  method = summary["method"]
  stages = stages_lib.load(os.path.join(run, "stages"))
  held = datasets.read_jsonl(os.path.join(run, "held_out.jsonl"))
  rows = {"label": np.asarray(held.labels)}
  for k, r in enumerate(stages_lib.rows(held.texts, stages, summary["seq_len"])):
    rows.update({f"{f}_{k}": v for f, v in r.items()})
  grid = ([int(s) if method == "pabee" else float(s) for s in FLAGS.settings] if FLAGS.settings
          else [c["setting"] for c in summary["metrics"]["curve"]])
  out = evaluate.timed(stages, rows, method, grid, FLAGS.batch_size, FLAGS.repeats)
  print(f"{method} on {len(held.texts)} held-out examples (speed-up against the largest model alone)")
  print(f"{'setting':>8} {'accuracy':>9} {'analytic':>9} {'measured':>9}  examples per stage/layer")
  for r in out:
    print(f"{r['setting']:>8} {r['accuracy']:>9.4f} {r['speedup']:>8.2f}x {r['measured_speedup']:>8.2f}x"
          f"  {r['seen']}")
  path = os.path.join(run, "timing.json")
  with open(path, "w") as f:
    json.dump(out, f, indent=2)
  print(json.dumps({"timing": path, "settings": len(out)}))


def main(argv):
  if len(argv) != 2 or argv[1] not in ("difficulty", "evaluate"):
    raise app.UsageError("usage: python -m moe_jax.cascade {difficulty,evaluate} --workdir=DIR ...")
  if argv[1] == "difficulty":
    if FLAGS.config is None:
      raise app.UsageError("difficulty needs --config (the cascade's training config)")
    from moe_jax.cascade import difficulty

    difficulty.label(FLAGS.config, FLAGS.workdir, FLAGS.seeds)
  else:
    _evaluate()


if __name__ == "__main__":
  app.run(main)
