"""GEA for forex (moe_jax.finance.forex*): attention and extraction against a float64 numpy loop,
the groupings, windows and labels by hand, the readers' errors, and train.py end to end."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from moe_jax.finance import forex, forex_data, forex_sim, market
from moe_jax.input_pipeline import DataError


def _reference(p, news, valid, group, returns, g_count, k):
  """GEA's forward pass, one window and one group at a time, in float64."""
  p = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), p)
  sig = lambda x: 1 / (1 + np.exp(-x))
  out, alphas, betas, kepts = [], [], [], []
  for b in range(news.shape[0]):
    h = news[b].astype(np.float64)
    t = np.tanh(returns[b] @ p["trade"]["kernel"] + p["trade"]["bias"])
    s = sig(h @ p["scorer"]["kernel"][:, 0] + p["scorer"]["bias"][0]) if k else np.ones(len(h))
    kept = np.zeros(len(h), bool)
    alpha = np.zeros((g_count, len(h)))
    gs, gl, present = [], [], []
    for g in range(g_count):
      mem = [j for j in range(len(h)) if valid[b, j] and group[b, j] == g]
      if k:
        mem = sorted(mem, key=lambda j: -s[j])[:k]
      kept[mem] = True
      if not mem:
        gs.append(np.zeros(h.shape[1]))
        gl.append(0.0)
        present.append(False)
        continue
      z = np.asarray([h[j] @ p["within"] @ t + np.log(s[j]) for j in mem])
      a = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
      alpha[g, mem] = a
      gs.append(sum(a_i * h[j] for a_i, j in zip(a, mem)))
      gl.append(gs[-1] @ p["across"] @ t)
      present.append(True)
    gl = np.where(present, gl, -np.inf)
    beta = np.exp(gl - gl.max()) / np.exp(gl - gl.max()).sum()
    u = sum(beta[g] * gs[g] for g in range(g_count))
    out.append(np.concatenate([u, t]) @ p["out"]["kernel"] + p["out"]["bias"])
    alphas.append(alpha), betas.append(beta), kepts.append(kept)
  return np.asarray(out), np.asarray(alphas), np.asarray(betas), np.asarray(kepts)


@pytest.mark.parametrize("k", [2, 0])
def test_group_extract_aggregate_match_a_numpy_loop(k):
  rng = np.random.default_rng(k)
  b, m, d, g, l = 3, 9, 6, 4, 3
  news = rng.normal(size=(b, m, d)).astype(np.float32)
  valid = rng.random((b, m)) < 0.8
  group = rng.integers(0, g - 1, (b, m)).astype(np.int32)  # group g-1 stays empty
  returns = rng.normal(size=(b, l)).astype(np.float32)
  module = forex.GEA(g, k, trade_features=5)
  params = forex.init(module, d, l, seed=1)
  params = {**params, "within": rng.normal(size=(d, 5)), "across": rng.normal(size=(d, 5))}
  if k:  # a scorer with some spread, so the top-k is not decided by rounding
    params = {**params, "scorer": {"kernel": params["scorer"]["kernel"] * 5,
                                   "bias": params["scorer"]["bias"]}}
  logits, att = module.apply({"params": params}, news, valid, group, returns)
  ref, alpha, beta, kept = _reference(params, news, valid, group, returns, g, k)
  np.testing.assert_array_equal(np.asarray(att.kept), kept if k else valid)
  np.testing.assert_allclose(np.asarray(att.alpha), alpha, atol=1e-5)
  np.testing.assert_allclose(np.asarray(att.beta), beta, atol=1e-5)
  np.testing.assert_allclose(np.asarray(logits), ref, rtol=1e-4, atol=1e-5)
  assert np.all(np.asarray(att.beta)[:, g - 1] == 0)  # the empty group gets no weight
  np.testing.assert_allclose(np.asarray(att.mass).sum(-1), 1.0, atol=1e-5)
  if k:  # the scorer learns through the attention its scores scale
    grads = jax.grad(lambda p: module.apply({"params": p}, news, valid, group, returns)[0].sum())(
        params)
    assert np.abs(np.asarray(grads["scorer"]["kernel"])).max() > 0


def test_extract_keeps_each_groups_top_k_by_brute_force():
  rng = np.random.default_rng(0)
  scores = rng.random((4, 12)).astype(np.float32)
  group = rng.integers(0, 3, (4, 12))
  valid = rng.random((4, 12)) < 0.7
  kept = np.asarray(forex.extract(scores, forex.members(group, valid, 3), 2))
  for b in range(4):
    for j in range(12):
      rivals = [i for i in range(12) if valid[b, i] and group[b, i] == group[b, j]
                and scores[b, i] > scores[b, j]]
      assert kept[b, j] == (valid[b, j] and len(rivals) < 2)


def test_time_buckets_and_nearest_centroid_by_hand():
  np.testing.assert_array_equal(forex_data.time_groups([0.0, 0.24, 0.25, 0.5, 0.99, 1.0], 4),
                                [0, 0, 1, 2, 3, 3])
  rng = np.random.default_rng(0)
  x, c = rng.normal(size=(50, 4)), rng.normal(size=(5, 4))
  brute = [min(range(5), key=lambda j: np.sum((x[i] - c[j]) ** 2)) for i in range(50)]
  np.testing.assert_array_equal(forex_data.nearest(x, c), brute)


def test_kmeans_recovers_separated_clusters_and_is_seeded():
  rng = np.random.default_rng(1)
  centers = np.asarray([[10.0, 0], [0, 10], [-10, -10]])
  x = np.concatenate([c + rng.normal(size=(30, 2)) for c in centers])
  fit = forex_data.kmeans(x, 3, seed=0)
  a = forex_data.nearest(x, fit)
  assert len(set(a[:30])) == len(set(a[30:60])) == len(set(a[60:])) == 1 and len(set(a)) == 3
  for j in range(3):  # Lloyd's fixed point: every centroid is the mean of its points
    np.testing.assert_allclose(fit[j], x[a == j].mean(0), atol=1e-4)
  np.testing.assert_array_equal(fit, forex_data.kmeans(x, 3, seed=0))


def _daily(rates):
  d = np.datetime64("2020-01-06") + np.arange(len(rates))  # consecutive days
  r = np.asarray(rates, np.float64)
  return market.Daily("x", d.astype("datetime64[D]"), r, r, r, r, np.zeros_like(r))


def _news(stamps, cats=None):
  n = len(stamps)
  return forex_data.News(np.asarray(stamps, "datetime64[s]"), tuple(cats or ["a"] * n),
                         tuple(f"t{i}" for i in range(n)), ("",) * n)


def test_windows_labels_come_strictly_after_the_window_by_hand():
  # days 0..8 = 2020-01-06..14; windows of 2 days start at day 1: (1, 2), (3, 4), (5, 6)
  daily = _daily([1, 2, 3, 2, 1, 5, 6, 4, 3])
  news = _news(["2020-01-07T00:00:00",  # day 1: window 0
                "2020-01-08T23:59:59",  # end of day 2: still window 0
                "2020-01-09T00:00:00",  # day 3: window 1
                "2020-01-12T12:00:00"])  # day 6: window 2
  w = forex_data.windows(daily, news, days=2, max_items=10)
  np.testing.assert_array_equal(w.first, [1, 3, 5])
  np.testing.assert_array_equal(w.labels, [0, 1, 0])  # 1 < 3; 6 > 1; 3 < 6: rate[last+2] vs rate[last]
  np.testing.assert_allclose(w.returns[0], [100 * np.log(2), 100 * np.log(1.5)], rtol=1e-6)
  assert [list(i) for i in w.items] == [[0, 1], [2], [3]]
  np.testing.assert_allclose(w.position[2], [1.5 / 2])  # noon of the window's second day
  assert forex_data.windows(daily, news, days=2, max_items=1).items[0].tolist() == [1]  # latest


def test_simulator_plants_the_next_windows_direction_in_crucial_items():
  recs = forex_sim.simulate("dm", 3, seed=0, agree=1.0, items=(10, 12))[:3000]
  news = forex_data.News(np.asarray([r["time"] for r in recs], "datetime64[s]"),
                         tuple(r["category"] for r in recs), tuple(r["text"] for r in recs),
                         tuple(r["region"] for r in recs))
  w = forex_data.windows(market.currency_days("dm"), news, 3, 1000)
  for i in range(len(w) - 1):  # the last window may be cut by the [:3000]
    crucial = [recs[j] for j in w.items[i] if recs[j]["crucial"]]
    assert crucial and all(r["category"] in forex_sim.CRUCIAL for r in crucial)
    words = forex_sim._STANCE[int(w.labels[i])]
    assert all(any(s in r["text"] for s in words) for r in crucial)


def test_rows_carry_each_grouping():
  daily = _daily([1, 2, 3, 2, 1, 5, 6, 4, 3])
  news = _news(["2020-01-07T06:00:00", "2020-01-08T18:00:00", "2020-01-09T01:00:00"])
  w = forex_data.windows(daily, news, days=2, max_items=4)
  vec = np.arange(6, dtype=np.float32).reshape(3, 2)
  r = forex_data.rows(w, np.asarray([0, 1]), vec, np.asarray([2, 0, 1]), np.asarray([1, 1, 0]),
                      time_buckets=2, max_items=4)
  np.testing.assert_array_equal(r["mask"], [[1, 1, 0, 0], [1, 0, 0, 0]])
  np.testing.assert_array_equal(r["group_time"][0, :2], [0, 1])  # 06:00 day 1; 18:00 day 2
  np.testing.assert_array_equal(r["group_topic"][:, 0], [2, 1])
  np.testing.assert_array_equal(r["group_category"][0, :2], [1, 1])
  np.testing.assert_array_equal(r["vectors"][1, 0], vec[2])


def test_reader_errors_name_the_file_line_and_field(tmp_path):
  cases = {'{"time": "1984-01-02", "category": "x"}': "field 'text'",
           '{"time": "yesterday", "category": "x", "text": "y"}': "field 'time'",
           '{"time": "1984-01-02", "category": "", "text": "y"}': "field 'category'",
           '{"time": "1984-01-02", "category": "x", "text": "y", "region": 3}': "field 'region'",
           '{"time": 1984': "malformed JSON", '[1, 2]': "expected an object"}
  for i, (line, msg) in enumerate(cases.items()):
    p = tmp_path / f"n{i}.jsonl"
    p.write_text('{"time": "1984-01-01", "category": "x", "text": "ok"}\n' + line + "\n")
    with pytest.raises(DataError, match=f"n{i}.jsonl:2: .*{msg}"):
      forex_data.read_news(str(p))
  good = tmp_path / "rates.csv"
  good.write_text("date,rate\n1984-01-02,1.5\n1984-01-03,1.6\n")
  assert forex_data.read_rates(str(good)).close.tolist() == [1.5, 1.6]
  bad = tmp_path / "bad.csv"
  bad.write_text("date,rate\n1984-01-02,1.5\n1984-01-03,-1\n")
  with pytest.raises(DataError, match="bad.csv, line 3: field 'rate' must be a positive"):
    forex_data.read_rates(str(bad))
  bad.write_text("date,rate\n1984-01-02,1.5\nnope,2\n")
  with pytest.raises(DataError, match="bad.csv, line 3: expected an ISO date"):
    forex_data.read_rates(str(bad))
  bad.write_text("a,b,c\n1,2,3\n")
  with pytest.raises(DataError, match="bad.csv, line 1: expected a header"):
    forex_data.read_rates(str(bad))
  shipped = forex_data.read_news(forex_data.__file__.replace("finance/forex_data.py",
                                                             "assets/forex_news_sample.jsonl"))
  assert len(shipped) > 500 and set(shipped.categories) == set(forex_sim.CATEGORIES)


def test_train_py_end_to_end_with_the_tiny_encoder(tiny_encoder_dir, tmp_path, repo_root):
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "train.py", "--config=configs/forex_news.py", f"--workdir={workdir}",
       f"--config.init_from={tiny_encoder_dir}", f"--config.data.tokenizer={tiny_encoder_dir}",
       "--config.num_train_steps=3", "--config.forex.grouping=topic"],
      cwd=repo_root, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  metrics = json.loads((workdir / "metrics.json").read_text())
  assert metrics["windows"] == 14 and 0 <= metrics["accuracy"] <= 1
  assert set(metrics["categories"]) == set(forex_sim.CATEGORIES)
  share = sum(c["mass_share"] for c in metrics["categories"].values())
  assert share == pytest.approx(1.0, abs=1e-4)  # each window's attention mass sums to one
  details = np.load(workdir / "eval_details.npz")
  assert details["probs"].shape == (14, 2) and details["mass"].shape == (14, 32)
  assert (workdir / "forex_heads.msgpack").stat().st_size > 0
  with np.load(workdir / "news_vectors.npz") as f:  # one [CLS] vector per distinct text
    assert f["vectors"].shape[1] == 32 and len(f["keys"]) == len(set(f["keys"].tolist()))
