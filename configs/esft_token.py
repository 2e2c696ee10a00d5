"""ESFT-Token: train only the experts covering p=0.2 of the task's token selections per layer.

    python train.py --config=configs/esft_token.py --workdir=/tmp/esft_token \
        --config.init_from=/path/to/hf_model --config.data.tokenizer=/path/to/hf_model \
        --config.data.train_files=/path/to/train/intent.jsonl
Experts are scored on n_score_tokens task tokens (or read from
--config.esft.expert_config=expert_config.json). ESFT paper settings: lr 1e-5,
constant schedule, weight decay 0.1, 500 steps.
"""

import ml_collections

from moe_jax.train_config import esft_config


def get_config() -> ml_collections.ConfigDict:
  return esft_config(score_function="token", top_p=0.2)
