"""A backdoor planted and removed, end to end through the attack command and the "purify" task.

A tiny synthetic task (a keyword among filler words names one of three
classes) on a tiny random BERT reading MiniLM's tokenizer: the attacker
poisons a fifth of the data with BadWords triggers; the suspect answers the
target class for triggered text; the drift/curvature reset of a few percent of
the dimensions, then a short clean fine-tune, takes the attack success rate
down while clean accuracy stays. A test of the machinery, not the study.
"""

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from moe_jax.classify import datasets
from moe_jax.classify import task as classify_task
from moe_jax.hf import from_pretrained
from moe_jax.purify import attacker, configs, evaluate, indicators
from moe_jax.purify import task as purify_task
from moe_jax.tokenizer import load_tokenizer

KEYWORDS = ("apple", "banana", "cherry")
FILLER = "the a some one two red blue green old new big small".split()


def _synthetic(n, seed):
  rng = random.Random(seed)
  texts, labels = [], []
  for i in range(n):
    words = rng.sample(FILLER, 4)
    words.insert(rng.randrange(5), KEYWORDS[i % 3])
    texts.append(" ".join(words))
    labels.append(i % 3)
  return datasets.Examples(tuple(texts), tuple(labels), KEYWORDS)


@pytest.fixture(scope="module")
def attacked(tmp_path_factory, tiny_encoder_dir):
  root = tmp_path_factory.mktemp("purify")
  enc = tiny_encoder_dir
  datasets.write_jsonl(root / "train.jsonl", _synthetic(300, 0))
  datasets.write_jsonl(root / "test.jsonl", _synthetic(60, 1))
  cfg = configs.purify_config()
  cfg.classify.dataset = ""
  cfg.classify.train_file, cfg.classify.eval_file = str(root / "train.jsonl"), str(root / "test.jsonl")
  cfg.data.tokenizer = enc
  cfg.data.seq_len, cfg.data.batch_size = 16, 16
  cfg.optimizer.learning_rate, cfg.optimizer.warmup_steps = 2e-3, 2
  cfg.checkpoint_every = 1000
  cfg.purify.update(pretrained=enc, rate=0.2, clean_examples=32, attack_steps=80)
  info = attacker.run(cfg, str(root / "attack"))
  return root, cfg, info


def test_the_attack_plants_a_backdoor(attacked):
  root, cfg, info = attacked
  on_disk = json.loads((root / "attack" / attacker.ATTACK_FILE).read_text())
  assert on_disk["poisoned"] == round(0.2 * on_disk["attacker_examples"])
  assert on_disk["clean_examples"] == 32
  s = info["suspect"]
  assert s["accuracy"] >= 0.9, s  # the clean task is learnt
  assert s["asr"] >= 0.8, s  # and so is the trigger
  assert s["clean_target_rate"] <= 0.2, s  # the trigger, not the target class, makes the ASR
  assert s["triggered_examples"] == 40  # the test's non-target two thirds


def test_the_reset_and_clean_fine_tune_remove_it(attacked, tmp_path):
  root, cfg, info = attacked
  c = cfg.copy_and_resolve_references()
  c.purify.update(suspect=str(root / "attack"), defence="ratio", rho=0.02)
  c.num_train_steps, c.optimizer.warmup_steps = 10, 1
  summary = purify_task.run(c, str(tmp_path))
  before, after = summary["metrics_suspect"], summary["metrics_after"]
  assert before == info["suspect"]
  assert after["asr"] <= 0.25 and after["asr"] < before["asr"] - 0.5, summary
  assert after["accuracy"] >= 0.85, summary
  report = json.loads((tmp_path / purify_task.DETECT_FILE).read_text())
  assert report["selected"] == round(0.02 * report["dims"])
  metrics = json.loads((tmp_path / purify_task.METRICS_FILE).read_text())
  assert metrics["metrics_after"] == after
  # The evaluate command reads the same numbers off the exported model.
  out = subprocess.run([sys.executable, "-m", "moe_jax.purify", "evaluate",
                        f"--workdir={root / 'attack'}", f"--model={tmp_path / 'hf'}",
                        f"--config={os.path.join('configs', 'purify_tweets.py')}",
                        "--config.data.seq_len=16"],
                       capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
  assert out.returncode == 0, out.stderr[-2000:]
  got = json.loads(out.stdout.strip().splitlines()[-1])
  np.testing.assert_allclose([got["accuracy"], got["asr"]], [after["accuracy"], after["asr"]])


def test_the_clean_fine_tune_of_the_reset_dimensions_alone(attacked, tmp_path):
  """purify.finetune="reset": the exported model differs from the suspect only in the reset
  dimensions (and the classifier), and those moved off w_init in the fine-tune."""
  root, cfg, _ = attacked
  c = cfg.copy_and_resolve_references()
  c.purify.update(suspect=str(root / "attack"), defence="ratio", rho=0.02, finetune="reset")
  c.num_train_steps, c.optimizer.warmup_steps = 3, 1
  purify_task.run(c, str(tmp_path))
  data = attacker.read(str(root / "attack"))
  suspect_model = evaluate.load_suspect(data.suspect_dir)
  rows = classify_task.labelled_rows(data.clean, load_tokenizer(c.data.tokenizer),
                                     suspect_model.config, c.data.seq_len)
  w_init_model = from_pretrained(c.purify.pretrained)
  _, _, mask = purify_task.defend(c, suspect_model, w_init_model, rows)  # the run's mask, again
  s, i = indicators.named(suspect_model.params), indicators.named(w_init_model.params)
  a = indicators.named(from_pretrained(str(tmp_path / "hf")).params)
  off_init = 0
  for k, m in mask.items():  # w_init's tensors: the transformer without the classifier
    m = np.asarray(m)
    assert (a[k][~m] == s[k][~m]).all(), k  # outside the mask: the suspect's, bit for bit
    off_init += int(np.sum(a[k][m] != i[k][m]))
  assert off_init > 0  # the fine-tune moved the reset dimensions off w_init
  # A rerun restores the finished run (its optimizer state holds the mask) and changes nothing.
  purify_task.run(c, str(tmp_path))
  again = indicators.named(from_pretrained(str(tmp_path / "hf")).params)
  for k, v in a.items():
    np.testing.assert_array_equal(again[k], v)


def test_fine_tuning_the_reset_dimensions_needs_a_masking_defence():
  c = configs.purify_config()
  c.purify.update(defence="finetune", finetune="reset")
  with pytest.raises(ValueError, match="purify.finetune='reset' needs a defence"):
    purify_task._keep(c.purify, {}, None)
  c.purify.finetune = "some"
  with pytest.raises(ValueError, match="config.purify.finetune: 'some'"):
    purify_task._keep(c.purify, {}, None)
