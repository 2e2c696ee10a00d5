"""Building blocks shared by attention, MoE and the models: norms, SwiGLU, rotary embeddings.

Also the names every model family gives its layers (`layer_name`, `experts_path`),
so the decoder, the encoder and the code that finds experts in a parameter tree
(ESFT, the trainers, sharding, checkpoints) agree on them.

Dimension letters (used throughout moe_jax): B batch, T sequence, D model width,
N attention heads, H per-head width, E routed experts, K experts per token,
F expert / MLP hidden width, V vocabulary.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from moe_jax import axes as ax
from moe_jax.config import ModelConfig


def layer_name(i: int) -> str:
  """The module name of layer i: its variables live under `variables[...][layer_name(i)]`."""
  return f"layers_{i}"


def experts_path(i: int) -> tuple[str, str, str]:
  """Where MoE layer i's routed experts live in the parameter tree: the keys from params down."""
  return (layer_name(i), "mlp", "experts")


# What a rematerialised layer keeps for the backward pass (ModelConfig.remat).
REMAT_POLICIES = {"full": jax.checkpoint_policies.nothing_saveable,
                  "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def dense_init(config: ModelConfig, axes: Sequence[str | None]):
  """Normal(initializer_range) kernel initialiser tagged with logical axis names."""
  return nn.with_logical_partitioning(nn.initializers.normal(config.initializer_range), tuple(axes))


def dense(config: ModelConfig, features, axes, name: str, in_axes=-1, use_bias=False,
          dtype=None, param_dtype=None) -> nn.DenseGeneral:
  """A bias-free (by default) projection whose kernel carries logical axes."""
  n_out = len(features) if isinstance(features, tuple) else 1
  return nn.DenseGeneral(
      features=features, axis=in_axes, use_bias=use_bias, name=name,
      dtype=jnp.dtype(dtype or config.dtype), param_dtype=jnp.dtype(param_dtype or config.param_dtype),
      kernel_init=dense_init(config, axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, tuple(axes[-n_out:])))


class RMSNorm(nn.Module):
  """RMSNorm computed in float32, scaled after casting back (as the HF reference does)."""

  eps: float
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x):  # x: [..., D]
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, (ax.NORM,)),
                       (x.shape[-1],), jnp.dtype(self.param_dtype))
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return scale.astype(self.dtype) * x32.astype(self.dtype)


def rms_norm(config: ModelConfig, name: str, eps: float | None = None) -> RMSNorm:
  """An RMSNorm with the config's dtypes; eps defaults to config.rms_norm_eps."""
  return RMSNorm(config.rms_norm_eps if eps is None else eps, config.dtype, config.param_dtype,
                 name=name)


class SwiGLU(nn.Module):
  """down(silu(gate(x)) * up(x)): the dense FFN, the shared experts and (stacked) every expert."""

  config: ModelConfig
  hidden: int  # F

  @nn.compact
  def __call__(self, x):  # x: [..., D] -> [..., D]
    c = self.config
    gate = dense(c, self.hidden, (ax.EMBED, ax.MLP), "gate_proj")(x)
    up = dense(c, self.hidden, (ax.EMBED, ax.MLP), "up_proj")(x)
    return dense(c, c.hidden_size, (ax.MLP, ax.EMBED), "down_proj")(nn.silu(gate) * up)


# Rotary position embeddings --------------------------------------------------

def rope_frequencies(config: ModelConfig) -> tuple[np.ndarray, float]:
  """Inverse frequencies [rope_dim // 2] and the cos/sin scale, for default RoPE or YaRN.

  YaRN follows the DeepSeek-V2 reference (and transformers' `_compute_yarn_parameters`):
  a linear ramp between interpolated and extrapolated frequencies over the
  dimensions whose wavelengths fall between beta_fast and beta_slow rotations of
  the original context.
  """
  dim, base = config.rope_dim, config.rope_theta
  exponents = np.arange(0, dim, 2, dtype=np.float32) / dim
  pos_freqs = np.power(np.float32(base), exponents).astype(np.float32)
  rs = config.rope_scaling
  if rs is None:
    return (1.0 / pos_freqs).astype(np.float32), 1.0
  factor = rs.get("factor")
  original = rs["original_max_position_embeddings"]
  if factor is None:
    factor = config.max_position_embeddings / original
  mscale, mscale_all_dim = rs.get("mscale"), rs.get("mscale_all_dim")
  attention_factor = rs.get("attention_factor")
  if attention_factor is None:
    if mscale and mscale_all_dim:
      attention_factor = _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim)
    else:
      attention_factor = _yarn_mscale(factor)
  beta_fast, beta_slow = rs.get("beta_fast") or 32, rs.get("beta_slow") or 1

  def correction_dim(rotations):
    return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

  low, high = correction_dim(beta_fast), correction_dim(beta_slow)
  if rs.get("truncate", True):
    low, high = math.floor(low), math.ceil(high)
  low, high = max(low, 0), min(high, dim - 1)
  if low == high:
    high += 0.001  # avoid a zero-width ramp
  ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
  extrapolation = 1.0 - ramp.astype(np.float32)
  inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
  return inv_freq.astype(np.float32), float(attention_factor)


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
  return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def softmax_scale(config: ModelConfig) -> float:
  """1/sqrt(head width), times YaRN's mscale^2 where mscale_all_dim is set (DeepSeek-V2 MLA)."""
  width = config.qk_head_dim if config.use_mla else config.mha_head_dim
  scale = width ** -0.5
  rs = config.rope_scaling
  if rs is not None and rs.get("mscale_all_dim"):
    factor = rs.get("factor") or config.max_position_embeddings / rs["original_max_position_embeddings"]
    m = _yarn_mscale(factor, rs["mscale_all_dim"])
    scale *= m * m
  return scale


def apply_rope(x, positions, inv_freq, attention_factor: float, interleaved: bool):
  """Rotates x: [B, T, N, H] by positions: [B, T].

  `interleaved` pairs (x0, x1), (x2, x3), ... (DeepSeek's MLA weights); otherwise
  the halves (x[:H/2], x[H/2:]) are paired (Llama's rotate_half). The interleaved
  output is written de-interleaved, [rotated evens, rotated odds], which leaves
  every query-key dot product unchanged.
  """
  freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B, T, H/2]
  cos = (jnp.cos(freqs) * attention_factor)[:, :, None, :]
  sin = (jnp.sin(freqs) * attention_factor)[:, :, None, :]
  xf = x.astype(jnp.float32)
  if interleaved:
    x1, x2 = xf[..., 0::2], xf[..., 1::2]
  else:
    half = x.shape[-1] // 2
    x1, x2 = xf[..., :half], xf[..., half:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)
