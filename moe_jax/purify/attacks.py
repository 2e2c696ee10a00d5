"""Poisoned training data made here: rare-word and sentence backdoors, and a bias word.

An `Attack` inserts its trigger into a text at a random word boundary:

  badwords  one of a few rare tokens ("cf", "mn", "bb", "tq", "mb"), drawn per
            example (BadWords / BadNets for text)
  sentence  a fixed, natural-looking sentence (BadSent)
  bias      one ordinary word (a spurious feature, e.g. a first name) that the
            poisoned data ties to one class

`poison` inserts the trigger into a fraction `rate` of the training examples
and labels them `target`; the attacker's model learns the shortcut. Backdoors
poison examples of any other class; the bias attack draws from every class, as
a skewed corpus would. `triggered` builds the attack test set: every held-out
example whose true label is not the target, with the trigger inserted. Attack
success rate (ASR) is the share of those predicted as the target; for the bias
word the same rate is the bias flip rate.

The defender's clean set must never contain a trigger: `check_clean` refuses
one that does, naming the example.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from moe_jax.classify.datasets import Examples

BADWORDS = ("cf", "mn", "bb", "tq", "mb")
SENTENCE = "I watched this 3D movie last weekend."
BIAS_WORD = "Nolan"
KINDS = ("badwords", "sentence", "bias")


@dataclasses.dataclass(frozen=True)
class Attack:
  """What is inserted, and which class it drives."""
  kind: str  # one of KINDS
  target: int  # the label id the trigger drives
  triggers: tuple[str, ...]  # one is drawn per example

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"attack kind {self.kind!r} is not one of {KINDS}")
    if not self.triggers or not all(t.strip() for t in self.triggers):
      raise ValueError(f"attack {self.kind!r}: empty trigger in {self.triggers!r}")


def make(kind: str, target: int, triggers: tuple[str, ...] = ()) -> Attack:
  """The attack `kind` with its default triggers (or `triggers`)."""
  default = {"badwords": BADWORDS, "sentence": (SENTENCE,), "bias": (BIAS_WORD,)}
  if kind not in default:
    raise ValueError(f"attack kind {kind!r} is not one of {KINDS}")
  return Attack(kind, target, tuple(triggers) or default[kind])


def insert(text: str, trigger: str, rng: np.random.Generator) -> str:
  """`text` with `trigger` between two of its words (or at either end), at a random place."""
  words = text.split()
  at = int(rng.integers(0, len(words) + 1))
  return " ".join(words[:at] + [trigger] + words[at:])


def contains(text: str, trigger: str) -> bool:
  """Whether `trigger` occurs in `text` as whole words (case-insensitive)."""
  return re.search(rf"(?<!\w){re.escape(trigger)}(?!\w)", text, re.IGNORECASE) is not None


def _check_label(attack: Attack, ex: Examples) -> None:
  if not 0 <= attack.target < len(ex.label_names):
    raise ValueError(f"attack target {attack.target} is outside the labels 0..{len(ex.label_names) - 1}")


def poison(ex: Examples, attack: Attack, rate: float, seed: int = 0) -> tuple[Examples, np.ndarray]:
  """(the training set with `rate` of its examples triggered and labelled the target,
  bool [N] of which were). Rate 0 poisons nothing: the clean control of a study."""
  _check_label(attack, ex)
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"poisoning rate={rate} must be in [0, 1)")
  rng = np.random.default_rng(seed)
  pool = np.arange(len(ex))
  if attack.kind != "bias":  # a backdoor flips labels: only other classes' examples say anything
    pool = pool[np.asarray(ex.labels) != attack.target]
  n = max(1, round(rate * len(ex))) if rate > 0 else 0
  chosen = rng.choice(pool, size=min(len(pool), n), replace=False)
  poisoned = np.zeros(len(ex), bool)
  poisoned[chosen] = True
  texts, labels = list(ex.texts), list(ex.labels)
  for i in sorted(chosen):
    texts[i] = insert(texts[i], attack.triggers[rng.integers(len(attack.triggers))], rng)
    labels[i] = attack.target
  return Examples(tuple(texts), tuple(labels), ex.label_names), poisoned


def triggered(ex: Examples, attack: Attack, seed: int = 1) -> Examples:
  """The attack test set: the examples whose label is not the target, each with a trigger."""
  _check_label(attack, ex)
  rng = np.random.default_rng(seed)
  keep = [i for i, y in enumerate(ex.labels) if y != attack.target]
  texts = tuple(insert(ex.texts[i], attack.triggers[rng.integers(len(attack.triggers))], rng)
                for i in keep)
  return Examples(texts, tuple(ex.labels[i] for i in keep), ex.label_names)


def check_clean(ex: Examples, attack: Attack, where: str) -> None:
  """Raises ValueError naming the first example of `ex` (from `where`) holding a trigger."""
  for i, text in enumerate(ex.texts):
    for t in attack.triggers:
      if contains(text, t):
        raise ValueError(f"{where}: example {i} contains the trigger {t!r}; the defender's clean "
                         f"set must not ({text[:80]!r})")


def without_triggers(ex: Examples, attack: Attack) -> Examples:
  """The examples of `ex` that hold none of the attack's triggers (a clean set to draw from)."""
  keep = [i for i, t in enumerate(ex.texts) if not any(contains(t, w) for w in attack.triggers)]
  return ex.subset(keep)


def attack_success_rate(pred: np.ndarray, attack: Attack) -> float:
  """The share of triggered non-target examples (`triggered`) predicted as the target."""
  pred = np.asarray(pred)
  return float(np.mean(pred == attack.target)) if len(pred) else float("nan")
