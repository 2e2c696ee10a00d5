"""ESFT adapters: only the trained tensors, saved apart from the base model and applied onto it.

An adapter directory holds `adapter.safetensors` with Hugging Face tensor names
(`model.layers.{l}.mlp.experts.{e}.gate_proj.weight`, and the shared experts and
non-expert modules when those were trained) plus the official `expert_cfg.json`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile

import jax
import numpy as np

from moe_jax import hf
from moe_jax.esft.partition import TrainableSpec
from moe_jax.esft.selection import read_expert_config
from moe_jax.model import Model

_EXPERT = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_SHARED = re.compile(r"model\.layers\.\d+\.mlp\.shared_experts\.")


def _trained(name: str, spec: TrainableSpec) -> bool:
  m = _EXPERT.match(name)
  if m:
    return int(m.group(2)) in spec.selected.get(int(m.group(1)), ())
  if _SHARED.match(name):
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
  ckpt = hf._Checkpoint(path)
  expected = {n for n, _ in hf.state_dict(base) if _trained(n, spec)}
  missing = sorted(expected - ckpt.keys())
  if missing:
    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    raise hf.CheckpointError(f"{path}: expert_cfg.json trains {missing[:3]}{more}, which the "
                             f"adapter lacks")
  entries = {e.hf: e for e in hf._tensor_map(c)}
  variables = jax.tree_util.tree_map(np.array, base.variables)  # a writable copy
  for name in sorted(ckpt.keys()):
    if not _trained(name, spec):
      raise hf.CheckpointError(f"{path}: tensor {name!r} is not trained under expert_cfg.json")
    w = ckpt.get(name)
    m = _EXPERT.match(name)
    if m:
      layer, expert, proj = int(m.group(1)), int(m.group(2)), m.group(3)
      target = variables["params"][f"layers_{layer}"]["mlp"]["experts"][proj]
      hf._check_shape(name, w.shape, target.shape[:0:-1])
      target[expert] = w.T
    elif name in entries:
      e = entries[name]
      leaf = hf._get(variables, e.path)
      hf._check_shape(name, w.shape, hf._to_hf(leaf, e.n_in).shape)
      hf._set(variables, e.path, hf._to_ours(np.asarray(w), leaf.shape, e.n_in).astype(leaf.dtype))
    else:
      raise hf.CheckpointError(f"{path}: tensor {name!r} is not part of this model")
  return Model(c, jax.tree_util.tree_map(jax.numpy.asarray, variables))
