"""The "prm" task: PRM / ORM training through the common trainer (`train.py --config=configs/prm.py`).

Reads step-labelled solutions (Math-Shepherd or TRL JSONL), encodes each as
Math-Shepherd's `input` text with the step tags, packs them into rows with the
tag positions and labels, and trains with the same jitted step as every other
run (FFT, ESFT or LoRA), swapping in the PRM loss. Held-out step metrics (step
accuracy, balanced accuracy, AUC, log-loss) are reported before and after.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from moe_jax import input_pipeline, train_lib, trainable
from moe_jax.model import Model
from moe_jax.prm import data as prm_data
from moe_jax.prm import reward


def encode_examples(examples, tokenizer, tag: str, orm: bool, source: str = "") -> list[dict]:
  """Per-token fields for each example; ORM keeps only the final step's label."""
  out = []
  for i, ex in enumerate(examples):
    enc = prm_data.encode(ex, tokenizer, tag, line=f"{source}:{i + 1}")
    if orm:  # outcome supervision: one label, at the last tag
      last = np.flatnonzero(enc["score_mask"])[-1]
      enc["score_mask"] = np.zeros_like(enc["score_mask"])
      enc["score_mask"][last] = True
    out.append(enc)
  return out


def pair_rows(examples, tokenizer, tag: str, seq_len: int, per_question: int, seed: int,
              orm: bool = False, source: str = "") -> dict:
  """Packed rows of one right and one wrong solution of the same question each.

  A solution is right when its last step's label is >= 0.5. Each question with
  both kinds gives `per_question` rows, each a random right and a random wrong
  solution (so every question weighs the same, however many solutions it has);
  a pair longer than a row is skipped. Adds per-row fields "rank_right",
  "rank_wrong" (the position of each solution's last step tag) and "rank_mask" [N].
  """
  by_question: dict[str, tuple[list, list]] = {}
  for ex in examples:
    by_question.setdefault(ex.question, ([], []))[0 if ex.labels[-1] >= 0.5 else 1].append(ex)
  rng = np.random.default_rng(seed)
  rows = []
  for right, wrong in by_question.values():
    for _ in range(per_question if right and wrong else 0):
      pair = [right[rng.integers(len(right))], wrong[rng.integers(len(wrong))]]
      enc = encode_examples(pair, tokenizer, tag, orm, source)
      if sum(len(e["tokens"]) for e in enc) > seq_len:
        continue
      row = input_pipeline.pack_fields(enc, seq_len, tokenizer.pad_id)  # one row, segments 1, 2
      tags = row["score_mask"][0].astype(bool)
      row["rank_right"], row["rank_wrong"] = (
          np.asarray([np.flatnonzero(tags & (row["segment_ids"][0] == k))[-1]], np.int32) for k in (1, 2))
      row["rank_mask"] = np.ones(1, np.int32)
      rows.append(row)
  if not rows:
    raise input_pipeline.DataError(f"{source}: no question has both a right and a wrong solution "
                                   "(last step label >= 0.5 and < 0.5) to pair")
  return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}


def run(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
  """The "prm" task: a PRM/ORM from the base model on `prm.train_file`; step metrics, export.

  Returns the run's summary (metrics before and after, losses, trainable parameters).
  """
  setup = train_lib.prologue(cfg, workdir)
  p = cfg.prm
  path = train_lib.resolve_data_path(p.train_file)
  examples = prm_data.read_examples(path, p.tag, p.good, p.bad)
  train_ex, eval_ex = input_pipeline.split_examples(examples, cfg.data.eval_fraction, cfg.seed)
  model, spec, summary = fit(cfg, workdir, setup.model, setup.tokenizer, train_ex, eval_ex,
                             setup.mesh, path)
  return train_lib.epilogue(cfg, workdir, model, spec, summary, setup.tokenizer)


def fit(cfg: ml_collections.ConfigDict, workdir: str, model: Model, tokenizer, train_ex, eval_ex,
        mesh, source: str = "") -> tuple[Model, trainable.TrainableSpec, dict]:
  """Trains `model` as a PRM/ORM (cfg.prm) on train_ex; step metrics on eval_ex before and after.

  Returns the trained model (with its value head, if any), what trained, and the summary.
  """
  p = cfg.prm
  if p.label == "hard":
    train_ex, eval_ex = ([prm_data.Example(e.question, e.steps, [float(l >= 0.5) for l in e.labels])
                          for e in exs] for exs in (train_ex, eval_ex))
  pack = lambda exs: input_pipeline.pack_fields(encode_examples(exs, tokenizer, p.tag, p.orm, source),
                                                cfg.data.seq_len, tokenizer.pad_id)
  pairs, rank_weight = p.get("pairs_per_question", 0), p.get("rank_weight", 0.0)
  if rank_weight and not pairs:
    raise ValueError("prm.rank_weight needs pair rows: set prm.pairs_per_question > 0")
  train_rows = (pair_rows(train_ex, tokenizer, p.tag, cfg.data.seq_len, pairs, cfg.seed, p.orm, source)
                if pairs else pack(train_ex))
  eval_rows = pack(eval_ex)
  data = train_lib.make_data(train_rows, eval_rows, cfg.data.batch_size, cfg.seed,
                             f"{source}: the held-out solutions")
  good_id, bad_id = reward.label_ids(tokenizer, p.good, p.bad)
  head = reward.RewardHead(good_id, bad_id, p.value_head)
  spec = trainable.from_config(cfg, model.config, lambda: train_lib.select_experts(
      cfg, workdir, model, train_lib.score_batches(cfg, data), "the PRM data"))
  if p.value_head:
    model = reward.with_value_head(model)
    spec = spec.with_heads({reward.VALUE_HEAD: reward.VALUE_HEAD_AXES})
  summary = {"metrics_before": reward.metrics(*reward.score_rows(model, eval_rows, head))}
  print(f"[prm] {len(train_ex)} train / {len(eval_ex)} held-out solutions; "
        f"{'ORM' if p.orm else 'PRM'} with {p.label} labels; held-out before: "
        + _fmt(summary["metrics_before"]))
  model, run = train_lib.train(cfg, workdir, model, spec, data, mesh, name="prm",
                               loss_fn=reward.make_loss(head, rank_weight))
  summary.update(run)
  summary["metrics_after"] = reward.metrics(*reward.score_rows(model, eval_rows, head))
  print("[prm] held-out after: " + _fmt(summary["metrics_after"]))
  return model, spec, summary


def _fmt(m: dict) -> str:
  return (f"step accuracy {m['accuracy']:.3f}, balanced {m['balanced_accuracy']:.3f}, "
          f"AUC {m['auc']:.3f}, log-loss {m['log_loss']:.4f} ({m['steps']} steps)")
