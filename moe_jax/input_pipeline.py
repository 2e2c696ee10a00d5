"""Chat data for training: read ESFT-format JSONL, tokenize, mask prompts, pack, batch.

A training example is `{"messages": [{"role": "user"|"assistant"|"system",
"content": str, "mask"?: 0|1}, ...]}` (the official ESFT format). It becomes,
as ESFT's `get_formatted_input_and_target` builds it:

    [BOS] tok("User: {user}\\n\\nAssistant:") tok(" {answer}") [EOS] ...

with loss only on the assistant tokens and their EOS (assistant turns with
`mask: 1` are not trained on either).

Packing concatenates examples into rows of `seq_len` tokens, each example its
own segment (attention and the loss never cross a boundary). An example that
does not fit the rest of a row starts a new row; one longer than `seq_len` keeps
its last `seq_len` tokens (ESFT left-truncates too).

Packed rows are prepared once into a tensorflow-datasets ArrayRecord dataset
(`prepare_rows`, which every task's fixed-shape rows use; no TensorFlow needed) under the run's data directory, keyed by
a fingerprint of the files, tokenizer and sequence length. Batches come from a
grain `MapDataset` over it whose element i is a pure function of (seed, i); the
iterator's position is saved in checkpoints, so a resumed run reads exactly the
batches it would have.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Iterable, Sequence

import grain
import numpy as np

from moe_jax import jsonl


class DataError(ValueError):
  """Bad training data; the message names the file and line."""


_ROLES = ("system", "user", "assistant")


def read_chat_jsonl(path: str | os.PathLike) -> list[list[dict]]:
  """Returns each line's message list, validated. Errors name the file and line."""
  path = os.fspath(path)
  out = []
  for where, record in jsonl.records(path, DataError):
    messages = record.get("messages") if isinstance(record, dict) else None
    if not isinstance(messages, list) or not messages:
      raise DataError(f"{where}: expected an object with a non-empty 'messages' list")
    for j, m in enumerate(messages):
      if not isinstance(m, dict) or m.get("role") not in _ROLES or not isinstance(m.get("content"), str):
        raise DataError(f"{where}: message {j} needs 'role' in {_ROLES} and a string 'content'")
    if not any(m["role"] == "assistant" for m in messages):
      raise DataError(f"{where}: no assistant turn, so nothing to train on")
    out.append(messages)
  if not out:
    raise DataError(f"{path}: no examples (empty file)")
  return out


def encode_chat(messages: Sequence[dict], tokenizer) -> tuple[np.ndarray, np.ndarray]:
  """(tokens [n] int32, loss_mask [n] bool): which tokens are training targets."""
  tokens: list[int] = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
  mask: list[bool] = [False] * len(tokens)

  def add(ids, train):
    tokens.extend(ids)
    mask.extend([train] * len(ids))

  for m in messages:
    if m["role"] == "system":
      add(tokenizer.encode(m["content"] + "\n\n"), False)
    elif m["role"] == "user":
      add(tokenizer.encode(f"User: {m['content']}\n\nAssistant:"), False)
    else:
      add(tokenizer.encode(" " + m["content"]) + [tokenizer.eos_id], not m.get("mask", 0))
  return np.asarray(tokens, np.int32), np.asarray(mask, np.bool_)


def pack(examples: Iterable[tuple[np.ndarray, np.ndarray]], seq_len: int, pad_id: int) -> dict:
  """Packs (tokens, loss_mask) examples into rows.

  Returns arrays [rows, seq_len]: tokens, loss_mask, segment_ids (1, 2, ... per
  example in a row; 0 on padding) and positions (restarting at 0 per example).
  """
  return pack_fields(({"tokens": t, "loss_mask": m} for t, m in examples), seq_len, pad_id)


def pack_fields(examples: Iterable[dict], seq_len: int, pad_id: int) -> dict:
  """Packs examples given as {"tokens": [n], other per-token field: [n], ...} into rows.

  Every field is carried along (zero on padding); segment_ids and positions are
  added. A longer-than-seq_len example keeps its last seq_len tokens.
  """
  rows: list[list] = []
  row: list = []
  used = 0

  def flush():
    nonlocal row, used
    if row:
      rows.append(row)
    row, used = [], 0

  for ex in examples:
    n = len(ex["tokens"])
    if n > seq_len:
      ex = {k: np.asarray(v)[-seq_len:] for k, v in ex.items()}
      n = seq_len
    if used + n > seq_len:
      flush()
    row.append(ex)
    used += n
  flush()
  if not rows:
    raise DataError("no examples to pack")
  fields = {k: np.asarray(v).dtype for k, v in rows[0][0].items()}
  out = {k: np.zeros((len(rows), seq_len), dt) for k, dt in fields.items()}
  out["segment_ids"] = np.zeros((len(rows), seq_len), np.int32)
  out["positions"] = np.zeros((len(rows), seq_len), np.int32)
  out["tokens"][:] = pad_id
  for r, parts in enumerate(rows):
    at = 0
    for seg, ex in enumerate(parts, 1):
      n = len(ex["tokens"])
      for k in fields:
        out[k][r, at:at + n] = ex[k]
      out["segment_ids"][r, at:at + n] = seg
      out["positions"][r, at:at + n] = np.arange(n)
      at += n
  return out


def read_examples(paths: Sequence[str], max_examples: int = 0) -> list[list[dict]]:
  """Chat examples from ESFT JSONL files, in file order; the first `max_examples` if > 0."""
  examples = []
  for p in paths:
    examples.extend(read_chat_jsonl(p))
  return examples[:max_examples] if max_examples else examples


def split_examples(examples: list, eval_fraction: float, seed: int = 0) -> tuple[list, list]:
  """(train, eval): a seeded random `eval_fraction` of the examples is held out."""
  order = np.random.default_rng(seed).permutation(len(examples))
  n_eval = int(round(len(examples) * eval_fraction))
  if eval_fraction > 0:
    n_eval = max(n_eval, 1)
  held = set(order[:n_eval].tolist())
  return ([e for i, e in enumerate(examples) if i not in held],
          [e for i, e in enumerate(examples) if i in held])


def load_packed(paths: Sequence[str], tokenizer, seq_len: int, max_examples: int = 0) -> dict:
  """Reads, encodes and packs the chat files in `paths` (in order), in memory."""
  examples = read_examples(paths, max_examples)
  return pack((encode_chat(m, tokenizer) for m in examples), seq_len, tokenizer.pad_id)


def _rows(rows: dict):
  n = len(next(iter(rows.values())))  # every field has one entry per row
  return [{k: v[i] for k, v in rows.items()} for i in range(n)]


def prepare(paths: Sequence[str], tokenizer, tokenizer_name: str, seq_len: int,
            eval_fraction: float, data_dir: str, max_examples: int = 0, seed: int = 0) -> dict:
  """Packs the chat files into an ArrayRecord dataset (once) and returns its data sources.

  Returns {"train": source, "eval": source}: random-access sequences of row
  dicts, read from `data_dir` by tensorflow-datasets.
  """
  for p in paths:
    if not os.path.isfile(p):
      raise DataError(f"{p}: no such file (config.data.train_files)")
  key = fingerprint(paths, [tokenizer_name, seq_len, eval_fraction, max_examples, seed])

  def splits():
    train, held = split_examples(read_examples(paths, max_examples), eval_fraction, seed)
    pack_all = lambda exs: pack((encode_chat(m, tokenizer) for m in exs), seq_len, tokenizer.pad_id)
    return {"train": pack_all(train), "eval": pack_all(held) if held else None}

  features = {"tokens": ((seq_len,), np.int32), "loss_mask": ((seq_len,), np.bool_),
              "segment_ids": ((seq_len,), np.int32), "positions": ((seq_len,), np.int32)}
  return prepare_rows("packed_chat", key, features, splits, data_dir)


def fingerprint(paths: Sequence[str], settings) -> str:
  """A short hash of the files' contents and the JSON-able settings that shape their rows."""
  h = hashlib.sha1()
  for p in paths:
    with open(p, "rb") as f:
      h.update(hashlib.sha1(f.read()).digest())
  h.update(json.dumps(settings).encode())
  return h.hexdigest()[:16]


def prepare_rows(kind: str, key: str, features: dict, splits, data_dir: str) -> dict:
  """Writes rows into an ArrayRecord dataset once and returns {split: data source}.

  kind: the dataset's name (a folder under data_dir); key: a fingerprint of
  everything the rows depend on (a new key writes a new dataset).
  features: {field: (shape, numpy dtype)} of one row.
  splits: () -> {split: rows dict of [N, ...] arrays, or None for an empty split},
    called only when the dataset is not written yet.
  """
  import tensorflow_datasets as tfds

  builder = _rows_builder()(kind=kind, row_features=features, make_splits=splits,
                            data_dir=os.path.join(data_dir, kind), file_format="array_record",
                            config=tfds.core.BuilderConfig(name="fp_" + key))
  builder.download_and_prepare()
  return {split: builder.as_data_source(split=split) for split in builder.info.splits}


_BUILDER = None


def _rows_builder():
  """The TFDS builder class, defined on first use so importing this module stays light."""
  global _BUILDER
  if _BUILDER is not None:
    return _BUILDER
  import tensorflow_datasets as tfds

  class Rows(tfds.core.GeneratorBasedBuilder):
    """Fixed-shape rows (tokens and per-token or per-row fields), one split per rows dict."""

    VERSION = tfds.core.Version("1.0.0")
    url_infos = {}  # nothing to download; skips TFDS's checksum-file lookup beside the code

    def __init__(self, *, kind, row_features, make_splits, **kwargs):
      self._kind, self._features, self._make_splits = kind, row_features, make_splits
      super().__init__(**kwargs)

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, description=self._kind,
                                   features=tfds.features.FeaturesDict({
                                       k: tfds.features.Tensor(shape=shape, dtype=dtype)
                                       for k, (shape, dtype) in self._features.items()}))

    def _split_generators(self, dl_manager):
      return {split: self._generate_examples(rows) for split, rows in self._make_splits().items()}

    def _generate_examples(self, rows):
      if rows is None:
        return
      for i, row in enumerate(_rows(rows)):
        yield i, row

  _BUILDER = Rows
  return Rows


def batches(source, batch_size: int, seed: int, shuffle: bool = True, process_index: int = 0,
            process_count: int = 1) -> grain.MapDataset:
  """An endless MapDataset of this process's share of each global batch.

  source: a data source (or packed-rows dict); batch_size is the global batch.
  Element i is batch i of the run on every process, reshuffled each epoch.
  """
  if isinstance(source, dict):
    source = _rows(source)
  n = len(source)
  if n < batch_size:
    raise DataError(f"{n} packed rows cannot fill a batch of {batch_size}; lower the batch size "
                    f"or add data")
  if batch_size % process_count:
    raise DataError(f"batch size {batch_size} is not divisible by {process_count} processes")
  ds = grain.MapDataset.source(source)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat().batch(batch_size // process_count, drop_remainder=True)
  return ds[process_index::process_count] if process_count > 1 else ds
