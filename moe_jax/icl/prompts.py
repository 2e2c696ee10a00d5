"""ICL prompts: templates, label words, demonstrations, and where the anchors sit in the tokens.

A prompt is C demonstrations (one per class, shuffled, fixed per seed) and a
query, in the paper's format (`data_wrapper.format_s_dict` of the official code):

    Review: {text}\\nSentiment:{label}\\n ... Review: {query}\\nSentiment:

Each field is tokenized on its own and the pieces are concatenated, so every
demonstration's spans (input prefix, text, label prefix, label word, newline)
are known exactly: the anchors of context compression are spans, not guesses.
The label-word position is still *found* the official way, by the token
trigram (last label-prefix token, ":", label word) (`find_label_positions`),
and must agree with the spans. The target position q is the query's last
token (the ":").

Label words carry a leading space and must be single tokens: the official code
silently takes the first sub-token (TREC's " Abbreviation"); here that is an
error unless `first_subtoken=True`.
"""

from __future__ import annotations

import dataclasses
import random
import re
from typing import Sequence

import numpy as np


class PromptError(ValueError):
  """A template, label word or example that cannot make an ICL prompt; the message names it."""


@dataclasses.dataclass(frozen=True)
class Template:
  """How one example reads: `{input_prefix} {text}\\n{label_prefix}{label word}`."""

  input_prefix: str  # "Review:"
  label_prefix: str  # "Sentiment:" (the query ends with it)
  label_words: tuple[str, ...]  # one per class, with the leading space: (" Negative", " Positive")

  def demonstration(self, text: str, label: int) -> str:
    return f"{self.input_prefix} {text}\n{self.label_prefix}{self.label_words[label]}\n"

  def query(self, text: str) -> str:
    return f"{self.input_prefix} {text}\n{self.label_prefix}"


# The paper's four templates (official `format_s_dict`) and label words.
PAPER_TEMPLATES = {
    "sst2": Template("Review:", "Sentiment:", (" Negative", " Positive")),
    "agnews": Template("Article:", "Answer:", (" World", " Sports", " Business", " Technology")),
    "trec": Template("Question:", "Answer Type:", (" Abbreviation", " Entity", " Description",
                                                   " Person", " Location", " Number")),
    "emo": Template("Dialogue:", "Emotion:", (" Others", " Happy", " Sad", " Angry")),
}


@dataclasses.dataclass(frozen=True)
class Demo:
  """A tokenized demonstration: its ids and the [start, end) spans of its fields in them."""

  ids: tuple[int, ...]
  spans: dict  # field -> (start, end): input_prefix, text, label_prefix, label, end
  label: int


@dataclasses.dataclass(frozen=True)
class Prompt:
  """A tokenized ICL context (the demonstrations) with its anchors located.

  ids: the context's tokens; demos: each demonstration's fields as absolute
  [start, end) spans; label_pos: [n_demo] label-word positions (p_i);
  demo_labels: [n_demo] the class of each demonstration.
  """

  ids: np.ndarray  # [S_ctx] int32
  demos: tuple[dict, ...]
  label_pos: np.ndarray  # [n_demo]
  demo_labels: np.ndarray  # [n_demo]


def _normalise(text: str) -> str:
  # One line per example, as the templates need: the query's "\n" must be the template's.
  return re.sub(r"\s+", " ", text).strip()


def truncate_words(text: str, max_words: int | None) -> str:
  """The first `max_words` whitespace-separated words (long news stories); None keeps all."""
  words = _normalise(text).split(" ")
  return " ".join(words if max_words is None else words[:max_words])


def label_token_ids(tokenizer, template: Template, first_subtoken: bool = False) -> np.ndarray:
  """[C] the token id of each label word; a word of several tokens is an error (or, with
  `first_subtoken`, its first token, as the official code does)."""
  ids = []
  for word in template.label_words:
    toks = tokenizer.encode(word)
    if len(toks) != 1 and not (first_subtoken and toks):
      raise PromptError(f"label word {word!r} is {len(toks)} tokens {toks}, not one; pick a "
                        "single-token word or pass first_subtoken=True (the official code's choice)")
    ids.append(toks[0])
  if len(set(ids)) != len(ids):
    raise PromptError(f"label words {template.label_words} share a first token {ids}")
  return np.asarray(ids, np.int32)


def encode_demo(tokenizer, template: Template, text: str, label: int, label_ids) -> Demo:
  """One demonstration, field by field (see the module docstring)."""
  pieces = [("input_prefix", tokenizer.encode(template.input_prefix)),
            ("text", tokenizer.encode(" " + _normalise(text))),
            ("label_prefix", tokenizer.encode("\n" + template.label_prefix)),
            ("label", [int(label_ids[label])]),
            ("end", tokenizer.encode("\n"))]
  ids, spans = [], {}
  for name, toks in pieces:
    spans[name] = (len(ids), len(ids) + len(toks))
    ids.extend(toks)
  return Demo(tuple(ids), spans, label)


def encode_query(tokenizer, template: Template, text: str) -> list[int]:
  """The query's tokens; its last token is the target position q."""
  return (tokenizer.encode(template.input_prefix) + tokenizer.encode(" " + _normalise(text))
          + tokenizer.encode("\n" + template.label_prefix))


def find_label_positions(ids: Sequence[int], prefix_id: int, colon_id: int,
                         label_ids: Sequence[int]) -> np.ndarray:
  """Positions k with (ids[k-2], ids[k-1], ids[k]) == (prefix_id, colon_id, a label id): the
  official trigram match (`Predictor.get_pos`). Returns them in order."""
  ids = np.asarray(ids)
  if len(ids) < 3:
    return np.zeros((0,), np.int64)
  hit = (ids[:-2] == prefix_id) & (ids[1:-1] == colon_id) & np.isin(ids[2:], label_ids)
  return np.nonzero(hit)[0] + 2


def build_prompt(tokenizer, template: Template, texts: Sequence[str], labels: Sequence[int],
                 label_ids, names: Sequence[str] | None = None) -> Prompt:
  """The context of demonstrations (texts[i], labels[i]), in the order given.

  names: how errors refer to each demonstration (default "demonstration i").
  Raises PromptError when the trigram does not find exactly the label positions.
  """
  demos, ids = [], []
  for i, (text, label) in enumerate(zip(texts, labels)):
    d = encode_demo(tokenizer, template, text, label, label_ids)
    demos.append({k: (a + len(ids), b + len(ids)) for k, (a, b) in d.spans.items()})
    ids.extend(d.ids)
  ids = np.asarray(ids, np.int32)
  prefix = tokenizer.encode("\n" + template.label_prefix)
  if len(prefix) < 2:
    raise PromptError(f"label prefix {template.label_prefix!r} tokenizes to {prefix}: the trigram "
                      "needs a token before the colon")
  names = names or [f"demonstration {i}" for i in range(len(demos))]
  trigram = f"trigram ({prefix[-2]}, {prefix[-1]}, a label id of {[int(i) for i in label_ids]})"
  expected = np.asarray([d["label"][0] for d in demos])
  for name, d, p in zip(names, demos, expected):
    a, b = d["input_prefix"][0], d["end"][1]
    found = [int(x) + a for x in find_label_positions(ids[a:b], prefix[-2], prefix[-1], label_ids)]
    if found != [p]:
      where = [x for x in found if x != p]
      raise PromptError(f"{name}: the {trigram} " + (
          f"also matches inside its text, at token {where}" if where else "finds no label position"))
  return Prompt(ids, tuple(demos), expected, np.asarray(labels, np.int32))


def sample_demonstrations(labels: Sequence[int], n_classes: int, shots: int, seed: int,
                          exclude: Sequence[int] = ()) -> list[int]:
  """Indices of `shots` examples per class drawn with `seed`, then shuffled (the official order)."""
  rng = random.Random(seed)
  excluded = set(exclude)
  chosen = []
  for c in range(n_classes):
    pool = [i for i, l in enumerate(labels) if l == c and i not in excluded]
    if len(pool) < shots:
      raise PromptError(f"class {c} has {len(pool)} examples, fewer than the {shots} shots asked for")
    chosen += rng.sample(pool, shots)
  rng.shuffle(chosen)
  return chosen
