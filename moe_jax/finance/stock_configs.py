"""The training-config section of the "stock" task: `stock_config()`.

Builds on `moe_jax.train_config.base_config()` and adds `stock.*` with one
comment per field; configs/stock_events.py starts from it.
"""

import ml_collections

from moe_jax import train_config
from moe_jax.classify.configs import MINILM

SYSTEMS = ("raw", "coarse", "sspm", "msspm")


def stock_config() -> ml_collections.ConfigDict:
  """Stock movement from news (task "stock", moe_jax.finance.stock_task) on frozen MiniLM."""
  c = train_config.base_config()
  c.task = "stock"
  c.stock = ml_collections.ConfigDict(dict(
      system="msspm",  # "raw" (text only), "coarse" (one event-type id), "sspm" (BIO roles from the
                       # dictionary), "msspm" (SSPM + a CRF tagger; its tags at test time)
      news_encoder="bilstm",  # "bilstm" over the engine model's word embeddings, or "bert": the
                              # engine encoder's hidden states (train_mode "fft" fine-tunes it)
      hidden=64,  # BiLSTM width per direction; the fused width is twice this
      trade_steps=6,  # 10-minute trade steps before publication (6 = the last hour)
      eta=0.5,  # MSSPM: L = (1 - eta) L_CRF + eta L_BCE
      crf_covered_only=True,  # MSSPM: the CRF learns only from news the dictionary found an event
                              # in (elsewhere its all-O tags are the dictionary's miss, not a label)
      eval_fraction=0.2,  # the latest share of the news (by time) is held out
      source="simulate",  # "simulate" (moe_jax.finance.simulate) or "files" (the two below)
      news_file="",  # news JSONL {"time", "ticker", "text"}; "assets:" = shipped
      bars_file="",  # minute-bar CSV: timestamp, open, close, low, high, volume, vwap; "" = bars
                     # simulated within sim.symbol's real days (moe_jax.finance.bars)
      sim=ml_collections.ConfigDict(dict(  # moe_jax.finance.simulate.Settings
          symbol="AAPL",  # the real daily series (market.stock_days)
          start="2005-01-01",  # its trading days used
          end="2012-12-31",
          news=1500,  # items, one per trading day
          neutral=0.2,  # share of items with no event
          paraphrase=0.3,  # share of event items written outside the dictionary
          out_of_hours=0.3,  # share published before 09:10 or after 14:50
          strength=1.0,  # planted jump in daily log-return deviations
          seed=-1,  # the world's seed; -1 = config.seed
      )),
  ))
  c.init_from = MINILM
  c.data.tokenizer = MINILM
  c.train_mode = "heads"  # the engine model stays frozen: only params["sspm"] trains
  c.data.seq_len = 32  # word pieces per news item, with [CLS] and [SEP]
  c.data.batch_size = 32
  c.optimizer.learning_rate = 2e-3
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_steps = 20
  c.optimizer.weight_decay = 0.0
  c.num_train_steps = 300
  c.eval_every = 0
  c.checkpoint_every = 300
  c.export_hf = False  # the engine model stays as it was; True writes it with hf/sspm.npz
  return c
