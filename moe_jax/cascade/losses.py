"""CascadeBERT's training objective: the stages' cross-entropies plus the difficulty-aware ranking loss.

L = sum_m CE(f_m(x), y) + lambda * L_DAR, all stages fine-tuned jointly.

L_DAR ranks the first (smallest) model's confidence c = max softmax(f_1(x)):
for each easy example e of the batch (difficulty 0) one hard example h
(difficulty 1) is drawn uniformly, with replacement, from the same batch, and
L_DAR = mean_e max(0, -(c_e - c_h) + epsilon): torch's MarginRankingLoss with
target +1, as the official code computes it. A batch without an easy or
without a hard example contributes 0. The official code ranks the first model
only ("only support two-model now"); so does this one, whatever K is.
Defaults: lambda = 0.5 and epsilon = 0.5 (the official `glue_mrpc.sh`; its
argparse defaults are lambda 0.5, epsilon 0.3).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

EASY, HARD, UNKNOWN = 0, 1, -1  # difficulty ids; UNKNOWN rows (padding, unlabelled) are never paired


def draw_partners(key: jax.Array, difficulty: jax.Array) -> jax.Array:
  """[B] for each row, a hard row of the batch drawn uniformly (with replacement); -1 where the
  batch has no hard row. Drawn for every row; only easy rows use theirs."""
  hard = difficulty == HARD
  logits = jnp.where(hard, 0.0, -jnp.inf)
  partner = jax.random.categorical(key, logits, shape=difficulty.shape)
  return jnp.where(jnp.any(hard), partner, -1)


def ranking_loss(confidence: jax.Array, difficulty: jax.Array, partner: jax.Array,
                 margin: float) -> jax.Array:
  """mean over easy rows e of max(0, -(c_e - c_partner(e)) + margin); 0 without easy or hard rows.

  confidence: [B] float, the first model's top-class probability.
  difficulty: [B] int (EASY, HARD or UNKNOWN). partner: [B] from `draw_partners`.
  """
  easy = (difficulty == EASY) & (partner >= 0)
  c = confidence.astype(jnp.float32)
  per = jnp.maximum(0.0, -(c - c[jnp.maximum(partner, 0)]) + margin)
  n = jnp.sum(easy)
  return jnp.where(n > 0, jnp.sum(jnp.where(easy, per, 0.0)) / jnp.maximum(n, 1), 0.0)


def cross_entropy(logits: jax.Array, labels: jax.Array, live: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(sum of the live rows' cross-entropies, their number): logits [B, C], labels [B], live [B]."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  nll = -jnp.take_along_axis(logp, labels[:, None], -1)[:, 0]
  live = live.astype(jnp.float32)
  return jnp.sum(nll * live), jnp.sum(live)
