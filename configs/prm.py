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

from moe_jax.prm.configs import gsm8k_demo_model, prm_config


def get_config() -> ml_collections.ConfigDict:
  return gsm8k_demo_model(prm_config())
