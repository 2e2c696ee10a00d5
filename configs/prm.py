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

from moe_jax.train_config import base_config


def get_config() -> ml_collections.ConfigDict:
  c = base_config()
  c.task = "prm"
  c.model.update(dict(preset="tiny", hidden_size=128, num_hidden_layers=3, n_routed_experts=16,
                      num_experts_per_tok=4, moe_intermediate_size=64, intermediate_size=256,
                      max_position_embeddings=1024))
  c.pretrain.num_train_steps = 100  # only without init_from: learn GSM8K text first
  c.pretrain.train_files = ("assets:gsm8k_chat_sample.jsonl",)
  c.prm = ml_collections.ConfigDict(dict(
      train_file="assets:prm_gsm8k_sample.jsonl",  # step-labelled solutions
      tag=" ки", good="+", bad="-",  # Math-Shepherd's step tag and label tokens
      label="soft",  # "soft": train on the labels as given; "hard": threshold them at 0.5
      orm=False,  # True: outcome RM, only the final step's label
      value_head=False,  # True: a scalar head on the last hidden state instead of the LM head
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
