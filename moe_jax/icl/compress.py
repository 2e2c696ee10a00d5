"""Anchor-only context compression (paper Sec. 3.2, App. I; official `compress.py`).

Hidden_anchor keeps, from the demonstrations' per-layer keys and values, only
the anchors: each demonstration's formatting tokens ("Review:") and its label
line ("\\nSentiment:", the label word, the newline). The query then runs
against that cache alone (`runner.ContextCache.keep`), its positions
continuing from the last kept one (the official choice for rotary models).
Baselines:
  Text_anchor        the text context with the demonstrations' sentences removed
                     (their formatting and label lines kept), run as text;
  Hidden_random      the same formatting slots, but each label word replaced by
                     one random text slot of the same demonstration;
  Hidden_random-top  the best label loyalty of `draws` Hidden_random draws
                     (the official `--ks_num 20`).
"""

from __future__ import annotations

import numpy as np

from moe_jax.icl.prompts import Prompt

METHODS = ("icl", "text_anchor", "hidden_random", "hidden_random_top", "hidden_anchor")
_FORMAT = ("input_prefix", "label_prefix", "end")


def _span(demo: dict, field: str) -> list[int]:
  a, b = demo[field]
  return list(range(a, b))


def anchor_slots(prompt: Prompt) -> np.ndarray:
  """The Hidden_anchor slots: formatting tokens and label lines of every demonstration."""
  return np.asarray(sorted(s for d in prompt.demos for f in _FORMAT + ("label",) for s in _span(d, f)))


def random_slots(prompt: Prompt, rng: np.random.Generator) -> np.ndarray:
  """Hidden_random: the formatting slots, with each label word swapped for a random text slot."""
  slots = [s for d in prompt.demos for f in _FORMAT for s in _span(d, f)]
  slots += [int(rng.choice(_span(d, "text"))) for d in prompt.demos]
  return np.asarray(sorted(slots))


def text_anchor_ids(prompt: Prompt) -> tuple[np.ndarray, np.ndarray]:
  """Text_anchor: (the context's tokens without the demonstration texts, the label positions
  in them)."""
  drop = {s for d in prompt.demos for s in _span(d, "text")}
  keep = np.asarray([i for i in range(len(prompt.ids)) if i not in drop])
  new_pos = np.searchsorted(keep, prompt.label_pos)
  return prompt.ids[keep], new_pos
