"""The training-config section of the "cascade" task: `cascade_config()`.

Builds on `moe_jax.classify.configs.classify_config()` (the data, the
optimizer) and adds `cascade.*` with one comment per field; configs/cascade_*.py
start from it.
"""

import ml_collections

from moe_jax.classify import configs as classify_configs

MINILM_2L = classify_configs.MINILM + "@2"  # MiniLM's own first two layers: the small complete model


def cascade_config() -> ml_collections.ConfigDict:
  """A two-stage cascade, MiniLM-2L then MiniLM-6L, with the official DAR defaults."""
  c = classify_configs.classify_config()
  c.task = "cascade"
  c.init_from = ""  # the stages name their own weights
  c.cascade = ml_collections.ConfigDict(dict(
      method="cascade",  # "cascade" (complete models, small to large), "single" (one model),
                         # "deebert" or "pabee" (early exit inside the one model of `stages`)
      stages=(MINILM_2L, classify_configs.MINILM),  # PATH[@LAYERS] each, small to large
      dar_weight=0.5,  # lambda of the ranking loss (official script 0.5; argparse default 0.5)
      margin=0.5,  # its epsilon (official script 0.5; argparse default 0.3)
      difficulty_file="",  # JSONL with "difficulty" easy/hard (python -m moe_jax.cascade
                           # difficulty); needed when dar_weight > 0
      ramp_steps=0,  # deebert: steps of the off-ramp stage (0 = num_train_steps)
      thresholds=(0.0, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0),  # cascade: tau
      entropies=(0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1),  # deebert: S
      patiences=(),  # pabee: patience values; () = 1 .. layers - 1
  ))
  c.data.seq_len = 48
  c.data.batch_size = 16
  c.optimizer.learning_rate = 5e-5
  c.export_hf = False  # the stages are saved to WORKDIR/stages instead
  return c
