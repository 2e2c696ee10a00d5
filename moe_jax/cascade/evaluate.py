"""Scoring a trained cascade or early-exit model: accuracy against speed-up, calibration, timing.

`score` runs every stage (or every layer's classifier) on every held-out
example once: probs [K, N, C], from which `summarize` reads each exit setting
analytically (`exits.exits_*`: the same exits a real run takes). `timed` runs
each setting for real (`exits.run`: only undecided examples reach the next
stage or layer) and times it against the largest model alone on the same
examples and batches, so the analytic and measured speed-ups sit side by side.

Settings: a cascade's thresholds tau (exit when the top probability > tau),
DeeBERT's entropy thresholds S, PABEE's patience values.
"""

from __future__ import annotations

import functools
import time

import jax
import numpy as np

from moe_jax.cascade import early_exit, exits
from moe_jax.classify import metrics
from moe_jax.classify.task import predict_probs
from moe_jax.prm.discrimination import roc_auc

_FIELDS = ("tokens", "segment_ids", "positions")
RULES = {"cascade": exits.Threshold, "single": exits.Threshold, "deebert": exits.Entropy,
         "pabee": exits.Patience}
OFFLINE = {"cascade": exits.exits_cascade, "single": exits.exits_cascade,
           "deebert": exits.exits_entropy, "pabee": exits.exits_patience}


def stage_rows(rows: dict, k: int) -> dict:
  """Stage k's {"tokens", "segment_ids", "positions"} from the task's rows (`tokens_{k}`, ...)."""
  return {f: np.asarray(rows[f"{f}_{k}"]) for f in _FIELDS}


def settings(c, stages) -> list:
  """The exit settings a run is scored at: `cascade.thresholds`, `entropies` or `patiences`
  (all patiences 1..L-1 when that is empty)."""
  if c.method == "deebert":
    return [float(x) for x in c.entropies]
  if c.method == "pabee":
    return [int(x) for x in c.patiences] or list(range(1, stages[0].model.config.num_hidden_layers))
  return [float(x) for x in c.thresholds]


@functools.partial(jax.jit, static_argnames=("config",))
def _layer_probs(config, params, buffers, batch):
  logits, _ = early_exit.all_logits(params, buffers, config, batch)
  return jax.nn.softmax(logits, -1)


def _all_layer_probs(model, rows: dict, batch_size: int = 32) -> np.ndarray:
  out, n = [], len(rows["tokens"])
  for i in range(0, n, batch_size):
    short = max(0, i + batch_size - n)
    b = {f: np.pad(rows[f][i:i + batch_size], [(0, short), (0, 0)]) for f in _FIELDS}
    p = _layer_probs(model.config, model.params, model.variables.get("buffers", {}), b)
    out.append(np.asarray(p)[:, :batch_size - short])
  return np.concatenate(out, 1)


def score(stages, rows: dict, method: str) -> dict:
  """{"probs" [K, N, C], "labels", "difficulty", "costs" [K], "reference"}: every stage's (a
  cascade) or every layer's (an early-exit model) probabilities on every row."""
  if method in ("deebert", "pabee"):
    model = stages[0].model
    probs = _all_layer_probs(model, stage_rows(rows, 0))
    costs = exits.layer_costs(model.config)
  else:
    probs = np.stack([predict_probs(s.model, stage_rows(rows, k)) for k, s in enumerate(stages)])
    costs = np.asarray([s.cost for s in stages])
  return {"probs": probs, "labels": np.asarray(rows["label"]), "costs": costs,
          "difficulty": np.asarray(rows.get("difficulty", np.full(probs.shape[1], -1))),
          "reference": np.asarray(costs[-1] if method in ("cascade", "single") else costs.sum())}


def easy_hard_auc(confidence: np.ndarray, difficulty: np.ndarray) -> float:
  """AUC of confidence for easy (0) against hard (1) examples; NaN without both."""
  known = difficulty >= 0
  return roc_auc(np.asarray(confidence)[known], np.asarray(difficulty)[known] == 0)


def summarize(scores: dict, method: str, grid, names) -> dict:
  """Per stage (layer): accuracy, macro-F1, ECE, easy/hard AUC; per setting: accuracy, macro-F1,
  analytic speed-up and the share of examples answered at each stage."""
  probs, labels, costs = scores["probs"], scores["labels"], scores["costs"]
  per_stage = []
  for p in probs:
    m = metrics.report(p, labels, names)
    per_stage.append({"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "ece": m["ece"],
                      "easy_hard_auc": easy_hard_auc(p.max(-1), scores["difficulty"])})
  curve = []
  for s in grid:
    e = OFFLINE[method](probs, s)
    p = exits.select(probs, e)
    m = metrics.report(p, labels, names)
    curve.append({"setting": s, "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
                  "ece": m["ece"], "speedup": exits.speedup(e, costs, float(scores["reference"])),
                  "exit_share": (np.bincount(e, minlength=len(probs)) / len(e)).tolist()})
  return {"method": method, "stages": per_stage, "curve": curve}


def _steps(stages, rows: dict, method: str, batch_size: int) -> list:
  if method in ("deebert", "pabee"):
    return early_exit.layer_steps(stages[0].model, stage_rows(rows, 0), batch_size)

  def stage(k):
    r = stage_rows(rows, k)
    return lambda ids, carry: (predict_probs(stages[k].model, {f: r[f][ids] for f in _FIELDS},
                                             batch_size), None)
  return [stage(k) for k in range(len(stages))]


def timed(stages, rows: dict, method: str, grid, batch_size: int = 32, repeats: int = 2) -> list:
  """Real early exit at each setting: [{"setting", "accuracy", "speedup" (analytic),
  "measured_speedup", "seconds", "reference_seconds", "stage_seconds", "seen"}].

  The reference is the largest model alone on every row, in the same batches.
  Each timing is the best of `repeats` runs, after one warm-up that compiles.
  """
  steps = _steps(stages, rows, method, batch_size)
  n = len(rows["label"])
  costs = (exits.layer_costs(stages[0].model.config) if method in ("deebert", "pabee")
           else np.asarray([s.cost for s in stages]))
  reference_cost = costs.sum() if method in ("deebert", "pabee") else costs[-1]

  def reference():
    if method in ("deebert", "pabee"):  # the encoder and its own classifier, no ramps
      model = stages[0].model
      body = {k: v for k, v in model.params.items() if k != early_exit.RAMPS}
      return predict_probs(type(model)(model.config, {**model.variables, "params": body}),
                           stage_rows(rows, 0), batch_size)
    return predict_probs(stages[-1].model, stage_rows(rows, len(stages) - 1), batch_size)

  def best(fn):
    fn()  # compiles every shape this run uses
    times = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      out = fn()
      times.append(time.perf_counter() - t0)
    return min(times), out

  ref_seconds, _ = best(reference)
  out = []
  for s in grid:
    secs, (probs, e, stage_secs, seen) = best(lambda: exits.run(steps, RULES[method](s), n))
    out.append({"setting": s, "accuracy": float(np.mean(probs.argmax(-1) == rows["label"])),
                "speedup": exits.speedup(e, costs, reference_cost),
                "measured_speedup": ref_seconds / secs, "seconds": secs,
                "reference_seconds": ref_seconds, "stage_seconds": stage_secs.tolist(),
                "seen": seen.tolist()})
  return out
