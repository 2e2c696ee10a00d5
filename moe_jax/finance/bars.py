"""Minute bars, the 10-minute trade steps SSPM reads, and the leakage-free movement label.

A `MinuteBars` record holds one instrument's minute bars, oldest first. A
bar's timestamp is the START of its minute (the common vendor convention); the
bar is known once its minute has ended. Trading days are read off the bars
themselves: a day's session opens at its first bar's start and closes at its
last bar's end (09:00-15:00 for the simulated bars: 360 bars).

  simulate_day_bars(daily, seed)  bars within each REAL trading day of a `market.Daily`:
                      a Brownian bridge from the day's open to its close, its
                      excursions stretched to the day's high and low, so every
                      day's open, high, low and close are the real ones
  read_minute_csv(path)  a user's bars: timestamp, open, close, low, high, volume, vwap
  cut(bars, time)     where a news item published at `time` sits (the spec's rule):
                      in hours (session open + 10 min .. close - 10 min): the price
                      at publication is the close of the last bar finished by then,
                      and the history is the bars finished by then; out of hours
                      (before 09:10, after 14:50, or a day without trading): the
                      last full trading day's close and history. The target is
                      the open of the first trading day that opens after `time`;
                      label 1 if that open is above the price at publication.
  trade_steps(bars, end, steps)  [steps, 120]: the last steps x 10 finished bars before
                      `end`, each 10-minute window's [open, close, low, high,
                      volume, vwap] flattened (60), then its change rates vs the
                      previous window (60)
"""

from __future__ import annotations

import csv
import dataclasses

import numpy as np

from moe_jax.input_pipeline import DataError

FIELDS = ("open", "close", "low", "high", "volume", "vwap")  # the paper's order of a bar
WINDOW = 10  # minutes per trade step
STEP_DIM = 2 * WINDOW * len(FIELDS)  # 120: 60 features + 60 change rates
MARGIN = np.timedelta64(10, "m")  # news this close to the open or close is out of hours
MINUTE = np.timedelta64(60, "s")


@dataclasses.dataclass(frozen=True)
class MinuteBars:
  """Minute bars oldest first; every array is [M]."""
  times: np.ndarray  # datetime64[s], each bar's start
  open: np.ndarray
  close: np.ndarray
  low: np.ndarray
  high: np.ndarray
  volume: np.ndarray
  vwap: np.ndarray

  def __len__(self) -> int:
    return len(self.times)

  def features(self) -> np.ndarray:
    """[M, 6] float64 in FIELDS order."""
    return np.stack([getattr(self, f) for f in FIELDS], -1)

  @property
  def ends(self) -> np.ndarray:
    return self.times + MINUTE

  def sessions(self) -> tuple[np.ndarray, np.ndarray]:
    """(first bar index [D], one past the last bar index [D]) of each trading day."""
    day = self.times.astype("datetime64[D]")
    first = np.flatnonzero(np.r_[True, day[1:] != day[:-1]])
    return first, np.r_[first[1:], len(day)]


def simulate_day_bars(daily, seed: int, start: str = "09:00", minutes: int = 360) -> MinuteBars:
  """Minute bars within each real day of `daily` (a market.Daily), seeded.

  The minute closes are a Brownian bridge in log price from the day's real open to its
  real close, with the volatility of a Brownian motion whose expected range is the
  day's (range / (1.6 sqrt(minutes)) per minute), so the path before any minute says
  no more about the rest of the day than a random walk's would. Its excursions above
  max(open, close) and below min(open, close) are then stretched (a monotone map of
  the level, one per day) to touch the day's real high and low: every day's open,
  high, low and close are the real ones. (Knots at the high and the low with bridges
  between would give each segment a visible drift towards the next knot: a history
  that predicts the close.) Each bar opens at the previous bar's close; its high and
  low reach a little past open and close (within the day's range); volume is the
  day's volume spread by a U-shaped intraday profile with noise; vwap is the bar's
  typical price (h+l+c)/3.
  """
  rng = np.random.default_rng(seed)
  n = len(daily)
  o, c = np.log(daily.open)[:, None], np.log(daily.close)[:, None]
  hi, lo = np.log(daily.high)[:, None], np.log(daily.low)[:, None]
  sigma = np.maximum(hi - lo, 1e-6) / (1.6 * np.sqrt(minutes))
  walk = np.concatenate([np.zeros((n, 1)), np.cumsum(rng.normal(size=(n, minutes)), 1)], 1)
  s = np.arange(minutes + 1)[None] / minutes
  path = o + s * (c - o) + sigma * (walk - s * walk[:, -1:])  # [n, minutes + 1]
  top, bottom = np.maximum(o, c), np.minimum(o, c)
  path = _stretch(path, top, hi)
  path = -_stretch(-path, -bottom, -lo)
  price = np.exp(path)
  po, pc = price[:, :-1], price[:, 1:]
  wiggle = np.abs(rng.normal(0.0, 1e-4, (2, n, minutes)))
  # Within the day's range; the outer max / min only absorb exp(log(x)) rounding.
  h = np.maximum(np.minimum(np.maximum(po, pc) * (1 + wiggle[0]), daily.high[:, None]),
                 np.maximum(po, pc))
  low = np.minimum(np.maximum(np.minimum(po, pc) * (1 - wiggle[1]), daily.low[:, None]),
                   np.minimum(po, pc))
  profile = 1.0 + 2.0 * ((np.arange(minutes) - minutes / 2) / (minutes / 2)) ** 2
  vol = profile[None] * rng.lognormal(0.0, 0.3, (n, minutes))
  vol = vol / vol.sum(1, keepdims=True) * np.maximum(daily.volume, 1.0)[:, None]
  day0 = daily.dates.astype("datetime64[s]") + (np.datetime64(f"2000-01-01T{start}", "s")
                                                 - np.datetime64("2000-01-01", "s"))
  times = (day0[:, None] + np.arange(minutes)[None] * MINUTE).ravel()
  return MinuteBars(times, po.ravel(), pc.ravel(), low.ravel(), h.ravel(), vol.ravel(),
                    ((h + low + pc) / 3).ravel())


def _stretch(path, base, target):
  """path [n, M] with its excursions above base [n, 1] scaled so its max is target [n, 1]; a day
  whose path never rises above base gets its highest interior point lifted to target."""
  peak = path.max(1, keepdims=True)
  room = peak - base
  scale = np.where(room > 1e-12, (target - base) / np.maximum(room, 1e-12), 0.0)
  out = np.where(path > base, base + (path - base) * scale, path)
  flat = (room[:, 0] <= 1e-12) & (target[:, 0] > base[:, 0])
  if flat.any():
    inner = out[flat, 1:-1]
    out[flat, 1 + np.argmax(inner, 1)] = target[flat, 0]
  return out


def read_minute_csv(path: str) -> MinuteBars:
  """A user's minute bars: a CSV with columns timestamp (ISO, the bar's start), open, close, low,
  high, volume, vwap (any order; more columns are ignored), strictly increasing in time."""
  with open(path, encoding="utf-8", newline="") as f:
    reader = csv.DictReader(f)
    missing = [k for k in ("timestamp",) + FIELDS if k not in (reader.fieldnames or [])]
    if missing:
      raise DataError(f"{path}, line 1: the header lacks {missing} (it needs timestamp, "
                      f"{', '.join(FIELDS)}); got {reader.fieldnames}")
    times, cols = [], {k: [] for k in FIELDS}
    for line, row in enumerate(reader, start=2):
      field = "timestamp"
      try:
        times.append(np.datetime64(row["timestamp"], "s"))
        for field in FIELDS:
          cols[field].append(float(row[field]))
      except (ValueError, TypeError):
        raise DataError(f"{path}, line {line}: field {field!r} is {row.get(field)!r}, not "
                        f"{'an ISO time' if field == 'timestamp' else 'a number'}") from None
      if not all(np.isfinite(cols[k][-1]) for k in FIELDS) or min(
          cols[k][-1] for k in ("open", "close", "low", "high")) <= 0:
        raise DataError(f"{path}, line {line}: prices must be finite and positive: {dict(row)}")
      if len(times) > 1 and times[-1] <= times[-2]:
        raise DataError(f"{path}, line {line}: timestamp {row['timestamp']} is not after the "
                        f"previous bar's")
  if not times:
    raise DataError(f"{path}: no bars")
  return MinuteBars(np.asarray(times, "datetime64[s]"), *(np.asarray(cols[k]) for k in FIELDS))


def write_minute_csv(bars: MinuteBars, path: str) -> None:
  """Writes bars in read_minute_csv's format."""
  with open(path, "w", encoding="utf-8", newline="") as f:
    w = csv.writer(f)
    w.writerow(("timestamp",) + FIELDS)
    for i in range(len(bars)):
      w.writerow([str(bars.times[i])] + [f"{getattr(bars, k)[i]:.6g}" for k in FIELDS])


@dataclasses.dataclass(frozen=True)
class Cut:
  """Where one news item sits in the bars."""
  end: int  # the history is bars[:end] (all finished by the publication time)
  price: float  # the price at publication: bars.close[end - 1]
  target: int  # the bar whose open is the target: the first bar of the next trading day
  next_open: float
  label: int  # 1 if next_open > price
  out_of_hours: bool


def cut(bars: MinuteBars, time, sessions=None) -> Cut | None:
  """The label and history cut of news published at `time` (datetime64); None when the bars hold
  no finished day before it or no trading day after it. `sessions`: bars.sessions(), cached."""
  first, stop = sessions if sessions is not None else bars.sessions()
  time = np.datetime64(time, "s")
  opens, closes = bars.times[first], bars.times[stop - 1] + MINUTE
  d = np.searchsorted(opens, time, side="right") - 1  # the day whose session began last
  in_hours = d >= 0 and opens[d] + MARGIN <= time <= closes[d] - MARGIN
  if in_hours:
    end = int(np.searchsorted(bars.ends, time, side="right"))  # bars finished by `time`
  else:
    full = np.searchsorted(closes, time, side="right") - 1  # the last day closed by `time`
    if full < 0:
      return None
    end = int(stop[full])
  nxt = int(np.searchsorted(opens, time, side="right"))  # the first day opening after `time`
  if nxt >= len(first) or end == 0:
    return None
  price, next_open = float(bars.close[end - 1]), float(bars.open[first[nxt]])
  return Cut(end, price, int(first[nxt]), next_open, int(next_open > price), not in_hours)


def trade_steps(bars: MinuteBars, end: int, steps: int, features: np.ndarray | None = None
                ) -> np.ndarray:
  """[steps, 120] float32 trade steps of the steps x 10 bars before `end` (oldest first).

  Each window's 10 bars x 6 fields (FIELDS order, bar-major) are scaled so that the
  model sees returns, not price levels: prices and vwap as log(x / p) with p the last
  close before `end`, volume as log1p(volume / mean volume of the windows). Then the
  change rates vs the previous window, (x_s - x_{s-1}) / x_{s-1} of the raw values
  (zero for the first window and where x_{s-1} is 0). Windows before the first bar
  are zeros. `features`: bars.features(), cached.
  """
  raw = bars.features() if features is None else features  # [M, 6]
  lo = end - steps * WINDOW
  win = raw[max(lo, 0):end]  # [<= steps*10, 6]
  pad = steps * WINDOW - len(win)
  win = np.concatenate([np.full((pad, len(FIELDS)), np.nan), win])
  win = win.reshape(steps, WINDOW, len(FIELDS))  # [S, 10, 6]
  p = raw[end - 1, FIELDS.index("close")]
  scaled = np.log(win / p)
  v = FIELDS.index("volume")
  mean_vol = np.nanmean(win[..., v]) if np.any(np.isfinite(win[..., v])) else 1.0
  scaled[..., v] = np.log1p(win[..., v] / max(mean_vol, 1e-12))
  prev = np.concatenate([np.full((1, WINDOW, len(FIELDS)), np.nan), win[:-1]])
  with np.errstate(divide="ignore", invalid="ignore"):
    rate = (win - prev) / prev
  out = np.concatenate([scaled.reshape(steps, -1), rate.reshape(steps, -1)], -1)
  return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)
