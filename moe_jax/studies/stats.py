"""What every study reports with: means with 95% t-intervals over seeds, and claim verdicts."""

from __future__ import annotations

import math
import statistics

import numpy as np

_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262}


def mean_ci(values: list[float]) -> tuple[float, float]:
  """Mean and the half-width of its 95% t-interval (0 for a single value).

  NaNs (measurements undefined for a run, like an AUC with one class) are left
  out; with none left the mean is NaN.
  """
  values = [float(v) for v in values if not math.isnan(float(v))]
  if not values:
    return float("nan"), 0.0
  m = float(np.mean(values))
  if len(values) < 2:
    return m, 0.0
  t = _T975.get(len(values) - 1, 1.96)
  return m, t * statistics.stdev(values) / math.sqrt(len(values))


def fmt(values, digits=3, pct=False) -> str:
  """"mean ± half-width" (the mean alone for one value), optionally in percent."""
  m, h = mean_ci(values)
  if math.isnan(m):
    return "n/a"
  scale = 100 if pct else 1
  return f"{m * scale:.{digits}f} ± {h * scale:.{digits}f}" if h else f"{m * scale:.{digits}f}"


def verdict(a: list[float], b: list[float], lower_is_better: bool) -> str:
  """'held' if a beats b beyond both CIs, 'failed' if b beats a so, else 'inconclusive'."""
  (ma, ha), (mb, hb) = mean_ci(a), mean_ci(b)
  if lower_is_better:
    ma, mb = -ma, -mb
  if ma - ha > mb + hb:
    return "held"
  if mb - hb > ma + ha:
    return "failed"
  return "inconclusive"


def paired_verdict(diffs: list[float]) -> str:
  """'held' if the 95% interval of the paired differences lies above 0, 'failed' if below,
  else 'inconclusive'."""
  finite = [d for d in diffs if not math.isnan(float(d))]
  m, h = mean_ci(finite)
  if len(finite) < 2:
    return "inconclusive"
  if m - h > 0:
    return "held"
  if m + h < 0:
    return "failed"
  return "inconclusive"
