"""The "ppo" task (`train.py --config=configs/ppo.py`): step-by-step PPO of a policy on GSM8K-style prompts."""

from __future__ import annotations

import numpy as np
import ml_collections

from moe_jax import train_lib, trainable
from moe_jax.hf import from_pretrained
from moe_jax.prm import gsm8k
from moe_jax.prm.ppo import loop
from moe_jax.prm.ppo.rewards import REWARD_MODES, outcome_fn, reward_model_fn
from moe_jax.prm.ppo.rollouts import fitting_prompts, greedy_accuracy, rollout


def run(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
  """PPO of `init_from` (or the config's pretrained tiny model) against `ppo.reward_mode`'s rewards.

  Held-out prompts (`data.eval_fraction`) measure greedy accuracy before and
  after. Returns the run's summary.
  """
  p = cfg.ppo
  if p.reward_mode not in REWARD_MODES:
    raise ValueError(f"config.ppo.reward_mode: {p.reward_mode!r} is not one of {REWARD_MODES}")
  if p.reward_mode != "outcome" and not p.reward_model:
    raise ValueError(f"config.ppo.reward_model: reward_mode={p.reward_mode!r} needs a reward model "
                     "directory (e.g. the hf/ export of `train.py --config=configs/prm.py`)")
  setup = train_lib.prologue(cfg, workdir)
  tokenizer, policy = setup.tokenizer, setup.model
  path = train_lib.resolve_data_path(p.prompts_file)
  problems = fitting_prompts(gsm8k.load(path), tokenizer, p.prompt_len, path)
  split = max(1, int(len(problems) * cfg.data.eval_fraction))
  train_probs, eval_probs = problems[split:], problems[:split]
  questions, golds = [x["question"] for x in train_probs], [x["answer"] for x in train_probs]
  if p.reward_mode == "outcome":
    reward_fn = outcome_fn(golds)
  else:
    rm = train_lib.with_compute(from_pretrained(train_lib.resolve_data_path(p.reward_model)), cfg)
    reward_fn = reward_model_fn(rm, tokenizer, questions, p.reward_mode, p.step_reward, p.aggregate,
                                tag=p.tag, good=p.good, bad=p.bad)
  spec = trainable.from_config(cfg, policy.config, lambda: train_lib.select_experts(
      cfg, workdir, policy, _rollout_batches(cfg, policy, tokenizer, questions),
      "the policy's rollouts"), modes=("fft", "esft"))
  eq, eg = [x["question"] for x in eval_probs], [x["answer"] for x in eval_probs]
  evaluate = lambda m: {"greedy_accuracy": greedy_accuracy(m, tokenizer, eq, eg, p.prompt_len,
                                                            p.max_new_tokens, cfg.data.batch_size)}
  print(f"[ppo] {len(questions)} training prompts, {len(eq)} held out; reward: {p.reward_mode}"
        + (f" ({p.step_reward} step rewards)" if p.reward_mode == "prm" else ""))
  policy, summary = loop.train(cfg, workdir, policy, spec, tokenizer, questions, reward_fn,
                               setup.mesh, eval_fn=evaluate)
  return train_lib.epilogue(cfg, workdir, policy, spec, summary, tokenizer)


def _rollout_batches(cfg, policy, tokenizer, questions):
  """The start policy's own rollouts over the training prompts, as batches to score experts on
  (prompt and response tokens count; padding after EOS does not)."""
  p = cfg.ppo
  for k in range(0, max(len(questions), 1) * 100, cfg.data.batch_size):
    idx = np.arange(k, k + cfg.data.batch_size) % len(questions)
    r = rollout(policy, tokenizer, questions, idx, p.prompt_len, p.max_new_tokens, p.temperature,
                seed=k)
    b = r.batch()
    b["segment_ids"] = b["segment_ids"] * np.concatenate([r.prompt_mask, r.mask], 1)
    yield b
