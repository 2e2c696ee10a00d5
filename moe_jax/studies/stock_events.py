"""Fine-grained events for stock movement: raw text vs coarse events vs SSPM vs MSSPM, on simulated
news over real AAPL prices with a known planted signal.

    python -m moe_jax.studies.stock_events --out docs/finance/events          # ~10 min, one core
    python -m moe_jax.studies.stock_events --out DIR --quick                  # the pipeline; a test

For each of 3 seeds, the seeded simulator (`moe_jax.finance.simulate`) writes
one news item on each of `news` real AAPL trading days (2005-2012) and moves
the real price after each item by its event type, direction word and change
rate; 30% of the event items are written outside the event dictionary. All four
systems of a seed see that same world and the same chronological split, and
are trained through the "stock" task (`moe_jax.finance.stock_task`) on
MiniLM's frozen word embeddings:

  raw      news BiLSTM + trade encoder, co-attention and gated fusion; no event input
  coarse   the same with one event-type id per item (the dictionary's), no roles
  sspm     the dictionary's BIO event roles (E_e), gold tags in training and test
  msspm    SSPM + a CRF tagger trained on the dictionary's tags (eta = 0.5); the
           CRF's Viterbi tags at test time

Held-out accuracy and MCC (all items; the items the dictionary covers; the
event items it misses) with 95% intervals over seeds, and the claims' verdicts
on paired per-seed differences (`moe_jax.studies.stock_events_report`). Runs are
cached under --out/runs (git-ignored); a finished run is read back.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time

import jax
import numpy as np

from moe_jax import config as model_config
from moe_jax.classify.configs import MINILM
from moe_jax.finance import bars as bars_lib
from moe_jax.finance import simulate
from moe_jax.finance import stock_task
from moe_jax.finance.stock_configs import SYSTEMS, stock_config
from moe_jax.hf import save_pretrained
from moe_jax.model import Model, init_variables
from moe_jax.packages import resolve
from moe_jax.studies import common
from moe_jax.studies.stock_events_report import report


@dataclasses.dataclass(frozen=True)
class Plan:
  encoder: str  # "minilm" (its frozen word embeddings), or "tiny": a random 2-layer BERT of width
                # 32 reading MiniLM's tokenizer (the --quick pipeline: faster to save and load)
  systems: tuple[str, ...]
  seeds: tuple[int, ...]  # each seed: its own world (simulator seed) and model initialisation
  news: int
  start: str
  end: str
  strength: float  # the planted jump in daily log-return deviations
  paraphrase: float
  steps: int
  batch: int
  seq_len: int
  hidden: int
  trade_steps: int
  eta: float
  learning_rate: float
  # Added after the first full results, and not a claim: MSSPM again at this eta (0 = not run),
  # to see whether the CRF term's weight is what held MSSPM back.
  diagnostic_eta: float = 0.0


def plan(quick: bool) -> Plan:
  if quick:
    # One system, the one with every part (roles, CRF, Viterbi at test): a run spends ~20 s
    # compiling on CPU, and the test has ~40 s.
    return Plan("tiny", ("msspm",), (0,), 60, "2009-01-01", "2009-06-30", 1.0, 0.3, 2, 8, 16,
                8, 2, 0.5, 2e-3)
  # Sized for about 10 minutes on one core (~45 s a run); every value was set before any
  # system was compared: the config's defaults but for 1200 items and 200 steps.
  return Plan("minilm", SYSTEMS, (0, 1, 2), 1200, "2005-01-01", "2012-12-31", 1.0, 0.3, 200, 32, 32,
              64, 6, 0.5, 2e-3, diagnostic_eta=0.9)


def tiny_encoder(out: str) -> str:
  """A random 2-layer BERT of width 32 with MiniLM's tokenizer, written once under out/runs."""
  path = os.path.join(out, "runs", "tiny_encoder")
  if not os.path.exists(os.path.join(path, "tokenizer.json")):
    c = model_config.all_minilm_l6_v2().replace(hidden_size=32, intermediate_size=64,
                                                num_attention_heads=2, num_hidden_layers=2)
    save_pretrained(Model(c, init_variables(c, 0)), path)
    shutil.copyfile(os.path.join(resolve(MINILM), "tokenizer.json"),
                    os.path.join(path, "tokenizer.json"))
  return path


def _sim(p: Plan) -> dict:
  """The plan's simulator settings (the rest are the config's defaults; the seed is the run's)."""
  return dict(news=p.news, start=p.start, end=p.end, strength=p.strength, paraphrase=p.paraphrase)


def run_config(p: Plan, system: str, seed: int, out: str = "", eta: float | None = None):
  """The "stock" task config of one run (MSSPM at `eta` if given, else the plan's)."""
  c = stock_config()
  c.seed = seed
  if p.encoder == "tiny":
    c.init_from = c.data.tokenizer = tiny_encoder(out)
  c.stock.update(dict(system=system, hidden=p.hidden, trade_steps=p.trade_steps,
                      eta=p.eta if eta is None else eta))
  c.stock.sim.update(_sim(p))
  c.data.update(dict(seq_len=p.seq_len, batch_size=p.batch))
  c.optimizer.learning_rate = p.learning_rate
  c.optimizer.warmup_steps = max(1, p.steps // 10)
  c.num_train_steps = p.steps
  c.checkpoint_every = p.steps
  return c


def _run(p: Plan, out: str, system: str, seed: int, eta: float | None = None) -> dict:
  name = system if eta is None else f"{system}_eta{eta}"
  workdir = os.path.join(out, "runs", name, f"seed{seed}")
  done = os.path.join(workdir, "summary.json")
  if not os.path.exists(done):
    t0 = time.time()
    stock_task.run(run_config(p, system, seed, out, eta), workdir)
    for bulky in ("checkpoints", "data"):  # the summary and predictions are the cache
      shutil.rmtree(os.path.join(workdir, bulky), ignore_errors=True)
    with open(done, encoding="utf-8") as f:
      s = json.load(f)
    s["wall_s"] = time.time() - t0
    with open(done, "w", encoding="utf-8") as f:
      json.dump(s, f)
  with open(done, encoding="utf-8") as f:
    s = json.load(f)
  with np.load(os.path.join(workdir, "eval_predictions.npz")) as f:
    rows = f["row"].tolist()
  return {"system": name, "seed": seed, **s["metrics"], "held_rows": rows,
          "train_examples": s["train_examples"], "wall_s": s.get("wall_s"),
          "held_out_bce": s["eval_loss_after"]}  # the trainer's eval loss: the BCE alone


def world_facts(p: Plan, seed: int, held_rows: list[int]) -> dict:
  """What the simulator planted, on the held-out items: the share of each kind, and the accuracy
  of predicting the sign of the planted jump (the best a model can do, up to the real path's
  noise and its drift) on the event items and on the missed ones."""
  w = simulate.simulate(simulate.Settings(**{**stock_config().stock.sim.to_dict(), **_sim(p),
                                              "seed": seed}))
  sessions = w.bars.sessions()
  rows = np.asarray(held_rows)
  labels = np.asarray([bars_lib.cut(w.bars, w.news.times[i], sessions).label for i in rows])
  ev, para = w.event[rows] > 0, w.paraphrased[rows]
  sign = (w.jump[rows] > 0).astype(int)
  acc = lambda s: float(np.mean(sign[s] == labels[s])) if s.any() else float("nan")
  return {"seed": seed, "held": int(len(rows)), "neutral": float(np.mean(~ev)),
          "missed": float(np.mean(para)), "up_share": float(np.mean(labels)),
          "planted_sign_events": acc(ev), "planted_sign_missed": acc(para),
          "planted_sign_covered": acc(ev & ~para)}


def run_study(out: str, quick: bool) -> dict:
  """Every (system, seed) run, cached under out/runs; writes results.json and RESULTS.md."""
  t0 = time.time()
  p = plan(quick)
  os.makedirs(out, exist_ok=True)
  common.check_plan(p, out)
  runs, worlds = [], []
  for seed in p.seeds:
    for system in p.systems:
      print(f"[study] {system} / seed {seed}")
      runs.append(_run(p, out, system, seed))
    worlds.append(common.cached(os.path.join(out, "runs", f"world_seed{seed}.json"),
                                lambda: world_facts(p, seed, runs[-1]["held_rows"])))
  if p.diagnostic_eta:
    for seed in p.seeds:
      print(f"[study] diagnostic: msspm at eta {p.diagnostic_eta} / seed {seed}")
      runs.append(_run(p, out, "msspm", seed, p.diagnostic_eta))
  for r in runs:
    r.pop("held_rows")
  results = {"plan": dataclasses.asdict(p), "quick": quick, "runs": runs, "worlds": worlds,
             "jax": jax.__version__,
             "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
             "simulator": simulate.__doc__}
  return common.finish(out, results, report, t0)


def main(argv=None) -> int:
  return common.main("python -m moe_jax.studies.stock_events", __doc__, run_study, report, argv)


if __name__ == "__main__":
  raise SystemExit(main())
