"""The "classify" task: text classification on any family through the common trainer.

`train.py --config=configs/classify_intent.py` reads labelled JSONL
(`moe_jax.classify.datasets`), encodes one example per row (an encoder reads
`[CLS] text [SEP]`, a decoder `BOS text` and classifies at its last token),
writes the rows once as ArrayRecord, and trains a classifier head beside the
model (`moe_jax.heads`) with FFT, ESFT or LoRA and the same jitted step as
every task. Held-out accuracy, macro-F1, expected calibration error, log-loss
and the confusion matrix are measured before and after and written to the
workdir (`metrics.json`, `labels.txt`, `eval_predictions.png`).
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from moe_jax import heads, input_pipeline, train_lib, trainable
from moe_jax.classify import datasets, metrics
from moe_jax.model import Model

LABELS_FILE = "labels.txt"  # in the workdir: the label names, one per line, in id order


def encode(texts, tokenizer, config, seq_len: int) -> dict:
  """One example per row: {"tokens", "segment_ids", "positions"} [N, seq_len] int32.

  An encoder's row is `[CLS] text [SEP]` (its tokenizer's template), a decoder's
  `BOS text`; a text longer than the row keeps its first tokens (and an encoder's
  closing [SEP]).
  """
  n = len(texts)
  rows = {k: np.zeros((n, seq_len), np.int32) for k in ("tokens", "segment_ids", "positions")}
  rows["tokens"][:] = tokenizer.pad_id
  for i, text in enumerate(texts):
    if config.is_encoder:
      ids = tokenizer.encode(text, add_special_tokens=True)
      if len(ids) > seq_len:
        ids = ids[:seq_len - 1] + ids[-1:]
    else:
      ids = ([] if tokenizer.bos_id is None else [tokenizer.bos_id]) + tokenizer.encode(text)
      ids = ids[:seq_len]
    rows["tokens"][i, :len(ids)] = ids
    rows["segment_ids"][i, :len(ids)] = 1
    rows["positions"][i, :len(ids)] = np.arange(len(ids))
  return rows


def labelled_rows(examples: datasets.Examples, tokenizer, config, seq_len: int) -> dict:
  rows = encode(examples.texts, tokenizer, config, seq_len)
  rows["label"] = np.asarray(examples.labels, np.int32)
  return rows


def classify_loss(params, buffers, config, batch):
  """Mean cross-entropy of the rows' labels, plus the MoE balance losses.

  Returns (loss, (loss_sum, n_rows, MoEAux)) like the LM loss, so the trainer's
  metrics read loss_sum / n as the mean cross-entropy.
  """
  logits, aux = heads.sequence_logits(params, buffers, config, batch)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  nll = -jnp.take_along_axis(logp, batch["label"][:, None], -1)[:, 0]
  live = (batch["segment_ids"][:, 0] != 0).astype(jnp.float32)  # all-padding rows fill batches
  loss_sum, n = jnp.sum(nll * live), jnp.sum(live)
  return loss_sum / jnp.maximum(n, 1.0) + aux.balance_loss + aux.device_balance_loss, (loss_sum, n, aux)


@functools.partial(jax.jit, static_argnames=("config",))
def _probs(config, variables, batch):
  logits, _ = heads.sequence_logits(variables["params"], variables.get("buffers", {}), config, batch)
  return jax.nn.softmax(logits.astype(jnp.float32), -1)


def predict_probs(model: Model, rows: dict, batch_size: int = 32) -> np.ndarray:
  """Class probabilities [N, C] of encoded rows (`encode`), in row order."""
  out, n = [], len(rows["tokens"])
  for i in range(0, n, batch_size):
    b = {k: rows[k][i:i + batch_size] for k in ("tokens", "segment_ids", "positions")}
    short = batch_size - len(b["tokens"])
    if short:  # pad the last batch so every call has one shape
      b = {k: np.concatenate([v, np.zeros((short,) + v.shape[1:], v.dtype)]) for k, v in b.items()}
    p = _probs(model.config, model.variables, {k: jnp.asarray(v) for k, v in b.items()})
    out.append(np.asarray(p)[:batch_size - short])
  return np.concatenate(out)


def read_data(cfg: ml_collections.ConfigDict, workdir: str):
  """(train, held-out) Examples from `classify.dataset`, or `classify.train_file` / `eval_file`."""
  c = cfg.classify
  names = datasets.read_label_file(train_lib.resolve_data_path(c.label_file)) if c.label_file else None
  if c.dataset:
    # The held-out subset does not depend on the run's seed: every seed is scored on the same texts.
    subset_seed = cfg.seed if c.get("subset_seed", -1) < 0 else c.subset_seed
    train = datasets.load(c.dataset, "train", c.max_train_examples or None, subset_seed, c.sample)
    held = datasets.load(c.dataset, "test", c.max_eval_examples or None, 0, c.sample)
  else:
    if not c.train_file:
      raise ValueError("config.classify: set `dataset` (a name in moe_jax.classify.datasets."
                       "DATASETS) or `train_file` (classification JSONL)")
    train = datasets.read_jsonl(train_lib.resolve_data_path(c.train_file), names)
    if c.eval_file:
      held = datasets.read_jsonl(train_lib.resolve_data_path(c.eval_file), train.label_names)
    else:
      train, held = _hold_out(train, cfg.data.eval_fraction, cfg.seed)
    train, held = _limit(train, c.max_train_examples), _limit(held, c.max_eval_examples)
  if held.label_names != train.label_names:
    raise ValueError(f"config.classify: the held-out labels {held.label_names} differ from the "
                     f"training labels {train.label_names}")
  return train, held


def _hold_out(ex: datasets.Examples, fraction: float, seed: int):
  train_ids, held_ids = input_pipeline.split_examples(list(range(len(ex.texts))), fraction, seed)
  return ex.subset(train_ids), ex.subset(held_ids)


def _limit(ex: datasets.Examples, n: int) -> datasets.Examples:
  return ex.subset(range(min(n, len(ex.texts)))) if n else ex


def make_data(cfg: ml_collections.ConfigDict, workdir: str, train_ex: datasets.Examples,
              held_ex: datasets.Examples, tokenizer, config) -> train_lib.Data:
  """The trainer's batches of labelled rows, written once as ArrayRecord under workdir/data."""
  seq_len = cfg.data.seq_len
  key = input_pipeline.fingerprint([], [list(train_ex.texts), list(train_ex.labels),
                                        list(held_ex.texts), list(held_ex.labels),
                                        cfg.data.tokenizer, seq_len, config.is_encoder])
  features = {k: ((seq_len,), np.int32) for k in ("tokens", "segment_ids", "positions")}
  features["label"] = ((), np.int32)
  sources = train_lib.process0_first("prepare_data", lambda: input_pipeline.prepare_rows(
      "classify", key, {**features}, lambda: {
          "train": labelled_rows(train_ex, tokenizer, config, seq_len),
          "eval": labelled_rows(held_ex, tokenizer, config, seq_len)},
      os.path.join(workdir, "data")))
  return train_lib.make_data(sources["train"], sources["eval"], cfg.data.batch_size, cfg.seed,
                             "the held-out examples")


def run(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
  """The "classify" task: train a classifier; held-out metrics before and after; export."""
  setup = train_lib.prologue(cfg, workdir)
  model, tok, seq_len = setup.model, setup.tokenizer, cfg.data.seq_len
  train_ex, held_ex = read_data(cfg, workdir)
  names = train_ex.label_names
  datasets.write_label_file(os.path.join(workdir, LABELS_FILE), names)
  data = make_data(cfg, workdir, train_ex, held_ex, tok, model.config)
  print(f"[classify] {len(train_ex.texts)} train / {len(held_ex.texts)} held-out examples, "
        f"{len(names)} labels; model {model.config.model_type} "
        f"({'encoder' if model.config.is_encoder else 'decoder'}), rows of {seq_len} tokens")
  spec = trainable.from_config(cfg, model.config, lambda: train_lib.select_experts(
      cfg, workdir, model, train_lib.score_batches(cfg, data), "the classification data"))
  model = heads.with_classifier(model, len(names), cfg.seed)
  spec = spec.with_heads({heads.CLASSIFIER: heads.CLASSIFIER_AXES})
  held_rows = labelled_rows(held_ex, tok, model.config, seq_len)
  summary = {"labels": list(names), "tokenizer": cfg.data.tokenizer, "seq_len": seq_len,
             "metrics_before": _evaluate(model, held_rows, names, None)}
  model, run_summary = train_lib.train(cfg, workdir, model, spec, data, setup.mesh, name="classify",
                                       loss_fn=classify_loss)
  summary.update(run_summary)
  summary["metrics_after"] = _evaluate(model, held_rows, names,
                                       os.path.join(workdir, "eval_predictions.png"))
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "metrics.json"), "w", encoding="utf-8") as f:
      json.dump({"before": summary["metrics_before"], "after": summary["metrics_after"]}, f,
                indent=2, ensure_ascii=False)
  return train_lib.epilogue(cfg, workdir, model, spec, summary, tok)


def _evaluate(model: Model, rows: dict, names, png: str | None) -> dict:
  probs = predict_probs(model, rows)
  m = metrics.report(probs, rows["label"], names)
  if png and jax.process_index() == 0:
    metrics.plot(m, probs, rows["label"], png, "held-out predictions")
  print(f"[classify] held-out: accuracy {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f}, "
        f"ECE {m['ece']:.3f}, log-loss {m['log_loss']:.3f} ({m['examples']} examples)")
  return m
