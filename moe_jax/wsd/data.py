"""FiCLS-format WSD data: the TSV reader and writer, pair rows, and a context's candidate group.

A row is one (context, candidate gloss) pair, as the official FormBERT code reads
`data/v7/{train,dev,test}.tsv` (tab-separated, a header line, csv quoting):

  context     a sentence containing the target word
  definition  one candidate sense gloss of the target word
  label       1 if the gloss is the target's sense in this context, else 0
  formation   a word-formation tag (`moe_jax.wsd.formations.TAGS`): the formation
              of the target word in its in-context sense, the same on every
              candidate row of a context (FiCLS's own choice is unpublished; the
              predictor reads the context alone, which fits this reading)

The candidate rows of one context are consecutive; `context_groups` cuts the
rows into those groups, for sense-level accuracy (argmax over the group). The
shipped sample (`assets:wsd_sample.jsonl`, one JSON object per row with the
same four fields, built by `moe_jax.wsd.lexicon`) reads through `read_rows`
like a TSV, by its extension.

`encode` writes the model's rows: the pair in the tokenizer's own template
(`pair_template`: BERT's "[CLS] context [SEP] gloss [SEP]" with token types 0
through the first [SEP] and 1 after; XLM-R's "<s> context </s></s> gloss </s>"
with types all 0), and the context alone, "[CLS] context [SEP]" (`<s> context
</s>`) with types 0, for the formation predictor, as the official code
tokenizes both (N rows, T = seq_len).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from typing import NamedTuple

import numpy as np

from moe_jax import jsonl
from moe_jax.input_pipeline import DataError
from moe_jax.wsd import formations

COLUMNS = ("context", "definition", "label", "formation")


@dataclasses.dataclass(frozen=True)
class Row:
  context: str
  definition: str
  label: int  # 0 or 1
  formation: str  # a tag of formations.TAGS
  where: str = ""  # "path:line" it was read from, for errors about it


def _row(values: dict, where: str) -> Row:
  for field in COLUMNS:
    v = values.get(field)
    if v is None:
      raise DataError(f"{where}: field {field!r} is missing")
  for field in ("context", "definition"):
    if not isinstance(values[field], str) or not values[field].strip():
      raise DataError(f"{where}: field {field!r} must be a non-empty string, got {values[field]!r}")
  label = values["label"]
  if str(label).strip() not in ("0", "1"):
    raise DataError(f"{where}: field 'label' must be 0 or 1, got {label!r}")
  tag = str(values["formation"]).strip()
  if tag not in formations.TAG_ID:
    raise DataError(f"{where}: field 'formation': {tag!r} is not one of the 18 tags "
                    f"{list(formations.TAGS)}")
  return Row(values["context"], values["definition"], int(str(label).strip()), tag, where)


def read_tsv(path: str) -> list[Row]:
  """The rows of a FiCLS TSV (header naming at least the four COLUMNS, in any order)."""
  if not os.path.exists(path):
    raise DataError(f"{path}: no such file")
  with open(path, encoding="utf-8", newline="") as f:
    reader = csv.reader(f, delimiter="\t")
    header = next(reader, None)
    if header is None:
      raise DataError(f"{path}: empty file (expected a header line {list(COLUMNS)})")
    header = [h.strip() for h in header]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
      raise DataError(f"{path}:1: the header lacks column(s) {missing} (got {header})")
    rows = []
    for values in reader:
      where = f"{path}:{reader.line_num}"
      if not values or all(not v.strip() for v in values):
        continue
      if len(values) != len(header):
        raise DataError(f"{where}: {len(values)} fields, the header has {len(header)}")
      rows.append(_row(dict(zip(header, values)), where))
  if not rows:
    raise DataError(f"{path}: no rows after the header")
  return rows


def read_jsonl(path: str) -> list[Row]:
  """The rows of a JSONL file of {"context", "definition", "label", "formation"} objects."""
  rows = []
  for where, rec in jsonl.records(path, DataError):
    if not isinstance(rec, dict):
      raise DataError(f"{where}: expected an object with fields {list(COLUMNS)}")
    rows.append(_row(rec, where))
  if not rows:
    raise DataError(f"{path}: no rows")
  return rows


def read_rows(path: str) -> list[Row]:
  """A .jsonl file's rows, else a TSV's."""
  return read_jsonl(path) if path.endswith(".jsonl") else read_tsv(path)


def write_tsv(path: str, rows) -> None:
  """The rows as a FiCLS TSV: header, then one line per row (csv quoting where needed)."""
  with open(path, "w", encoding="utf-8", newline="") as f:
    w = csv.writer(f, delimiter="\t", lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
      w.writerow([r.context, r.definition, r.label, r.formation])


def write_jsonl(path: str, rows) -> None:
  with open(path, "w", encoding="utf-8") as f:
    for r in rows:
      f.write(json.dumps({c: getattr(r, c) for c in COLUMNS}, ensure_ascii=False) + "\n")


def context_groups(rows) -> np.ndarray:
  """[N] int32 group id of each row: consecutive rows with one context form one group.

  Raises DataError naming the group's first row when a group has no row with
  label 1 (sense-level accuracy needs the right gloss among the candidates).
  """
  ids = np.zeros(len(rows), np.int32)
  g, start = -1, 0
  for i, r in enumerate(rows):
    if i == 0 or r.context != rows[i - 1].context:
      _check_group(rows, start, i)
      g, start = g + 1, i
    ids[i] = g
  _check_group(rows, start, len(rows))
  return ids


def _check_group(rows, start: int, end: int) -> None:
  if end > start and not any(rows[j].label == 1 for j in range(start, end)):
    raise DataError(f"{rows[start].where or f'row {start}'}: the {end - start} candidate row(s) of "
                    f"context {rows[start].context[:30]!r} have no label 1")


def _truncate_pair(a: list[int], b: list[int], room: int) -> tuple[list[int], list[int]]:
  """transformers' "longest_first": drop the last token of the longer side until both fit."""
  a, b = list(a), list(b)
  while len(a) + len(b) > room:
    if len(a) >= len(b):
      a.pop()
    else:
      b.pop()
  return a, b


class PairTemplate(NamedTuple):
  """A pair's special tokens around its two texts and the token type of each part."""
  pre: list  # ids before text a ("[CLS]")
  mid: list  # ids between a and b ("[SEP]"; XLM-R "</s></s>")
  post: list  # ids after b ("[SEP]")
  types: tuple  # token types of (pre + a + mid, b + post)


def pair_template(tokenizer) -> PairTemplate:
  """The tokenizer's pair layout, read off its `encode_pair` on two probe texts (BERT's
  "[CLS] a [SEP] b [SEP]", types 0 then 1, for a tokenizer without one)."""
  cls, sep = tokenizer.bos_id, tokenizer.eos_id
  if cls is None or sep is None:
    raise ValueError("data.encode needs a tokenizer with begin and end tokens ([CLS]/[SEP], "
                     "<s>/</s>)")
  if not hasattr(tokenizer, "encode_pair"):
    return PairTemplate([cls], [sep], [sep], (0, 1))
  a, b = tokenizer.encode("a"), tokenizer.encode("b")
  ids, types = tokenizer.encode_pair("a", "b")
  for i in range(len(ids) - len(a) + 1):
    for j in range(i + len(a), len(ids) - len(b) + 1):
      if ids[i:i + len(a)] == a and ids[j:j + len(b)] == b:
        t = (types[i], types[j])
        if (all(x == t[0] for x in types[:j]) and all(x == t[1] for x in types[j:])):
          return PairTemplate(ids[:i], ids[i + len(a):j], ids[j + len(b):], t)
  raise ValueError(f"data.encode: the tokenizer's pair {ids} (types {types}) of 'a' {a} and "
                   f"'b' {b} "
                   "is not special tokens around the two texts")


def encode(rows, tokenizer, seq_len: int) -> dict:
  """The model's rows [N, T] (T = seq_len) and per-row fields [N].

  tokens, token_type_ids, segment_ids (1 = real, 0 = padding), positions: the pair
  (`pair_template`); context_tokens, context_segment_ids: "[CLS] context [SEP]" alone (types 0);
  label, formation (the tag's id), group (`context_groups`).
  """
  n, cls, sep = len(rows), tokenizer.bos_id, tokenizer.eos_id
  tpl = pair_template(tokenizer)
  room = seq_len - len(tpl.pre) - len(tpl.mid) - len(tpl.post)
  out = {k: np.zeros((n, seq_len), np.int32) for k in (
      "tokens", "token_type_ids", "segment_ids", "positions", "context_tokens",
      "context_segment_ids")}
  out["tokens"][:] = tokenizer.pad_id
  out["context_tokens"][:] = tokenizer.pad_id
  for i, r in enumerate(rows):
    ctx, gloss = tokenizer.encode(r.context), tokenizer.encode(r.definition)
    a, b = _truncate_pair(ctx, gloss, room)
    first = tpl.pre + a + tpl.mid
    ids = first + b + tpl.post
    out["tokens"][i, :len(ids)] = ids
    out["token_type_ids"][i, :len(first)] = tpl.types[0]
    out["token_type_ids"][i, len(first):len(ids)] = tpl.types[1]
    out["segment_ids"][i, :len(ids)] = 1
    out["positions"][i, :len(ids)] = np.arange(len(ids))
    c = [cls] + ctx[:seq_len - 2] + [sep]
    out["context_tokens"][i, :len(c)] = c
    out["context_segment_ids"][i, :len(c)] = 1
  out["label"] = np.asarray([r.label for r in rows], np.int32)
  out["formation"] = np.asarray([formations.TAG_ID[r.formation] for r in rows], np.int32)
  out["group"] = context_groups(rows)
  return out
