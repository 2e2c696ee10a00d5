"""Quickstart: a tiny DeepSeekMoE, pretrained briefly on the shipped ESFT samples, then ESFT on intent.

Runs on CPU in a few minutes:
    python train.py --config=configs/quickstart.py --workdir=/tmp/moe_jax_quickstart

Stages (each resumes from its checkpoints in the workdir):
  1. pretrain: full training from random init on intent + law samples;
  2. ESFT: score experts on the intent data (token selection ratio), keep per
     layer the experts covering p=0.2 of the routing, train only those;
  3. evaluate before/after, export Hugging Face safetensors and the ESFT adapter.
"""

import ml_collections

from moe_jax.train_config import base_config


def get_config() -> ml_collections.ConfigDict:
  c = base_config()
  c.model.update(dict(
      preset="tiny",
      vocab_size=264,  # the byte tokenizer's 259 ids, rounded up to a multiple of 8
      hidden_size=128,
      num_hidden_layers=3,
      n_routed_experts=16,
      num_experts_per_tok=4,
      n_shared_experts=1,
      moe_intermediate_size=64,
      intermediate_size=256,
      max_position_embeddings=1024,
  ))
  c.pretrain = ml_collections.ConfigDict(dict(
      num_train_steps=120,
      train_files=("assets:intent_train_sample.jsonl", "assets:law_train_sample.jsonl"),
      learning_rate=3e-3,
  ))
  c.data.train_files = ["assets:intent_train_sample.jsonl"]
  c.data.seq_len = 256
  c.data.batch_size = 8
  c.train_mode = "esft"
  c.esft.score_function = "token"
  c.esft.top_p = 0.2
  c.esft.n_score_tokens = 16384
  c.optimizer.learning_rate = 1e-3
  c.num_train_steps = 60
  c.eval_every = 0
  c.sample_prompt = "请分析下面这句话的意图，并转化为json格式： 帮我打开客厅的灯\n答案："
  return c
