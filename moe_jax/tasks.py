"""The task table: what `train.py --config=...` runs, chosen by `config.task`.

Each entry is one function `(cfg, workdir) -> summary`. Every entry begins
with `train_lib.prologue` (the workdir, the mesh, the tokenizer, and the base
model with the config's compute settings) and ends with `train_lib.epilogue`
(the Hugging Face export, task heads, the ESFT adapter, summary.json), so a
task brings only its data, its loss and its metrics:

  lm    chat SFT on ESFT-format chat JSONL: configs/quickstart.py, fft.py, esft_*.py
  prm   a process (or outcome) reward model: configs/prm.py (`moe_jax.prm.training`)
  ppo   step-by-step PPO against a reward model: configs/ppo.py (`moe_jax.prm.ppo`)
  classify  text classification on any family: configs/classify_*.py (`moe_jax.classify`)
  cascade   a cascade of complete encoders or an early-exit baseline: configs/cascade_*.py
            (`moe_jax.cascade`)
  purify    defend a backdoored classifier and fine-tune it on clean data: configs/purify_*.py
            (`moe_jax.purify`)
  forex     grouped news aggregation (GEA) for forex movement: configs/forex_news.py
            (`moe_jax.finance.forex_task`)
  stock     stock movement from fine-grained news events (SSPM / MSSPM): configs/stock_events.py
            (`moe_jax.finance.stock_task`)
  wsd       FormBERT: Chinese word-sense disambiguation with word formations:
            configs/wsd_formbert.py (`moe_jax.wsd`)

A new task is a function here (or in its own package) and a line in `TASKS`;
the engine below (`train_lib`, `steps`) does not know the tasks.
"""

from __future__ import annotations

import os
from typing import Callable

import ml_collections

from moe_jax import train_lib, trainable
from moe_jax.cascade import task as cascade_task
from moe_jax.classify import task as classify_task
from moe_jax.finance import forex_task
from moe_jax.finance import stock_task
from moe_jax.prm import training as prm_training
from moe_jax.prm.ppo import task as ppo_task
from moe_jax.purify import task as purify_task
from moe_jax.wsd import task as wsd_task


def lm(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
  """Chat SFT (FFT, ESFT or LoRA) on the config's chat JSONL files; returns the summary."""
  setup = train_lib.prologue(cfg, workdir)
  data = train_lib.load_data(cfg.data, setup.tokenizer, cfg.seed, os.path.join(workdir, "data"))
  model, c = setup.model, setup.model.config
  print(f"model: {c.model_type}, {len(c.moe_layers)} MoE layers x {c.n_routed_experts} experts "
        f"(top-{c.num_experts_per_tok}); data: {data.rows} train rows of {cfg.data.seq_len} tokens; "
        f"mesh {dict(setup.mesh.shape)}")
  spec = trainable.from_config(cfg, c, lambda: train_lib.select_experts(
      cfg, workdir, model, train_lib.score_batches(cfg, data), "the task's data"))
  model, summary = train_lib.train(cfg, workdir, model, spec, data, setup.mesh, name=cfg.train_mode)
  return train_lib.epilogue(cfg, workdir, model, spec, summary, setup.tokenizer)


TASKS: dict[str, Callable[[ml_collections.ConfigDict, str], dict]] = {
    "lm": lm,
    "prm": prm_training.run,
    "ppo": ppo_task.run,
    "classify": classify_task.run,
    "cascade": cascade_task.run,
    "purify": purify_task.run,
    "forex": forex_task.run,
    "stock": stock_task.run,
    "wsd": wsd_task.run,
}


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the task `cfg.task` names (default "lm") in `workdir`; returns its summary."""
  task = cfg.get("task", "lm")
  if task not in TASKS:
    raise ValueError(f"config.task: {task!r} is not a task; the tasks are {sorted(TASKS)}")
  return TASKS[task](cfg, workdir)
