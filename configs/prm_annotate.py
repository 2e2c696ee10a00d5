"""Math-Shepherd automatic step labels: N completer rollouts from every step prefix.

    python -m moe_jax.prm annotate --config=configs/prm_annotate.py \
        --config.completer=/tmp/moe_jax_prm/pretrain/hf --config.solutions=solutions.jsonl \
        --config.out_dir=/tmp/labels
`solutions` is JSONL of {"question", "gold", "steps": [...]} (a generator's
samples). Rerunning continues an interrupted run without duplicating rows.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.completer = ""  # Hugging Face directory of the completer model
  c.tokenizer = "byte"  # "byte" or a tokenizer.json (or its directory)
  c.solutions = ""  # JSONL of {"question", "gold", "steps"}
  c.out_dir = ""  # labels.jsonl, then {hard,soft}_{trl,math_shepherd}.jsonl
  c.n = 8  # rollouts per step prefix (the paper: 8 with LLemma-7B)
  c.temperature = 0.7
  c.max_new_tokens = 128
  c.batch_size = 64  # rollouts per compiled generate call
  c.seed = 0
  return c
