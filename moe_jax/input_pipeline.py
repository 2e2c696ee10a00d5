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

Batches come from a grain `MapDataset` whose element i is a pure function of
(seed, i), so a resumed run reads exactly the batches it would have.
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Sequence

import grain
import numpy as np


class DataError(ValueError):
  """Bad training data; the message names the file and line."""


_ROLES = ("system", "user", "assistant")


def read_chat_jsonl(path: str | os.PathLike) -> list[list[dict]]:
  """Returns each line's message list, validated. Errors name the file and line."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise DataError(f"{path}: no such file")
  out = []
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"{path}:{lineno}"
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise DataError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from e
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
  rows: list[list] = []
  row: list = []
  used = 0

  def flush():
    nonlocal row, used
    if row:
      rows.append(row)
    row, used = [], 0

  for tokens, mask in examples:
    if len(tokens) > seq_len:
      tokens, mask = tokens[-seq_len:], mask[-seq_len:]
    if used + len(tokens) > seq_len:
      flush()
    row.append((tokens, mask))
    used += len(tokens)
  flush()
  if not rows:
    raise DataError("no examples to pack")
  out = {k: np.zeros((len(rows), seq_len), dt) for k, dt in
         (("tokens", np.int32), ("loss_mask", np.bool_), ("segment_ids", np.int32),
          ("positions", np.int32))}
  out["tokens"][:] = pad_id
  for r, parts in enumerate(rows):
    at = 0
    for seg, (tokens, mask) in enumerate(parts, 1):
      n = len(tokens)
      out["tokens"][r, at:at + n] = tokens
      out["loss_mask"][r, at:at + n] = mask
      out["segment_ids"][r, at:at + n] = seg
      out["positions"][r, at:at + n] = np.arange(n)
      at += n
  return out


def load_packed(paths: Sequence[str], tokenizer, seq_len: int, max_examples: int | None = None) -> dict:
  """Reads, encodes and packs the chat files in `paths` (in order)."""
  examples = []
  for p in paths:
    examples.extend(read_chat_jsonl(p))
  if max_examples:
    examples = examples[:max_examples]
  return pack((encode_chat(m, tokenizer) for m in examples), seq_len, tokenizer.pad_id)


def batches(rows: dict, batch_size: int, seed: int, shuffle: bool = True) -> grain.MapDataset:
  """An endless MapDataset of batches ({name: [batch_size, seq_len]}), reshuffled each epoch.

  Element i is the i-th batch of the run: index it with the step to resume.
  """
  n = len(rows["tokens"])
  if n < batch_size:
    raise DataError(f"{n} packed rows cannot fill a batch of {batch_size}; lower the batch size")
  ds = grain.MapDataset.source([{k: v[i] for k, v in rows.items()} for i in range(n)])
  if shuffle:
    ds = ds.shuffle(seed=seed)
  return ds.repeat().batch(batch_size, drop_remainder=True)
