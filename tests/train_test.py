"""The trainer end to end on the shipped samples: loss falls, and the export loads in transformers."""

import importlib.util
import json

import numpy as np
import pytest
import torch

from moe_jax import hf, train_lib


def load_config(repo_root, name):
  spec = importlib.util.spec_from_file_location(name, repo_root / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_quickstart_trains_and_exports(repo_root, tmp_path):
  cfg = load_config(repo_root, "quickstart")
  cfg.num_train_steps = 12
  cfg.log_every = 4
  cfg.optimizer.warmup_steps = 2
  cfg.data.max_examples = 120
  cfg.model.num_hidden_layers = 2
  cfg.sample_tokens = 4
  summary = train_lib.train_and_evaluate(cfg, str(tmp_path))
  assert summary["eval_loss_after"] < summary["eval_loss_before"] - 0.5
  logged = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in logged] == [4, 8, 12]

  # The exported checkpoint is what transformers computes.
  from transformers import DeepseekV2ForCausalLM
  model = hf.from_pretrained(summary["hf_dir"])
  ref = DeepseekV2ForCausalLM.from_pretrained(summary["hf_dir"]).eval()
  ids = np.random.default_rng(0).integers(0, 259, (2, 24))
  with torch.no_grad():
    want = ref(torch.as_tensor(ids)).logits.numpy()
  got = np.asarray(model(ids))
  assert np.abs(got - want).max() / np.abs(want).max() < 1e-5


def test_bad_preset_is_named(repo_root, tmp_path):
  cfg = load_config(repo_root, "quickstart")
  cfg.model.preset = "deepseek-v9"
  with pytest.raises(ValueError, match="config.model.preset"):
    train_lib.train_and_evaluate(cfg, str(tmp_path))
