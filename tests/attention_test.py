"""MLA decoding with kv_b_proj absorbed equals attention on the expanded keys and values."""

import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax import config as model_config
from moe_jax.attention import _absorb, _attend_absorbed, attention_mask
from moe_jax.model import Model, init_cache, init_variables


def test_absorbed_equals_expanded_in_float64():
  b, t, s, n, r, nope, rope, hv = 2, 3, 7, 4, 5, 6, 2, 3
  rng = np.random.default_rng(0)
  q_nope, q_pe = rng.normal(size=(b, t, n, nope)), rng.normal(size=(b, t, n, rope))
  c_kv, k_pe = rng.normal(size=(b, s, r)), rng.normal(size=(b, s, rope))
  w = rng.normal(size=(r, n, nope + hv))
  segments = np.array([[1] * s, [0, 0, 1, 1, 1, 1, 1]])  # row 1 left-padded
  mask = attention_mask(jnp.ones((b, t), jnp.int32), jnp.asarray(segments), s - t)
  # Reference in float64 numpy: expand the latents into per-head keys and values.
  kv = np.einsum("bsr,rnh->bsnh", c_kv, w)
  k = np.concatenate([kv[..., :nope], np.broadcast_to(k_pe[:, :, None], (b, s, n, rope))], -1)
  q = np.concatenate([q_nope, q_pe], -1)
  logits = np.einsum("btnh,bsnh->bnts", q, k) * 0.3
  logits = np.where(np.asarray(mask), logits, -np.inf)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  want = np.einsum("bnts,bsnh->btnh", probs, kv[..., nope:])
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  got = _attend_absorbed(f32(q_nope), f32(q_pe), f32(c_kv), f32(k_pe), f32(w[..., :nope]),
                         f32(w[..., nope:]), mask, 0.3, jnp.float32)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
  # Padding slots get no weight: changing them changes nothing.
  c_kv2 = c_kv.copy()
  c_kv2[1, :2] = 100.0
  got2 = _attend_absorbed(f32(q_nope), f32(q_pe), f32(c_kv2), f32(k_pe), f32(w[..., :nope]),
                          f32(w[..., nope:]), mask, 0.3, jnp.float32)
  np.testing.assert_array_equal(np.asarray(got2), np.asarray(got))


def test_decoding_absorbs_and_prefill_expands():
  c = model_config.deepseek_v2_lite()
  assert _absorb(c, 1, 4096)
  assert not _absorb(c, 4096, 4096)


@pytest.mark.parametrize("overrides", [{}, {"q_lora_rank": 24, "rope_interleave": True}])
def test_cached_decoding_matches_full_forward(overrides):
  """Prefill 5 tokens, then decode 6 one at a time: the logits equal one full forward pass."""
  c = model_config.tiny(**overrides)
  model = Model(c, init_variables(c, 3))
  ids = np.random.default_rng(1).integers(3, c.vocab_size, (2, 11))
  full = np.asarray(model(ids))
  cache = init_cache(c, 2, 16)
  out = model.apply(ids[:, :5], cache=cache)
  got = [np.asarray(out.logits)]
  for i in range(5, 11):
    out = model.apply(ids[:, i:i + 1], cache=out.cache)
    got.append(np.asarray(out.logits))
  np.testing.assert_allclose(np.concatenate(got, 1), full, rtol=1e-5, atol=1e-5)
