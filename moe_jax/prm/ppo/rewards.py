"""Task rewards for PPO: PRM step scores, an aggregated PRM or ORM score, or an exact answer check.

A reward function maps `Rollouts` to per-token task rewards [B, N] (before the
KL term). Step rewards can be transformed (spec C4): "raw" (s_k), "centered"
(s_k - 0.5), "delta" (s_k - s_{k-1}, s_0 = 0.5) or "min_so_far"
(min_{j<=k} s_j). With "raw" every step earns a positive reward, which can pay
the policy for writing more steps (a length-hacking risk the paper does not
discuss); "delta" and "centered" do not.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from moe_jax.model import Model
from moe_jax.prm import data as prm_data
from moe_jax.prm import gsm8k, scoring, verify
from moe_jax.prm.ppo.rollouts import Rollouts

REWARD_MODES = ("prm", "prm_final", "orm", "outcome")
STEP_REWARDS = ("raw", "centered", "delta", "min_so_far")


def transform_step_scores(scores: Sequence[float], how: str) -> list[float]:
  """Per-step rewards from PRM step scores s_1..s_K (spec C4)."""
  s = np.asarray(scores, np.float64)
  if how == "raw":
    r = s
  elif how == "centered":
    r = s - 0.5
  elif how == "delta":
    r = np.diff(np.concatenate([[0.5], s]))
  elif how == "min_so_far":
    r = np.minimum.accumulate(s) if len(s) else s
  else:
    raise ValueError(f"ppo.step_reward: {how!r} is not one of {STEP_REWARDS}")
  return [float(x) for x in r]


def place_rewards(per_step: Sequence[Sequence[float]], step_ends: Sequence[Sequence[int]],
                  mask: np.ndarray) -> np.ndarray:
  """[B, N] rewards: each step's reward on that step's last token."""
  out = np.zeros(mask.shape, np.float32)
  for b, (rs, es) in enumerate(zip(per_step, step_ends)):
    for r, e in zip(rs, es):
      out[b, e] += r
  return out


def final_rewards(values: Sequence[float], mask: np.ndarray) -> np.ndarray:
  """[B, N] rewards: values[b] on response b's last token."""
  out = np.zeros(mask.shape, np.float32)
  last = mask.sum(1) - 1
  out[np.arange(len(values)), last] = values
  return out


RewardFn = Callable[[Rollouts], np.ndarray]  # rollouts -> task rewards [B, N] (before the KL term)


def reward_model_fn(rm: Model, tokenizer, questions: Sequence[str], mode: str,
                    step_reward: str = "raw", aggregate: str = "min", value_head: bool = False,
                    tag: str = prm_data.TAG, good: str = prm_data.GOOD, bad: str = prm_data.BAD, no_steps: float = 0.0,
                    batch_size: int = 64) -> RewardFn:
  """Rewards from a frozen PRM or ORM (modes "prm", "prm_final", "orm").

  "prm": transformed step scores on each step's last token; "prm_final": the
  `aggregate` ("min", "prod", ...) of the step scores on the last token; "orm":
  the score of the final step tag (an ORM trained on final labels only). A
  response with no steps gets `no_steps`. The tag's text inside a step is
  dropped before scoring.
  """
  if mode not in ("prm", "prm_final", "orm"):
    raise ValueError(f"ppo.reward_mode: {mode!r} needs no reward model or is unknown; "
                     f"reward models serve {('prm', 'prm_final', 'orm')}")

  core = tag.strip()

  def fn(r: Rollouts) -> np.ndarray:
    # A policy can emit the tag's text itself; the PRM would read it as a step boundary.
    kept = [[(c, e) for c, e in ((s.replace(core, "").strip(), e) for s, e in zip(steps, ends)) if c]
            for steps, ends in zip(r.steps, r.step_ends)]
    items = [(questions[i], [c for c, _ in k]) for i, k in zip(r.prompt_index, kept) if k]
    scores = iter(scoring.score_solutions(rm, tokenizer, items, tag, good, bad, value_head,
                                          batch_size=batch_size))
    per = [next(scores) if k else [] for k in kept]
    if mode == "prm":
      return place_rewards([transform_step_scores(s, step_reward) for s in per],
                           [[e for _, e in k] for k in kept], r.mask)
    if mode == "prm_final":
      vals = [verify.aggregate(s, aggregate) if s else no_steps for s in per]
    else:
      vals = [s[-1] if s else no_steps for s in per]
    return final_rewards(vals, r.mask)

  return fn


def outcome_fn(golds: Sequence[str], extract=gsm8k.extract_answer, equal=gsm8k.answers_equal) -> RewardFn:
  """1 on the last token when the response's final answer equals the gold answer, else 0."""

  def fn(r: Rollouts) -> np.ndarray:
    return final_rewards([float(equal(extract(s[-1]) if s else None, golds[i]))
                          for i, s in zip(r.prompt_index, r.steps)], r.mask)

  return fn
