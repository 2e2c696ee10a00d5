"""The training-config sections of the PRM tasks: `prm_config()` ("prm") and `ppo_config()` ("ppo").

Each builds on `moe_jax.train_config.base_config()` and adds its task's
section (`prm.*`, `ppo.*`) with one comment per field; configs/prm.py and
configs/ppo.py start from them.
"""

import ml_collections

from moe_jax import train_config
from moe_jax.prm import data


def gsm8k_demo_model(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The demo base of configs/prm.py and configs/ppo.py: a small tiny-preset DeepSeekMoE,
  pretrained here on the GSM8K sample when no init_from is given (the same for both, so a PPO
  run can start from the PRM run's pretrained base)."""
  c.model.update(dict(preset="tiny", hidden_size=128, num_hidden_layers=3, n_routed_experts=16,
                      num_experts_per_tok=4, moe_intermediate_size=64, intermediate_size=256,
                      max_position_embeddings=1024))
  c.pretrain.num_train_steps = 100  # only without init_from: learn GSM8K text first
  c.pretrain.train_files = ("assets:gsm8k_chat_sample.jsonl",)
  return c


def prm_config() -> ml_collections.ConfigDict:
  """A process reward model (task "prm", moe_jax.prm.training): the PRM fields and their defaults."""
  c = train_config.base_config()
  c.task = "prm"
  c.prm = ml_collections.ConfigDict(dict(
      train_file="assets:prm_gsm8k_sample.jsonl",  # step-labelled solutions
      tag=data.TAG, good=data.GOOD, bad=data.BAD,  # Math-Shepherd's step tag and label tokens
      label="soft",  # "soft": train on the labels as given; "hard": threshold them at 0.5
      orm=False,  # True: outcome RM, only the final step's label
      value_head=False,  # True: a scalar head on the last hidden state instead of the LM head
      # > 0: train on rows of one right and one wrong solution of the same question (by the
      # last step's label), this many per question: batches balanced by problem.
      pairs_per_question=0,
      # With pairs: weight of a pairwise ranking term, softplus(z_wrong - z_right) on the two
      # solutions' last-step logits (beyond Math-Shepherd, which trains on step labels only).
      rank_weight=0.0,
  ))
  c.data.seq_len = 512
  c.data.batch_size = 8
  c.data.eval_fraction = 0.15
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_steps = 10
  c.num_train_steps = 150
  c.log_every = 10
  c.eval_every = 0
  c.checkpoint_every = 50
  return c


def ppo_config() -> ml_collections.ConfigDict:
  """Step-by-step PPO (task "ppo", moe_jax.prm.ppo): the PPO fields and their defaults (spec C4)."""
  c = train_config.base_config()
  c.task = "ppo"
  c.ppo = ml_collections.ConfigDict(dict(
      prompts_file="assets:gsm8k_train_sample.jsonl",  # GSM8K JSONL: questions and gold answers
      reward_model="",  # HF directory of the PRM/ORM (not needed for "outcome")
      reward_mode="prm",  # "prm", "prm_final", "orm" or "outcome"
      step_reward="delta",  # "prm": "raw", "centered", "delta" or "min_so_far" (see moe_jax.prm.ppo)
      aggregate="min",  # "prm_final": how step scores become one
      tag=data.TAG, good=data.GOOD, bad=data.BAD,  # the reward model's step tag and label tokens
      kl_coef=0.04,  # the paper's per-token KL penalty against the start policy
      gamma=1.0, lam=0.95,  # GAE
      clip=0.2, value_clip=0.2, vf_coef=0.5, ent_coef=0.0, whiten=True,
      epochs=2,  # passes over each batch of rollouts
      minibatch_size=8,  # 0 = the whole batch
      temperature=1.0,  # rollout sampling
      prompt_len=256,  # prompts are left-padded to this many tokens
      max_new_tokens=192,
  ))
  c.data.tokenizer = "byte"
  c.data.batch_size = 16  # rollouts per iteration
  c.data.eval_fraction = 0.1  # held-out prompts for greedy accuracy before and after
  c.optimizer.learning_rate = 1e-5
  c.optimizer.schedule = "cosine"
  c.optimizer.final_lr_fraction = 0.01
  c.optimizer.weight_decay = 0.0
  c.num_train_steps = 20  # PPO iterations
  c.log_every = 1
  c.eval_every = 0
  c.checkpoint_every = 5
  return c
