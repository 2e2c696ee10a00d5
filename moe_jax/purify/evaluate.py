"""Clean accuracy and attack success rate of a classifier, and loading the suspect.

ACC is measured on the clean held-out set, ASR on its non-target examples with
the trigger inserted (`moe_jax.purify.attacks.triggered`): the share predicted
as the attack's target. For the bias attack the same number is the bias flip
rate.
"""

from __future__ import annotations

import os

import numpy as np

from moe_jax import heads
from moe_jax.classify.task import encode, predict_probs
from moe_jax.hf import from_pretrained
from moe_jax.model import Model
from moe_jax.packages import resolve
from moe_jax.purify import attacks
from moe_jax.tokenizer import load_tokenizer


def load_suspect(hf_dir: str) -> Model:
  """A finished classify run's export (hf/ with classifier.npz) as a model with its head."""
  if not os.path.exists(os.path.join(hf_dir, "config.json")):
    raise FileNotFoundError(f"{hf_dir}: no config.json (the suspect is a finished run's hf/)")
  return heads.load_classifier(from_pretrained(hf_dir), os.path.join(hf_dir, f"{heads.CLASSIFIER}.npz"))


def predictions(model: Model, tokenizer, texts, seq_len: int) -> np.ndarray:
  """[N] predicted label ids."""
  if not len(texts):
    return np.zeros((0,), np.int64)
  return predict_probs(model, encode(texts, tokenizer, model.config, seq_len)).argmax(-1)


def attack_metrics(model: Model, data, seq_len: int, tokenizer=None) -> dict:
  """{"accuracy", "asr", "clean_target_rate", "test_examples", "triggered_examples"} of `model`
  on an attack's data (`moe_jax.purify.attacker.AttackData`); the tokenizer defaults to the
  attack's. clean_target_rate is ASR's floor: the share of the same non-target examples,
  without the trigger, predicted as the target (a model that always answers the target has
  ASR 1 and no backdoor)."""
  tok = tokenizer or load_tokenizer(resolve(data.info["tokenizer"]))
  pred = predictions(model, tok, data.test.texts, seq_len)
  trig = predictions(model, tok, data.triggered.texts, seq_len)
  labels = np.asarray(data.test.labels)
  return {"accuracy": float(np.mean(pred == labels)),
          "asr": attacks.attack_success_rate(trig, data.attack),
          "clean_target_rate": attacks.attack_success_rate(pred[labels != data.attack.target],
                                                           data.attack),
          "test_examples": len(pred), "triggered_examples": len(trig), "seq_len": seq_len}
