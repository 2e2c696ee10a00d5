"""Step-by-step PPO (Math-Shepherd): a policy trained on a PRM's per-step rewards.

    python train.py --config=configs/prm.py --workdir=/tmp/prm          # the PRM (and its base)
    python train.py --config=configs/ppo.py --workdir=/tmp/ppo \
        --config.init_from=/tmp/prm/pretrain/hf --config.ppo.reward_model=/tmp/prm/hf

Reward modes (config.ppo.reward_mode): "prm" (each step's PRM score on its
last token; shaped by ppo.step_reward), "prm_final" (the PRM's aggregated
solution score at the end), "orm" (an outcome RM's score at the end) and
"outcome" (1 for the gold answer, no reward model). `--config.train_mode=esft`
trains only the experts the policy's own rollouts route to.
"""

import ml_collections

from moe_jax.train_config import base_config


def get_config() -> ml_collections.ConfigDict:
  c = base_config()
  c.task = "ppo"
  c.model.update(dict(preset="tiny", hidden_size=128, num_hidden_layers=3, n_routed_experts=16,
                      num_experts_per_tok=4, moe_intermediate_size=64, intermediate_size=256,
                      max_position_embeddings=1024))
  c.pretrain.num_train_steps = 100  # only without init_from: learn GSM8K text first
  c.pretrain.train_files = ("assets:gsm8k_chat_sample.jsonl",)
  c.ppo = ml_collections.ConfigDict(dict(
      prompts_file="assets:gsm8k_train_sample.jsonl",  # GSM8K JSONL: questions and gold answers
      reward_model="",  # HF directory of the PRM/ORM (not needed for "outcome")
      reward_mode="prm",  # "prm", "prm_final", "orm" or "outcome"
      step_reward="delta",  # "prm": "raw", "centered", "delta" or "min_so_far" (see moe_jax.prm.ppo)
      aggregate="min",  # "prm_final": how step scores become one
      tag=" ки", good="+", bad="-",  # the reward model's step tag and label tokens
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
