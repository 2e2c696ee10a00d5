"""Quickstart: a tiny DeepSeekMoE trained for a few minutes on CPU on the shipped ESFT samples.

    python train.py --config=configs/quickstart.py --workdir=/tmp/moe_jax_quickstart
    python train.py --config=configs/quickstart.py --workdir=DIR --config.num_train_steps=20
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.init_from = ""  # a Hugging Face model directory to fine-tune; "" = random init from `model`
  # Any ModelConfig field (Hugging Face names) may be set next to the preset.
  c.model = ml_collections.ConfigDict(dict(
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
      dispatch="sorted",
      capacity_factor=0.0,  # dropless; 1.25-2.0 trades exactness for speed at scale
      aux_loss_alpha=0.001,
  ))
  c.data = ml_collections.ConfigDict(dict(
      tokenizer="byte",  # or a path to a tokenizer.json
      train_files=["assets:intent_train_sample.jsonl", "assets:law_train_sample.jsonl"],
      seq_len=256,
      batch_size=8,
      eval_fraction=0.1,  # the first rows are held out for evaluation
      max_examples=0,  # 0 = all
  ))
  c.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=3e-3, warmup_steps=20, final_lr_fraction=0.1, weight_decay=0.1,
      b1=0.9, b2=0.95, grad_clip=1.0))
  c.num_train_steps = 150
  c.log_every = 10
  c.export_hf = True  # write workdir/hf as Hugging Face safetensors at the end
  c.sample_prompt = "请分析下面这句话的意图，并转化为json格式： 帮我打开客厅的灯\n答案："
  c.sample_tokens = 48
  return c
