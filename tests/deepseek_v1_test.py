"""DeepSeekMoE 16B-style checkpoints (`model_type: "deepseek"`) and the config presets.

transformers has no class for DeepSeekMoE 16B (it ships as remote code), so the
reference is assembled here in torch from transformers' Llama pieces, which the
16B code was derived from: `LlamaAttention` (MHA or GQA, rotate_half RoPE on
the full head), `LlamaRMSNorm`, `LlamaRotaryEmbedding` and `LlamaMLP`, with the
DeepSeekMoE block written as a per-token loop (fp32 softmax over the routed
experts, `torch.topk`, weights not renormalised, plus the shared experts as one
MLP of width moe_intermediate_size * n_shared_experts). Its weights are written
under the Hugging Face names with a config.json like deepseek-moe-16b-base's,
then read with `moe_jax.from_pretrained`.

Checks: fp32 logits match (max error <= 1e-5 of the largest logit) for MHA with
moe_layer_freq=2 (layer idx is MoE iff idx >= first_k_dense_replace and
idx % moe_layer_freq == 0) and for GQA; `save_pretrained` writes back the
same tensors and config; every preset in `moe_jax.config.PRESETS` builds
abstractly, with parameter counts matching the spec's arithmetic (deepseekmoe.md A.7).
"""

import dataclasses
import json
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import linen as nn
from safetensors.numpy import load_file
from safetensors.torch import save_file
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import (LlamaAttention, LlamaMLP, LlamaRMSNorm,
                                                      LlamaRotaryEmbedding)

import moe_jax
from moe_jax import config as config_lib
from moe_jax.model import Transformer

# Torch reference -------------------------------------------------------------


def _mlp(hidden, width):
  return LlamaMLP(types.SimpleNamespace(hidden_size=hidden, intermediate_size=width,
                                        mlp_bias=False, hidden_act="silu"))


class _DeepseekMoE(torch.nn.Module):
  """DeepSeekMoE block as the 16B remote code computes it, one token at a time."""

  def __init__(self, cfg: dict):
    super().__init__()
    d, f = cfg["hidden_size"], cfg["moe_intermediate_size"]
    self.top_k = cfg["num_experts_per_tok"]
    self.gate = torch.nn.Linear(d, cfg["n_routed_experts"], bias=False)
    self.experts = torch.nn.ModuleList(_mlp(d, f) for _ in range(cfg["n_routed_experts"]))
    self.shared_experts = _mlp(d, f * cfg["n_shared_experts"])

  def forward(self, x):  # [B, T, D]
    flat = x.reshape(-1, x.shape[-1])
    scores = torch.softmax(torch.nn.functional.linear(flat.float(), self.gate.weight.float()), -1)
    weights, idx = torch.topk(scores, self.top_k, dim=-1, sorted=False)  # norm_topk_prob: false
    rows = []
    for t in range(flat.shape[0]):
      acc = torch.zeros_like(flat[t])
      for j in range(self.top_k):
        acc = acc + weights[t, j] * self.experts[int(idx[t, j])](flat[t])
      rows.append(acc)
    return torch.stack(rows).view_as(x) + self.shared_experts(x)


class _Layer(torch.nn.Module):

  def __init__(self, llama_cfg, cfg: dict, idx: int, is_moe: bool):
    super().__init__()
    d = cfg["hidden_size"]
    self.self_attn = LlamaAttention(llama_cfg, idx)
    self.input_layernorm = LlamaRMSNorm(d, eps=cfg["rms_norm_eps"])
    self.post_attention_layernorm = LlamaRMSNorm(d, eps=cfg["rms_norm_eps"])
    self.mlp = _DeepseekMoE(cfg) if is_moe else _mlp(d, cfg["intermediate_size"])

  def forward(self, x, position_embeddings, mask):
    h, _ = self.self_attn(self.input_layernorm(x), position_embeddings=position_embeddings,
                          attention_mask=mask)
    x = x + h
    return x + self.mlp(self.post_attention_layernorm(x))


class _Reference(torch.nn.Module):
  """DeepseekForCausalLM; state_dict() names are the checkpoint's."""

  def __init__(self, cfg: dict):
    super().__init__()
    self.llama_cfg = LlamaConfig(
        vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"], num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg["num_key_value_heads"], rope_theta=cfg["rope_theta"],
        rms_norm_eps=cfg["rms_norm_eps"], max_position_embeddings=cfg["max_position_embeddings"],
        attention_bias=False, attn_implementation="eager")
    self.moe_layers = [i for i in range(cfg["num_hidden_layers"])
                       if i >= cfg["first_k_dense_replace"] and i % cfg["moe_layer_freq"] == 0]
    self.model = torch.nn.Module()
    self.model.embed_tokens = torch.nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
    self.model.layers = torch.nn.ModuleList(
        _Layer(self.llama_cfg, cfg, i, i in self.moe_layers) for i in range(cfg["num_hidden_layers"]))
    self.model.norm = LlamaRMSNorm(cfg["hidden_size"], eps=cfg["rms_norm_eps"])
    self.model.rotary_emb = LlamaRotaryEmbedding(self.llama_cfg)  # inv_freq: not persistent
    self.lm_head = torch.nn.Linear(cfg["hidden_size"], cfg["vocab_size"], bias=False)

  def forward(self, input_ids):  # [B, T] -> [B, T, V]
    t = input_ids.shape[1]
    x = self.model.embed_tokens(input_ids)
    positions = torch.arange(t)[None].expand(input_ids.shape[0], t)
    pe = self.model.rotary_emb(x, positions)
    mask = torch.full((t, t), float("-inf")).triu(1)[None, None]  # additive causal mask
    for layer in self.model.layers:
      x = layer(x, pe, mask)
    return self.lm_head(self.model.norm(x))


def _config(**overrides) -> dict:
  """A small config.json shaped like deepseek-moe-16b-base's."""
  cfg = {
      "architectures": ["DeepseekForCausalLM"],
      "attention_bias": False,
      "attention_dropout": 0.0,
      "auto_map": {"AutoConfig": "configuration_deepseek.DeepseekConfig",
                   "AutoModel": "modeling_deepseek.DeepseekModel",
                   "AutoModelForCausalLM": "modeling_deepseek.DeepseekForCausalLM"},
      "aux_loss_alpha": 0.001,
      "bos_token_id": 1,
      "eos_token_id": 2,
      "first_k_dense_replace": 1,
      "hidden_act": "silu",
      "hidden_size": 64,
      "initializer_range": 0.02,
      "intermediate_size": 96,
      "max_position_embeddings": 256,
      "model_type": "deepseek",
      "moe_intermediate_size": 24,
      "moe_layer_freq": 2,
      "n_routed_experts": 8,
      "n_shared_experts": 2,
      "norm_topk_prob": False,
      "num_attention_heads": 4,
      "num_experts_per_tok": 3,
      "num_hidden_layers": 5,
      "num_key_value_heads": 4,
      "pretraining_tp": 1,
      "rms_norm_eps": 1e-06,
      "rope_scaling": None,
      "rope_theta": 10000,
      "scoring_func": "softmax",
      "seq_aux": True,
      "tie_word_embeddings": False,
      "torch_dtype": "float32",
      "transformers_version": "4.36.0",
      "use_cache": True,
      "vocab_size": 128,
  }
  cfg.update(overrides)
  return cfg


def _write_checkpoint(directory, cfg: dict, seed: int) -> _Reference:
  torch.manual_seed(seed)
  ref = _Reference(cfg).eval()
  with torch.no_grad():
    for name, p in ref.named_parameters():
      if name.endswith("norm.weight"):  # not all ones, so a misplaced norm shows
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
  state = {k: v.contiguous() for k, v in ref.state_dict().items()}
  assert not any("rotary" in k for k in state)
  save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
  (directory / "config.json").write_text(json.dumps(cfg, indent=2))
  return ref


def _batches(vocab, seed):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, vocab, (2, 9)), rng.integers(0, vocab, (2, 9)),
          rng.integers(0, vocab, (1, 5))]


def _check_logits(model, ref, vocab, seed):
  for ids in _batches(vocab, seed):
    with torch.no_grad():
      want = ref(torch.tensor(ids)).numpy()
    got = np.asarray(model(ids))
    assert got.shape == want.shape and got.dtype == np.float32
    rel = np.abs(got - want).max() / np.abs(want).max()
    assert rel <= 1e-5, f"relative error {rel:.2e} on batch of shape {ids.shape}"


_CASES = {
    # 5 layers, first_k_dense_replace=1, moe_layer_freq=2: MoE layers 2 and 4.
    "mha_freq2": dict(),
    # deepseek-moe-16b's own layout (freq 1) with grouped-query attention.
    "gqa_freq1": dict(num_hidden_layers=3, moe_layer_freq=1, num_key_value_heads=2,
                      rope_theta=500.0, rms_norm_eps=1e-5, num_experts_per_tok=2),
}


@pytest.mark.parametrize("case", list(_CASES))
def test_logits_match_torch_reference(tmp_path, case):
  cfg = _config(**_CASES[case])
  ref = _write_checkpoint(tmp_path, cfg, seed=0)
  model = moe_jax.from_pretrained(tmp_path, dtype=jnp.float32)
  c = model.config
  assert c.model_type == "deepseek" and not c.use_mla
  assert c.moe_layers == ref.moe_layers
  if case == "mha_freq2":
    assert c.moe_layers == [2, 4]
  assert (c.num_key_value_heads or c.num_attention_heads) == cfg["num_key_value_heads"]
  assert c.rope_theta == cfg["rope_theta"] and c.rms_norm_eps == cfg["rms_norm_eps"]
  assert c.norm_topk_prob is False and c.routed_scaling_factor == 1.0
  _check_logits(model, ref, cfg["vocab_size"], seed=1)


def test_save_pretrained_round_trip(tmp_path):
  cfg = _config()
  src, out = tmp_path / "src", tmp_path / "out"
  src.mkdir()
  _write_checkpoint(src, cfg, seed=2)
  model = moe_jax.from_pretrained(src, dtype=jnp.float32)
  moe_jax.save_pretrained(model, out)
  original, saved = load_file(str(src / "model.safetensors")), load_file(str(out / "model.safetensors"))
  assert sorted(saved) == sorted(original)
  for name, w in original.items():
    assert saved[name].dtype == w.dtype and saved[name].shape == w.shape, name
    np.testing.assert_array_equal(saved[name], w, err_msg=name)
  written = json.loads((out / "config.json").read_text())
  assert written["model_type"] == "deepseek"
  assert written["architectures"] == ["DeepseekForCausalLM"]
  for key in ("hidden_size", "intermediate_size", "moe_intermediate_size", "n_routed_experts",
              "n_shared_experts", "num_experts_per_tok", "first_k_dense_replace", "moe_layer_freq",
              "num_attention_heads", "num_key_value_heads", "num_hidden_layers", "rope_theta",
              "rms_norm_eps", "max_position_embeddings", "scoring_func", "norm_topk_prob",
              "aux_loss_alpha", "seq_aux", "vocab_size", "tie_word_embeddings", "bos_token_id",
              "eos_token_id"):
    assert written[key] == cfg[key], key
  reloaded = moe_jax.from_pretrained(out, dtype=jnp.float32)
  # config.json spells out head_dim (None = hidden_size // heads when read from the 16B config).
  assert reloaded.config.mha_head_dim == model.config.mha_head_dim == 16
  assert dataclasses.replace(reloaded.config, head_dim=None) == model.config
  ids = _batches(cfg["vocab_size"], seed=3)[0]
  np.testing.assert_array_equal(np.asarray(reloaded(ids)), np.asarray(model(ids)))


# Presets ---------------------------------------------------------------------

ONE_EXPERT = 3 * 2048 * 1408  # 8,650,752


def _abstract_params(cfg):
  variables = jax.eval_shape(Transformer(cfg).init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
  return nn.meta.unbox(variables["params"])


def _count(tree):
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def _routed_expert_params(params, cfg):
  total = 0
  for i in cfg.moe_layers:
    experts = params[f"layers_{i}"]["mlp"]["experts"]
    assert experts["gate_proj"].shape == (cfg.n_routed_experts, cfg.hidden_size,
                                          cfg.moe_intermediate_size)
    assert experts["down_proj"].shape == (cfg.n_routed_experts, cfg.moe_intermediate_size,
                                          cfg.hidden_size)
    total += _count(experts)
  return total


@pytest.mark.parametrize("name", list(config_lib.PRESETS))
def test_presets_build_abstractly(name):
  cfg = config_lib.PRESETS[name]()
  params = _abstract_params(cfg)
  assert _count(params) > 0
  assert sorted(k for k in params if k.startswith("layers_")) == sorted(
      f"layers_{i}" for i in range(cfg.num_hidden_layers))
  for i in range(cfg.num_hidden_layers):
    assert ("experts" in params[f"layers_{i}"]["mlp"]) == cfg.is_moe_layer(i)
  assert ("lm_head" in params) != cfg.tie_word_embeddings


def test_deepseek_moe_16b_preset_counts():
  cfg = config_lib.deepseek_moe_16b()
  assert cfg.model_type == "deepseek" and not cfg.use_mla and cfg.mha_head_dim == 128
  assert cfg.moe_layers == list(range(1, 28))  # all but the first layer
  params = _abstract_params(cfg)
  experts = params["layers_1"]["mlp"]["experts"]
  assert _count(experts) // cfg.n_routed_experts == ONE_EXPERT
  assert _routed_expert_params(params, cfg) == 27 * 64 * ONE_EXPERT  # 14.95B
  attention = sum(_count(params[f"layers_{i}"]["self_attn"]) for i in range(28))
  assert attention == 28 * 4 * 2048 ** 2  # "only about 0.5B attention parameters"
  assert _count(params["layers_0"]["mlp"]) == 3 * 2048 * 10944  # dense first layer
  shared = params["layers_1"]["mlp"]["shared_experts"]
  assert _count(shared) == 2 * ONE_EXPERT
  total = _count(params)
  assert abs(total - 16.4e9) <= 0.02 * 16.4e9, total


def test_deepseek_v2_lite_preset_counts():
  cfg = config_lib.deepseek_v2_lite()
  assert cfg.use_mla and cfg.moe_layers == list(range(1, 27))
  params = _abstract_params(cfg)
  assert _routed_expert_params(params, cfg) == 26 * 64 * ONE_EXPERT == 14_394_851_328
  shared = sum(_count(params[f"layers_{i}"]["mlp"]["shared_experts"]) for i in cfg.moe_layers)
  assert shared == 26 * 2 * ONE_EXPERT  # ESFT's "450M"
  attention = _count(params["layers_0"]["self_attn"])
  assert abs(attention - 13.76e6) <= 0.01e6  # "attention ~13.76M/layer"
  total = _count(params)
  assert abs(total - 15.7e9) <= 0.01 * 15.7e9, total


def test_deepseek_moe_2b_preset_counts():
  cfg = config_lib.deepseek_moe_2b()
  assert cfg.moe_layers == list(range(9))  # no dense layer
  params = _abstract_params(cfg)
  one = 3 * 1280 * 853
  routed = _routed_expert_params(params, cfg)
  assert routed == 9 * 63 * one
  shared = sum(_count(params[f"layers_{i}"]["mlp"]["shared_experts"]) for i in range(9))
  # "1.89B total expert params" (9 x 16 x 3 x 1280 x 3413 in full-size experts)
  assert abs(routed + shared - 1.887e9) <= 0.005 * 1.887e9
  assert abs(_count(params) - 2.0e9) <= 0.05 * 2.0e9


def test_deepseek_v3_preset_counts():
  """DeepSeek-V3 "671B" (spec A.7; the MTP module is not part of the preset)."""
  cfg = config_lib.deepseek_v3()
  assert cfg.moe_layers == list(range(3, 61))
  variables = jax.eval_shape(Transformer(cfg).init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
  params = nn.meta.unbox(variables["params"])
  assert _routed_expert_params(params, cfg) == 58 * 256 * 3 * 7168 * 2048
  bias = nn.meta.unbox(variables["buffers"])
  assert sorted(bias) == sorted(f"layers_{i}" for i in cfg.moe_layers)
  assert bias["layers_3"]["mlp"]["e_score_correction_bias"].shape == (256,)
  assert abs(_count(params) - 671e9) <= 0.005 * 671e9
