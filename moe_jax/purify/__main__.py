"""Command line: make an attack, find and reset the poisoned dimensions, measure ACC / ASR.

    python -m moe_jax.purify attack --config=configs/purify_tweets.py --workdir=ATTACK
    python -m moe_jax.purify detect --config=configs/purify_tweets.py --workdir=DIR \\
        --config.purify.suspect=ATTACK [--config.purify.defence=ratio]
    python -m moe_jax.purify purify --config=configs/purify_tweets.py --workdir=DIR \\
        --config.purify.suspect=ATTACK
    python -m moe_jax.purify evaluate --workdir=ATTACK [--model=DIR/hf]

`attack` writes the poisoned data and trains the suspect (`moe_jax.purify.attacker`).
`detect` scores every dimension and prints where the top rho sit, by layer and
module (DIR/detect.json). `purify` writes the reset model, not yet fine-tuned,
to DIR/hf; train.py with the same config does the reset and the clean
fine-tune in one run. `evaluate` prints the clean accuracy and attack success
rate of a model (default: the suspect) on the attack's test sets.
"""

from __future__ import annotations

import json
import os

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
COMMANDS = ("attack", "detect", "purify", "evaluate")


def _define_flags() -> None:
  """The flags, defined when run as a command (importing this module defines none)."""
  flags.DEFINE_string("workdir", None, "attack/detect/purify: where to write; evaluate: the "
                      "attack's workdir.")
  config_flags.DEFINE_config_file("config", None, "the purify config (configs/purify_*.py).")
  flags.DEFINE_string("model", None, "evaluate: a Hugging Face directory with classifier.npz "
                      "(default: the attack's suspect).")
  flags.mark_flags_as_required(["workdir"])


def _defend(write_model: bool) -> None:
  import jax
  import numpy as np

  from moe_jax import heads
  from moe_jax.classify import task as classify_task
  from moe_jax.hf import from_pretrained, save_pretrained
  from moe_jax.model import Model
  from moe_jax.packages import resolve
  from moe_jax.purify import attacker, detect, evaluate, task
  from moe_jax.tokenizer import load_tokenizer

  cfg = FLAGS.config
  data = attacker.read(cfg.purify.suspect)
  tok = load_tokenizer(resolve(data.info["tokenizer"]))
  suspect = evaluate.load_suspect(data.suspect_dir)
  rows = classify_task.labelled_rows(data.clean, tok, suspect.config, cfg.data.seq_len)
  params, report, _ = task.defend(cfg, suspect, from_pretrained(resolve(cfg.purify.pretrained)), rows,
                                  task.trigger_token_ids(data, tok))
  os.makedirs(FLAGS.workdir, exist_ok=True)
  if "distribution" in report:
    print(detect.table(report["distribution"]))
  if "trigger_rows" in report:
    t = report["trigger_rows"]
    print(f"trigger tokens {t['trigger_tokens']}: {100 * t['trigger_rows_selected']:.1f}% of their "
          f"embedding dimensions selected, {100 * t['all_rows_selected']:.1f}% of all rows'")
  with open(os.path.join(FLAGS.workdir, task.DETECT_FILE), "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
  if write_model:
    hf_dir = os.path.join(FLAGS.workdir, "hf")
    model = Model(suspect.config, {**suspect.variables, "params": params})
    save_pretrained(model, hf_dir)
    np.savez(os.path.join(hf_dir, f"{heads.CLASSIFIER}.npz"), **jax.device_get(params[heads.CLASSIFIER]))
    m = evaluate.attack_metrics(model, data, cfg.data.seq_len, tok)
    print(f"wrote {hf_dir}: accuracy {m['accuracy']:.3f}, attack success rate {m['asr']:.3f} "
          "(before the clean fine-tune)")


def _evaluate() -> None:
  from moe_jax.purify import attacker, evaluate

  data = attacker.read(FLAGS.workdir)
  model = evaluate.load_suspect(FLAGS.model or data.suspect_dir)
  seq_len = FLAGS.config.data.seq_len if FLAGS.config else 48
  m = evaluate.attack_metrics(model, data, seq_len)
  print(json.dumps({"model": FLAGS.model or data.suspect_dir, **m}))


def main(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"usage: python -m moe_jax.purify {{{','.join(COMMANDS)}}} --workdir=DIR ...")
  command = argv[1]
  if command != "evaluate" and FLAGS.config is None:
    raise app.UsageError(f"{command} needs --config (configs/purify_*.py)")
  if command == "attack":
    from moe_jax.purify import attacker

    attacker.run(FLAGS.config, FLAGS.workdir)
  elif command == "evaluate":
    _evaluate()
  else:
    _defend(write_model=command == "purify")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
