"""Scoring solutions with a trained PRM: every step's p(good) from one forward pass per solution."""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

from moe_jax import input_pipeline
from moe_jax.metric_writers import progress
from moe_jax.model import Model
from moe_jax.prm import data as prm_data
from moe_jax.prm import reward

_WIDTH_BUCKET = 32  # rows are padded to a multiple of this, so few shapes get compiled
_CHUNK = 2048  # solutions packed and scored at a time (a progress step)


def score_solutions(model: Model, tokenizer, items: Sequence[tuple[str, Sequence[str]]],
                    tag: str = prm_data.TAG, good: str = prm_data.GOOD, bad: str = prm_data.BAD,
                    value_head: bool = False, seq_len: int = 1024, batch_size: int = 16,
                    show_progress: bool | None = None) -> list[list[float]]:
  """p(good) for each step of each (question, steps) item, in order.

  A progress bar shows from 1,000 items on (or as `show_progress` says).
  """
  if not items:
    return []
  good_id, bad_id = reward.label_ids(tokenizer, good, bad)
  head = reward.RewardHead(good_id, bad_id, value_head)
  encoded = []
  for i, (question, steps) in enumerate(items):
    ex = prm_data.Example(question, list(steps), [0.0] * len(steps))
    enc = prm_data.encode(ex, tokenizer, tag, line=f"solution {i}")
    if len(enc["tokens"]) > seq_len:
      raise ValueError(f"solution {i}: {len(enc['tokens'])} tokens exceed seq_len={seq_len}")
    encoded.append(enc)
  # Rows are only as wide as the solutions they hold: attention grows with the square of the
  # row width, so one width for all (the longest) would spend most of the work on padding.
  by_width = defaultdict(list)
  for i, enc in enumerate(encoded):
    by_width[-(-len(enc["tokens"]) // _WIDTH_BUCKET) * _WIDTH_BUCKET].append(i)
  # Each width is one more program to compile, and a group is scored in batches of batch_size
  # rows (the last padded), so a width with fewer solutions than a batch joins the next wider
  # one instead: a few hundred solutions of scattered lengths compile a handful of programs, not
  # one per width. The widest width takes whatever is left.
  widths, groups, pending = sorted(by_width), [], []
  for width in widths:
    pending += by_width[width]
    if len(pending) >= batch_size or width == widths[-1]:
      groups.append((width, pending))
      pending = []
  out = [[] for _ in items]
  bar = progress(len(items), 0, "score", len(items) >= 1000 if show_progress is None else show_progress)
  for width, group in groups:
    for c in range(0, len(group), _CHUNK):
      idx = group[c:c + _CHUNK]
      # Packing keeps the solutions in order, and score_rows reads score positions row-major,
      # so the flat scores are in the order of idx.
      rows = input_pipeline.pack_fields([encoded[i] for i in idx], width, tokenizer.pad_id)
      probs, _ = reward.score_rows(model, rows, head, batch_size)
      at = 0
      for i in idx:
        n = len(items[i][1])
        out[i] = [float(x) for x in probs[at:at + n]]
        at += n
      bar.update(len(idx))
  bar.close()
  return out


def step_scores(model: Model, tokenizer, question: str, solutions: Sequence[Sequence[str]],
                tag: str = prm_data.TAG, good: str = prm_data.GOOD, bad: str = prm_data.BAD,
                value_head: bool = False, seq_len: int = 1024, batch_size: int = 16) -> list[list[float]]:
  """p(good) for each step of each solution (a list of step texts) to `question`."""
  return score_solutions(model, tokenizer, [(question, s) for s in solutions], tag, good, bad,
                         value_head, seq_len, batch_size)
