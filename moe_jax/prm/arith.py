"""ArithChain: a synthetic word-problem task with exact step-level ground truth (spec E1, E2).

The offline Math-Shepherd reproduction needs problems whose step correctness is
known exactly, so that automatic (HE/SE) labels can be scored against the truth.
A problem is one running quantity s_0 (1..20) and K operations (+b, -b, *m, /m)
written as template sentences, with optional distractor sentences and
cancelling +b/-b pairs; the gold solution is one operation per step:

  Step 1: 7 + 5 = 12
  Step 2: 12 / 3 = 4. The answer is: 4

`make_split` generates seeded splits, `check` is the exact checker (used only for
labels and evaluation, never shown to a model), `oracle_labels` gives the prefix
labels HE/SE estimate, and `ArithTokenizer` is the word-level tokenizer (digits
split, "ки" the step tag, "+"/"-" doubling as label tokens) whose `decode`
inverts `encode` on every text the generator writes.
"""

from __future__ import annotations

import dataclasses
import re
import zlib
from typing import Iterable, Sequence

import numpy as np

from moe_jax.prm import data, gsm8k

STEP_TAG = data.TAG.strip()  # one token here: the tag without its leading space
NAMES = ("Anna", "Ben", "Emma", "Leo", "Lucy", "Mia", "Sam", "Tom")
ITEMS = (("apple", "apples"), ("book", "books"), ("card", "cards"), ("coin", "coins"), ("cookie", "cookies"),
         ("marble", "marbles"), ("pear", "pears"), ("pencil", "pencils"), ("shell", "shells"))
# {name}, {n} (a count), {noun} (singular when the count is 1), {items} (plural), {m} (a factor).
TEMPLATES = {
    "+": ("{name} buys {n} more {noun}.", "{name} gets {n} more {noun} from a friend.",
          "{name} finds {n} more {noun}.", "At the market, {name} buys {n} more {noun}."),
    "-": ("{name} gives away {n} {noun}.", "{name} loses {n} {noun}.", "{name} sells {n} {noun}.",
          "{name} gives {n} {noun} to a friend."),
    "*": ("{name} now has {m} times as many {items} as before.",
          "{name} ends up with {m} times as many {items} as before."),
    "/": ("{name} splits the {items} equally into {m} groups and keeps one group.",
          "{name} divides the {items} equally into {m} bags and keeps one bag."),
}
# Factor-specific phrasings, added to the general "*" templates for that factor.
MUL_WORDS = {2: "{name} doubles the number of {items}.", 3: "{name} triples the number of {items}."}
DISTRACTORS = ("{name} has {n} {noun}.", "{name} buys {n} {noun}.")
INTRO = "{name} has {n} {noun}."
QUESTION = "How many {items} does {name} have now?"
FRAMING_WORDS = ("User", "Assistant", "Step", "The", "answer", "is")

P_DISTRACTOR, P_CANCEL = 0.3, 0.15
# Two-digit values and one-digit-ish operands: the spec's mitigation (E7) for a model that is too
# small (and, here, too briefly trained) for three-digit arithmetic; calibrated on the dev split.
MAX_OPERAND, FACTORS, MAX_VALUE = 10, (2, 3, 4, 5), 99
ERROR_TYPES = ("format", "arithmetic", "operand", "skipped", "extra")


@dataclasses.dataclass(frozen=True)
class Op:
  """One operation of a problem: kind and operand, and the question sentence stating it."""
  kind: str  # "+", "-", "*", "/"
  operand: int
  text: str  # the question sentence that states this operation


@dataclasses.dataclass(frozen=True)
class Problem:
  """An ArithChain problem: the start value, K operations, every intermediate value and the answer."""
  question: str
  start: int  # s_0, 1..20
  ops: tuple[Op, ...]  # K operations, applied in order
  values: tuple[int, ...]  # s_0..s_K, all in 0..MAX_VALUE
  answer: int  # s_K

  @property
  def k(self) -> int:
    return len(self.ops)

  def gold_steps(self) -> list[str]:
    """K strings "Step i: a OP b = c", the last followed by ". The answer is: s_K"."""
    return _written(self.ops, self.values)


def _written(ops: Sequence[Op], values: Sequence[int]) -> list[str]:
  """Steps "Step i: a OP b = c" from running values s_0..s_n, the last stating s_n as the answer."""
  steps = [f"Step {i + 1}: {a} {op.kind} {op.operand} = {c}"
           for i, (op, a, c) in enumerate(zip(ops, values, values[1:]))]
  steps[-1] += f". The answer is: {values[-1]}"
  return steps


def slipped(problem: Problem, step: int, delta: int) -> list[str] | None:
  """The gold solution with step `step`'s result off by `delta`, the later steps carried on
  correctly from the wrong value: one arithmetic slip, then propagated errors, a wrong answer.

  None where the slip leaves 0..MAX_VALUE or makes a later division inexact. A hard negative:
  as long as the gold and worded like it.
  """
  if not 0 <= step < problem.k or delta == 0:
    raise ValueError(f"need 0 <= step < {problem.k} and delta != 0, got step={step}, delta={delta}")
  values = list(problem.values[:step + 1]) + [problem.values[step + 1] + delta]
  for op in problem.ops[step + 1:]:
    values.append(apply(op.kind, values[-1], op.operand) if 0 <= values[-1] <= MAX_VALUE else None)
    if values[-1] is None:
      return None
  return _written(problem.ops, values) if all(0 <= v <= MAX_VALUE for v in values) else None


def stopped_early(problem: Problem, steps: int) -> list[str]:
  """The gold solution's first `steps` steps (1 <= steps < K), the last stating its value as
  the answer: every step right but the answer, which skips the remaining operations."""
  if not 1 <= steps < problem.k:
    raise ValueError(f"need 1 <= steps < {problem.k}, got {steps}")
  return _written(problem.ops[:steps], problem.values[:steps + 1])


def apply(kind: str, a: int, b: int) -> int | None:
  """a OP b as an exact integer; None for a division that is not exact (or by zero)."""
  if kind == "+":
    return a + b
  if kind == "-":
    return a - b
  if kind == "*":
    return a * b
  if kind == "/":
    return a // b if b != 0 and a % b == 0 else None
  raise ValueError(f"unknown operation {kind!r}")


def _render(template: str, name: str, item: tuple[str, str], n: int = 0, m: int = 0) -> str:
  return template.format(name=name, n=n, m=m, noun=item[0] if n == 1 else item[1], items=item[1])


def _draw_op(rng: np.random.Generator, s: int, name: str, item: tuple[str, str]) -> Op:
  """One operation valid at value s (result in 0..MAX_VALUE, division exact); redraws the kind when none fits."""
  while True:  # terminates: "+" fits below MAX_VALUE and "-" fits above 0.
    kind = "+-*/"[rng.integers(4)]
    if kind == "+":
      choices = list(range(1, min(MAX_OPERAND, MAX_VALUE - s) + 1))
    elif kind == "-":
      choices = list(range(1, min(MAX_OPERAND, s) + 1))
    elif kind == "*":  # s > 0: multiplying or splitting nothing is a degenerate step.
      choices = [m for m in FACTORS if s > 0 and s * m <= MAX_VALUE]
    else:  # Choosing among the factors that divide s keeps "/" from being almost always redrawn.
      choices = [m for m in FACTORS if s > 0 and s % m == 0]
    if choices:
      break
  b = int(choices[rng.integers(len(choices))])
  templates = TEMPLATES[kind] + ((MUL_WORDS[b],) if kind == "*" and b in MUL_WORDS else ())
  text = _render(templates[rng.integers(len(templates))], name, item, n=b, m=b)
  return Op(kind, b, text)


def make_problem(rng: np.random.Generator, k: int) -> Problem:
  """A problem with k operations, all randomness drawn from `rng`."""
  if k < 1:
    raise ValueError(f"k must be >= 1, got {k}")
  name = NAMES[rng.integers(len(NAMES))]
  item = ITEMS[rng.integers(len(ITEMS))]
  start = int(rng.integers(1, 21))
  # A cancelling pair +b, -b at consecutive positions: skipping both still reaches the answer,
  # which is what makes "right answer, wrong process" solutions possible.
  cancel_at = int(rng.integers(k - 1)) if k >= 2 and rng.random() < P_CANCEL else -1
  ops, values = [], [start]
  while len(ops) < k:
    s = values[-1]
    if len(ops) == cancel_at and s < MAX_VALUE:
      b = int(rng.integers(1, min(MAX_OPERAND, MAX_VALUE - s) + 1))
      plus = TEMPLATES["+"][rng.integers(len(TEMPLATES["+"]))]
      minus = TEMPLATES["-"][rng.integers(len(TEMPLATES["-"]))]
      ops += [Op("+", b, _render(plus, name, item, n=b)), Op("-", b, _render(minus, name, item, n=b))]
      values += [s + b, s]
    else:
      ops.append(_draw_op(rng, s, name, item))
      values.append(apply(ops[-1].kind, s, ops[-1].operand))
  sentences = [op.text for op in ops]
  if rng.random() < P_DISTRACTOR:
    # Another person with another item, so the sentence cannot bear on the asked quantity.
    for _ in range(int(rng.integers(1, 3))):
      other = [x for x in NAMES if x != name][rng.integers(len(NAMES) - 1)]
      other_item = [x for x in ITEMS if x != item][rng.integers(len(ITEMS) - 1)]
      text = _render(DISTRACTORS[rng.integers(len(DISTRACTORS))], other, other_item,
                     n=int(rng.integers(1, MAX_OPERAND + 1)))
      sentences.insert(int(rng.integers(len(sentences) + 1)), text)
  question = " ".join([_render(INTRO, name, item, n=start)] + sentences
                      + [QUESTION.format(items=item[1], name=name)])
  return Problem(question, start, tuple(ops), tuple(values), values[-1])


def make_split(name: str, n: int, seed: int = 0, ks: Sequence[int] = (2, 3, 4, 5, 6)) -> list[Problem]:
  """n problems; problem i uses default_rng([seed, crc32(name), i]) (retries append an attempt number).

  Seeds differ by split name, so splits are disjoint by construction up to chance text collisions;
  within a split a repeated question is regenerated, so questions are unique. A split of n problems
  is a prefix of the same split with more.
  """
  if n < 0 or seed < 0 or not ks or min(ks) < 1:
    raise ValueError(f"need n >= 0, seed >= 0 and ks of positive ints; got n={n}, seed={seed}, ks={ks}")
  tag, seen, out = zlib.crc32(name.encode()), set(), []
  for i in range(n):
    for attempt in range(1000):
      rng = np.random.default_rng([seed, tag, i] + ([attempt] if attempt else []))
      problem = make_problem(rng, int(ks[rng.integers(len(ks))]))
      if problem.question not in seen:
        break
    else:
      raise RuntimeError(f"could not draw a new question for problem {i} of split {name!r}")
    seen.add(problem.question)
    out.append(problem)
  return out


@dataclasses.dataclass(frozen=True)
class Check:
  """The exact checker's verdict on a solution, step by step (see `check`)."""
  process_correct: tuple[bool, ...]  # per step
  locally_valid: tuple[bool, ...]  # per step: parsed "a op b = c" with a op b == c exactly
  first_error: int  # smallest i not process-correct; -1 if none (0 for an empty solution)
  answer: int | None  # from "The answer is: N" in the last step
  answer_correct: bool
  error_types: tuple[str | None, ...]  # per step: None if correct, else one of ERROR_TYPES


_STEP = re.compile(r"\s*(?:Step\s*\d+\s*:)?\s*(-?\d+)\s*([-+*/])\s*(-?\d+)\s*=\s*(-?\d+)"
                   r"(?:\s*\.\s*The\s+answer\s+is\s*:?\s*(-?\d+))?\s*\.?\s*")
_FINAL = re.compile(r"The\s+answer\s+is\s*:?\s*(-?\d+)")


def check(problem: Problem, steps: Sequence[str]) -> Check:
  """Judges a complete solution step by step against the problem's exact operations.

  A step must consume the next unconsumed operation: "a OP b = c" with a the running value,
  OP/b that operation and c its result. The step consuming the last operation must state
  "The answer is: c"; a step stating an answer earlier, or a solution ending early, is "skipped".
  The "Step n:" number is not checked. Later steps are still typed (a wrong running value
  propagated from an earlier error is "operand"), so error types separate new from propagated errors.
  """
  ops, values, k = problem.ops, problem.values, problem.k
  m, correct, valid, types = 0, [], [], []
  for i, step in enumerate(steps):
    parsed = _STEP.fullmatch(step)
    ok, err = False, None
    if parsed is None:
      err = "format"
    else:
      a, kind, b, c = int(parsed[1]), parsed[2], int(parsed[3]), int(parsed[4])
      stated = None if parsed[5] is None else int(parsed[5])
      ok = apply(kind, a, b) == c
      if not ok:
        err = "arithmetic"
      elif m == k:
        err = "extra"
      elif a != values[m]:
        err = "operand"
      elif (kind, b) != (ops[m].kind, ops[m].operand):
        err = "skipped" if any((kind, b) == (o.kind, o.operand) for o in ops[m + 1:]) else "operand"
      else:
        m += 1
        if stated is not None and stated != c:
          err = "arithmetic"  # a slip copying the result into the answer
        elif m == k and stated is None:
          err = "format"
        elif m < k and (stated is not None or i == len(steps) - 1):
          err = "skipped"
    valid.append(ok)
    types.append(err)
    correct.append(err is None)
  first = next((i for i, c in enumerate(correct) if not c), -1 if steps else 0)
  found = _FINAL.findall(steps[-1]) if steps else []
  answer = int(found[-1]) if found else None
  return Check(tuple(correct), tuple(valid), first, answer, answer == problem.answer, tuple(types))


def oracle_labels(problem: Problem, steps: Sequence[str]) -> list[float]:
  """Prefix labels g_i = 1.0 if i < first_error or first_error == -1, else 0.0 (ProcessBench convention)."""
  first = check(problem, steps).first_error
  return [1.0 if first == -1 or i < first else 0.0 for i in range(len(steps))]


def extract_answer(text: str | None) -> str | None:
  """The raw answer after the last "The answer is:" (GSM8K's rule); compare with `gsm8k.answers_equal`."""
  return gsm8k.extract_answer(text)


def chat_example(problem: Problem) -> list[dict]:
  """The problem and its gold solution as ESFT chat messages (steps joined by "\\n")."""
  return [{"role": "user", "content": problem.question},
          {"role": "assistant", "content": "\n".join(problem.gold_steps())}]


def _template_words() -> list[str]:
  texts = [t for ts in TEMPLATES.values() for t in ts] + list(MUL_WORDS.values()) + list(DISTRACTORS)
  texts += [INTRO, QUESTION, *NAMES, *FRAMING_WORDS] + [w for pair in ITEMS for w in pair]
  return sorted({w for t in texts for w in re.findall(r"[A-Za-z']+", re.sub(r"\{\w+\}", " ", t))})


_PIECE = re.compile(re.escape(STEP_TAG) + r"|\d|[A-Za-z']+|\n|[ \t]+|.", re.DOTALL)
_NO_SPACE_BEFORE = frozenset(".,:?\n")


class ArithTokenizer:
  """Word-level tokenizer: specials, digits, "ки", operators/punctuation, then the sorted template words.

  Base ids depend only on this module's template data; `extra_words` (e.g. other label words) are
  appended after them in the order given, so they never shift the base ids.
  """
  pad_id, bos_id, eos_id = 0, 1, 2

  def __init__(self, extra_words: Sequence[str] = ()):
    tokens = ["<pad>", "<bos>", "<eos>"] + list("0123456789") + [STEP_TAG] + list("+-*/=.,:?\n")
    tokens += _template_words()
    for w in extra_words:
      if not re.fullmatch(r"[A-Za-z']+", w):
        raise ValueError(f"extra word {w!r} is not a single word [A-Za-z']+")
      if w not in tokens:
        tokens.append(w)
    self.tokens = tokens
    self.ids = {t: i for i, t in enumerate(tokens)}
    self.vocab_size = len(tokens)

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`: one per digit, word, "ки", newline or symbol; spaces and tabs dropped."""
    out = []
    for match in _PIECE.finditer(text):
      piece = match.group()
      if piece[0] in " \t":
        continue
      if piece not in self.ids:
        raise ValueError(f"unknown token {piece!r} at position {match.start()} in {text[:60]!r}")
      out.append(self.ids[piece])
    return out

  def decode(self, ids: Iterable[int]) -> str:
    """Canonical text: tokens space-joined, except within numbers, before . , : ? and around newlines."""
    parts, prev = [], None
    for i in ids:
      i = int(i)
      if not 0 <= i < self.vocab_size:
        raise ValueError(f"token id {i} out of range [0, {self.vocab_size})")
      if i in (self.pad_id, self.bos_id, self.eos_id):
        continue
      tok = self.tokens[i]
      glued = prev is None or prev == "\n" or tok in _NO_SPACE_BEFORE or (prev.isdigit() and tok.isdigit())
      parts.append(tok if glued else " " + tok)
      prev = tok
    return "".join(parts)
