"""The name map between Hugging Face checkpoints and our parameter tree (`moe_jax.hf` reads and
writes with it).

`tensor_map(config)` lists every non-expert tensor of a checkpoint as an
`Entry`: its Hugging Face name, the variable path in our tree and how the two
layouts relate. Decoders use DeepSeek's / Llama's names (`model.layers.{i}...`);
encoders `BertModel`'s (`encoder.layer.{i}.attention.self.query`, ...) or
`MPNetModel`'s (`encoder.layer.{i}.attention.attn.q`, ..., and the relative
position bias `encoder.relative_attention_bias`). HF `Linear` weights are
[out, in]; our kernels are [in..., out...] with heads split out, so a weight
converts as `W.T.reshape(kernel_shape)` (`to_ours`, `to_hf`).

Routed experts are not in the map: they are stacked [E, D, F] here and named per
expert there (`ROUTED`); an MoE encoder's FFN tensors take the decoders' names
under its layer (`encoder.layer.{i}.mlp.gate`, `.mlp.shared_experts.*`,
`.mlp.experts.{e}.*`).
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

import numpy as np

from moe_jax.config import ModelConfig
from moe_jax.layers import layer_name

PROJ = ("gate_proj", "up_proj", "down_proj")


class Entry(NamedTuple):
  hf: str  # Hugging Face tensor name
  path: tuple[str, ...]  # ("params" | "buffers", module, ..., leaf)
  n_in: int  # kernel: how many leading dims of ours are the HF input dim; 0: copied as is;
  # -1: a bias, flat in HF ([N*H]) and shaped like the kernel's outputs here ([N, H])


def _linear(hf: str, path: tuple, n_in: int = 1, bias: bool = False) -> list[Entry]:
  entries = [Entry(f"{hf}.weight", ("params",) + path + ("kernel",), n_in)]
  if bias:
    entries.append(Entry(f"{hf}.bias", ("params",) + path + ("bias",), -1))
  return entries


def _norm(hf: str, path: tuple) -> Entry:
  return Entry(f"{hf}.weight", ("params",) + path + ("scale",), 0)


def _mlp(hf: str, path: tuple) -> list[Entry]:
  return [e for p in PROJ for e in _linear(f"{hf}.{p}", path + (p,))]


ROUTED = "{layers}.{layer}.mlp.experts.{expert}.{proj}.weight"  # per-expert HF names
_ROUTED_RE = re.compile(r"(?:model\.layers|encoder\.layer)\.(\d+)\.mlp\.experts\.(\d+)\."
                        r"(gate_proj|up_proj|down_proj)\.weight$")
_SHARED_RE = re.compile(r"(?:model\.layers|encoder\.layer)\.\d+\.mlp\.shared_experts\.")


def layers_prefix(c: ModelConfig) -> str:
  """The prefix of the checkpoint's layer names: decoders' `model.layers`, encoders' `encoder.layer`."""
  return "encoder.layer" if c.is_encoder else "model.layers"


def routed_expert(name: str) -> tuple[int, int, str] | None:
  """(layer, expert, projection) of a per-expert routed-expert tensor name, else None."""
  m = _ROUTED_RE.match(name)
  return None if m is None else (int(m.group(1)), int(m.group(2)), m.group(3))


def is_shared_expert(name: str) -> bool:
  """Whether a Hugging Face tensor name belongs to a layer's shared experts."""
  return _SHARED_RE.match(name) is not None


def _moe_ffn(c: ModelConfig, hf: str, ours: tuple) -> list[Entry]:
  """An MoE layer's router and shared experts (its routed experts are read apart)."""
  entries = _linear(f"{hf}.gate", ours + ("gate",))
  if c.topk_method == "noaux_tc":
    entries.append(Entry(f"{hf}.gate.e_score_correction_bias",
                         ("buffers",) + ours + ("e_score_correction_bias",), 0))
  if c.n_shared_experts:
    entries += _mlp(f"{hf}.shared_experts", ours + ("shared_experts",))
  return entries


def tensor_map(c: ModelConfig) -> list[Entry]:
  """Every non-expert tensor of the checkpoint, with where it lives in our tree."""
  if c.is_encoder:
    return _encoder_tensor_map(c)
  entries = [Entry("model.embed_tokens.weight", ("params", "embed_tokens", "embedding"), 0),
             _norm("model.norm", ("norm",))]
  if not c.tie_word_embeddings:
    entries += _linear("lm_head", ("lm_head",))
  bias = c.attention_bias
  for i in range(c.num_hidden_layers):
    hf, ours = f"model.layers.{i}", (layer_name(i),)
    entries += [_norm(f"{hf}.input_layernorm", ours + ("input_layernorm",)),
                _norm(f"{hf}.post_attention_layernorm", ours + ("post_attention_layernorm",))]
    a, at = f"{hf}.self_attn", ours + ("self_attn",)
    if c.use_mla:
      if c.q_lora_rank is None:
        entries += _linear(f"{a}.q_proj", at + ("q_proj",))
      else:
        entries += _linear(f"{a}.q_a_proj", at + ("q_a_proj",), bias=bias)
        entries += [_norm(f"{a}.q_a_layernorm", at + ("q_a_layernorm",))]
        entries += _linear(f"{a}.q_b_proj", at + ("q_b_proj",))
      entries += _linear(f"{a}.kv_a_proj_with_mqa", at + ("kv_a_proj_with_mqa",), bias=bias)
      entries += [_norm(f"{a}.kv_a_layernorm", at + ("kv_a_layernorm",))]
      entries += _linear(f"{a}.kv_b_proj", at + ("kv_b_proj",))
      entries += _linear(f"{a}.o_proj", at + ("o_proj",), n_in=2, bias=bias)
    else:
      for p in ("q_proj", "k_proj", "v_proj"):
        entries += _linear(f"{a}.{p}", at + (p,), bias=c.qkv_bias)
      entries += _linear(f"{a}.o_proj", at + ("o_proj",), n_in=2, bias=c.o_bias)
    m, mt = f"{hf}.mlp", ours + ("mlp",)
    if not c.is_moe_layer(i):
      entries += _mlp(m, mt)
      continue
    entries += _moe_ffn(c, m, mt)
  return entries


def _layer_norm(hf: str, path: tuple) -> list[Entry]:
  return [_norm(hf, path), Entry(f"{hf}.bias", ("params",) + path + ("bias",), 0)]


# An encoder layer's attention tensors: (HF q, k, v, o, post-attention LayerNorm) per family.
_ATTENTION = {"bert": ("attention.self.query", "attention.self.key", "attention.self.value",
                       "attention.output.dense", "attention.output.LayerNorm"),
              "mpnet": ("attention.attn.q", "attention.attn.k", "attention.attn.v",
                        "attention.attn.o", "attention.LayerNorm")}


def _encoder_tensor_map(c: ModelConfig) -> list[Entry]:
  """`BertModel`'s or `MPNetModel`'s tensors (`moe_jax.encoder`); an MoE layer's FFN under
  `encoder.layer.{i}.mlp`."""
  emb = "embeddings"
  entries = [Entry(f"{emb}.word_embeddings.weight", ("params", "embed_tokens", "embedding"), 0),
             Entry(f"{emb}.position_embeddings.weight", ("params", "embed_positions", "embedding"), 0)]
  if c.type_vocab_size:
    entries.append(Entry(f"{emb}.token_type_embeddings.weight", ("params", "embed_types", "embedding"), 0))
  entries += _layer_norm(f"{emb}.LayerNorm", ("embed_norm",))
  if c.relative_attention_num_buckets:
    entries.append(Entry("encoder.relative_attention_bias.weight",
                         ("params", "relative_attention_bias", "embedding"), 0))
  entries += _linear("pooler.dense", ("pooler",), bias=True)
  *qkv, o, attn_norm = _ATTENTION[c.model_type]
  for i in range(c.num_hidden_layers):
    hf, ours = f"encoder.layer.{i}", (layer_name(i),)
    for theirs, p in zip(qkv, ("q_proj", "k_proj", "v_proj")):
      entries += _linear(f"{hf}.{theirs}", ours + ("self_attn", p), bias=True)
    entries += _linear(f"{hf}.{o}", ours + ("self_attn", "o_proj"), n_in=2, bias=True)
    entries += _layer_norm(f"{hf}.{attn_norm}", ours + ("post_attention_layernorm",))
    entries += _layer_norm(f"{hf}.output.LayerNorm", ours + ("post_mlp_layernorm",))
    if c.is_moe_layer(i):
      entries += _moe_ffn(c, f"{hf}.mlp", ours + ("mlp",))
    else:
      entries += _linear(f"{hf}.intermediate.dense", ours + ("mlp", "up_proj"), bias=True)
      entries += _linear(f"{hf}.output.dense", ours + ("mlp", "down_proj"), bias=True)
  return entries


def to_ours(w: np.ndarray, shape: tuple, n_in: int) -> np.ndarray:
  """An HF tensor in our layout (`shape`): Linear weights transposed, heads split out."""
  if n_in <= 0:
    return w.reshape(shape)
  return w.T.reshape(shape)


def to_hf(x: np.ndarray, n_in: int) -> np.ndarray:
  """One of our variables in the HF layout."""
  if n_in == 0:
    return x
  if n_in < 0:
    return x.reshape(-1)
  return x.reshape(math.prod(x.shape[:n_in]), -1).T
