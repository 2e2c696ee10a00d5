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

from moe_jax.train_config import ppo_config


def get_config() -> ml_collections.ConfigDict:
  c = ppo_config()
  c.model.update(dict(preset="tiny", hidden_size=128, num_hidden_layers=3, n_routed_experts=16,
                      num_experts_per_tok=4, moe_intermediate_size=64, intermediate_size=256,
                      max_position_embeddings=1024))
  c.pretrain.num_train_steps = 100  # only without init_from: learn GSM8K text first
  c.pretrain.train_files = ("assets:gsm8k_chat_sample.jsonl",)
  return c
