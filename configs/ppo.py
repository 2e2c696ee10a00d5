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

from moe_jax.prm.configs import gsm8k_demo_model, ppo_config


def get_config() -> ml_collections.ConfigDict:
  return gsm8k_demo_model(ppo_config())
