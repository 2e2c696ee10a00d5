"""Helpers the Hugging Face parity tests share."""

import moe_jax


def checkpoint_cache(tmp_path_factory, build):
  """name -> (torch model, its saved directory, moe_jax's load of it), each built once.

  build(name) returns a transformers model; it is written with save_pretrained
  and read back with moe_jax.from_pretrained.
  """
  cache = {}

  def get(name):
    if name not in cache:
      ref = build(name)
      path = tmp_path_factory.mktemp(name)
      ref.save_pretrained(path)
      cache[name] = (ref, path, moe_jax.from_pretrained(path))
    return cache[name]

  return get



def randomize_torch(model, seed: int = 0):
  """A transformers model's weights, redrawn large enough that every block changes the output:
  norms near 1, biases and embeddings (MPNet's relative-position table too) of unit scale,
  matrices at 1.5 / sqrt(fan-in). Returns the model."""
  import torch

  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=g)
      if "LayerNorm.weight" in name or "norm.weight" in name:
        p.copy_(1.0 + 0.3 * noise)
      elif p.ndim == 1:
        p.copy_(0.3 * noise)
      elif "embeddings" in name or "embed_tokens" in name or "relative_attention_bias" in name:
        p.copy_(noise)
      else:
        p.copy_(1.5 * noise / p.shape[1] ** 0.5)
  return model


def assert_missing_tensor_is_named(path, tmp_path, gone: str) -> None:
  """A copy of the checkpoint at `path` without tensor `gone` fails to load, naming it."""
  import pytest
  from safetensors.numpy import load_file, save_file

  from moe_jax import hf

  tensors = load_file(str(path / "model.safetensors"))
  del tensors[gone]
  (tmp_path / "missing").mkdir()
  save_file(tensors, str(tmp_path / "missing" / "model.safetensors"))
  (tmp_path / "missing" / "config.json").write_text((path / "config.json").read_text())
  with pytest.raises(hf.CheckpointError, match=gone.replace(".", r"\.")):
    moe_jax.from_pretrained(tmp_path / "missing")
