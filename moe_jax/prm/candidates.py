"""Best-of-N candidate files: JSONL, one problem per line, read and checked line by line.

    {"question": str, "gold": str, "candidates": [{"answer": str | null, "text": str,
     "steps": [str], "step_scores": [float], "orm_score": float,
     "step_labels": [0 or 1], "length": int}]}

Every candidate field is optional, except that "answer", "text" or "steps"
must be there; a malformed line is a ValueError naming file:line.
"step_labels" (exact step labels) and "length" (tokens) feed only the
discrimination metrics (`moe_jax.prm.discrimination`).
"""

from __future__ import annotations

import math
from typing import Callable

from moe_jax import jsonl
from moe_jax.prm import data as prm_data
from moe_jax.prm.gsm8k import extract_answer
from moe_jax.prm.verify import Candidate, Problem

_TAG = prm_data.TAG.strip()  # the "ки" that ends each step's line in Math-Shepherd's layout


def _untag(text: str) -> str:
  """`text` without the step tag that ends each line in Math-Shepherd's layout (spec A3)."""
  lines = [line.rstrip() for line in text.split("\n")]
  return "\n".join(line[:-len(_TAG)].rstrip() if line.endswith(_TAG) else line for line in lines)


def _number(v, what: str) -> float:
  if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
    raise ValueError(f"{what} must be a finite number, got {v!r}")
  return float(v)


def _read_candidate(c, j: int, extract) -> Candidate:
  if not isinstance(c, dict):
    raise ValueError(f"candidate {j} must be an object, got {type(c).__name__}")
  text = c.get("text")
  if text is not None and not isinstance(text, str):
    raise ValueError(f"candidate {j}: 'text' must be a string")
  if "answer" in c:
    answer = c["answer"]
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float, type(None))):
      raise ValueError(f"candidate {j}: 'answer' must be a string or null, got {answer!r}")
    answer = None if answer is None else str(answer)
  elif text is not None:
    answer = (extract or extract_answer)(_untag(text))
  elif isinstance(c.get("steps"), list) and c["steps"] and all(isinstance(x, str) for x in c["steps"]):
    answer = (extract or extract_answer)(_untag("\n".join(c["steps"])))
  else:
    raise ValueError(f"candidate {j} has none of 'answer', 'text' or 'steps'")
  scores = c.get("step_scores")
  if scores is None:
    scores = []
  elif not isinstance(scores, list) or not scores:
    raise ValueError(f"candidate {j}: 'step_scores' must be a non-empty list of numbers")
  scores = [_number(s, f"candidate {j}: step score {k}") for k, s in enumerate(scores)]
  orm = c.get("orm_score")
  orm = None if orm is None else _number(orm, f"candidate {j}: 'orm_score'")
  steps = c.get("steps")
  if steps is None:
    steps = [] if text is None else [s.strip() for s in _untag(text).split("\n") if s.strip()]
  elif not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
    raise ValueError(f"candidate {j}: 'steps' must be a list of strings")
  if scores and steps and len(scores) != len(steps):
    raise ValueError(f"candidate {j}: {len(scores)} step scores for {len(steps)} steps")
  labels = c.get("step_labels")
  labels = [] if labels is None else labels
  if not isinstance(labels, list):
    raise ValueError(f"candidate {j}: 'step_labels' must be a list of numbers in [0, 1]")
  labels = [_number(x, f"candidate {j}: step label {k}") for k, x in enumerate(labels)]
  if any(not 0.0 <= x <= 1.0 for x in labels):
    raise ValueError(f"candidate {j}: step labels must lie in [0, 1], got {labels}")
  if labels and len(labels) != len(steps):
    raise ValueError(f"candidate {j}: {len(labels)} step labels for {len(steps)} steps")
  length = c.get("length")
  if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 0):
    raise ValueError(f"candidate {j}: 'length' must be a non-negative integer, got {length!r}")
  return Candidate(answer=answer, step_scores=scores, orm_score=orm, steps=list(steps),
                   step_labels=labels, length=length)


def read_candidates(path, extract: Callable[[str], str | None] | None = None) -> list[Problem]:
  """Problems from a JSONL file, one per line (blank lines skipped):

    {"question": str, "gold": str, "candidates": [{"answer": str | null,
     "text": str, "steps": [str], "step_scores": [float], "orm_score": float,
     "step_labels": [float], "length": int}]}

  Every candidate field is optional, except that "answer" or "text" must be
  there. Without "answer", the answer is extracted (default:
  gsm8k.extract_answer; None when it cannot be parsed) from "text" with the
  " ки" tags that end its lines removed; without "steps", the steps are the
  non-blank lines of that text (Math-Shepherd's layout, spec A3). Other keys
  are ignored. Raises ValueError naming file:line on malformed input.
  """
  problems = []
  for where, obj in jsonl.records(path):
    try:
      if not isinstance(obj, dict):
        raise ValueError(f"expected an object, got {type(obj).__name__}")
      gold = obj.get("gold")
      if isinstance(gold, bool) or not isinstance(gold, (str, int, float)):
        raise ValueError(f"'gold' must be a string, got {gold!r}")
      question = obj.get("question", "")
      if not isinstance(question, str):
        raise ValueError("'question' must be a string")
      cands = obj.get("candidates")
      if not isinstance(cands, list):
        raise ValueError("'candidates' must be a list (possibly empty)")
      candidates = [_read_candidate(c, j, extract) for j, c in enumerate(cands)]
    except ValueError as e:
      raise ValueError(f"{where}: {e}") from None
    problems.append(Problem(gold=str(gold), candidates=candidates, question=question,
                            where=where))
  return problems
