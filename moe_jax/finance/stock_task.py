"""The "stock" task: SSPM, MSSPM and their baselines on news + minute bars, through the trainer.

`train.py --config=configs/stock_events.py` reads news and minute bars (a
user's files, or the seeded simulator over a real price series), cuts every
item's label and trade history leakage-free (`bars.cut`, `bars.trade_steps`),
tags it with the event dictionary (`events.extract`), and encodes it with the
engine model's word-piece tokenizer. The news are split by time: the latest
`stock.eval_fraction` held out, and training items whose target open falls
after the first held-out publication dropped (no label overlaps the test
period).

The system (`stock.system`) rides beside the engine model as the task head
params["sspm"] (`moe_jax.finance.sspm`): "raw" fuses no event input, "coarse"
one event-type id per item, "sspm" the dictionary's BIO roles, "msspm" also
trains a CRF on them (L = (1 - eta) L_CRF + eta L_BCE) and fuses its Viterbi
tags at test time. The engine model is frozen by default (train_mode "heads"):
its word embeddings feed the news BiLSTM, or with news_encoder "bert" its
hidden states replace it. Held-out accuracy and MCC, overall and on the items
the dictionary covers and misses, go to metrics.json.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from moe_jax import input_pipeline, moe, train_lib, trainable
from moe_jax.classify import metrics as cls_metrics
from moe_jax.finance import bars as bars_lib
from moe_jax.finance import events, market, simulate, sspm
from moe_jax.finance.stock_configs import SYSTEMS
from moe_jax.model import Model, module_for

HEAD = "sspm"  # where the system lives in the trainer's tree: params["sspm"]
_TOKEN_FIELDS = ("tokens", "segment_ids", "positions", "tags", "coarse")
_ROW_FIELDS = ("label", "covered", "missed", "row")


def module(c: ml_collections.ConfigDict) -> sspm.SSPM:
  """The Flax module of `stock.system`."""
  if c.system not in SYSTEMS:
    raise ValueError(f"config.stock.system: {c.system!r} is not one of {SYSTEMS}")
  tags = {"raw": 0, "coarse": events.NUM_EVENTS + 1}.get(c.system, events.NUM_TAGS)
  return sspm.SSPM(c.hidden, tags, c.system == "msspm", c.news_encoder)


# Data ------------------------------------------------------------------------------------

def read_world(cfg: ml_collections.ConfigDict):
  """(News, MinuteBars, paraphrased [N] bool or None) of `stock.source`."""
  c = cfg.stock
  if c.source == "simulate":
    sim = dict(c.sim)
    sim["seed"] = cfg.seed if sim["seed"] < 0 else sim["seed"]
    w = simulate.simulate(simulate.Settings(**sim))
    return w.news, w.bars, w.paraphrased
  if c.source != "files":
    raise ValueError(f"config.stock.source: {c.source!r} is not 'simulate' or 'files'")
  if not c.news_file:
    raise ValueError("config.stock.source='files' needs stock.news_file (and stock.bars_file)")
  news = events.read_news(train_lib.resolve_data_path(c.news_file))
  if c.bars_file:
    return news, bars_lib.read_minute_csv(train_lib.resolve_data_path(c.bars_file)), None
  # No bars: minute bars simulated within the real days of stock.sim.symbol (nothing planted).
  days = market.stock_days(c.sim.symbol)
  lo, hi = np.min(news.times).astype("datetime64[D]"), np.max(news.times).astype("datetime64[D]")
  days = days.between(str(lo - np.timedelta64(7, "D")), str(hi + np.timedelta64(7, "D")))
  return news, bars_lib.simulate_day_bars(days, cfg.seed), None


def encode(news: events.News, bars: bars_lib.MinuteBars, paraphrased, tokenizer, seq_len: int,
           steps: int) -> tuple[dict, np.ndarray]:
  """(rows of every item the bars can label, each kept item's target time), in time order."""
  order = np.argsort(news.times, kind="stable")
  sessions, feats = bars.sessions(), bars.features()
  rows = {k: [] for k in _TOKEN_FIELDS + _ROW_FIELDS + ("steps",)}
  target_times = []
  for i in order:
    cut = bars_lib.cut(bars, news.times[i], sessions)
    if cut is None:
      continue
    ex = events.extract(news.texts[i])
    tok, tag = events.piece_tags(ex.words, ex.tag_ids, tokenizer, seq_len)
    real = (np.arange(seq_len) < np.sum(tok != tokenizer.pad_id)).astype(np.int32)
    for k, v in (("tokens", tok), ("segment_ids", real), ("positions", np.arange(seq_len) * real),
                 ("tags", tag), ("coarse", real * ex.event), ("label", cut.label),
                 ("covered", int(ex.event > 0)),
                 ("missed", -1 if paraphrased is None else int(paraphrased[i])), ("row", i),
                 ("steps", bars_lib.trade_steps(bars, cut.end, steps, feats))):
      rows[k].append(v)
    target_times.append(bars.times[cut.target])
  if not target_times:
    raise input_pipeline.DataError("stock: no news item falls between two trading days of the "
                                   "minute bars (check the times and the bars' dates)")
  out = {k: np.asarray(v, np.float32 if k == "steps" else np.int32) for k, v in rows.items()}
  return out, np.asarray(target_times, "datetime64[s]")


def split(rows: dict, times: np.ndarray, targets: np.ndarray, eval_fraction: float):
  """(train rows, held-out rows): chronological; training items whose target open is after the
  first held-out publication are dropped."""
  n = len(times)
  first = n - max(1, int(round(n * eval_fraction)))
  keep = np.flatnonzero(targets[:first] < times[first])
  take = lambda idx: {k: v[idx] for k, v in rows.items()}
  return take(keep), take(np.arange(first, n))


def make_data(cfg, workdir, tokenizer):
  news, bars, paraphrased = read_world(cfg)
  c, seq_len = cfg.stock, cfg.data.seq_len
  key = input_pipeline.fingerprint([], [c.to_dict(), cfg.seed, cfg.data.tokenizer, seq_len,
                                        [str(t) for t in news.times], news.texts, len(bars)])
  rows, targets = encode(news, bars, paraphrased, tokenizer, seq_len, c.trade_steps)
  times = news.times[rows["row"]]
  train, held = split(rows, times, targets, c.eval_fraction)
  features = {k: ((seq_len,), np.int32) for k in _TOKEN_FIELDS}
  features.update({k: ((), np.int32) for k in _ROW_FIELDS})
  features["steps"] = ((c.trade_steps, bars_lib.STEP_DIM), np.float32)
  sources = train_lib.process0_first("prepare_data", lambda: input_pipeline.prepare_rows(
      "stock", key, features, lambda: {"train": train, "eval": held},
      os.path.join(workdir, "data")))
  data = train_lib.make_data(sources["train"], sources["eval"], cfg.data.batch_size, cfg.seed,
                             "the held-out news")
  return data, train, held


# The loss --------------------------------------------------------------------------------

def news_inputs(params, buffers, config, batch, news_encoder: str):
  """([B, T, E] the news encoder's inputs, MoEAux): the engine model's word embeddings, or its
  encoder's hidden states."""
  if news_encoder == "bert":
    main = {k: v for k, v in params.items() if k != HEAD}
    out = module_for(config).apply({"params": main, "buffers": buffers}, batch["tokens"],
                                   batch["positions"], batch["segment_ids"])
    return out.hidden.astype(jnp.float32), out.aux
  emb = params["embed_tokens"]["embedding"][batch["tokens"]].astype(jnp.float32)
  return emb, moe.sum_aux([], None)


def _tags(system: str, batch):
  return batch["coarse"] if system == "coarse" else batch["tags"]


def stock_loss(c: ml_collections.ConfigDict):
  """The trainer's loss: mean BCE of the movement (MSSPM: (1-eta) CRF NLL + eta BCE)."""
  net, system = module(c), c.system

  def loss_fn(params, buffers, config, batch):
    x, aux = news_inputs(params, buffers, config, batch, c.news_encoder)
    mask_x = batch["segment_ids"] != 0
    mask_y = jnp.ones(batch["steps"].shape[:2], bool)
    logit, crf_nll, _ = net.apply({"params": params[HEAD]}, x, mask_x, batch["steps"], mask_y,
                                  _tags(system, batch))
    live = mask_x[:, 0].astype(jnp.float32)  # all-padding rows fill the last batches
    bce = optax.sigmoid_binary_cross_entropy(logit, batch["label"].astype(jnp.float32)) * live
    bce_sum, n = jnp.sum(bce), jnp.sum(live)
    loss, extra = bce_sum / jnp.maximum(n, 1.0), {}
    if crf_nll is not None:
      w = live * (batch["covered"] if c.crf_covered_only else 1.0)
      crf_mean = jnp.sum(crf_nll * w) / jnp.maximum(jnp.sum(w), 1.0)
      loss, extra = (1.0 - c.eta) * crf_mean + c.eta * loss, {"crf_nll": crf_mean}
    loss = loss + aux.balance_loss + aux.device_balance_loss
    return loss, (bce_sum, n, aux, extra)

  return loss_fn


def head_axes(params) -> dict:
  """Logical axes of params["sspm"]: every leaf replicated (the head is small)."""
  return jax.tree_util.tree_map(lambda a: P(*([None] * a.ndim)), params)


def init_head(c, config, seq_len: int, seed: int) -> dict:
  """params["sspm"] for the engine model's width (its embeddings' or hidden states')."""
  width = config.hidden_size
  x = jnp.zeros((2, seq_len, width))
  mask = jnp.ones((2, seq_len), bool)
  y = jnp.zeros((2, c.trade_steps, bars_lib.STEP_DIM))
  init = jax.jit(module(c).init)  # traced once: op by op, the LSTM scans take many seconds
  return init(jax.random.key(seed), x, mask, y, jnp.ones((2, c.trade_steps), bool),
              jnp.zeros((2, seq_len), jnp.int32))["params"]


# Evaluation ------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("config", "c_items"))
def _predict(config, c_items, params, buffers, batch):
  c = ml_collections.ConfigDict(dict(c_items))
  x, _ = news_inputs(params, buffers, config, batch, c.news_encoder)
  mask_x = batch["segment_ids"] != 0
  logit, _, tags = module(c).apply({"params": params[HEAD]}, x, mask_x, batch["steps"],
                                   jnp.ones(batch["steps"].shape[:2], bool),
                                   _tags(c.system, batch), decode=c.system == "msspm")
  return jax.nn.sigmoid(logit), tags


def predict(model: Model, c: ml_collections.ConfigDict, rows: dict, batch_size: int = 64):
  """(P(up) [N], the fused tags [N, T]) of encoded rows; MSSPM's tags are its CRF's."""
  fields = ("tokens", "segment_ids", "positions", "tags", "coarse", "steps")
  items = tuple(sorted((k, v) for k, v in c.to_dict().items() if not isinstance(v, dict)))
  probs, tags, n = [], [], len(rows["tokens"])
  for i in range(0, n, batch_size):
    b = {k: rows[k][i:i + batch_size] for k in fields}
    short = batch_size - len(b["tokens"])
    b = {k: np.concatenate([v, np.zeros((short,) + v.shape[1:], v.dtype)]) for k, v in b.items()}
    p, t = _predict(model.config, items, model.params, model.variables.get("buffers", {}), b)
    probs.append(np.asarray(p)[:batch_size - short])
    tags.append(np.asarray(t)[:batch_size - short])
  return np.concatenate(probs), np.concatenate(tags)


def report(probs: np.ndarray, tags: np.ndarray, rows: dict) -> dict:
  """Accuracy and MCC overall and per subset, and the fused tags' agreement with the dictionary's."""
  preds, labels = (probs > 0.5).astype(np.int64), rows["label"]
  subsets = {"all": np.ones(len(labels), bool), "covered": rows["covered"] == 1,
             "missed": rows["missed"] == 1,  # events written outside the dictionary (simulated)
             "uncovered": rows["covered"] == 0}
  out = {}
  for name, s in subsets.items():
    if s.any():
      out[name] = {"accuracy": float(np.mean(preds[s] == labels[s])),
                   "mcc": cls_metrics.mcc(labels[s], preds[s]), "examples": int(s.sum())}
  real = rows["segment_ids"] != 0
  cov = rows["covered"] == 1
  same = [np.array_equal(tags[i][real[i]], rows["tags"][i][real[i]]) for i in np.flatnonzero(cov)]
  out["tags_equal_dictionary"] = float(np.mean(same)) if same else None
  missed = rows["missed"] == 1
  out["tags_found_in_missed"] = float(np.mean(np.any((tags != 0) & real, -1)[missed])) \
      if missed.any() else None
  return out


def run(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
  """The "stock" task: encode, train the system beside the frozen engine model, score held-out."""
  c = cfg.stock
  setup = train_lib.prologue(cfg, workdir)
  model, tok = setup.model, setup.tokenizer
  if not model.config.is_encoder:
    raise ValueError("config.stock: the news encoder needs an encoder model (init_from)")
  data, train_rows, held = make_data(cfg, workdir, tok)
  head = init_head(c, model.config, cfg.data.seq_len, cfg.seed)
  model = Model(model.config, {**model.variables, "params": {**model.params, HEAD: head}})
  spec = trainable.from_config(cfg, model.config, modes=("fft", "heads")).with_heads(
      {HEAD: head_axes(head)})
  print(f"[stock] {c.system}: {len(train_rows['label'])} train / {len(held['label'])} held-out "
        f"news (up share {np.mean(train_rows['label']):.2f} / {np.mean(held['label']):.2f}); "
        f"dictionary covers {np.mean(train_rows['covered']):.2f} of the training news")
  model, summary = train_lib.train(cfg, workdir, model, spec, data, setup.mesh, name=c.system,
                                   loss_fn=stock_loss(c))
  probs, tags = predict(model, c, held)
  m = report(probs, tags, held)
  summary.update(system=c.system, news_encoder=c.news_encoder, metrics=m,
                 train_examples=int(len(train_rows["label"])),
                 train_up_share=float(np.mean(train_rows["label"])))
  print(f"[stock] held-out: accuracy {m['all']['accuracy']:.3f}, MCC {m['all']['mcc']:.3f}"
        + (f"; on the news the dictionary misses {m['missed']['accuracy']:.3f}" if "missed" in m
           else ""))
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "metrics.json"), "w", encoding="utf-8") as f:
      json.dump(m, f, indent=2)
    np.savez(os.path.join(workdir, "eval_predictions.npz"), probs=probs, tags=tags,
             label=held["label"], row=held["row"])
  return train_lib.epilogue(cfg, workdir, model, spec, summary, tok)
