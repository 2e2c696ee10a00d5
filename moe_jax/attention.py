"""Causal self-attention: multi-head (DeepSeekMoE 16B, Llama, Qwen2, Mistral) and latent (V2/V3).

Both take an optional per-layer KV cache for decoding. The MLA cache holds the
compressed latents (normalised c_kv and the rotated shared key), 576 numbers a
token for V2-Lite, as DeepSeek-V2 describes. A decoding step attends on the
latents directly, with kv_b_proj absorbed into the query and the output
(`_absorb` picks whichever costs fewer FLOPs); a prefill expands them.

Masking is by slot: a query at slot i sees keys at slots j <= i whose segment id
equals its own, so packed sequences and left padding share one mechanism.

`Hooks` are the interventions an analysis makes on attention (the label-words
-as-anchors study, `moe_jax.icl`): a bias added to the pre-softmax scores and a
multiplier on the post-softmax probabilities, per layer. Without hooks the
computation is exactly the plain one (the same jaxpr). Every layer also sows its
attention probabilities A [B, N, T, S], its queries and its keys into the
"intermediates" collection; that is free unless the caller makes the collection
mutable. A prefix cache with arbitrary kept positions needs nothing here: it is
an ordinary decoding cache whose slots were gathered (`moe_jax.icl.compress`).
"""

from __future__ import annotations

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from moe_jax import axes as ax
from moe_jax.config import ModelConfig
from moe_jax.layers import apply_rope, dense, rms_norm, rope_frequencies, softmax_scale

# DeepSeek's reference builds the latent norms with RMSNorm's default eps, not rms_norm_eps.
_LATENT_NORM_EPS = 1e-6


@flax.struct.dataclass
class Hooks:
  """Interventions on every layer's attention; a None field is off.

  bias: [L, B|1, N|1, T, S] added to the scaled pre-softmax scores (isolation
    adds -1e4 where a label position may not look back).
  mult: [L, B|1, N|1, T, S] multiplying the post-softmax probabilities, which are
    not renormalised (ones under `jax.grad` give the saliency A * dL/dA;
    exp(beta) at (q, p_i) is anchor re-weighting).
  """

  bias: jax.Array | None = None
  mult: jax.Array | None = None

  def layer(self, i: int) -> "Hooks":
    """Layer i's hooks: [B|1, N|1, T, S] fields."""
    return Hooks(None if self.bias is None else self.bias[i],
                 None if self.mult is None else self.mult[i])


def init_layer_cache(config: ModelConfig, batch: int, max_len: int) -> dict:
  """Zeros for one layer's cache: latents for MLA, keys and values for MHA."""
  dtype = jnp.dtype(config.dtype)
  if config.use_mla:
    return {"c_kv": jnp.zeros((batch, max_len, config.kv_lora_rank), dtype),
            "k_pe": jnp.zeros((batch, max_len, config.qk_rope_head_dim), dtype)}
  n_kv = config.num_key_value_heads or config.num_attention_heads
  shape = (batch, max_len, n_kv, config.mha_head_dim)
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def attention_mask(q_segments, k_segments, q_start, causal: bool = True,
                   window: int | None = None):
  """[B, 1, T, S] boolean mask: causal by slot (unless not `causal`) and same segment.

  q_segments: [B, T] segment ids of the queries, which sit at slots q_start..q_start+T-1.
  k_segments: [B, S] segment ids of the key slots 0..S-1 (0 past the written part of a cache).
  window: a query sees only the last `window` slots up to its own (Mistral's sliding window).
  """
  t, s = q_segments.shape[1], k_segments.shape[1]
  q_slot = q_start + jnp.arange(t)[:, None]
  k_slot = jnp.arange(s)[None, :]
  allowed = k_slot <= q_slot if causal else jnp.ones((t, s), bool)  # [T, S]
  if window is not None:
    allowed &= k_slot > q_slot - window
  same = q_segments[:, :, None] == k_segments[:, None, :]  # [B, T, S]
  return (allowed[None] & same)[:, None]


def _probs(logits, mask, dtype, hooks: Hooks | None, record):
  """Softmax over the keys of scaled float32 scores [B, N, T, S], with the hooks applied.

  `record(A)` receives the probabilities before the multiplier (the model sows them).
  """
  if hooks is not None and hooks.bias is not None:
    logits = logits + hooks.bias.astype(jnp.float32)
  logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(dtype)
  if record is not None:
    record(probs)
  if hooks is not None and hooks.mult is not None:
    probs = probs * hooks.mult.astype(dtype)
  return probs


def attend(q, k, v, mask, scale, dtype, hooks: Hooks | None = None, record=None):
  """Softmax attention in float32. q: [B, T, N, H], k: [B, S, N, H], v: [B, S, N, Hv]."""
  logits = jnp.einsum("btnh,bsnh->bnts", q, k).astype(jnp.float32) * scale
  probs = _probs(logits, mask, dtype, hooks, record)
  return jnp.einsum("bnts,bsnh->btnh", probs, v)


def _absorb(c: ModelConfig, t: int, s: int) -> bool:
  """Whether T queries over S latent slots cost fewer FLOPs with kv_b_proj absorbed.

  Expanding the cache costs S*R*N*(nope+Hv) per row; absorbing moves kv_b_proj
  onto the T queries and attends in the R-dim latent space instead (DeepSeek-V2,
  sec. 2.1.2). Decoding (T = 1) absorbs; a prompt's prefill does not.
  """
  n, r, nope, rope, hv = (c.num_attention_heads, c.kv_lora_rank, c.qk_nope_head_dim,
                          c.qk_rope_head_dim, c.v_head_dim)
  expanded = s * r * n * (nope + hv) + t * s * n * (nope + rope + hv)
  absorbed = t * n * r * (nope + hv) + t * s * n * (2 * r + rope)
  return absorbed < expanded


def _attend_absorbed(q_nope, q_pe, c_kv, k_pe, w_k, w_v, mask, scale, dtype, hooks=None,
                     record=None):
  """MLA attention on the latents, equal to `attend` on the expanded keys and values.

  q_nope: [B, T, N, nope], q_pe: [B, T, N, rope], c_kv: [B, S, R], k_pe: [B, S, rope],
  w_k: [R, N, nope], w_v: [R, N, Hv] (the two halves of kv_b_proj). Returns [B, T, N, Hv].
  """
  q_latent = jnp.einsum("btnh,rnh->btnr", q_nope, w_k)  # q . (c W_k) == (q W_k^T) . c
  logits = (jnp.einsum("btnr,bsr->bnts", q_latent, c_kv)
            + jnp.einsum("btnh,bsh->bnts", q_pe, k_pe)).astype(jnp.float32) * scale
  probs = _probs(logits, mask, dtype, hooks, record)
  out_latent = jnp.einsum("bnts,bsr->btnr", probs, c_kv)  # [B, T, N, R]
  return jnp.einsum("btnr,rnh->btnh", out_latent, w_v)


def _update_cache(cache, name, new, start):
  """Writes new: [B, T, ...] into cache[name] at slot `start`; returns the full buffer."""
  idx = (0, start) + (0,) * (new.ndim - 2)
  return jax.lax.dynamic_update_slice(cache[name], new.astype(cache[name].dtype), idx)


class Attention(nn.Module):
  """Self-attention for one decoder layer; MLA or MHA according to the config."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x, positions, q_segments, k_segments, cache=None, cache_index=0,
               hooks: Hooks | None = None):
    """x: [B, T, D]; positions, q_segments: [B, T]; k_segments: [B, S].

    Without a cache S == T. With one, the T new entries are written at slot
    `cache_index` and S is the cache length. `hooks`: this layer's (`Hooks.layer`).
    Returns (y: [B, T, D], new cache or None).
    """
    c = self.config
    inv_freq, attention_factor = rope_frequencies(c)
    mask = attention_mask(q_segments, k_segments, cache_index if cache is not None else 0,
                          window=c.sliding_window)
    args = (x, positions, mask, cache, cache_index, inv_freq, attention_factor, hooks)
    return self._mla(*args) if c.use_mla else self._mha(*args)

  def _record(self, name: str, value):
    """Sows `value` for an analysis; a no-op unless "intermediates" is mutable."""
    self.sow("intermediates", name, value)

  def _mha(self, x, positions, mask, cache, cache_index, inv_freq, attention_factor, hooks):
    c = self.config
    n, h = c.num_attention_heads, c.mha_head_dim
    n_kv = c.num_key_value_heads or n
    bias = c.qkv_bias
    q = dense(c, (n, h), (ax.EMBED, ax.HEADS, ax.KV), "q_proj", use_bias=bias)(x)
    k = dense(c, (n_kv, h), (ax.EMBED, ax.HEADS, ax.KV), "k_proj", use_bias=bias)(x)
    v = dense(c, (n_kv, h), (ax.EMBED, ax.HEADS, ax.KV), "v_proj", use_bias=bias)(x)
    q = apply_rope(q, positions, inv_freq, attention_factor, interleaved=False)
    k = apply_rope(k, positions, inv_freq, attention_factor, interleaved=False)
    new_cache = None
    if cache is not None:
      k = _update_cache(cache, "k", k, cache_index)
      v = _update_cache(cache, "v", v, cache_index)
      new_cache = {"k": k, "v": v}
    if n_kv != n:  # grouped-query attention: each key/value head serves n // n_kv query heads
      k, v = jnp.repeat(k, n // n_kv, axis=2), jnp.repeat(v, n // n_kv, axis=2)
    self._record("queries", q)  # [B, T, N, H], rotated
    self._record("keys", k)  # [B, S, N, H], rotated, one per query head
    out = attend(q, k, v, mask, softmax_scale(c), q.dtype, hooks,
                 lambda a: self._record("attention", a))  # [B, T, N, H]
    y = dense(c, c.hidden_size, (ax.HEADS, ax.KV, ax.EMBED), "o_proj", in_axes=(-2, -1),
              use_bias=c.o_bias)(out)
    return y, new_cache

  def _mla(self, x, positions, mask, cache, cache_index, inv_freq, attention_factor, hooks):
    c = self.config
    n, nope, rope, hv = c.num_attention_heads, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim
    bias = c.attention_bias
    if c.q_lora_rank is None:
      q = dense(c, (n, nope + rope), (ax.EMBED, ax.HEADS, ax.KV), "q_proj")(x)
    else:
      q_latent = dense(c, c.q_lora_rank, (ax.EMBED, ax.Q_LORA), "q_a_proj", use_bias=bias)(x)
      q_latent = rms_norm(c, "q_a_layernorm", eps=_LATENT_NORM_EPS)(q_latent)
      q = dense(c, (n, nope + rope), (ax.Q_LORA, ax.HEADS, ax.KV), "q_b_proj")(q_latent)
    q_nope, q_pe = q[..., :nope], q[..., nope:]  # [B, T, N, nope], [B, T, N, rope]
    kv_a = dense(c, c.kv_lora_rank + rope, (ax.EMBED, ax.KV_LORA), "kv_a_proj_with_mqa",
                 use_bias=bias)(x)
    c_kv = rms_norm(c, "kv_a_layernorm", eps=_LATENT_NORM_EPS)(kv_a[..., :c.kv_lora_rank])  # [B, T, R]
    k_pe = kv_a[..., None, c.kv_lora_rank:]  # [B, T, 1, rope]: one rope key shared by all heads
    q_pe = apply_rope(q_pe, positions, inv_freq, attention_factor, c.rope_interleave)
    k_pe = apply_rope(k_pe, positions, inv_freq, attention_factor, c.rope_interleave)[:, :, 0]
    new_cache = None
    if cache is not None:
      c_kv = _update_cache(cache, "c_kv", c_kv, cache_index)
      k_pe = _update_cache(cache, "k_pe", k_pe, cache_index)
      new_cache = {"c_kv": c_kv, "k_pe": k_pe}
    kv_b = dense(c, (n, nope + hv), (ax.KV_LORA, ax.HEADS, ax.KV), "kv_b_proj")
    record = lambda a: self._record("attention", a)
    self._record("queries", jnp.concatenate([q_nope, q_pe], axis=-1))  # [B, T, N, nope+rope]
    if _absorb(c, x.shape[1], c_kv.shape[1]) and not self.is_initializing():
      w = self.variables["params"]["kv_b_proj"]["kernel"].astype(q.dtype)  # [R, N, nope+Hv]
      out = _attend_absorbed(q_nope, q_pe, c_kv, k_pe, w[..., :nope], w[..., nope:], mask,
                             softmax_scale(c), q.dtype, hooks, record)
    else:  # the expanded keys exist only here: an absorbed pass (decoding) sows none
      kv = kv_b(c_kv)  # [B, S, N, nope+Hv]
      k_nope, v = kv[..., :nope], kv[..., nope:]
      k = jnp.concatenate([k_nope, jnp.broadcast_to(k_pe[:, :, None], k_nope.shape[:-1] + (rope,))], -1)
      q = jnp.concatenate([q_nope, q_pe], axis=-1)
      self._record("keys", k)
      out = attend(q, k, v, mask, softmax_scale(c), q.dtype, hooks, record)  # [B, T, N, Hv]
    y = dense(c, c.hidden_size, (ax.HEADS, ax.KV, ax.EMBED), "o_proj", in_axes=(-2, -1),
              use_bias=bias)(out)
    return y, new_cache
