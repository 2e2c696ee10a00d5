"""Full fine-tuning (FFT) of a DeepSeek-family model on an ESFT task: every parameter trains.

    python train.py --config=configs/fft.py --workdir=/tmp/fft \
        --config.init_from=/path/to/hf_model --config.data.tokenizer=/path/to/hf_model \
        --config.data.train_files=/path/to/train/intent.jsonl
Without init_from it fine-tunes a tiny random model on the shipped intent sample.
Hyperparameters follow the ESFT paper's FFT baseline (lr 3e-5, constant schedule).
"""

import ml_collections

from moe_jax.train_config import base_config


def get_config() -> ml_collections.ConfigDict:
  c = base_config()
  c.train_mode = "fft"
  c.optimizer.learning_rate = 3e-5
  c.num_train_steps = 500
  c.log_every = 10
  c.eval_every = 100
  c.checkpoint_every = 100
  return c
