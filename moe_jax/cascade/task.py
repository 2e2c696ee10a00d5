"""The "cascade" task: train a cascade of complete encoders, or an early-exit baseline, on the trainer.

`train.py --config=configs/cascade_tweets.py` reads the classification data
as the "classify" task does (`classify.*`), then by `cascade.method`:

  cascade  every stage of `cascade.stages` (small to large) fine-tuned jointly on
           sum_m CE_m + lambda * L_DAR (`moe_jax.cascade.losses`); the last stage
           is the trainer's model and the smaller ones ride beside it as task
           heads (`params["stage_k"]`), so checkpoints, resume, sharding and the
           jitted step are the engine's.
  single   one complete model on its cross-entropy (a stage alone; what
           `difficulty` trains with several seeds).
  deebert  DeeBERT on the one encoder: fine-tune it (`backbone/`), then train
           the off-ramps with the backbone frozen (`ramps/`).
  pabee    PABEE on the one encoder, trained jointly with its classifiers.

Afterwards every stage (or layer) is scored on the held-out set:
`eval_probs.npz` holds probs [K, N, C], labels, difficulty and costs, and
`metrics.json` the accuracy and analytic speed-up at each threshold
(`moe_jax.cascade.evaluate`). The stages are saved to `stages/` for
`python -m moe_jax.cascade evaluate`, which measures the wall-clock speed-up.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from moe_jax import heads, input_pipeline, jsonl, train_lib, trainable
from moe_jax.cascade import early_exit, evaluate, losses
from moe_jax.cascade import stages as stages_lib
from moe_jax.classify import datasets
from moe_jax.classify import task as classify_task
from moe_jax.model import Model, logical_axes

METHODS = ("cascade", "single", "deebert", "pabee")
_FIELDS = ("tokens", "segment_ids", "positions")


def stage_head(k: int) -> str:
  """Where stage k (not the last) lives in the trainer's tree: params["stage_{k}"]."""
  return f"stage_{k}"


def _stage_batch(batch: dict, k: int) -> dict:
  return {f: batch[f"{f}_{k}"] for f in _FIELDS}


def cascade_loss(configs, dar_weight: float, margin: float, seed: int):
  """The trainer's loss for a cascade: sum_m CE_m + dar_weight * L_DAR(first stage's confidence)
  + the MoE balance losses. configs: the stages' ModelConfigs; the last is the trainer's model."""

  def loss_fn(params, buffers, config, batch):
    live = batch["segment_ids_0"][:, 0] != 0
    ce_sum, n, balance, logits0, aux_last = 0.0, None, 0.0, None, None
    main = {k: v for k, v in params.items() if not k.startswith("stage_")}
    for k in range(len(configs)):
      last = k == len(configs) - 1
      p = main if last else params[stage_head(k)]
      logits, aux = heads.sequence_logits(p, buffers if last else {},
                                          config if last else configs[k], _stage_batch(batch, k))
      s, n = losses.cross_entropy(logits, batch["label"], live)
      ce_sum = ce_sum + s
      balance = balance + aux.balance_loss + aux.device_balance_loss
      logits0 = logits if k == 0 else logits0
      aux_last = aux
    key = jax.random.fold_in(jax.random.key(seed), jnp.sum(batch["row"]))
    partner = losses.draw_partners(key, jnp.where(live, batch["difficulty"], losses.UNKNOWN))
    conf = jnp.max(jax.nn.softmax(logits0, -1), -1)
    dar = losses.ranking_loss(conf, jnp.where(live, batch["difficulty"], losses.UNKNOWN), partner,
                              margin)
    loss = ce_sum / jnp.maximum(n, 1.0) + dar_weight * dar + balance
    return loss, (ce_sum, n, aux_last, {"dar": dar})

  return loss_fn


def _single_loss(params, buffers, config, batch):
  return classify_task.classify_loss(params, buffers, config, _stage_batch(batch, 0) | {
      "label": batch["label"]})


def read_difficulty(path: str, examples: datasets.Examples) -> np.ndarray:
  """[N] EASY / HARD / UNKNOWN of each example, looked up by (text, label name) in a difficulty
  JSONL (`python -m moe_jax.cascade difficulty`); UNKNOWN where the file has no such line."""
  table = {}
  for where, rec in jsonl.records(path, input_pipeline.DataError):
    d = rec.get("difficulty") if isinstance(rec, dict) else None
    if d not in ("easy", "hard") or not isinstance(rec.get("text"), str):
      raise input_pipeline.DataError(f"{where}: expected 'text', 'label' and 'difficulty' "
                                     f"('easy' or 'hard'), got {str(rec)[:80]}")
    table[(rec["text"], str(rec.get("label")))] = losses.EASY if d == "easy" else losses.HARD
  return np.asarray([table.get((t, examples.label_names[y]), losses.UNKNOWN)
                     for t, y in zip(examples.texts, examples.labels)], np.int32)


def _rows(examples, stages, seq_len, difficulty) -> dict:
  out = {"label": np.asarray(examples.labels, np.int32), "difficulty": difficulty,
         "row": np.arange(len(examples.texts), dtype=np.int32)}
  for k, r in enumerate(stages_lib.rows(examples.texts, stages, seq_len)):
    out.update({f"{f}_{k}": r[f] for f in _FIELDS})
  return out


def _data(cfg, workdir, stages, train_ex, held_ex, diff_train, diff_held):
  seq_len = cfg.data.seq_len
  features = {f"{f}_{k}": ((seq_len,), np.int32) for k in range(len(stages)) for f in _FIELDS}
  features.update({k: ((), np.int32) for k in ("label", "difficulty", "row")})
  key = input_pipeline.fingerprint([], [list(train_ex.texts), list(train_ex.labels),
                                        list(held_ex.texts), list(held_ex.labels),
                                        [s.tokenizer_file for s in stages], seq_len,
                                        diff_train.tolist(), diff_held.tolist()])
  sources = train_lib.process0_first("prepare_data", lambda: input_pipeline.prepare_rows(
      "cascade", key, features, lambda: {
          "train": _rows(train_ex, stages, seq_len, diff_train),
          "eval": _rows(held_ex, stages, seq_len, diff_held)}, os.path.join(workdir, "data")))
  data = train_lib.make_data(sources["train"], sources["eval"], cfg.data.batch_size, cfg.seed,
                             "the held-out examples")
  return data, _rows(held_ex, stages, seq_len, diff_held)


def _with_heads(stages, num_labels: int, seed: int):
  """(the trainer's model: the last stage with every stage's classifier and the smaller stages as
  heads, its TrainableSpec heads)."""
  main = heads.with_classifier(stages[-1].model, num_labels, seed)
  params = dict(main.params)
  head_axes = {heads.CLASSIFIER: heads.CLASSIFIER_AXES}
  for k, s in enumerate(stages[:-1]):
    params[stage_head(k)] = heads.with_classifier(s.model, num_labels, seed + 1 + k).params
    head_axes[stage_head(k)] = {**logical_axes(s.model.config)["params"],
                                heads.CLASSIFIER: heads.CLASSIFIER_AXES}
  return Model(main.config, {**main.variables, "params": params}), head_axes


def _train_cascade(cfg, workdir, mesh, stages, data, num_labels):
  c = cfg.cascade
  model, head_axes = _with_heads(stages, num_labels, cfg.seed)
  spec = trainable.from_config(cfg, model.config, modes=("fft",)).with_heads(head_axes)
  if c.method == "single":
    loss = _single_loss
  else:
    loss = cascade_loss(tuple(s.model.config for s in stages), c.dar_weight, c.margin, cfg.seed)
  model, summary = train_lib.train(cfg, workdir, model, spec, data, mesh, name=c.method,
                                   loss_fn=loss)
  trained = []
  for k, s in enumerate(stages):
    if k == len(stages) - 1:
      p = {n: v for n, v in model.params.items() if not n.startswith("stage_")}
    else:
      p = model.params[stage_head(k)]
    trained.append(stages_lib.Stage(s.spec, Model(s.model.config, {**s.model.variables, "params": p}),
                                    s.tokenizer, s.tokenizer_file))
  return trained, summary


def _train_early_exit(cfg, workdir, mesh, stage, data, num_labels):
  """DeeBERT (two stages) or PABEE (one) on one encoder: the stage with params["ramps"]."""
  c, kind = cfg.cascade, cfg.cascade.method
  model = heads.with_classifier(stage.model, num_labels, cfg.seed)
  ramps = early_exit.init_ramps(model.config, num_labels, kind, cfg.seed + 1)
  axes = {heads.CLASSIFIER: heads.CLASSIFIER_AXES}
  if kind == "pabee":
    model = Model(model.config, {**model.variables, "params": {**model.params, early_exit.RAMPS: ramps}})
    spec = trainable.TrainableSpec().with_heads({**axes, early_exit.RAMPS: early_exit.ramp_axes(kind)})
    model, summary = train_lib.train(cfg, workdir, model, spec, data, mesh, name="pabee",
                                     loss_fn=_stage0(early_exit.pabee_loss))
  else:
    spec = trainable.TrainableSpec().with_heads(axes)
    model, summary = train_lib.train(cfg, os.path.join(workdir, "backbone"), model, spec, data,
                                     mesh, name="deebert-backbone", loss_fn=_single_loss)
    body = {k: v for k, v in model.params.items() if k != heads.CLASSIFIER}
    ramp_model = Model(model.config, {**model.variables, "params": {**body, early_exit.RAMPS: ramps}})
    ramp_cfg = ml_collections.ConfigDict(cfg.to_dict())
    ramp_cfg.num_train_steps = c.ramp_steps or cfg.num_train_steps
    spec = trainable.TrainableSpec("heads").with_heads(
        {early_exit.RAMPS: early_exit.ramp_axes(kind)})
    ramp_model, ramp_summary = train_lib.train(
        ramp_cfg, os.path.join(workdir, "ramps"), ramp_model, spec, data, mesh,
        name="deebert-ramps", loss_fn=_stage0(early_exit.deebert_loss))
    model = Model(model.config, {**model.variables, "params": {
        **model.params, early_exit.RAMPS: ramp_model.params[early_exit.RAMPS]}})
    summary = {**summary, "ramps": ramp_summary}
  return stages_lib.Stage(stage.spec, model, stage.tokenizer, stage.tokenizer_file), summary


def _stage0(loss_fn):
  """loss_fn on the batch's stage-0 fields (the one encoder's), with the labels."""
  return lambda params, buffers, config, batch: loss_fn(
      params, buffers, config, _stage_batch(batch, 0) | {"label": batch["label"]})


def run(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
  """The "cascade" task: train by `cascade.method`, score every stage or layer, save the stages."""
  c = cfg.cascade
  if c.method not in METHODS:
    raise ValueError(f"config.cascade.method: {c.method!r} is not one of {METHODS}")
  os.makedirs(workdir, exist_ok=True)
  mesh = train_lib.make_mesh(cfg)
  compute = train_lib.compute_settings(cfg)
  stages = [stages_lib.load_stage(s, cfg.data.tokenizer, **compute) for s in c.stages]
  if c.method == "cascade":
    stages_lib.check_increasing(stages)
  elif len(stages) != 1:
    raise ValueError(f"config.cascade.stages: method {c.method!r} trains one encoder, got "
                     f"{len(stages)} stages")
  train_ex, held_ex = classify_task.read_data(cfg, workdir)
  names = train_ex.label_names
  datasets.write_label_file(os.path.join(workdir, classify_task.LABELS_FILE), names)
  unknown = lambda ex: np.full(len(ex.texts), losses.UNKNOWN, np.int32)
  diff_train, diff_held = unknown(train_ex), unknown(held_ex)
  if c.difficulty_file:
    path = train_lib.resolve_data_path(c.difficulty_file)
    diff_train, diff_held = read_difficulty(path, train_ex), read_difficulty(path, held_ex)
  elif c.method == "cascade" and c.dar_weight:
    raise ValueError("config.cascade.dar_weight > 0 needs cascade.difficulty_file (write one with "
                     "`python -m moe_jax.cascade difficulty`), or set dar_weight=0")
  data, held_rows = _data(cfg, workdir, stages, train_ex, held_ex, diff_train, diff_held)
  print(f"[cascade] {c.method}: {len(train_ex.texts)} train / {len(held_ex.texts)} held-out "
        f"examples, {len(names)} labels; stages {[s.spec for s in stages]} "
        f"(easy/hard/unknown in training: {[int(np.sum(diff_train == d)) for d in (0, 1, -1)]})")
  if c.method in ("cascade", "single"):
    stages, summary = _train_cascade(cfg, workdir, mesh, stages, data, len(names))
  else:
    stage, summary = _train_early_exit(cfg, workdir, mesh, stages[0], data, len(names))
    stages = [stage]
  summary.update(method=c.method, seq_len=cfg.data.seq_len, stages=[s.spec for s in stages],
                 labels=list(names))
  if jax.process_index() == 0:
    stages_lib.save(stages, os.path.join(workdir, "stages"))
    datasets.write_jsonl(os.path.join(workdir, "held_out.jsonl"), held_ex)
    scores = evaluate.score(stages, held_rows, c.method)
    np.savez(os.path.join(workdir, "eval_probs.npz"), **scores)
    summary["metrics"] = evaluate.summarize(scores, c.method, evaluate.settings(c, stages), names)
    with open(os.path.join(workdir, "metrics.json"), "w") as f:
      json.dump(summary["metrics"], f, indent=2)
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2, default=float)
  return summary
