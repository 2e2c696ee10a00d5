"""GSM8K for process reward models: reference solutions as steps, answer extraction and comparison.

`load` reads the official JSONL ({"question", "answer"}, the answer ending in
"#### N") into {"question", "steps", "answer", "solution"}: one step per
non-blank line before "####" (stripped), then a final step
"The answer is: N", the Math-Shepherd convention for the answer step.
Calculator annotations ("<<48/2=24>>") are kept by default, as in
Math-Shepherd's GSM8K solutions; `strip_calculator=True` removes them.

`extract_answer` reads the last "#### N" or "The answer is: X" (also
"The answer is X") in a text and returns the raw answer; `normalize` and
`answers_equal` compare answers by value where they are numbers (commas, "$",
a trailing "." dropped; "18.0" == "18"; "3/4" == "0.75"; negatives) and as
stripped strings otherwise. A missing answer is None, never an exception: the
caller counts it as wrong.
"""

from __future__ import annotations

import fractions
import os
import re

from moe_jax.prm.data import PRMDataError
from moe_jax import jsonl

_CALC = re.compile(r"<<[^<>]*>>")
_ANSWER = re.compile(r"(?:####|\b[Tt]he answer is:?)[ \t]*([^\n]*?)[ \t]*$", re.MULTILINE)
_DECIMAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_FRACTION = re.compile(r"([+-]?\d+)/([+-]?\d+)")


def reference_steps(solution: str, strip_calculator: bool = False) -> tuple[list[str], str]:
  """(steps, answer) of one GSM8K reference solution ("...\\n#### N"); raises ValueError without "####"."""
  body, sep, answer = solution.rpartition("####")
  if not sep:
    raise ValueError("no '####' final answer in the solution")
  answer = answer.strip()
  lines = [_CALC.sub("", l) if strip_calculator else l for l in body.split("\n")]
  steps = [l.strip() for l in lines if l.strip()]
  return steps + [f"The answer is: {answer}"], answer


def load(path: str | os.PathLike, strip_calculator: bool = False) -> list[dict]:
  """Reads GSM8K JSONL into {"question", "steps", "answer", "solution"} dicts; errors name file:line."""
  path = os.fspath(path)
  out = []
  for where, record in jsonl.records(path, PRMDataError):
    if not isinstance(record, dict) or not isinstance(record.get("question"), str) \
        or not isinstance(record.get("answer"), str):
      raise PRMDataError(f"{where}: expected an object with string 'question' and 'answer'")
    try:
      steps, answer = reference_steps(record["answer"], strip_calculator)
    except ValueError as e:
      raise PRMDataError(f"{where}: {e}") from e
    if not answer:
      raise PRMDataError(f"{where}: empty final answer after '####'")
    out.append({"question": record["question"], "steps": steps, "answer": answer, "solution": record["answer"]})
  return out


def extract_answer(text: str | None) -> str | None:
  """The raw answer after the last "#### " or "The answer is: " in `text` (rest of that line), else None."""
  if not isinstance(text, str):
    return None
  found = [m.group(1) for m in _ANSWER.finditer(text)]
  found = [a for a in found if a]
  return found[-1] if found else None


def _number(s: str) -> fractions.Fraction | None:
  m = _FRACTION.fullmatch(s)
  if m:
    den = int(m.group(2))
    return None if den == 0 else fractions.Fraction(int(m.group(1)), den)
  if _DECIMAL.fullmatch(s):
    return fractions.Fraction(s)
  return None


def _canonical(x: fractions.Fraction) -> str:
  if x.denominator == 1:
    return str(x.numerator)
  d = x.denominator
  for p in (2, 5):
    while d % p == 0:
      d //= p
  if d != 1:
    return f"{x.numerator}/{x.denominator}"
  text = f"{x.numerator / x.denominator!r}" if abs(x.numerator) < 2**53 and x.denominator < 2**53 else None
  if text is not None and fractions.Fraction(text) == x:
    return text
  return f"{x.numerator}/{x.denominator}"


def normalize(ans: str | None) -> str | None:
  """A canonical form: numbers by value ("1,000.00" -> "1000", "3/4" and ".75" -> "0.75"), other text stripped.

  None for None or a blank answer.
  """
  if not isinstance(ans, str) or not ans.strip():
    return None
  s = ans.strip()
  t = s.replace(",", "").replace("$", "").replace(" ", "")
  while t.endswith("."):
    t = t[:-1]
  x = _number(t)
  return s if x is None else _canonical(x)


def answers_equal(a: str | None, b: str | None) -> bool:
  """Whether two raw answers agree after `normalize`; False when either is missing."""
  na, nb = normalize(a), normalize(b)
  return na is not None and na == nb
