"""Process-reward data: read and write the two public formats, and encode for a PRM.

An `Example` is a question, its solution steps and one label per step (a float
in [0, 1]; hard labels are 0.0 / 1.0). Two JSONL formats hold them, detected
per line by `read_examples`:

* Math-Shepherd (`peiyi9979/Math-Shepherd`): `{"input": str, "label": str}`.
  `input` is the question, one space, then the steps, each followed by the step
  tag (default " ки") and joined by "\\n":

      {question} {step 1} ки\\n{step 2} ки\\n...{step n} ки

  `label` is the same text with the tag's non-blank part ("ки") replaced by the
  good or bad token ("+" / "-"); whitespace that is part of the tag (the space
  of " ки") stays, as in the released data ("... 13. +\\nStep 2: ...").
  Steps are the text between tags (split on the tag, never on newlines, so a
  step may span lines), less the one joining "\\n"; the step text is kept
  exactly, "Step k: " prefixes included. The question is split from the first
  step the way TRL's converter (`examples/datasets/math_shepherd.py`) does it:
  at the first "Step 1:", else the first "step 1:", else just after the first
  "?"; then the one joining space goes. Unlike TRL, steps are not stripped,
  and the dozen released rows that have a stray tag inside the question (TRL
  special-cases them by prefix) are not special-cased: they parse as a short
  first "step".
  Only hard labels fit this format: `write_math_shepherd` raises on a soft
  label unless given a `threshold` (label >= threshold is good).

* TRL stepwise supervision: `{"prompt": str, "completions": [str, ...],
  "labels": [bool | float, ...]}`. Steps may contain newlines.

Conversions either way are lossless for hard labels (the Math-Shepherd writer
re-reads what it writes and raises where it would not be, e.g. a question with
no "?" whose first step does not start with "Step 1:").

`encode` builds the PRM input exactly as the Math-Shepherd `input` string (the
released scorer's f"{question} {output}"), tokenizes it whole, and puts each
step's label on the last token of that step's tag (spec A4, G): the logit
there is the one trained and read, with no label shift. If the tag cannot be
found as its own token sequence once per step (the tokenizer merges it with
its neighbours), it raises instead of silently dropping labels.

Every error is a `PRMDataError` naming the file and line.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Iterable, Sequence

import numpy as np

from moe_jax import jsonl

TAG, GOOD, BAD = " ки", "+", "-"


class PRMDataError(ValueError):
  """Bad process-reward data; the message names the file and line."""


@dataclasses.dataclass
class Example:
  """A question, its steps, and one label in [0, 1] per step (1.0 good, 0.0 bad).

  `source` ("file:line", set by `read_examples`) only locates errors; it takes
  no part in equality.
  """

  question: str
  steps: list[str]
  labels: list[float]
  source: str = dataclasses.field(default="", compare=False, repr=False)


# -- helpers ------------------------------------------------------------------


def _tag_parts(tag: str) -> tuple[str, str, str]:
  """(leading blanks, core, trailing blanks) of the tag; the core is what labels replace."""
  if not isinstance(tag, str) or not tag.strip():
    raise ValueError(f"the step tag must be a non-blank string, got {tag!r}")
  core = tag.strip()
  lead = tag[:len(tag) - len(tag.lstrip())]
  trail = tag[len(tag.rstrip()):]
  return lead, core, trail


def _check_tokens(good: str, bad: str) -> None:
  if not isinstance(good, str) or not isinstance(bad, str) or not good or not bad or good == bad:
    raise ValueError(f"the good and bad label tokens must be two different non-empty strings, got {good!r}, {bad!r}")


def _label_value(value, where: str, k: int) -> float:
  if isinstance(value, bool):
    return 1.0 if value else 0.0
  if isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value <= 1.0:
    return float(value)
  if isinstance(value, (int, float)):
    raise PRMDataError(f"{where}: label {k} is {value!r}, outside [0, 1]")
  raise PRMDataError(f"{where}: label {k} is {value!r} ({type(value).__name__}); expected a bool or a number in [0, 1]")


def _check_steps(question, steps, where: str) -> None:
  if not isinstance(question, str):
    raise PRMDataError(f"{where}: the question/prompt must be a string, got {type(question).__name__}")
  if not isinstance(steps, list) or not steps:
    raise PRMDataError(f"{where}: expected a non-empty list of steps")
  for k, s in enumerate(steps):
    if not isinstance(s, str):
      raise PRMDataError(f"{where}: step {k} is {type(s).__name__}, expected a string")
    if not s.strip():
      raise PRMDataError(f"{where}: step {k} is empty")


def _split_question(seg0: str, where: str) -> tuple[str, str]:
  """Splits the text before the first tag into (question, first step), as TRL does."""
  for marker in ("Step 1:", "step 1:"):
    i = seg0.find(marker)
    if i >= 0:
      question, step = seg0[:i], seg0[i:]
      break
  else:
    i = seg0.find("?")
    if i < 0:
      raise PRMDataError(f"{where}: cannot split the question from the first step: the text before the first "
                         f"tag has no 'Step 1:', 'step 1:' or '?': {seg0[:80]!r}")
    question, step = seg0[:i + 1], seg0[i + 1:]
  if question.endswith(" "):  # the one space joining question and steps
    question = question[:-1]
  elif step.startswith(" "):
    step = step[1:]
  return question, step


def _first_difference(a: str, b: str) -> int:
  n = min(len(a), len(b))
  for i in range(n):
    if a[i] != b[i]:
      return i
  return n


def _parse_math_shepherd(text: str, label: str, tag: str, good: str, bad: str, where: str) -> Example:
  lead, core, trail = _tag_parts(tag)
  if not isinstance(text, str) or not isinstance(label, str):
    raise PRMDataError(f"{where}: Math-Shepherd 'input' and 'label' must be strings")
  parts = text.split(tag)
  n = len(parts) - 1
  if n == 0:
    raise PRMDataError(f"{where}: the input has no step tag {tag!r}")
  if parts[-1]:
    raise PRMDataError(f"{where}: mismatched counts of tags and steps: text follows the last of the {n} tag(s) "
                       f"{tag!r}, a step with no tag: {parts[-1][:60]!r}")
  # Walk the label string along the input: identical text, a label token at each tag.
  marks = sorted([(1.0, lead + good + trail), (0.0, lead + bad + trail)], key=lambda m: -len(m[1]))
  labels: list[float] = []
  pos = 0
  for k in range(n):
    seg = parts[k]
    if not label.startswith(seg, pos):
      i = _first_difference(seg, label[pos:pos + len(seg)])
      if pos + i >= len(label):
        raise PRMDataError(f"{where}: mismatched counts of tags and labels: the label text ends inside step {k} "
                           f"(the input has {n} tags, the label {k} labels)")
      raise PRMDataError(f"{where}: the label text differs from the input beyond the tags at character "
                         f"{pos + i}: input {seg[i:i + 30]!r}, label {label[pos + i:pos + i + 30]!r}")
    pos += len(seg)
    for value, mark in marks:
      if label.startswith(mark, pos) and label.startswith(parts[k + 1], pos + len(mark)):
        labels.append(value)
        pos += len(mark)
        break
    else:
      if pos >= len(label) or label.startswith(core, pos + len(lead)):
        raise PRMDataError(f"{where}: mismatched counts of tags and labels: the input has {n} tags {tag!r}, "
                           f"but the label text has no {good!r}/{bad!r} in place of the tag of step {k}")
      raise PRMDataError(f"{where}: the label text differs from the input at character {pos}: expected "
                         f"{lead + good + trail!r} or {lead + bad + trail!r} in place of the tag of step {k}, "
                         f"found {label[pos:pos + 30]!r}")
  if pos != len(label):
    rest = label[pos:]
    if any(rest.startswith(m) for _, m in marks):
      raise PRMDataError(f"{where}: mismatched counts of tags and labels: the label text has more labels than "
                         f"the input's {n} tags")
    raise PRMDataError(f"{where}: the label text differs from the input beyond the tags: it goes on after the "
                       f"input ends: {rest[:30]!r}")
  question, first = _split_question(parts[0], where)
  steps = [first] + [p[1:] if p.startswith("\n") else p for p in parts[1:-1]]
  _check_steps(question, steps, where)
  return Example(question, steps, labels, source=where)


def _parse_trl(record: dict, where: str) -> Example:
  prompt, completions, labels = record["prompt"], record["completions"], record["labels"]
  if not isinstance(prompt, str):
    raise PRMDataError(f"{where}: TRL 'prompt' must be a string (conversational prompts are not supported), "
                       f"got {type(prompt).__name__}")
  if not isinstance(labels, list):
    raise PRMDataError(f"{where}: TRL 'labels' must be a list, got {type(labels).__name__}")
  _check_steps(prompt, completions, where)
  if len(completions) != len(labels):
    raise PRMDataError(f"{where}: mismatched counts of steps and labels: {len(completions)} completions, "
                       f"{len(labels)} labels")
  return Example(prompt, list(completions), [_label_value(v, where, k) for k, v in enumerate(labels)],
                 source=where)


# -- reading ------------------------------------------------------------------


def read_examples(path: str | os.PathLike, tag: str = TAG, good: str = GOOD, bad: str = BAD) -> list[Example]:
  """Reads Math-Shepherd or TRL-format JSONL (detected per line) into Examples.

  Blank lines are skipped; other keys (e.g. Math-Shepherd's "task") are ignored.
  """
  _tag_parts(tag)
  _check_tokens(good, bad)
  path = os.fspath(path)
  out = []
  for where, record in jsonl.records(path, PRMDataError):
    if isinstance(record, dict) and "input" in record and "label" in record:
      out.append(_parse_math_shepherd(record["input"], record["label"], tag, good, bad, where))
    elif isinstance(record, dict) and all(k in record for k in ("prompt", "completions", "labels")):
      out.append(_parse_trl(record, where))
    else:
      keys = sorted(record) if isinstance(record, dict) else type(record).__name__
      raise PRMDataError(f"{where}: unknown format {keys}: expected Math-Shepherd {{'input', 'label'}} or TRL "
                         f"{{'prompt', 'completions', 'labels'}}")
  return out


# -- formatting and writing -----------------------------------------------------


def format_input(example: Example, tag: str = TAG) -> str:
  """The Math-Shepherd `input` string: f"{question} {step 1}{tag}\\n{step 2}{tag}...". Also the PRM's input text."""
  return example.question + " " + "\n".join(s + tag for s in example.steps)


def _hard(value: float, threshold: float | None, where: str, k: int) -> bool:
  if threshold is not None:
    return value >= threshold
  if value not in (0.0, 1.0):
    raise PRMDataError(f"{where}: label {k} is {value!r}, a soft label; the Math-Shepherd format holds only "
                       f"hard labels (pass threshold= to binarize)")
  return value == 1.0


def format_label(example: Example, tag: str = TAG, good: str = GOOD, bad: str = BAD,
                 threshold: float | None = None) -> str:
  """The Math-Shepherd `label` string: `format_input` with each tag's core replaced by good/bad."""
  lead, _, trail = _tag_parts(tag)
  where = example.source or "example"
  marks = [lead + (good if _hard(v, threshold, where, k) else bad) + trail for k, v in enumerate(example.labels)]
  return example.question + " " + "\n".join(s + m for s, m in zip(example.steps, marks))


def _validate(example: Example, where: str) -> None:
  _check_steps(example.question, example.steps, where)
  if not isinstance(example.labels, (list, tuple)) or len(example.labels) != len(example.steps):
    n = len(example.labels) if isinstance(example.labels, (list, tuple)) else example.labels
    raise PRMDataError(f"{where}: mismatched counts of steps and labels: {len(example.steps)} steps, {n} labels")
  for k, v in enumerate(example.labels):
    _label_value(v, where, k)


def _check_untagged(example: Example, tag: str, where: str) -> None:
  """The tag marks step ends; inside a step or the question it would be read as another step."""
  for k, s in enumerate(example.steps):
    if tag in s:
      raise PRMDataError(f"{where}: step {k} contains the step tag {tag!r}, which would be read as another step")
  if tag in example.question:
    raise PRMDataError(f"{where}: the question contains the step tag {tag!r}, which would be read as a step")


def _write_jsonl(path, records: Iterable[dict]) -> None:
  path = os.fspath(path)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
  os.replace(tmp, path)


def write_math_shepherd(examples: Sequence[Example], path: str | os.PathLike, tag: str = TAG, good: str = GOOD,
                        bad: str = BAD, threshold: float | None = None) -> None:
  """Writes Math-Shepherd JSONL ({"input", "label"}).

  Soft labels raise unless `threshold` is given (then label >= threshold is
  good). Each record is read back before writing; an example that would not
  come back identical (a tag inside a step or the question, a question the
  TRL-style split cannot find again) raises, naming it.
  """
  _tag_parts(tag)
  _check_tokens(good, bad)

  def records():
    for i, ex in enumerate(examples):
      where = f"example {i}" + (f" ({ex.source})" if ex.source else "")
      _validate(ex, where)
      _check_untagged(ex, tag, where)
      hard = [1.0 if _hard(v, threshold, where, k) else 0.0 for k, v in enumerate(ex.labels)]
      record = {"input": format_input(ex, tag), "label": format_label(ex, tag, good, bad, threshold)}
      try:
        back = _parse_math_shepherd(record["input"], record["label"], tag, good, bad, where)
      except PRMDataError as e:
        raise PRMDataError(f"{e} (writing it as Math-Shepherd would not read back)") from e
      if (back.question, back.steps, back.labels) != (ex.question, list(ex.steps), hard):
        raise PRMDataError(f"{where}: would not read back unchanged from Math-Shepherd format (the question/step "
                           f"split lands elsewhere: read back question {back.question[:60]!r}); the first step "
                           f"should start with 'Step 1:' or the question end with '?'")
      yield record

  _write_jsonl(path, list(records()))


def write_trl(examples: Sequence[Example], path: str | os.PathLike) -> None:
  """Writes TRL stepwise-supervision JSONL; hard labels as booleans, soft ones as floats."""

  def records():
    for i, ex in enumerate(examples):
      _validate(ex, f"example {i}" + (f" ({ex.source})" if ex.source else ""))
      labels = [bool(v) if v in (0.0, 1.0) else float(v) for v in ex.labels]
      yield {"prompt": ex.question, "completions": list(ex.steps), "labels": labels}

  _write_jsonl(path, list(records()))


# -- model input ----------------------------------------------------------------


def _find_all(tokens: list[int], pattern: list[int]) -> list[int]:
  """End index (last token) of each non-overlapping occurrence of `pattern`, left to right."""
  ends, m, i = [], len(pattern), 0
  first = pattern[0]
  while True:
    try:
      i = tokens.index(first, i)
    except ValueError:
      return ends
    if tokens[i:i + m] == pattern:
      ends.append(i + m - 1)
      i += m
    else:
      i += 1


def encode(example: Example, tokenizer, tag: str = TAG, line: str = "") -> dict:
  """PRM input for training or scoring one example.

  The text is `format_input(example, tag)`, tokenized whole (BOS first when the
  tokenizer has one). Each step is scored at the last token of its tag.
  Returns {"tokens": int32 [n], "score_mask": bool [n], "targets": float32 [n]}
  (the step's label at its score position, 0 elsewhere). `line` (default:
  the example's source) names it in errors.
  """
  where = line or example.source or "example"
  _tag_parts(tag)
  _validate(example, where)
  _check_untagged(example, tag, where)
  tag_ids = [int(t) for t in tokenizer.encode(tag)]
  if not tag_ids:
    raise PRMDataError(f"{where}: the tokenizer encodes the step tag {tag!r} as no tokens")
  tokens = [] if tokenizer.bos_id is None else [int(tokenizer.bos_id)]
  tokens += [int(t) for t in tokenizer.encode(format_input(example, tag))]
  ends = _find_all(tokens, tag_ids)
  if len(ends) != len(example.steps):
    raise PRMDataError(f"{where}: the tokenizer splits/merges the step tag {tag!r} (alone {tag_ids}) with its "
                       f"neighbours: found it {len(ends)} time(s) in the tokenized text, but there are "
                       f"{len(example.steps)} steps; use a tokenizer in which the tag is a stable token "
                       f"sequence (e.g. add it as a special token)")
  score_mask = np.zeros(len(tokens), bool)
  targets = np.zeros(len(tokens), np.float32)
  score_mask[ends] = True
  targets[ends] = np.asarray(example.labels, np.float32)
  return {"tokens": np.asarray(tokens, np.int32), "score_mask": score_mask, "targets": targets}
