"""A Math-Shepherd process reward model on GSM8K-style step-labelled solutions.

    python train.py --config=configs/prm.py --workdir=/tmp/prm
    python train.py --config=configs/prm.py --workdir=/tmp/prm --config.init_from=/tmp/moe_jax_quickstart/hf

The base model comes from `init_from` (a Hugging Face directory, e.g. the
quickstart's export) or, by default, a tiny model pretrained here on the GSM8K
sample. Step labels are read from Math-Shepherd (`input`/`label` with ` ки`
tags) or TRL (`prompt`/`completions`/`labels`) JSONL. ESFT applies too:
--config.train_mode=esft trains only the experts the PRM data routes to.
"""

import ml_collections

from moe_jax.train_config import prm_config


def get_config() -> ml_collections.ConfigDict:
  c = prm_config()
  c.model.update(dict(preset="tiny", hidden_size=128, num_hidden_layers=3, n_routed_experts=16,
                      num_experts_per_tok=4, moe_intermediate_size=64, intermediate_size=256,
                      max_position_embeddings=1024))
  c.pretrain.num_train_steps = 100  # only without init_from: learn GSM8K text first
  c.pretrain.train_files = ("assets:gsm8k_chat_sample.jsonl",)
  return c
