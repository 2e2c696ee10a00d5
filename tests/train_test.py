"""The trainer end to end on the shipped samples: the quickstart pipeline, its exports, every config."""

import importlib.util
import json
import os

import numpy as np
import pytest
import torch

from moe_jax import esft, hf, tasks, train_lib

CONFIGS = ("quickstart", "fft", "esft_token", "esft_gate")


def load_config(repo_root, name):
  spec = importlib.util.spec_from_file_location(name, repo_root / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def small(cfg, steps=8):
  cfg.num_train_steps = steps
  cfg.log_every = 2
  cfg.eval_every = 0
  cfg.checkpoint_every = 4
  cfg.data.max_examples = 160
  cfg.data.batch_size = 4
  cfg.data.seq_len = 128
  cfg.model.num_hidden_layers = 2
  cfg.esft.n_score_tokens = 2048
  cfg.sample_prompt = ""
  return cfg


@pytest.mark.parametrize("name", CONFIGS)
def test_configs_build(repo_root, name):
  cfg = load_config(repo_root, name)
  mcfg = train_lib.build_model_config(cfg)
  assert mcfg.moe_layers
  assert cfg.train_mode in ("fft", "esft")


def test_quickstart_pipeline(repo_root, tmp_path):
  cfg = small(load_config(repo_root, "quickstart"))
  cfg.pretrain.num_train_steps = 16
  cfg.optimizer.learning_rate = 3e-3
  summary = tasks.train_and_evaluate(cfg, str(tmp_path))

  # Pretraining learned something, and ESFT trained only part of the model.
  pre = [json.loads(l) for l in (tmp_path / "pretrain" / "metrics.jsonl").read_text().splitlines()]
  evals = [r["eval_loss"] for r in pre if "eval_loss" in r]
  assert evals[-1] < evals[0] - 0.5
  assert 0 < summary["trainable_fraction"] < 0.5
  assert summary["eval_loss_after"] < summary["eval_loss_before"]
  assert os.path.getsize(summary["heatmap"]) > 1000
  assert (tmp_path / "tensorboard").is_dir() and list((tmp_path / "tensorboard").iterdir())

  # The exported checkpoint is what transformers computes, and the adapter applied to the
  # pretrained base gives the same model.
  from transformers import DeepseekV2ForCausalLM
  model = hf.from_pretrained(summary["hf_dir"])
  ref = DeepseekV2ForCausalLM.from_pretrained(summary["hf_dir"]).eval()
  ids = np.random.default_rng(0).integers(0, 259, (2, 24))
  with torch.no_grad():
    want = ref(torch.as_tensor(ids)).logits.numpy()
  got = np.asarray(model(ids))
  assert np.abs(got - want).max() / np.abs(want).max() < 1e-5
  base = hf.from_pretrained(tmp_path / "pretrain" / "hf")
  adapted = esft.load_adapter(base, summary["adapter_dir"])
  np.testing.assert_array_equal(np.asarray(adapted(ids)), got)


def test_bad_preset_is_named(repo_root, tmp_path):
  cfg = load_config(repo_root, "quickstart")
  cfg.model.preset = "deepseek-v9"
  with pytest.raises(ValueError, match="config.model.preset"):
    tasks.train_and_evaluate(cfg, str(tmp_path))
