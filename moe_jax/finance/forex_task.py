"""The "forex" task: GEA (`moe_jax.finance.forex`) on news and a rate series, through the trainer.

`train.py --config=configs/forex_news.py` reads a news JSONL and a daily rate
series (`moe_jax.finance.forex_data`), cuts them into windows, encodes each
distinct news text once with the trainer's encoder (frozen; [CLS] vectors cached
in `forex.vector_cache`), groups every item three ways (time sub-window, k-means
topic fitted on the training windows' items, provider category), writes the rows
once as ArrayRecord and trains GEA as the task head `params["forex"]` with the
encoder frozen (train mode "heads"). The last `data.eval_fraction` of the windows,
in time order, is held out. Written to the workdir: metrics.json (held-out accuracy,
MCC, and per category: its share of the attention mass, the share of its items
extraction keeps, the accuracy with its items dropped), forex_heads.msgpack (GEA's
weights) and eval_details.npz (per held-out window and item, for the studies).
"""

from __future__ import annotations

import json
import os

import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from moe_jax import input_pipeline, train_lib, trainable
from moe_jax.classify import metrics as cls_metrics
from moe_jax.classify import task as classify_task
from moe_jax.finance import forex, forex_data
from moe_jax.model import Model

HEADS_FILE = "forex_heads.msgpack"


def num_groups(grouping: str, c: ml_collections.ConfigDict, categories: int) -> int:
  """G for a grouping: time buckets, topic clusters, categories, or one group."""
  return {"time": c.time_buckets, "topic": c.topics, "category": categories, "none": 1}[grouping]


class Prepared:
  """A run's windows, per-item groups, category names and the chronological split."""

  def __init__(self, cfg, workdir: str, model: Model, tokenizer):
    c = cfg.forex
    self.news = forex_data.read_news(train_lib.resolve_data_path(c.news_file))
    self.daily = forex_data.read_rates(c.rates if c.rates.startswith("currency:")
                                       else train_lib.resolve_data_path(c.rates))
    self.windows = forex_data.windows(self.daily, self.news, c.window_days, c.max_items)
    n = len(self.windows)
    n_eval = int(round(cfg.data.eval_fraction * n))
    if n_eval < cfg.data.batch_size or n - n_eval < cfg.data.batch_size:
      raise input_pipeline.DataError(
          f"{c.news_file}: {n} windows of news give {n - n_eval} training and {n_eval} held-out "
          f"windows; each needs a batch of {cfg.data.batch_size} (lower data.batch_size)")
    self.train_ids, self.eval_ids = np.arange(n - n_eval), np.arange(n - n_eval, n)
    encode = lambda texts: forex.cls_vectors(model, classify_task.encode(
        texts, tokenizer, model.config, cfg.data.seq_len), c.encoder_batch)
    cache = c.vector_cache or os.path.join(workdir, "news_vectors.npz")
    self.vectors = forex_data.cached_vectors(list(self.news.texts), encode, cache)  # [N, D]
    fit = np.concatenate([self.windows.items[i] for i in self.train_ids])
    centroids = forex_data.kmeans(self.vectors[fit], c.topics, c.topic_seed)
    self.topics = forex_data.nearest(self.vectors, centroids)
    self.category_names = sorted(set(self.news.categories))
    lookup = {name: i for i, name in enumerate(self.category_names)}
    self.categories = np.asarray([lookup[x] for x in self.news.categories], np.int32)

  def rows(self, ids, c) -> dict:
    return forex_data.rows(self.windows, ids, self.vectors, self.topics, self.categories,
                           c.time_buckets, c.max_items)


def _data(cfg, workdir: str, prep: Prepared) -> train_lib.Data:
  c = cfg.forex
  paths = [train_lib.resolve_data_path(c.news_file)]
  if not c.rates.startswith("currency:"):
    paths.append(train_lib.resolve_data_path(c.rates))
  key = input_pipeline.fingerprint(paths, [c.rates, c.window_days, c.max_items, c.topics,
                                           c.topic_seed, c.time_buckets, cfg.data.eval_fraction,
                                           cfg.init_from, cfg.data.seq_len])
  feats = forex_data.features(c.max_items, prep.vectors.shape[1], c.window_days)
  sources = train_lib.process0_first("prepare_data", lambda: input_pipeline.prepare_rows(
      "forex", key, feats, lambda: {"train": prep.rows(prep.train_ids, c),
                                    "eval": prep.rows(prep.eval_ids, c)},
      c.data_dir or os.path.join(workdir, "data")))
  return train_lib.make_data(sources["train"], sources["eval"], cfg.data.batch_size, cfg.seed,
                             "the held-out windows")


def evaluate(module: forex.GEA, params: dict, rows: dict, grouping: str, names) -> dict:
  """(metrics, details) of held-out rows. metrics: accuracy, MCC, and per category its share of
  the attention mass (mean per window), the share of its items extraction keeps, and the
  accuracy with its items dropped (masked out of every window). details: per window and item
  {"probs" [N, 2], "mass", "kept", "scores" [N, M]}."""
  apply = jax.jit(lambda p, b: module.apply({"params": p}, *forex.batch_inputs(b, grouping)))
  batch = {k: jnp.asarray(v) for k, v in rows.items()}
  logits, att = apply(params, batch)
  probs = np.asarray(jax.nn.softmax(logits, -1))
  preds, labels = probs.argmax(-1), rows["label"]
  mass, kept = np.asarray(att.mass), np.asarray(att.kept)
  valid, cat = rows["mask"] != 0, rows["group_category"]
  per_cat = {}
  for i, name in enumerate(names):
    mine = valid & (cat == i)
    dropped = {**batch, "mask": jnp.asarray(rows["mask"] * ~mine)}
    drop_preds = np.asarray(apply(params, dropped)[0]).argmax(-1)
    per_cat[name] = {
        "items": int(mine.sum()),
        "mass_share": float(np.sum(mass * mine) / len(labels)),  # mean per window
        "kept_share": float(np.sum(kept & mine) / max(mine.sum(), 1)),
        "accuracy_dropped": float(np.mean(drop_preds == labels))}
  return {"accuracy": float(np.mean(preds == labels)), "mcc": cls_metrics.mcc(labels, preds),
          "windows": int(len(labels)), "up_share": float(np.mean(labels)),
          "categories": per_cat}, {"probs": probs, "mass": mass, "kept": kept,
                                   "scores": np.asarray(att.scores)}


def run(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
  """The "forex" task: prepare the windows, train GEA with the encoder frozen, evaluate, save."""
  c = cfg.forex
  if c.grouping not in forex.GROUPINGS:
    raise ValueError(f"config.forex.grouping: {c.grouping!r} is not one of {forex.GROUPINGS}")
  if cfg.train_mode != "heads":
    raise ValueError("config.train_mode: the forex task trains GEA beside a frozen encoder "
                     f"(its news vectors are computed once), so it must be 'heads', got "
                     f"{cfg.train_mode!r}")
  setup = train_lib.prologue(cfg, workdir)
  prep = Prepared(cfg, workdir, setup.model, setup.tokenizer)
  data = _data(cfg, workdir, prep)
  g = num_groups(c.grouping, c, len(prep.category_names))
  module = forex.GEA(g, c.top_k, c.trade_features)
  head = forex.init(module, prep.vectors.shape[1], c.window_days, cfg.seed)
  model = Model(setup.model.config, {**setup.model.variables,
                                     "params": {**setup.model.params, forex.HEAD: head}})
  spec = trainable.TrainableSpec("heads").with_heads({forex.HEAD: forex.param_axes(head)})
  print(f"[forex] {len(prep.news)} news items in {len(prep.windows)} windows of "
        f"{c.window_days} days ({len(prep.train_ids)} train / {len(prep.eval_ids)} held out, "
        f"in time order); grouping {c.grouping!r} ({g} groups), top-{c.top_k} extraction")
  model, summary = train_lib.train(cfg, workdir, model, spec, data, setup.mesh,
                                   name=f"forex-{c.grouping}", loss_fn=forex.loss_fn(module, c.grouping))
  held = prep.rows(prep.eval_ids, c)
  metrics, details = evaluate(module, model.params[forex.HEAD], held, c.grouping,
                              prep.category_names)
  dates = prep.daily.dates[prep.windows.last[prep.eval_ids]]
  metrics.update(held_out_from=str(dates[0]), held_out_to=str(dates[-1]))
  print(f"[forex] held-out accuracy {metrics['accuracy']:.3f}, MCC {metrics['mcc']:.3f} "
        f"({metrics['windows']} windows, {100 * metrics['up_share']:.0f}% up)")
  summary.update(grouping=c.grouping, top_k=c.top_k, groups=g, metrics=metrics)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "metrics.json"), "w", encoding="utf-8") as f:
      json.dump(metrics, f, indent=2)
    with open(os.path.join(workdir, HEADS_FILE), "wb") as f:
      f.write(flax.serialization.msgpack_serialize(jax.device_get(model.params[forex.HEAD])))
    items = [prep.windows.items[i] for i in prep.eval_ids]
    item_ids = np.full(held["mask"].shape, -1, np.int64)
    for r, idx in enumerate(items):
      item_ids[r, :len(idx)] = idx
    np.savez(os.path.join(workdir, "eval_details.npz"), labels=held["label"],
             window=held["window"], item=item_ids, category=held["group_category"],
             mask=held["mask"], **details)
  return train_lib.epilogue(cfg, workdir, model, spec, summary, setup.tokenizer)
