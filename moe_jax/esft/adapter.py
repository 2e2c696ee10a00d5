"""ESFT adapters: only the trained tensors, saved apart from the base model and applied onto it.

An adapter directory holds `adapter.safetensors` with Hugging Face tensor names
(`model.layers.{l}.mlp.experts.{e}.gate_proj.weight`, and the shared experts and
non-expert modules when those were trained) plus the official `expert_cfg.json`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np

from moe_jax import hf
from moe_jax.model import Model
from moe_jax.trainable import TrainableSpec, read_expert_config


def _trained(name: str, spec: TrainableSpec) -> bool:
  expert = hf.routed_expert(name)
  if expert is not None:
    return expert[1] in spec.selected.get(expert[0], ())
  if hf.is_shared_expert(name):
    return spec.shared_experts
  return spec.non_expert_modules


def save_adapter(model: Model, spec: TrainableSpec, path: str) -> int:
  """Writes the tensors `spec` trains; returns the number of bytes written."""
  from safetensors.numpy import save_file

  if spec.mode != "esft":
    raise ValueError("an adapter holds an ESFT run's trained tensors; for FFT use save_pretrained")
  tensors = {n: np.ascontiguousarray(w) for n, w in hf.state_dict(model) if _trained(n, spec)}
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".moe_jax_adapter_", dir=parent)
  try:
    save_file(tensors, os.path.join(tmp, "adapter.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(tmp, "expert_cfg.json"), "w") as f:
      json.dump(spec.to_expert_config(), f)
    os.makedirs(path, exist_ok=True)
    for name in ("adapter.safetensors", "expert_cfg.json"):
      os.replace(os.path.join(tmp, name), os.path.join(path, name))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return os.path.getsize(os.path.join(path, "adapter.safetensors"))


def load_adapter(base: Model, path: str) -> Model:
  """The base model with the adapter's tensors in place (checked against its expert config)."""
  c = base.config
  cfg = read_expert_config(os.path.join(path, "expert_cfg.json"), c.moe_layers, c.n_routed_experts)
  spec = TrainableSpec.from_expert_config(cfg, c)
  tensors = hf.SafetensorsDir(path)
  expected = {n for n, _ in hf.state_dict(base) if _trained(n, spec)}
  missing = sorted(expected - tensors.keys())
  if missing:
    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    raise hf.CheckpointError(f"{path}: expert_cfg.json trains {missing[:3]}{more}, which the "
                             f"adapter lacks")
  names = sorted(tensors.keys())
  untrained = [n for n in names if not _trained(n, spec)]
  if untrained:
    raise hf.CheckpointError(f"{path}: tensor {untrained[0]!r} is not trained under expert_cfg.json")
  return hf.put_tensors(base, ((n, tensors.get(n)) for n in names), source=path)
