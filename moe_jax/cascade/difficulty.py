"""Difficulty labels for the ranking loss: easy where the small model alone is right in every seed.

The official code reads `{task}.train.dif_5seeds-2level.json` and does not say
how it was made. This is a reconstruction from the file name (the spec says
so too): the first stage of the cascade is fine-tuned alone (task method
"single") with each of several seeds; an example is easy (0) when every seed's
model classifies it correctly, else hard (1). The held-out examples are
labelled the same way by the same models, so the AUC of a cascade's small-model
confidence for easy against hard can be measured on data it never trained on.

Output: `difficulty.jsonl`, one line per example: {"text", "label", "split",
"difficulty": "easy" | "hard", "correct": seeds right, "seeds"}. Each seed's run
lives in `seed_{s}/` and is reused when finished, so an interrupted labelling
resumes where it stopped.
"""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np

from moe_jax.cascade import stages as stages_lib
from moe_jax.cascade import task
from moe_jax.classify import task as classify_task
from moe_jax.classify.task import predict_probs

FILE = "difficulty.jsonl"


def run_config(cfg: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
  """The "single" run of the first stage with `seed` (the training set fixed by the config)."""
  out = ml_collections.ConfigDict(cfg.to_dict())
  out.seed = seed
  out.cascade.method = "single"
  out.cascade.stages = (cfg.cascade.stages[0],)
  out.cascade.difficulty_file = ""
  if out.classify.subset_seed < 0:
    out.classify.subset_seed = cfg.seed  # every seed trains on the same examples
  return out


def label(cfg: ml_collections.ConfigDict, workdir: str, seeds: int = 3) -> str:
  """Trains the first stage alone with `seeds` seeds and writes workdir/difficulty.jsonl."""
  if seeds < 1:
    raise ValueError(f"seeds must be >= 1, got {seeds}")
  correct, splits = None, None
  for s in range(seeds):
    rc = run_config(cfg, cfg.seed + s)
    run_dir = os.path.join(workdir, f"seed_{s}")
    if not os.path.exists(os.path.join(run_dir, "metrics.json")):
      task.run(rc, run_dir)
    stage = stages_lib.load(os.path.join(run_dir, "stages"))[0]
    train_ex, held_ex = classify_task.read_data(rc, run_dir)
    splits = {"train": train_ex, "test": held_ex}
    right = {}
    for name, ex in splits.items():
      rows = stages_lib.rows(ex.texts, [stage], rc.data.seq_len)[0]
      right[name] = (predict_probs(stage.model, rows).argmax(-1) == np.asarray(ex.labels)).astype(int)
    correct = right if correct is None else {k: correct[k] + right[k] for k in right}
    print(f"[difficulty] seed {s}: the small model alone is right on "
          f"{np.mean(right['train']):.3f} of training and {np.mean(right['test']):.3f} of held-out "
          "examples")
  lines = []
  for name, ex in splits.items():
    for text, y, k in zip(ex.texts, ex.labels, correct[name]):
      lines.append(json.dumps({"text": text, "label": ex.label_names[y], "split": name,
                               "difficulty": "easy" if k == seeds else "hard", "correct": int(k),
                               "seeds": seeds}, ensure_ascii=False))
  path = os.path.join(workdir, FILE)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  os.replace(tmp, path)
  easy = {k: float(np.mean(v == seeds)) for k, v in correct.items()}
  print(f"[difficulty] easy share: {easy['train']:.3f} of training, {easy['test']:.3f} of held-out "
        f"examples ({seeds} seeds); {path}")
  return path
