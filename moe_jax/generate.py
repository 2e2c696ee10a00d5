"""Sampling with the KV cache (one prefill, then one jit-compiled step per new token), and the
log-likelihood a model gives to given continuations (`loglikelihood`).

The whole loop (prefill + a `lax.while_loop` over steps) is a single compiled
function, keyed on the config, batch shape and number of new tokens. The loop
stops as soon as every row has emitted EOS (the rest of the output is EOS), so a
generous `max_new_tokens` costs little when answers are short.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from moe_jax.model import Model, Transformer, init_cache


def _sample(logits, rng, temperature, top_k: int):
  """logits: [B, V] -> [B] int32. temperature <= 0 means greedy."""
  logits = logits.astype(jnp.float32)
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  greedy = jnp.argmax(logits, -1)
  sampled = jax.random.categorical(rng, logits / jnp.maximum(temperature, 1e-6), -1)
  return jnp.where(temperature > 0, sampled, greedy).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "top_k"))
def _generate(config, variables, input_ids, segment_ids, positions, rng, temperature,
              max_new_tokens: int, top_k: int, eos_id):
  b, t = input_ids.shape
  module = Transformer(config)
  cache = init_cache(config, b, t + max_new_tokens)
  prefill = module.apply(variables, input_ids, positions, segment_ids, cache)
  rng, sub = jax.random.split(rng)
  first = _sample(prefill.logits[:, -1], sub, temperature, top_k)
  next_pos = positions[:, -1] + 1

  def not_finished(carry):
    i, _, token, _, done, _, _ = carry
    return (i < max_new_tokens) & ~jnp.all(done | (token == eos_id))

  def step(carry):
    i, cache, token, pos, done, rng, out = carry
    rng, sub = jax.random.split(rng)
    o = module.apply(variables, token[:, None], pos[:, None], jnp.ones((b, 1), jnp.int32), cache)
    new = _sample(o.logits[:, -1], sub, temperature, top_k)
    done = done | (token == eos_id)
    new = jnp.where(done, eos_id, new)  # finished rows repeat EOS
    return i + 1, o.cache, new, pos + 1, done, rng, out.at[:, i].set(new)

  out = jnp.full((b, max_new_tokens), eos_id, jnp.int32).at[:, 0].set(first)
  carry = (jnp.int32(1), prefill.cache, first, next_pos, jnp.zeros((b,), jnp.bool_), rng, out)
  *_, tokens = jax.lax.while_loop(not_finished, step, carry)
  return jnp.concatenate([input_ids, tokens], axis=1)


def generate(model: Model, input_ids, max_new_tokens: int, temperature: float = 0.0,
             seed: int = 0, top_k: int = 0, prompt_mask=None, eos_token_id: int | None = None):
  """Continues each prompt by `max_new_tokens` tokens using the KV cache.

  Args:
    model: a `Model`.
    input_ids: int [B, T] prompts. Prompts of different lengths are left-padded,
      with `prompt_mask` [B, T] 0 on the padding.
    temperature: 0 for greedy decoding, else the softmax temperature.
    seed: sampling seed.
    top_k: if > 0, sample among the k most likely tokens only.
    eos_token_id: after it a row emits only EOS (default: the config's eos).
  Returns:
    int32 [B, T + max_new_tokens]: the prompts followed by the new tokens.
  """
  input_ids = jnp.asarray(input_ids, jnp.int32)
  if input_ids.ndim != 2:
    raise ValueError(f"input_ids must be [batch, seq], got shape {input_ids.shape}")
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  if prompt_mask is None:
    prompt_mask = jnp.ones_like(input_ids)
  segments = (jnp.asarray(prompt_mask) != 0).astype(jnp.int32)
  # Left padding: positions count real tokens only, so each prompt starts at 0.
  positions = jnp.maximum(jnp.cumsum(segments, axis=1) - 1, 0).astype(jnp.int32)
  eos = model.config.eos_token_id if eos_token_id is None else eos_token_id
  eos = -1 if eos is None else eos
  return _generate(model.config, model.variables, input_ids, segments, positions,
                   jax.random.key(seed), jnp.float32(temperature), max_new_tokens, top_k,
                   jnp.int32(eos))


_WIDTH = 16  # rows are padded to a multiple of this, so few shapes get compiled


@functools.partial(jax.jit, static_argnames=("config",))
def _token_logp(config, variables, tokens, segments, positions):
  """log p(tokens[:, t + 1] | tokens[:, :t + 1]) for every t: [B, T - 1] float32."""
  out = Transformer(config).apply(variables, tokens[:, :-1], positions[:, :-1], segments[:, :-1])
  logp = jax.nn.log_softmax(out.logits.astype(jnp.float32), -1)
  return jnp.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]


def loglikelihood(model: Model, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
                  batch_size: int = 64) -> np.ndarray:
  """Sum of log p(continuation token | everything before it) for each (prompt, continuation).

  prompts and continuations are token-id lists (a continuation usually ends
  with EOS); each pair is scored as one right-padded row, so the prompt is
  context and only the continuation's tokens count. Rows are grouped by width,
  so a handful of programs get compiled. Returns float64 [len(prompts)].
  """
  if len(prompts) != len(continuations):
    raise ValueError(f"{len(prompts)} prompts for {len(continuations)} continuations")
  for i, (p, c) in enumerate(zip(prompts, continuations)):
    if not len(p) or not len(c):
      raise ValueError(f"pair {i}: an empty prompt or continuation has nothing to condition on or score")
  out = np.zeros(len(prompts))
  order = np.argsort([len(p) + len(c) for p, c in zip(prompts, continuations)], kind="stable")
  for s in range(0, len(order), batch_size):
    idx = order[s:s + batch_size]
    width = -(-max(len(prompts[i]) + len(continuations[i]) for i in idx) // _WIDTH) * _WIDTH
    tokens = np.zeros((batch_size, width), np.int32)  # short batches padded: one shape per width
    segments = np.zeros_like(tokens)
    scored = np.zeros((batch_size, width - 1), np.float32)  # 1 where the target is a continuation token
    for r, i in enumerate(idx):
      p, c = list(prompts[i]), list(continuations[i])
      tokens[r, :len(p) + len(c)] = p + c
      segments[r, :len(p) + len(c)] = 1
      scored[r, len(p) - 1:len(p) + len(c) - 1] = 1
    positions = np.broadcast_to(np.arange(width, dtype=np.int32), tokens.shape)
    logp = np.asarray(_token_logp(model.config, model.variables, jnp.asarray(tokens),
                                  jnp.asarray(segments), jnp.asarray(positions)), np.float64)
    out[idx] = (logp * scored).sum(1)[:len(idx)]
  return out
