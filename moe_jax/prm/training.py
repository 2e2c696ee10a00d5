"""PRM / ORM training through the common trainer (`train.py --config=configs/prm.py`).

Reads step-labelled solutions (Math-Shepherd or TRL JSONL), encodes each as
Math-Shepherd's `input` text with the step tags, packs them into rows with the
tag positions and labels, and trains with the same jitted step as every other
run (FFT, ESFT or LoRA), swapping in the PRM loss. Held-out step metrics (step
accuracy, balanced accuracy, AUC, log-loss) are reported before and after.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np

from moe_jax import esft, input_pipeline, train_lib
from moe_jax.hf import save_pretrained
from moe_jax.model import Model
from moe_jax.prm import data as prm_data
from moe_jax.prm import reward
from moe_jax.tokenizer import load_tokenizer


def encode_examples(examples, tokenizer, tag: str, orm: bool, source: str = "") -> list[dict]:
  """Per-token fields for each example; ORM keeps only the final step's label."""
  out = []
  for i, ex in enumerate(examples):
    enc = prm_data.encode(ex, tokenizer, tag, line=f"{source}:{i + 1}")
    if orm:  # outcome supervision: one label, at the last tag
      last = np.flatnonzero(enc["score_mask"])[-1]
      enc["score_mask"] = np.zeros_like(enc["score_mask"])
      enc["score_mask"][last] = True
    out.append(enc)
  return out


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
  """A PRM/ORM run from a config (task=prm): base model, data, train, step metrics, export.

  Returns the run's summary (metrics before and after, losses, trainable parameters).
  """
  os.makedirs(workdir, exist_ok=True)
  p = cfg.prm
  mesh = train_lib.make_mesh(cfg)
  tokenizer = load_tokenizer(train_lib.resolve_data_path(cfg.data.tokenizer))
  model = train_lib.base_model(cfg, workdir, tokenizer, mesh)
  path = train_lib.resolve_data_path(p.train_file)
  examples = prm_data.read_examples(path, p.tag, p.good, p.bad)
  train_ex, eval_ex = input_pipeline.split_examples(examples, cfg.data.eval_fraction, cfg.seed)
  model, summary = fit(cfg, workdir, model, tokenizer, train_ex, eval_ex, mesh, path)
  if jax.process_index() == 0:
    if cfg.export_hf:
      save_pretrained(model, os.path.join(workdir, "hf"))
      if p.value_head:
        np.savez(os.path.join(workdir, "hf", "value_head.npz"),
                 **jax.device_get(model.params["value_head"]))
      summary["hf_dir"] = os.path.join(workdir, "hf")
    with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
      json.dump(summary, f, indent=2)
  return summary


def fit(cfg: ml_collections.ConfigDict, workdir: str, model: Model, tokenizer, train_ex, eval_ex,
        mesh, source: str = "") -> tuple[Model, dict]:
  """Trains `model` as a PRM/ORM (cfg.prm) on train_ex; step metrics on eval_ex before and after."""
  p = cfg.prm
  if p.label == "hard":
    train_ex, eval_ex = ([prm_data.Example(e.question, e.steps, [float(l >= 0.5) for l in e.labels])
                          for e in exs] for exs in (train_ex, eval_ex))
  pack = lambda exs: input_pipeline.pack_fields(encode_examples(exs, tokenizer, p.tag, p.orm, source),
                                                cfg.data.seq_len, tokenizer.pad_id)
  train_rows, eval_rows = pack(train_ex), pack(eval_ex)
  bs = cfg.data.batch_size
  if len(eval_rows["tokens"]) < bs:
    raise input_pipeline.DataError(f"{source}: {len(eval_rows['tokens'])} held-out rows cannot fill a "
                                   f"batch of {bs}; raise config.data.eval_fraction")
  data = train_lib.Data(input_pipeline.batches(train_rows, bs, cfg.seed, True, jax.process_index(),
                                                jax.process_count()),
                         input_pipeline.batches(eval_rows, bs, cfg.seed, False, jax.process_index(),
                                                jax.process_count()),
                         len(eval_rows["tokens"]) // bs, len(train_rows["tokens"]))
  good_id, bad_id = reward.label_ids(tokenizer, p.good, p.bad)
  head = reward.RewardHead(good_id, bad_id, p.value_head)
  if p.value_head:
    model = Model(model.config, {**model.variables, "params": {
        **model.params, "value_head": reward.init_value_head(model.config.hidden_size)}})
  if cfg.train_mode == "esft":
    spec = train_lib.select_experts(cfg, workdir, model, data)
  elif cfg.train_mode == "lora":
    spec = esft.TrainableSpec("lora", lora_rank=cfg.lora.rank, lora_scale=cfg.lora.scale, seed=cfg.seed)
  else:
    spec = esft.TrainableSpec()
  summary = {"metrics_before": reward.metrics(*reward.score_rows(model, eval_rows, head))}
  print(f"[prm] {len(train_ex)} train / {len(eval_ex)} held-out solutions; "
        f"{'ORM' if p.orm else 'PRM'} with {p.label} labels; held-out before: "
        + _fmt(summary["metrics_before"]))
  model, run = train_lib.train(cfg, workdir, model, spec, data, mesh, name="prm",
                               loss_fn=reward.make_loss(head))
  summary.update(run)
  summary["metrics_after"] = reward.metrics(*reward.score_rows(model, eval_rows, head))
  print("[prm] held-out after: " + _fmt(summary["metrics_after"]))
  return model, summary


def _fmt(m: dict) -> str:
  return (f"step accuracy {m['accuracy']:.3f}, balanced {m['balanced_accuracy']:.3f}, "
          f"AUC {m['auc']:.3f}, log-loss {m['log_loss']:.4f} ({m['steps']} steps)")
