"""Forex news data: the user's news JSONL and rate series, windows and labels, the three groupings.

  read_news(path)    news JSONL, one item a line: {"time", "category", "text"[, "region"]};
                     time is ISO ("1984-03-05" or "1984-03-05T14:30[:00]")
  read_rates(spec)   "currency:dm" (a shipped series, `market.currency_days`), a daily CSV with
                     Date, Open, High, Low, Close (`market.read_csv`; the close is the rate), or a
                     two-column CSV date,rate
  windows(...)       consecutive windows of `days` trading days. Window w's news is every item
                     dated after the previous window's last day and up to its own last day
                     d_e; its trade input is the window's daily log returns; its label is
                     1 (up) if the rate `days` trading days after d_e is above the rate at d_e,
                     else 0: strictly after everything the window reads.
  time_groups / kmeans / nearest / category ids: the group of each item (forex.GROUPINGS)
  rows(...)          the fixed-shape rows the trainer reads (`features`)

Dimension letters as `moe_jax.finance.forex`.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os

import numpy as np

from moe_jax import jsonl
from moe_jax.finance import market
from moe_jax.input_pipeline import DataError


@dataclasses.dataclass(frozen=True)
class News:
  """News items, oldest first; every field has one entry per item."""

  times: np.ndarray  # [N] datetime64[s]
  categories: tuple[str, ...]
  texts: tuple[str, ...]
  regions: tuple[str, ...]  # "" where the item has none

  def __len__(self) -> int:
    return len(self.texts)


def _field(rec: dict, name: str, where: str, required: bool = True) -> str:
  v = rec.get(name)
  if v is None and not required:
    return ""
  if not isinstance(v, str) or not v.strip():
    raise DataError(f"{where}: field {name!r} must be a non-empty string, got {v!r}")
  return v


def read_news(path: str) -> News:
  """The items of a news JSONL, sorted by time; DataError names the file, line and field."""
  items = []
  for where, rec in jsonl.records(path, DataError):
    if not isinstance(rec, dict):
      raise DataError(f"{where}: expected an object with 'time', 'category', 'text', got {rec!r}")
    stamp = _field(rec, "time", where)
    try:
      t = np.datetime64(stamp.replace(" ", "T")[:19], "s")
    except ValueError:
      raise DataError(f"{where}: field 'time' is not an ISO date or datetime: {stamp!r}") from None
    items.append((t, _field(rec, "category", where), _field(rec, "text", where),
                  _field(rec, "region", where, required=False)))
  if not items:
    raise DataError(f"{path}: no news items")
  items.sort(key=lambda x: x[0])
  return News(np.asarray([i[0] for i in items], "datetime64[s]"), *(tuple(i[k] for i in items)
                                                                    for k in (1, 2, 3)))


def read_rates(spec: str) -> market.Daily:
  """A daily rate series: "currency:PAIR", an OHLC CSV, or a two-column CSV date,rate."""
  if spec.startswith("currency:"):
    return market.currency_days(spec.split(":", 1)[1])
  if not os.path.exists(spec):
    raise DataError(f"{spec}: no such rate file")
  with open(spec, encoding="utf-8", newline="") as f:
    header = next(csv.reader(f), [])
  if "Close" in header:
    return market.read_csv(spec)
  if len(header) != 2:
    raise DataError(f"{spec}, line 1: expected a header 'date,rate' or Date, Open, High, Low, "
                    f"Close columns, got {header}")
  dates, rates = [], []
  with open(spec, encoding="utf-8", newline="") as f:
    for line, row in enumerate(csv.reader(f), start=1):
      if line == 1 or not row:
        continue
      try:
        dates.append(np.datetime64(row[0].strip()[:10], "D"))
        rates.append(float(row[1]))
      except (ValueError, IndexError):
        raise DataError(f"{spec}, line {line}: expected an ISO date and a rate, got {row}") from None
      if not rates[-1] > 0:
        raise DataError(f"{spec}, line {line}: field {header[1]!r} must be a positive rate, "
                        f"got {row[1]!r}")
  d = np.asarray(dates, "datetime64[D]")
  if len(d) < 2 or np.any(np.diff(d).astype(np.int64) <= 0):
    raise DataError(f"{spec}: needs two or more days in strictly increasing order")
  r = np.asarray(rates, np.float64)
  return market.Daily(os.path.basename(spec), d, r, r, r, r, np.zeros_like(r))


@dataclasses.dataclass(frozen=True)
class Windows:
  """Consecutive windows of a rate series and the news items each one reads."""

  first: np.ndarray  # [W] index of the window's first trading day (>= 1)
  last: np.ndarray  # [W] index of its last trading day d_e
  returns: np.ndarray  # [W, L] percent daily log returns over the window's days
  labels: np.ndarray  # [W] 1 if rate[last + L] > rate[last], else 0
  items: tuple[np.ndarray, ...]  # per window, the indices of its news items (time order)
  position: tuple[np.ndarray, ...]  # per window, each item's time as a fraction of the window

  def __len__(self) -> int:
    return len(self.labels)


def windows(daily: market.Daily, news: News, days: int, max_items: int) -> Windows:
  """Non-overlapping windows of `days` trading days over `daily` (see the module docstring).
  A window keeps its latest `max_items` items; windows without news are left out."""
  rate, dates = daily.close, daily.dates
  firsts = np.arange(1, len(rate) - 2 * days + 1, days)
  day_end = lambda i: (dates[i] + np.timedelta64(1, "D")).astype("datetime64[s]")
  keep, items, pos = [], [], []
  for s in firsts:
    e = s + days - 1
    lo, hi = day_end(s - 1), day_end(e)  # the window's news: (end of day s-1, end of day e)
    idx = np.nonzero((news.times >= lo) & (news.times < hi))[0][-max_items:]
    if len(idx):
      keep.append(s)
      items.append(idx)
      pos.append(((news.times[idx] - lo) / (hi - lo)).astype(np.float64))
  if not keep:
    raise DataError(f"no news falls inside the rate series {daily.name!r} "
                    f"({dates[0]} to {dates[-1]})")
  first = np.asarray(keep)
  last = first + days - 1
  log_rate = np.log(rate)
  returns = 100 * (log_rate[first[:, None] + np.arange(days)] -
                   log_rate[first[:, None] + np.arange(days) - 1])
  labels = (rate[last + days] > rate[last]).astype(np.int32)
  return Windows(first, last, returns.astype(np.float32), labels, tuple(items), tuple(pos))


def time_groups(position: np.ndarray, n: int) -> np.ndarray:
  """[M] int bucket of each item: the window split into n equal sub-windows by time."""
  return np.minimum((np.asarray(position) * n).astype(np.int32), n - 1)


def nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
  """[N] index of the nearest centroid [K, D] (squared Euclidean) of each row of x [N, D]."""
  d = (np.sum(x * x, 1)[:, None] - 2 * x @ centroids.T + np.sum(centroids ** 2, 1)[None])
  return np.argmin(d, axis=1).astype(np.int32)


def kmeans(x: np.ndarray, k: int, seed: int, iters: int = 50) -> np.ndarray:
  """[K, D] centroids of x [N, D] by Lloyd's algorithm from a seeded k-means++ start."""
  x = np.asarray(x, np.float64)
  rng = np.random.default_rng(seed)
  c = x[rng.integers(len(x))][None]
  d = np.sum((x - c[0]) ** 2, 1)  # [N] squared distance to the nearest centroid so far
  for _ in range(1, k):
    pick = rng.choice(len(x), p=d / d.sum()) if d.sum() > 0 else rng.integers(len(x))
    c = np.concatenate([c, x[pick][None]])
    d = np.minimum(d, np.sum((x - x[pick]) ** 2, 1))
  for _ in range(iters):
    a = nearest(x, c)
    new = np.asarray([x[a == j].mean(0) if np.any(a == j) else c[j] for j in range(k)])
    if np.allclose(new, c):
      break
    c = new
  return c.astype(np.float32)


def features(max_items: int, news_dim: int, days: int) -> dict:
  """The rows' {field: (shape, dtype)}: vectors [M, D] float16 h_j; mask [M] 1 = an item;
  group_time, group_topic, group_category [M] int32; trade [L] float32 returns; label () int32;
  window () int32, the window's index in the series."""
  m = (max_items,)
  return {"vectors": ((max_items, news_dim), np.float16), "mask": (m, np.int32),
          "group_time": (m, np.int32), "group_topic": (m, np.int32),
          "group_category": (m, np.int32), "trade": ((days,), np.float32),
          "label": ((), np.int32), "window": ((), np.int32)}


def rows(w: Windows, ids: np.ndarray, item_vectors: np.ndarray, item_topics: np.ndarray,
         item_categories: np.ndarray, time_buckets: int, max_items: int) -> dict:
  """The rows of windows `ids`: item_* are per news item ([N, D] vectors, [N] topic cluster and
  category ids); items past max_items cannot occur (`windows` keeps the latest)."""
  n = len(ids)
  out = {"vectors": np.zeros((n, max_items, item_vectors.shape[1]), np.float16),
         **{f: np.zeros((n, max_items), np.int32) for f in
            ("mask", "group_time", "group_topic", "group_category")},
         "trade": w.returns[ids], "label": w.labels[ids], "window": np.asarray(ids, np.int32)}
  for r, i in enumerate(ids):
    idx, k = w.items[i], len(w.items[i])
    out["vectors"][r, :k] = item_vectors[idx]
    out["mask"][r, :k] = 1
    out["group_time"][r, :k] = time_groups(w.position[i], time_buckets)
    out["group_topic"][r, :k] = item_topics[idx]
    out["group_category"][r, :k] = item_categories[idx]
  return out


def cached_vectors(texts, encode, path: str) -> np.ndarray:
  """[N, D] float32 vectors of `texts`, encoding (encode(list of texts) -> [n, D]) only the
  distinct texts `path` (an .npz keyed by each text's SHA-1) does not hold yet."""
  keys = [hashlib.sha1(t.encode()).hexdigest() for t in texts]
  table = {}
  if os.path.exists(path):
    with np.load(path) as f:
      table = dict(zip(f["keys"].tolist(), f["vectors"]))
  missing = sorted({k: t for k, t in zip(keys, texts) if k not in table}.items())
  if missing:
    new = encode([t for _, t in missing])
    table.update(zip([k for k, _ in missing], np.asarray(new, np.float32)))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, keys=np.asarray(list(table)), vectors=np.stack(list(table.values())))
    os.replace(tmp, path)
  return np.stack([table[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)
