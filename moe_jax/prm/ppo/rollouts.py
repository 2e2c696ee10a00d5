"""Rollouts: prompts in the chat format, responses sampled with the KV cache, split into steps.

A response's steps end at a newline token (or at EOS / the end); `Rollouts`
holds a batch of them with the model inputs the PPO objective reads.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from moe_jax.generate import generate
from moe_jax.model import Model
from moe_jax.prm import gsm8k


@dataclasses.dataclass
class Rollouts:
  """A batch of sampled responses."""

  prompt_index: np.ndarray  # [B] index into the prompt list
  tokens: np.ndarray  # [B, P + N] left-padded prompt, then the response
  prompt_mask: np.ndarray  # [B, P] 1 on real prompt tokens
  mask: np.ndarray  # [B, N] 1 up to and including the first EOS
  steps: list[list[str]]  # each response's steps (split at newlines, blank ones dropped)
  step_ends: list[list[int]]  # the response index of each step's last token

  @property
  def responses(self) -> np.ndarray:
    return self.tokens[:, self.prompt_mask.shape[1]:]

  def batch(self) -> dict:
    """The model inputs: tokens, positions and segment ids over prompt + response, and the mask."""
    seg = np.concatenate([self.prompt_mask, np.ones_like(self.responses)], 1).astype(np.int32)
    pos = np.maximum(np.cumsum(seg, 1) - 1, 0).astype(np.int32)
    return {"tokens": self.tokens.astype(np.int32), "positions": pos, "segment_ids": seg,
            "mask": self.mask.astype(np.int32)}


def prompt_text(question: str) -> str:
  """The chat prompt a policy continues (the ESFT/SFT chat format)."""
  return f"User: {question}\n\nAssistant:"


def encode_prompts(questions: Sequence[str], tokenizer, width: int) -> tuple[np.ndarray, np.ndarray]:
  """Left-padded prompt tokens and mask [B, width]; raises if one is longer than `width`."""
  tokens = np.full((len(questions), width), tokenizer.pad_id, np.int32)
  mask = np.zeros((len(questions), width), np.int32)
  for i, q in enumerate(questions):
    ids = ([] if tokenizer.bos_id is None else [tokenizer.bos_id]) + tokenizer.encode(prompt_text(q))
    if len(ids) > width:
      raise ValueError(f"prompt {i} is {len(ids)} tokens, longer than ppo.prompt_len={width}: "
                       f"{q[:60]!r}...")
    tokens[i, width - len(ids):], mask[i, width - len(ids):] = ids, 1
  return tokens, mask


def split_steps(response: np.ndarray, tokenizer, newline_id: int) -> tuple[np.ndarray, list, list]:
  """(mask [N], steps, step ends) of one response: steps end at a newline token or at EOS/the end."""
  eos = np.flatnonzero(response == tokenizer.eos_id)
  length = int(eos[0]) + 1 if len(eos) else len(response)
  mask = np.zeros(len(response), np.int32)
  mask[:length] = 1
  body = length - 1 if len(eos) else length
  steps, ends, start = [], [], 0
  for i in range(body + 1):
    if i == body or response[i] == newline_id:
      text = tokenizer.decode(response[start:i]).strip()
      if text:
        steps.append(text)
        ends.append(min(i, length - 1))  # the newline (or EOS) closes the step
      start = i + 1
  return mask, steps, ends


def rollout(policy: Model, tokenizer, questions: Sequence[str], prompt_index: np.ndarray,
            prompt_len: int, max_new_tokens: int, temperature: float, seed: int) -> Rollouts:
  """Samples one response per prompt_index with the KV cache; splits each into steps."""
  prompts, pmask = encode_prompts([questions[i] for i in prompt_index], tokenizer, prompt_len)
  tokens = np.asarray(generate(policy, prompts, max_new_tokens, temperature=temperature, seed=seed,
                               prompt_mask=pmask, eos_token_id=tokenizer.eos_id))
  newline = _single_token(tokenizer, "\n")
  masks, steps, ends = [], [], []
  for r in tokens[:, prompt_len:]:
    m, s, e = split_steps(r, tokenizer, newline)
    masks.append(m), steps.append(s), ends.append(e)
  return Rollouts(np.asarray(prompt_index), tokens, pmask, np.stack(masks), steps, ends)


def fitting_prompts(problems: Sequence[dict], tokenizer, prompt_len: int, source: str) -> list[dict]:
  """The problems whose prompt fits `prompt_len` tokens; says how many were left out."""
  bos = tokenizer.bos_id is not None
  keep = [x for x in problems if len(tokenizer.encode(prompt_text(x["question"]))) + bos <= prompt_len]
  if not keep:
    raise ValueError(f"{source}: no prompt fits config.ppo.prompt_len={prompt_len} tokens")
  if len(keep) < len(problems):
    print(f"[ppo] {source}: left out {len(problems) - len(keep)} of {len(problems)} prompts longer "
          f"than config.ppo.prompt_len={prompt_len} tokens")
  return keep


def _single_token(tokenizer, text: str) -> int:
  ids = tokenizer.encode(text)
  if len(ids) != 1:
    raise ValueError(f"step-by-step PPO finds steps at {text!r}, which this tokenizer encodes as "
                     f"{len(ids)} tokens; it must be one")
  return ids[0]


def greedy_accuracy(policy: Model, tokenizer, questions: Sequence[str], golds: Sequence[str],
                    prompt_len: int, max_new_tokens: int, batch_size: int = 64,
                    extract=gsm8k.extract_answer, equal=gsm8k.answers_equal) -> float:
  """Share of questions whose greedy response ends in the gold answer."""
  right = 0
  for i in range(0, len(questions), batch_size):
    idx = np.arange(i, min(i + batch_size, len(questions)))
    idx = np.concatenate([idx, np.full(batch_size - len(idx), idx[-1])])  # one shape per call
    r = rollout(policy, tokenizer, questions, idx, prompt_len, max_new_tokens, 0.0, 0)
    for j, steps in enumerate(r.steps[:min(batch_size, len(questions) - i)]):
      right += bool(steps) and equal(extract(steps[-1]), golds[idx[j]])
  return right / max(len(questions), 1)
