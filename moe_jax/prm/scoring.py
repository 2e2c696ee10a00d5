"""Scoring solutions with a trained PRM: every step's p(good) from one forward pass per solution."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from moe_jax import input_pipeline
from moe_jax.model import Model
from moe_jax.prm import data as prm_data
from moe_jax.prm import reward


def step_scores(model: Model, tokenizer, question: str, solutions: Sequence[Sequence[str]],
                tag: str = prm_data.TAG, good: str = prm_data.GOOD, bad: str = prm_data.BAD,
                value_head: bool = False, seq_len: int = 1024, batch_size: int = 16) -> list[list[float]]:
  """p(good) for each step of each solution (a list of step texts) to `question`."""
  good_id, bad_id = reward.label_ids(tokenizer, good, bad)
  head = reward.RewardHead(good_id, bad_id, value_head)
  encoded = []
  for i, steps in enumerate(solutions):
    ex = prm_data.Example(question, list(steps), [0.0] * len(steps))
    enc = prm_data.encode(ex, tokenizer, tag, line=f"solution {i}")
    if len(enc["tokens"]) > seq_len:
      raise ValueError(f"solution {i}: {len(enc['tokens'])} tokens exceed seq_len={seq_len}")
    encoded.append(enc)
  # One solution per row (no packing) keeps the scores in solution order.
  rows = [input_pipeline.pack_fields([e], max(len(e["tokens"]) for e in encoded), tokenizer.pad_id)
          for e in encoded]
  width = max(r["tokens"].shape[1] for r in rows)
  batch = {k: np.concatenate([np.pad(r[k], ((0, 0), (0, width - r[k].shape[1]))) for r in rows])
           for k in rows[0]}
  probs, _ = reward.score_rows(model, batch, head, batch_size)
  out, at = [], 0
  for steps in solutions:
    out.append([float(x) for x in probs[at:at + len(steps)]])
    at += len(steps)
  return out
