"""A linear-chain CRF: log-partition (forward algorithm), Viterbi decoding, masked NLL.

MSSPM tags the news tokens with the event dictionary's BIO roles through this
CRF (`moe_jax.finance.sspm`). Shapes: B rows, T tokens, K tags. A row's length
is its mask's count of ones, the ones first (right padding); a row of length 0
scores 0 and decodes to all zeros.

  transitions [K, K]  score of tag i followed by tag j (from, to)
  start [K], end [K]  score of a row beginning / ending with a tag
  emissions [B, T, K] per-token tag scores
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def path_score(emissions, tags, mask, transitions, start, end):
  """[B] score of the given tag paths: start + emissions + transitions + end over each row's length.

  emissions [B, T, K], tags [B, T] int, mask [B, T] (1 = a real token).
  """
  m = mask.astype(emissions.dtype)
  emit = jnp.take_along_axis(emissions, tags[..., None], -1)[..., 0]  # [B, T]
  score = jnp.sum(emit * m, -1) + start[tags[:, 0]] * m[:, 0]
  trans = transitions[tags[:, :-1], tags[:, 1:]]  # [B, T-1]
  score = score + jnp.sum(trans * m[:, 1:], -1)
  last = jnp.maximum(jnp.sum(mask, -1).astype(jnp.int32) - 1, 0)
  last_tag = jnp.take_along_axis(tags, last[:, None], -1)[:, 0]
  return score + end[last_tag] * (jnp.sum(mask, -1) > 0)


def log_partition(emissions, mask, transitions, start, end):
  """[B] log sum over all tag paths of exp(score): the forward algorithm, padding carried through."""
  m = mask.astype(bool)
  alpha0 = start + emissions[:, 0]  # [B, K]

  def step(alpha, inputs):
    emit_t, m_t = inputs  # [B, K], [B]
    nxt = jax.nn.logsumexp(alpha[:, :, None] + transitions[None], axis=1) + emit_t
    return jnp.where(m_t[:, None], nxt, alpha), None

  alpha, _ = jax.lax.scan(step, alpha0, (jnp.swapaxes(emissions[:, 1:], 0, 1),
                                         jnp.swapaxes(m[:, 1:], 0, 1)))
  z = jax.nn.logsumexp(alpha + end, -1)
  return jnp.where(m[:, 0], z, 0.0)


def viterbi(emissions, mask, transitions, start, end):
  """([B, T] int32 best tag paths, zeros past each row's length; [B] their scores)."""
  m = mask.astype(bool)
  b, t, k = emissions.shape
  delta0 = start + emissions[:, 0]  # [B, K]

  def forward(delta, inputs):
    emit_t, m_t = inputs
    cand = delta[:, :, None] + transitions[None]  # [B, K from, K to]
    best_prev = jnp.argmax(cand, axis=1).astype(jnp.int32)  # [B, K]
    nxt = jnp.max(cand, axis=1) + emit_t
    # Past the row's end the score stays, and each tag points back to itself.
    keep = jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), (b, k))
    return jnp.where(m_t[:, None], nxt, delta), jnp.where(m_t[:, None], best_prev, keep)

  delta, back = jax.lax.scan(forward, delta0, (jnp.swapaxes(emissions[:, 1:], 0, 1),
                                               jnp.swapaxes(m[:, 1:], 0, 1)))  # back [T-1, B, K]
  final = delta + end
  last = jnp.argmax(final, -1).astype(jnp.int32)  # [B]

  def backward(tag, back_t):
    prev = jnp.take_along_axis(back_t, tag[:, None], -1)[:, 0]
    return prev, prev

  _, prevs = jax.lax.scan(backward, last, back, reverse=True)  # [T-1, B]: tag at positions 0..T-2
  tags = jnp.concatenate([jnp.swapaxes(prevs, 0, 1), last[:, None]], axis=1)
  return jnp.where(m, tags, 0), jnp.where(m[:, 0], jnp.max(final, -1), 0.0)


def nll(emissions, tags, mask, transitions, start, end):
  """[B] negative log-likelihood of the gold tags (0 for an empty row)."""
  return (log_partition(emissions, mask, transitions, start, end)
          - path_score(emissions, tags, mask, transitions, start, end))


class CRF(nn.Module):
  """The CRF's parameters (transitions [K, K], start [K], end [K]) with `nll` and `decode`."""

  num_tags: int

  def setup(self):
    init = nn.initializers.uniform(0.1)
    self.transitions = self.param("transitions", init, (self.num_tags, self.num_tags))
    self.start = self.param("start", init, (self.num_tags,))
    self.end = self.param("end", init, (self.num_tags,))

  def nll(self, emissions, tags, mask):
    return nll(emissions, tags, mask, self.transitions, self.start, self.end)

  def decode(self, emissions, mask):
    return viterbi(emissions, mask, self.transitions, self.start, self.end)[0]

  def __call__(self, emissions, tags, mask):
    return self.nll(emissions, tags, mask)
