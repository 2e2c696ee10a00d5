"""A seeded simulator of finance news on a REAL price series, with a known planted signal.

No finance news ships offline, so the stock-events study writes its own onto
real trading days (`market.stock_days`, AAPL by default) and moves the real
price by what the news says. What is planted, exactly:

  dates     `news` distinct real trading days in [start, end], one item each;
            `out_of_hours` of the items before 09:10 (07:00-09:10) or after 14:50
            (14:50-20:00), the rest uniformly in 09:10-14:50, to the second.
  text      a share `neutral` of the items carry no event (meetings, hires...);
            the rest one event of the dictionary's K = 4 types
            (`events.EVENT_TYPES`: EARNINGS, FORECAST, RATING, SALES), with
            COMPANY, TIME, a direction word (up or down, equally likely) and,
            for EARNINGS and SALES, a change rate "r percent", r in 1..20.
            A share `paraphrase` of the event items is written with trigger and
            direction words OUTSIDE the dictionary (income / climbed, outlook /
            slashed, ...): the extractor finds no event in them (checked here).
  prices    minute bars within each real day (`bars.simulate_day_bars`: the
            day's real open, high, low and close), then every bar that finishes
            after an item's publication is multiplied by exp(jump):
              jump = strength * vol * direction * weight[type] * size
            with vol the series' daily log-return deviation over the range,
            weight EARNINGS 1.0, FORECAST 1.2, RATING 0.8, SALES 0.6, and size
            r / 10 for the rated types, 1 otherwise; neutral items jump 0.
            The planted jumps add up, so later days carry every earlier jump.

Nothing else is planted: the trade history before an item carries no planted
signal (the real path's own serial structure is all there is), and a neutral
item's label is the real price's move alone. `oracle` is the accuracy of
predicting sign(jump) (the best any model can do on the event items, up to the
real path's noise), measured on the labels the simulator produced.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from moe_jax.finance import bars as bars_lib
from moe_jax.finance import events, market

# Out-of-dictionary wordings, per event type: (triggers, up words, down words).
_PARAPHRASE = {
    "EARNINGS": (("income", "margin"), ("climbed", "jumped", "surged"),
                 ("slid", "slumped", "dropped")),
    "FORECAST": (("outlook", "projections"), ("boosted", "hiked"), ("trimmed", "slashed")),
    "RATING": (("recommendation", "stance"), ("improved", "boosted"), ("reduced", "slashed")),
    "SALES": (("shipments", "turnover"), ("climbed", "jumped", "surged"),
              ("slid", "slumped", "dropped")),
}
_TEMPLATES = {  # {c} company, {t} time, {g} trigger, {d} direction word, {r} rate
    "EARNINGS": ("{c} said {t} {g} {d} {r} percent",
                 "{t} {g} at {c} {d} {r} percent , the company said"),
    "FORECAST": ("{c} {d} its {t} {g}", "{c} {d} its {g} for the {t} period"),
    "RATING": ("analysts {d} their {g} on {c}", "a broker {d} its {g} on {c} shares"),
    "SALES": ("{c} reported {t} {g} {d} {r} percent", "{t} {g} at {c} {d} {r} percent"),
}
_NEUTRAL = ("{c} will hold its annual shareholder meeting next month",
            "{c} named a new head of its retail stores",
            "{c} opened an office in Singapore",
            "shares of {c} were active in morning trade",
            "{c} plans to present at an industry conference")
_WEIGHT = {"EARNINGS": 1.0, "FORECAST": 1.2, "RATING": 0.8, "SALES": 0.6}
_RATED = ("EARNINGS", "SALES")
_COMPANY = {"AAPL": "Apple", "IBM": "IBM", "MSFT": "Microsoft", "GOOG": "Google"}


@dataclasses.dataclass(frozen=True)
class Settings:
  symbol: str = "AAPL"  # one of market.STOCKS
  start: str = "2005-01-01"  # the real trading days used
  end: str = "2012-12-31"
  news: int = 1500  # items, one per trading day
  neutral: float = 0.2  # share of items with no event
  paraphrase: float = 0.3  # share of event items written outside the dictionary
  out_of_hours: float = 0.3  # share published before 09:10 or after 14:50
  strength: float = 1.0  # jump size in units of the daily log-return deviation
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class World:
  """The simulated news and bars, with what was planted in each item ([N] arrays, time order)."""
  news: events.News
  bars: bars_lib.MinuteBars
  event: np.ndarray  # 0 none, else 1 + index in events.EVENT_TYPES
  direction: np.ndarray  # +1 / -1 / 0
  rate: np.ndarray  # the written change rate, NaN if none
  paraphrased: np.ndarray  # bool: an event written outside the dictionary
  jump: np.ndarray  # the planted log jump


def _publication(rng, day: np.datetime64, out_of_hours: float) -> np.datetime64:
  base = day.astype("datetime64[s]")
  if rng.random() < out_of_hours:
    lo, hi = (7 * 3600, 9 * 3600 + 600) if rng.random() < 0.5 else (14 * 3600 + 3000, 20 * 3600)
  else:
    lo, hi = 9 * 3600 + 600, 14 * 3600 + 3000
  return base + np.timedelta64(int(rng.integers(lo + 1, hi)), "s")


def _text(rng, etype: events.EventType, direction: int, rate: float, company: str,
          paraphrased: bool) -> str:
  if paraphrased:
    triggers, up, down = _PARAPHRASE[etype.name]
  else:
    triggers, up, down = etype.triggers, etype.up, etype.down
  template = _TEMPLATES[etype.name][int(rng.integers(2))]
  text = template.format(c=company, t=str(rng.choice(events.TIMES)), g=str(rng.choice(triggers)),
                         d=str(rng.choice(up if direction > 0 else down)), r=f"{rate:g}")
  return text[0].upper() + text[1:] + "."


def simulate(s: Settings) -> World:
  """The seeded world of `s` (see the module docstring for what is planted)."""
  rng = np.random.default_rng(s.seed)
  daily = market.stock_days(s.symbol).between(s.start, s.end)
  if s.news > len(daily) - 2:
    raise ValueError(f"simulate: {s.news} news items need more than {len(daily)} trading days")
  bars = bars_lib.simulate_day_bars(daily, s.seed + 1)
  vol = float(np.std(np.diff(np.log(daily.close))))
  days = np.sort(rng.choice(np.arange(1, len(daily) - 1), s.news, replace=False))
  company = _COMPANY.get(s.symbol, s.symbol)
  out = {k: [] for k in ("time", "text", "event", "direction", "rate", "paraphrased", "jump")}
  for d in days:
    out["time"].append(_publication(rng, daily.dates[d], s.out_of_hours))
    if rng.random() < s.neutral:
      text = str(rng.choice(_NEUTRAL)).format(c=company)
      out["text"].append(text[0].upper() + text[1:] + ".")
      for k, v in (("event", 0), ("direction", 0), ("rate", np.nan), ("paraphrased", False),
                   ("jump", 0.0)):
        out[k].append(v)
      continue
    k = int(rng.integers(len(events.EVENT_TYPES)))
    etype = events.EVENT_TYPES[k]
    direction = 1 if rng.random() < 0.5 else -1
    rate = float(rng.integers(1, 21)) if etype.name in _RATED else np.nan
    para = bool(rng.random() < s.paraphrase)
    text = _text(rng, etype, direction, rate, company, para)
    found = events.extract(text).event
    if found != (0 if para else 1 + k):  # the dictionary must miss exactly the paraphrases
      raise AssertionError(f"simulate: the extractor found event {found} in {text!r}")
    size = rate / 10 if etype.name in _RATED else 1.0
    for key, v in (("text", text), ("event", 1 + k), ("direction", direction), ("rate", rate),
                   ("paraphrased", para),
                   ("jump", s.strength * vol * direction * _WEIGHT[etype.name] * size)):
      out[key].append(v)
  times = np.asarray(out["time"], "datetime64[s]")
  jump = np.asarray(out["jump"])
  # Every bar finishing after a publication carries that item's jump (and all earlier ones).
  carried = np.searchsorted(times, bars.ends, side="left")  # items published before each bar's end
  shift = np.exp(np.r_[0.0, np.cumsum(jump)][carried])
  moved = dataclasses.replace(bars, **{f: getattr(bars, f) * shift
                                       for f in ("open", "close", "low", "high", "vwap")})
  news = events.News(times, [s.symbol] * len(times), out["text"])
  return World(news, moved, np.asarray(out["event"]), np.asarray(out["direction"]),
               np.asarray(out["rate"], np.float64), np.asarray(out["paraphrased"]), jump)


def oracle(world: World, labels: np.ndarray, keep: np.ndarray) -> float:
  """Accuracy of predicting up iff the planted jump is positive, on the event items in `keep`."""
  ev = keep & (world.event > 0)
  return float(np.mean((world.jump[ev] > 0) == (labels[ev] == 1))) if ev.any() else float("nan")
