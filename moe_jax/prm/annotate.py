"""Math-Shepherd automatic step labels: completer rollouts from every step prefix.

For a solution s_1..s_K of a problem with gold answer a*, the completer samples
N continuations after each prefix s_1..s_i (i < K) and extracts their answers:
  hard estimation  y_i = 1 if any continuation reaches a*      (paper Eq. 3)
  soft estimation  y_i = fraction of continuations reaching a* (paper Eq. 4)
The last step holds the final answer, so its label is just whether that answer
is a* (no rollouts).

All rollouts of a batch of problems run as one jit-compiled, KV-cached
`generate` call. Output rows are appended to a JSONL file problem by problem,
so an interrupted run continues where it stopped without duplicating rows.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Iterable, Sequence

import numpy as np

from moe_jax.generate import generate
from moe_jax.model import Model
from moe_jax.prm import gsm8k

# completer(prompts: list[str]) -> list[str] of continuations, N per prompt in order.
Completer = Callable[[list[str], int], list[str]]


def prefix_prompt(question: str, steps: Sequence[str]) -> str:
  """The text a completer continues: the chat prompt, then the steps so far, one per line."""
  return f"User: {question}\n\nAssistant: " + "".join(s + "\n" for s in steps)


def model_completer(model: Model, tokenizer, max_new_tokens: int, temperature: float,
                    seed: int, batch_size: int = 64) -> Completer:
  """A Completer sampling from `model` with the KV cache (left-padded batches)."""
  calls = [0]

  def complete(prompts: list[str], n: int) -> list[str]:
    texts = [p for p in prompts for _ in range(n)]
    out = []
    for i in range(0, len(texts), batch_size):
      chunk = texts[i:i + batch_size]
      ids = [([] if tokenizer.bos_id is None else [tokenizer.bos_id]) + tokenizer.encode(t) for t in chunk]
      width = -(-max(map(len, ids)) // 32) * 32  # few distinct widths: few compiled programs
      rows = len(ids)
      tokens = np.zeros((batch_size, width), np.int32)  # one shape per call: one compiled program
      mask = np.zeros_like(tokens)
      for j, x in enumerate(ids):
        tokens[j, width - len(x):], mask[j, width - len(x):] = x, 1
      gen = np.asarray(generate(model, tokens, max_new_tokens, temperature=temperature,
                                seed=seed + calls[0], prompt_mask=mask, eos_token_id=tokenizer.eos_id))
      calls[0] += 1
      out += [tokenizer.decode(g[width:]) for g in gen[:rows]]
    return out

  return complete


def label_solution(question: str, steps: Sequence[str], gold: str, completer: Completer,
                   n: int) -> dict:
  """Hard and soft labels for one solution, with the rollout answers for inspection."""
  k = len(steps)
  prompts = [prefix_prompt(question, steps[:i + 1]) for i in range(k - 1)]
  texts = completer(prompts, n) if prompts else []
  hard, soft, answers = [], [], []
  for i in range(k - 1):
    got = [gsm8k.extract_answer(t) for t in texts[i * n:(i + 1) * n]]
    correct = [a is not None and gsm8k.answers_equal(a, gold) for a in got]
    hard.append(float(any(correct)))
    soft.append(float(np.mean(correct)))
    answers.append(got)
  final = gsm8k.extract_answer(steps[-1])
  last = float(final is not None and gsm8k.answers_equal(final, gold))
  return {"hard": hard + [last], "soft": soft + [last], "rollout_answers": answers}


def annotate(solutions: Iterable[dict], completer: Completer, n: int, out_path: str,
             progress=None) -> int:
  """Labels every solution {"question", "gold", "steps"} into out_path (JSONL), resumably.

  Each output row: {"index", "question", "gold", "steps", "hard", "soft"}. Rows
  already in out_path are skipped by index. Returns the number of rows written now.
  """
  done = set()
  if os.path.exists(out_path):
    with open(out_path, encoding="utf-8") as f:
      for line in f:
        try:
          done.add(json.loads(line)["index"])
        except (json.JSONDecodeError, KeyError):
          break  # a torn last line from a killed run: it is redone
    _truncate_torn_tail(out_path)
  written = 0
  with open(out_path, "a", encoding="utf-8") as f:
    for i, sol in enumerate(solutions):
      if i in done:
        continue
      if not sol["steps"]:
        raise ValueError(f"solution {i}: no steps")
      labels = label_solution(sol["question"], sol["steps"], sol["gold"], completer, n)
      row = {"index": i, "question": sol["question"], "gold": sol["gold"], "steps": sol["steps"],
             "hard": labels["hard"], "soft": labels["soft"]}
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
      f.flush()
      written += 1
      if progress is not None:
        progress.update(1)
  return written


def _truncate_torn_tail(path: str) -> None:
  """Drops a final line without its newline (a row cut by a kill)."""
  with open(path, "rb+") as f:
    data = f.read()
    if data and not data.endswith(b"\n"):
      f.truncate(data.rfind(b"\n") + 1)
