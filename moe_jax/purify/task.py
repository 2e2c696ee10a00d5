"""The "purify" task: defend a suspect classifier, fine-tune it on the clean set, measure ACC / ASR.

`train.py --config=configs/purify_tweets.py --workdir=DIR --config.purify.suspect=ATTACK_DIR`
loads the suspect (ATTACK_DIR/hf, w_ft) and the pre-trained weights it came
from (`purify.pretrained`, w_init), applies `purify.defence`
(`moe_jax.purify.defences`): the clean curvature, the indicator, the top-rho
mask and the reset (or Fine-pruning), then fine-tunes the result on the
defender's clean set with the common trainer (checkpoints, resume, meshes), and
measures clean accuracy and attack success rate three times: the suspect, after
the reset, after the clean fine-tune. DIR gets metrics.json, detect.json (where
the reset dimensions sit) and hf/.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from moe_jax import heads, train_lib, trainable
from moe_jax.classify import task as classify_task
from moe_jax.hf import from_pretrained
from moe_jax.model import Model
from moe_jax.purify import attacker, defences, detect, evaluate, indicators

METRICS_FILE = "metrics.json"
DETECT_FILE = "detect.json"


def clean_batches(rows: dict, batch: int):
  """The clean rows in batches of `batch`, the last padded with weight-0 rows."""
  n = len(rows["label"])
  pad = -n % batch
  full = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)]) for k, v in rows.items()}
  full["weight"] = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
  for i in range(0, n + pad, batch):
    yield {k: jnp.asarray(v[i:i + batch]) for k, v in full.items()}


def trigger_token_ids(data: attacker.AttackData, tokenizer) -> list[int]:
  """The token ids the attack's triggers are written with."""
  return sorted({i for t in data.attack.triggers for i in tokenizer.encode(t)})


def defend(cfg: ml_collections.ConfigDict, suspect: Model, pretrained: Model, clean_rows: dict,
           trigger_ids: list[int] = ()):
  """(the defended parameters, detect.json's report, the reset mask or None) for
  `purify.defence`; the report says where the reset dimensions sit, the `trigger_ids` rows of
  the word embeddings included. The mask (bool arrays like w_init) exists for the defences
  that reset dimensions."""
  p = cfg.purify
  if p.defence not in defences.DEFENCES:
    raise ValueError(f"config.purify.defence: {p.defence!r} is not one of {defences.DEFENCES}")
  batch = 4 * p.micro_batch
  report: dict = {"defence": p.defence}
  if p.defence in ("none", "finetune"):
    return suspect.params, report, None
  if p.defence == "pruning":
    acts = defences.neuron_activations(suspect, clean_batches(clean_rows, batch), p.prune_layers)
    params, pruned = defences.prune(suspect.params, acts, p.rho)
    report["pruned_neurons"] = pruned
    return params, report, None
  h = None
  if defences.needs_curvature(p.defence):
    h = defences.clean_curvature(suspect, clean_batches(clean_rows, batch), p.curvature,
                                 p.micro_batch, p.fisher_labels, p.probes, cfg.seed)
  w_ft = {k: v for k, v in suspect.params.items() if k != heads.CLASSIFIER}
  mask, score = defences.indicator_mask(p.defence, pretrained.params, w_ft, h, p.rho, p.scope, cfg.seed)
  params = indicators.reset(pretrained.params, suspect.params, mask)
  mask, score = jax.device_get(mask), jax.device_get(score)
  report.update(distribution=detect.distribution(mask, score), experts=detect.expert_shares(mask, score),
                selected=int(sum(np.sum(m) for m in mask.values())),
                dims=int(sum(np.size(m) for m in mask.values())))
  if h is not None:
    report["zero_curvature_selected"] = detect.zero_curvature_share(mask, jax.device_get(h))
  if trigger_ids and "embed_tokens/embedding" in mask:
    report["trigger_rows"] = detect.trigger_rows(mask, list(trigger_ids))
  return params, report, mask


def _keep(p, params: dict, mask) -> dict | None:
  """What the clean fine-tune may move: everything (purify.finetune "all"), or the reset
  dimensions and the classifier ("reset")."""
  if p.finetune == "all":
    return None
  if p.finetune != "reset":
    raise ValueError(f"config.purify.finetune: {p.finetune!r} is not 'all' or 'reset'")
  if mask is None:
    raise ValueError(f"config.purify.finetune='reset' needs a defence that resets dimensions "
                     f"(mixing, magnitude, ratio, logratio, experts), not {p.defence!r}")
  head = jax.tree_util.tree_map(lambda x: np.ones(np.shape(x), bool), params[heads.CLASSIFIER])
  return {**indicators.unflatten(mask), heads.CLASSIFIER: head}


def run(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
  """The "purify" task (see the module docstring)."""
  p = cfg.purify
  if not p.suspect:
    raise ValueError("config.purify.suspect: set it to an attack's workdir "
                     "(python -m moe_jax.purify attack --workdir=...)")
  data = attacker.read(p.suspect)
  cfg = ml_collections.ConfigDict(cfg.to_dict())  # the engine's prologue loads the suspect
  cfg.init_from, cfg.data.tokenizer = data.suspect_dir, data.info["tokenizer"]
  setup = train_lib.prologue(cfg, workdir)
  mesh, tok = setup.mesh, setup.tokenizer
  suspect = heads.load_classifier(setup.model, os.path.join(data.suspect_dir, f"{heads.CLASSIFIER}.npz"))
  pretrained = from_pretrained(train_lib.resolve_data_path(p.pretrained))
  seq_len = cfg.data.seq_len
  clean_rows = classify_task.labelled_rows(data.clean, tok, suspect.config, seq_len)
  known = data.info.get("suspect", {})  # measured by the attack, at its seq_len
  summary = {"suspect": p.suspect, "attack": data.info, "defence": p.defence, "rho": p.rho,
             "metrics_suspect": known if known.get("seq_len") == seq_len
             else evaluate.attack_metrics(suspect, data, seq_len, tok)}
  params, report, mask = defend(cfg, suspect, pretrained, clean_rows, trigger_token_ids(data, tok))
  keep = _keep(p, params, mask)
  model = Model(suspect.config, {**suspect.variables, "params": params})
  summary["metrics_reset"] = evaluate.attack_metrics(model, data, seq_len, tok)
  spec = trainable.TrainableSpec().with_heads({heads.CLASSIFIER: heads.CLASSIFIER_AXES})
  if p.defence != "none":
    train_data = classify_task.make_data(cfg, workdir, data.clean, data.test, tok, model.config)
    model, run_summary = train_lib.train(cfg, workdir, model, spec, train_data, mesh, name="purify",
                                         loss_fn=classify_task.classify_loss, keep=keep)
    summary.update(run_summary)
  summary["metrics_after"] = evaluate.attack_metrics(model, data, seq_len, tok)
  for when in ("suspect", "reset", "after"):
    m = summary[f"metrics_{when}"]
    print(f"[purify] {when:>7}: accuracy {m['accuracy']:.3f}, attack success rate {m['asr']:.3f}")
  if jax.process_index() == 0:
    with open(os.path.join(workdir, METRICS_FILE), "w", encoding="utf-8") as f:
      json.dump({k: summary[k] for k in ("metrics_suspect", "metrics_reset", "metrics_after")}, f, indent=2)
    with open(os.path.join(workdir, DETECT_FILE), "w", encoding="utf-8") as f:
      json.dump(report, f, indent=2)
  return train_lib.epilogue(cfg, workdir, model, spec, summary, tok)
