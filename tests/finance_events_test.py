"""Fine-grained events for stock movement: the label cut and trade steps by hand, the extractor on
hand-written sentences, co-attention and gated fusion against a numpy loop, masks, the simulator's
planted moves, the readers' errors, and train.py end to end (the CRF: tests/finance_crf_test.py)."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax.classify import metrics as cls_metrics
from moe_jax.finance import bars, events, simulate, sspm, stock_task
from moe_jax.finance.stock_configs import stock_config
from moe_jax.input_pipeline import DataError


def _hand_bars(days=3, minutes=30):
  """`days` sessions of `minutes` bars from 09:00; bar i closes at 100 + i and opens 0.5 lower."""
  t0 = [np.datetime64(f"2010-03-0{d + 1}T09:00", "s") for d in range(days)]
  times = np.concatenate([t + np.arange(minutes) * bars.MINUTE for t in t0])
  close = 100.0 + np.arange(len(times))
  return bars.MinuteBars(times, close - 0.5, close, close - 1, close + 1,
                         np.arange(len(times)) + 1.0, close)


# The label cut, by hand ---------------------------------------------------------------------------

@pytest.mark.parametrize("time, end, target, ooh", [
    ("2010-03-02T09:15:30", 45, 60, False),  # in hours: bars 09:00-09:14 of day 1 have finished
    ("2010-03-02T09:10:00", 40, 60, False),  # exactly open + 10 min is in hours
    ("2010-03-02T09:05:00", 30, 60, True),  # before 09:10: day 0's close; day 1 opened already
    ("2010-03-02T07:00:00", 30, 30, True),  # pre-open: day 0's close vs day 1's open
    ("2010-03-02T09:25:00", 30, 60, True),  # within 10 min of the close: day 0 is the last full day
    ("2010-03-02T18:00:00", 60, 60, True),  # evening: day 1 has closed
])
def test_cut_by_hand(time, end, target, ooh):
  b = _hand_bars()
  c = bars.cut(b, np.datetime64(time))
  assert (c.end, c.target, c.out_of_hours) == (end, target, ooh)
  assert c.price == 100.0 + end - 1 and c.next_open == 100.0 + target - 0.5
  assert c.label == int(c.next_open > c.price)


def test_cut_label_both_ways_and_edges():
  b = _hand_bars()
  down = bars.MinuteBars(b.times, b.open[::-1].copy(), b.close[::-1].copy(), b.low, b.high, b.volume,
                         b.vwap)
  assert bars.cut(b, np.datetime64("2010-03-02T09:15:30")).label == 1  # 159.5 > 144
  assert bars.cut(down, np.datetime64("2010-03-02T09:15:30")).label == 0
  assert bars.cut(b, np.datetime64("2010-03-03T09:15")) is None  # no trading day after
  assert bars.cut(b, np.datetime64("2010-03-01T09:15")) is not None  # in hours on the first day
  assert bars.cut(b, np.datetime64("2010-03-01T07:00")) is None  # no finished day before


def test_trade_steps_by_hand():
  b = _hand_bars(1, 30)
  x = bars.trade_steps(b, 25, 2)  # windows: bars 5-14 and 15-24; p = close[24] = 124
  assert x.shape == (2, bars.STEP_DIM)
  raw = b.features()
  mean_vol = raw[5:25, 4].mean()
  for s, lo in enumerate((5, 15)):
    for j in range(10):
      for f in range(6):
        v = raw[lo + j, f]
        want = np.log1p(v / mean_vol) if f == 4 else np.log(v / 124.0)
        assert x[s, j * 6 + f] == pytest.approx(want, abs=1e-6)
        rate = 0.0 if s == 0 else (v - raw[lo + j - 10, f]) / raw[lo + j - 10, f]
        assert x[s, 60 + j * 6 + f] == pytest.approx(rate, abs=1e-6)
  early = bars.trade_steps(b, 5, 2)  # only 5 bars of history: the rest is zeros
  assert not early[0].any() and early[1, 30:60].any()


# The event dictionary -----------------------------------------------------------------------------

def test_extractor_on_hand_written_sentences():
  ex = events.extract("Apple said first-quarter profit rose 12 percent.")
  assert ex.tags == ["B-COMPANY", "O", "B-TIME", "B-EARNINGS", "B-DIRECTION", "B-RATE", "I-RATE", "O"]
  assert (ex.event, ex.direction, ex.rate) == (1, 1, 12.0)
  ex = events.extract("Analysts downgraded their rating on IBM.")
  assert ex.event == 3 and ex.direction == -1 and ex.tags[1] == "B-DIRECTION"
  # A paraphrase outside the dictionary: nothing fires, every tag O.
  ex = events.extract("Apple said quarterly income climbed 12 percent.")
  assert ex.event == 0 and set(ex.tags) == {"O"}
  # Roles are matched only in the trigger's sentence.
  ex = events.extract("Google rose 3 percent. Microsoft cut its guidance.")
  assert ex.event == 2 and ex.tags[:4] == ["O"] * 4 and ex.tags[5:9] == [
      "B-COMPANY", "B-DIRECTION", "O", "B-FORECAST"]


def test_piece_tags_continue_a_word_across_its_pieces(minilm_dir):
  from moe_jax.tokenizer import load_tokenizer

  tok = load_tokenizer(str(minilm_dir))
  ex = events.extract("Apple said first-quarter profit rose 12 percent.")
  ids, tags = events.piece_tags(ex.words, ex.tag_ids, tok, 20)
  n = int(np.sum(ids != tok.pad_id))
  names = [events.TAGS[t] for t in tags[:n]]
  pieces = tok.encode("first-quarter")
  assert len(pieces) > 1
  start = names.index("B-TIME")
  assert names[start + 1:start + len(pieces)] == ["I-TIME"] * (len(pieces) - 1)
  assert ids[0] == tok.bos_id and ids[n - 1] == tok.eos_id and names[0] == names[-1] == "O"
  assert list(ids[1:3]) == tok.encode("Apple said")


# Co-attention, gated fusion, masks ----------------------------------------------------------------

def test_co_attention_and_gated_fusion_match_a_numpy_loop():
  rng = np.random.default_rng(0)
  b, t, s, d = 2, 4, 3, 5
  hx, sy = rng.normal(size=(b, t, d)), rng.normal(size=(b, s, d))
  m = rng.normal(size=(d, d))
  mx = np.asarray([[1, 1, 1, 0], [1, 1, 0, 0]])
  my = np.asarray([[1, 1, 1], [1, 1, 0]])
  cx, cy = sspm.co_attention(*(jnp.asarray(a, jnp.float32) for a in (hx, sy, m)),
                             jnp.asarray(mx), jnp.asarray(my))
  for i in range(b):
    tx, ty = mx[i].sum(), my[i].sum()
    sc = np.tanh(np.asarray([[hx[i, p] @ m @ sy[i, q] for q in range(ty)] for p in range(tx)]))
    for p in range(tx):
      w = np.exp(sc[p]) / np.exp(sc[p]).sum()
      np.testing.assert_allclose(np.asarray(cx[i, p]), w @ sy[i, :ty], atol=1e-5)
    for q in range(ty):
      w = np.exp(sc[:, q]) / np.exp(sc[:, q]).sum()
      np.testing.assert_allclose(np.asarray(cy[i, q]), w @ hx[i, :tx], atol=1e-5)
  gate = sspm.GatedFusion()
  h, c = jnp.asarray(hx, jnp.float32), jnp.asarray(rng.normal(size=(b, t, d)), jnp.float32)
  params = gate.init(jax.random.key(0), h, c)["params"]
  g = np.asarray(gate.apply({"params": params}, h, c))
  w1, b1, w2 = (np.asarray(a, np.float64) for a in (params["w1"]["kernel"], params["w1"]["bias"],
                                                    params["w2"]["kernel"]))
  for i in range(b):
    for p in range(t):
      z = 1 / (1 + np.exp(-(hx[i, p] @ w1 + b1 + np.asarray(c[i, p]) @ w2)))
      np.testing.assert_allclose(g[i, p], z * np.asarray(c[i, p]) + (1 - z) * hx[i, p], atol=1e-5)


@pytest.mark.parametrize("system", ["raw", "msspm"])  # coarse and sspm: msspm without the CRF
def test_model_shapes_and_padding_invariance(system):
  c = stock_config().stock
  c.system, c.hidden, c.trade_steps = system, 8, 3
  net = stock_task.module(c)
  rng = np.random.default_rng(0)
  b, t, e = 3, 7, 16
  x = rng.normal(size=(b, t, e)).astype(np.float32)
  mask = (np.arange(t)[None] < np.asarray([[7], [4], [2]])).astype(np.int32)
  y = rng.normal(size=(b, 3, bars.STEP_DIM)).astype(np.float32)
  ymask = np.ones((b, 3), np.int32)
  tags = rng.integers(0, net.num_tags or 1, (b, t)) * mask
  params = jax.jit(net.init)(jax.random.key(0), x, mask, y, ymask, tags)["params"]
  apply = jax.jit(net.apply, static_argnames="decode")  # one compile for the four calls
  logit, nll, used = apply({"params": params}, x, mask, y, ymask, tags, decode=True)
  assert logit.shape == (b,) and np.all(np.isfinite(logit))
  assert (nll is not None) == (system == "msspm") and used.shape == (b, t)
  # Whatever sits in the padding (inputs and tags) changes nothing.
  x2 = np.where(mask[..., None] == 1, x, 50.0)
  tags2 = np.where(mask == 1, tags, (net.num_tags or 1) - 1)
  logit2, nll2, _ = apply({"params": params}, x2, mask, y, ymask, tags2, decode=True)
  np.testing.assert_allclose(np.asarray(logit), np.asarray(logit2), atol=1e-5)
  if nll is not None:
    np.testing.assert_allclose(np.asarray(nll), np.asarray(nll2), atol=1e-4)
    # At test time the CRF's own tags are fused: the given ones no longer matter.
    other, _, _ = apply({"params": params}, x, mask, y, ymask, 0 * tags, decode=True)
    np.testing.assert_allclose(np.asarray(logit), np.asarray(other), atol=1e-5)
  if system != "raw":  # the event input is read
    other, _, _ = apply({"params": params}, x, mask, y, ymask, (tags + 1) % net.num_tags * mask,
                        decode=False)
    assert not np.allclose(np.asarray(logit), np.asarray(other))


def test_mcc_by_hand():
  labels, preds = np.asarray([1, 1, 1, 0, 0, 0, 1, 0]), np.asarray([1, 1, 0, 0, 0, 1, 1, 0])
  tp, tn, fp, fn = 3, 3, 1, 1
  want = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
  assert cls_metrics.mcc(labels, preds) == pytest.approx(want)
  assert cls_metrics.mcc(labels, np.ones(8, int)) == 0.0


# The simulator ------------------------------------------------------------------------------------

def test_simulator_honours_real_days_and_plants_its_jumps():
  s = simulate.Settings(start="2009-01-01", end="2009-06-30", news=80, seed=3)
  w = simulate.simulate(s)
  from moe_jax.finance import market
  daily = market.stock_days("AAPL").between(s.start, s.end)
  base = bars.simulate_day_bars(daily, s.seed + 1)
  first, stop = base.sessions()
  np.testing.assert_allclose(base.open[first], daily.open)
  np.testing.assert_allclose(base.close[stop - 1], daily.close)
  np.testing.assert_allclose(np.maximum.reduceat(base.high, first), daily.high)
  np.testing.assert_allclose(np.minimum.reduceat(base.low, first), daily.low)
  # Each bar carries exp(sum of the jumps of the items published before it finished), by a loop.
  for i in range(0, len(base), 997):
    want = np.exp(sum(j for t, j in zip(w.news.times, w.jump) if t < base.ends[i]))
    assert w.bars.close[i] / base.close[i] == pytest.approx(want)
  ex = [events.extract(t).event for t in w.news.texts]
  assert all((e == 0) == (p or ev == 0) for e, p, ev in zip(ex, w.paraphrased, w.event))
  assert w.paraphrased.any() and (w.event == 0).any()
  assert np.all(np.sign(w.jump) == w.direction)


# Readers ------------------------------------------------------------------------------------------

def test_news_reader_and_its_errors(tmp_path):
  from moe_jax import train_lib
  news = events.read_news(train_lib.resolve_data_path("assets:stock_news_sample.jsonl"))
  assert len(news) == 60 and news.times.dtype == np.dtype("datetime64[s]")
  bad = tmp_path / "news.jsonl"
  for line, msg in [('{"time": "2010-01-04T10:00", "ticker": "AAPL"}', "'text'"),
                    ('{"time": "yesterday", "ticker": "AAPL", "text": "x"}', "ISO"),
                    ('[1, 2]', "expected an object")]:
    bad.write_text('{"time": "2010-01-04T09:30", "ticker": "AAPL", "text": "ok"}\n' + line + "\n")
    with pytest.raises(DataError, match=rf"news.jsonl:2: .*{msg}"):
      events.read_news(str(bad))


def test_minute_csv_round_trip_and_errors(tmp_path):
  b = _hand_bars(2, 20)
  path = tmp_path / "bars.csv"
  bars.write_minute_csv(b, str(path))
  back = bars.read_minute_csv(str(path))
  np.testing.assert_array_equal(back.times, b.times)
  np.testing.assert_allclose(back.features(), b.features(), rtol=1e-5)
  header = "timestamp,open,close,low,high,volume,vwap\n"
  for body, msg in [("timestamp,open,close\n", "line 1: the header lacks"),
                    (header + "2010-03-01T09:00,1,1,1,1,1,1\n2010-03-01T09:01,1,x,1,1,1,1\n",
                     "line 3: field 'close'"),
                    (header + "2010-03-01T09:01,1,1,1,1,1,1\n2010-03-01T09:00,1,1,1,1,1,1\n",
                     "line 3: timestamp .* is not after"),
                    (header + "2010-03-01T09:00,1,-1,1,1,1,1\n", "line 2: prices must be")]:
    path.write_text(body)
    with pytest.raises(DataError, match=msg):
      bars.read_minute_csv(str(path))


# Through the trainer ------------------------------------------------------------------------------

def test_train_py_end_to_end_with_the_tiny_encoder(tiny_encoder_dir, tmp_path, repo_root):
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "train.py", "--config=configs/stock_events.py", f"--workdir={workdir}",
       f"--config.init_from={tiny_encoder_dir}", f"--config.data.tokenizer={tiny_encoder_dir}",
       "--config.num_train_steps=2", "--config.data.batch_size=8", "--config.data.seq_len=24",
       "--config.stock.sim.news=60", "--config.stock.sim.start=2009-01-01",
       "--config.stock.sim.end=2009-06-30", "--config.stock.trade_steps=2",
       "--config.stock.hidden=8", "--config.stock.news_encoder=bert",
       "--config.stock.system=coarse"],  # the study's quick test runs msspm on the BiLSTM
      cwd=repo_root, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  m = json.loads((workdir / "metrics.json").read_text())
  assert m["all"]["examples"] == 12 and 0 <= m["all"]["accuracy"] <= 1
  assert m["missed"]["examples"] + m["covered"]["examples"] <= 12
  s = json.loads((workdir / "summary.json").read_text())
  assert s["system"] == "coarse" and s["news_encoder"] == "bert"


def test_user_files_read_and_encode(tmp_path, minilm_dir):
  """The shipped news sample on bars simulated within the real days, then on the user's own CSV."""
  from moe_jax.tokenizer import load_tokenizer

  tok = load_tokenizer(str(minilm_dir))
  cfg = stock_config()
  cfg.stock.update(dict(source="files", news_file="assets:stock_news_sample.jsonl"))
  news, minute_bars, paraphrased = stock_task.read_world(cfg)
  assert paraphrased is None and len(news) == 60
  rows, targets = stock_task.encode(news, minute_bars, None, tok, 24, 3)
  assert len(rows["label"]) == 60 and set(rows["label"]) <= {0, 1}
  assert rows["steps"].shape == (60, 3, bars.STEP_DIM) and np.all(rows["missed"] == -1)
  assert np.all(targets > news.times[rows["row"]])  # every target opens after its publication
  covered = [events.extract(t).event > 0 for t in news.texts]
  np.testing.assert_array_equal(rows["covered"], np.asarray(covered)[rows["row"]])
  path = tmp_path / "bars.csv"
  bars.write_minute_csv(minute_bars, str(path))
  cfg.stock.bars_file = str(path)
  _, from_csv, _ = stock_task.read_world(cfg)
  again, _ = stock_task.encode(news, from_csv, None, tok, 24, 3)
  np.testing.assert_array_equal(again["label"], rows["label"])
