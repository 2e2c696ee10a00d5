"""The finance event dictionary, its BIO role extractor, and the news JSONL a user brings.

The paper's TFED (TOPIX Finance Event Dictionary: 32 event types with trigger
words and role patterns over POS and dependency parses) is not public. This is
a small dictionary of the same shape, written here: K event types, each with
trigger words and direction words, and role patterns shared by every type:

  COMPANY    a name in the dictionary's company list
  TIME       a period expression (first-quarter, full-year, quarterly, ...)
  DIRECTION  the type's up and down words (rose / fell, raised / cut, ...)
  RATE       a number followed by "percent" or "%"

`extract(text)` follows the paper's steps on word-level tokens (no parser: the
patterns are word lists and a number pattern): a trigger word fires an event
of its type, then the role patterns are matched in the same sentence, and every
word gets a BIO tag (`TAGS`: O, B-/I- of each type's trigger, B-/I- of each
role). Text whose trigger is not in the dictionary gets no event and all-O
tags: the news MSSPM's CRF is meant to generalise to.

`piece_tags` carries the word tags onto a word-piece tokenizer's ids (the
engine model's), and `read_news` reads a user's news JSONL:
{"time": ISO local exchange time, "ticker": str, "text": str} per line.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from moe_jax import jsonl
from moe_jax.input_pipeline import DataError

ROLES = ("COMPANY", "TIME", "DIRECTION", "RATE")


@dataclasses.dataclass(frozen=True)
class EventType:
  name: str
  triggers: tuple[str, ...]  # words (lower case) that fire the event
  up: tuple[str, ...]  # direction words meaning "up" for this event
  down: tuple[str, ...]


# The dictionary's event types. The simulator (moe_jax.finance.simulate) writes news with these
# words and, for part of the news, with paraphrases outside them.
EVENT_TYPES = (
    EventType("EARNINGS", ("profit", "earnings"), ("rose", "increased", "grew"),
              ("fell", "decreased", "declined")),
    EventType("FORECAST", ("forecast", "guidance"), ("raised", "lifted"), ("cut", "lowered")),
    EventType("RATING", ("rating",), ("upgraded",), ("downgraded",)),
    EventType("SALES", ("sales", "revenue"), ("rose", "increased", "grew"),
              ("fell", "decreased", "declined")),
)
COMPANIES = ("apple", "ibm", "microsoft", "google", "intel", "oracle", "cisco", "dell")
TIMES = ("first-quarter", "second-quarter", "third-quarter", "fourth-quarter", "quarterly",
         "full-year", "annual", "monthly", "half-year")
RATE_UNITS = ("percent", "%")

TAGS = ("O",) + tuple(f"{b}-{e.name}" for e in EVENT_TYPES for b in "BI") + tuple(
    f"{b}-{r}" for r in ROLES for b in "BI")
TAG_IDS = {t: i for i, t in enumerate(TAGS)}
NUM_TAGS = len(TAGS)
NUM_EVENTS = len(EVENT_TYPES)  # a coarse event id is 0 (none) or 1 + the type's index

_WORD = re.compile(r"\d+(?:\.\d+)?|[A-Za-z][A-Za-z'\-]*|%|[^\sA-Za-z\d]")
_NUMBER = re.compile(r"\d+(?:\.\d+)?$")


def words(text: str) -> list[str]:
  """Word-level tokens: words (hyphens kept), numbers, "%", other punctuation one by one."""
  return _WORD.findall(text)


@dataclasses.dataclass(frozen=True)
class Extraction:
  """What the dictionary found in one text."""
  words: list[str]
  tags: list[str]  # one BIO tag per word
  event: int  # 0 = no event, else 1 + the index in EVENT_TYPES
  direction: int  # +1 up word, -1 down word, 0 none
  rate: float  # the RATE number, NaN when none

  @property
  def tag_ids(self) -> list[int]:
    return [TAG_IDS[t] for t in self.tags]


def _sentences(ws: list[str]) -> list[tuple[int, int]]:
  spans, start = [], 0
  for i, w in enumerate(ws):
    if w in (".", "!", "?", ";"):
      spans.append((start, i + 1))
      start = i + 1
  if start < len(ws):
    spans.append((start, len(ws)))
  return spans


def extract(text: str) -> Extraction:
  """The first dictionary event in `text` (trigger, then roles in its sentence) as BIO tags."""
  ws = words(text)
  low = [w.lower() for w in ws]
  tags = ["O"] * len(ws)
  for lo, hi in _sentences(ws):
    for i in range(lo, hi):
      k = next((k for k, e in enumerate(EVENT_TYPES) if low[i] in e.triggers), None)
      if k is None:
        continue
      e = EVENT_TYPES[k]
      tags[i] = f"B-{e.name}"
      direction, rate = 0, float("nan")
      for j in range(lo, hi):
        if j == i:
          continue
        if low[j] in COMPANIES:
          tags[j] = "B-COMPANY"
        elif low[j] in TIMES:
          tags[j] = "B-TIME"
        elif low[j] in e.up or low[j] in e.down:
          tags[j] = "B-DIRECTION"
          direction = direction or (1 if low[j] in e.up else -1)
        elif _NUMBER.match(low[j]) and j + 1 < hi and low[j + 1] in RATE_UNITS:
          tags[j], tags[j + 1] = "B-RATE", "I-RATE"
          rate = float(low[j]) if np.isnan(rate) else rate
      return Extraction(ws, tags, 1 + k, direction, rate)
  return Extraction(ws, tags, 0, 0, float("nan"))


def piece_tags(ws: list[str], tags: list[int], tokenizer, seq_len: int,
               specials: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """(token ids [seq_len] int32, tag ids [seq_len] int32) of word-level `ws` and `tags` on a
  word-piece tokenizer: each word is encoded alone, its first piece keeps the word's tag and the
  rest continue it (B-X -> I-X); with `specials`, between [CLS] and [SEP] (tag O). Padding is
  the tokenizer's pad id with tag O; a longer text keeps its first pieces (and the [SEP])."""
  ids, out = [], []
  for w, t in zip(ws, tags):
    pieces = tokenizer.encode(w)
    name = TAGS[t]
    cont = TAG_IDS["I-" + name[2:]] if name != "O" else t
    ids += pieces
    out += [t] + [cont] * (len(pieces) - 1)
  if specials:
    room = seq_len - 2
    ids = [tokenizer.bos_id] + ids[:room] + [tokenizer.eos_id]
    out = [0] + out[:room] + [0]
  ids, out = ids[:seq_len], out[:seq_len]
  tok = np.full(seq_len, tokenizer.pad_id, np.int32)
  tag = np.zeros(seq_len, np.int32)
  tok[:len(ids)], tag[:len(out)] = ids, out
  return tok, tag


@dataclasses.dataclass(frozen=True)
class News:
  """A user's news items, in file order; every array is [N]."""
  times: np.ndarray  # datetime64[s], the exchange's local time of publication
  tickers: list[str]
  texts: list[str]

  def __len__(self) -> int:
    return len(self.texts)


def read_news(path: str) -> News:
  """News JSONL: {"time": "2009-04-21T16:05:00", "ticker": "AAPL", "text": "..."} per line."""
  times, tickers, texts = [], [], []
  for where, rec in jsonl.records(path, DataError):
    if not isinstance(rec, dict):
      raise DataError(f"{where}: expected an object with 'time', 'ticker' and 'text'")
    for field in ("time", "ticker", "text"):
      if not isinstance(rec.get(field), str) or not rec[field].strip():
        raise DataError(f"{where}: field {field!r} must be a non-empty string, got "
                        f"{rec.get(field)!r}")
    try:
      t = np.datetime64(rec["time"], "s")
    except ValueError:
      raise DataError(f"{where}: field 'time' is not an ISO time (YYYY-MM-DDTHH:MM[:SS]): "
                      f"{rec['time']!r}") from None
    times.append(t)
    tickers.append(rec["ticker"])
    texts.append(rec["text"])
  if not texts:
    raise DataError(f"{path}: no news items")
  return News(np.asarray(times, "datetime64[s]"), tickers, texts)
