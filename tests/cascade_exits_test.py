"""CascadeBERT's exit rules, costs and ranking loss against hand computations and float64 loops."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax import config as mc
from moe_jax.cascade import exits, losses


def _probs(top):
  """[K, N, 2] probabilities whose top class has probability `top` [K, N] (class 0)."""
  top = np.asarray(top, np.float64)
  return np.stack([top, 1 - top], -1)


def test_threshold_is_strict_and_stages_run_small_to_large():
  # Three stages, five examples; tau = 0.8. An example at exactly 0.8 does not exit.
  conf = [[0.80, 0.81, 0.50, 0.95, 0.60],
          [0.90, 0.10, 0.85, 0.99, 0.80],
          [0.55, 0.55, 0.55, 0.55, 0.55]]
  e = exits.exits_cascade(_probs(conf), 0.8)
  assert e.tolist() == [1, 0, 1, 0, 2]  # the first stage over tau, else the last
  assert exits.exits_cascade(_probs(conf), 1.0).tolist() == [2] * 5  # nothing is above 1
  assert exits.exits_cascade(_probs(conf), 0.0).tolist() == [0] * 5  # everything is above 0
  chosen = exits.select(_probs(conf), e)
  assert chosen[:, 0].tolist() == [0.90, 0.81, 0.85, 0.95, 0.55]


def test_costs_and_speedup_by_hand():
  # BERT-shaped layers cost 12 D^2 (4 D^2 attention, 2 D x 4D FFN): the official layers x hidden^2.
  bert2 = mc.all_minilm_l6_v2().replace(hidden_size=768, intermediate_size=3072,
                                        num_attention_heads=12, num_hidden_layers=2)
  bert12 = bert2.replace(num_hidden_layers=12)
  costs = exits.stage_costs([bert2, bert12])
  unit = 12 * 768 ** 2
  assert costs.tolist() == [2 * unit, 12 * unit]
  # The official trainer's model_layer_num = [2, 14]: an escalated example pays both models.
  e = np.array([0, 0, 0, 1])
  assert (exits.paid(e, costs) / unit).tolist() == [2, 2, 2, 14]
  assert exits.speedup(e, costs, costs[-1]) == pytest.approx(12 / ((3 * 2 + 14) / 4))
  # An MoE layer pays for its router, shared experts and top-k routed experts only.
  moe = mc.tiny(num_hidden_layers=2, first_k_dense_replace=1)
  lc = exits.layer_costs(moe)
  d, f = moe.hidden_size, moe.moe_intermediate_size
  assert lc[1] - lc[0] == (d * moe.n_routed_experts + 3 * d * f * 3) - 3 * d * moe.intermediate_size


def test_entropy_and_patience_rules_by_hand():
  # Four layers, three examples, two classes.
  p = np.array([[[0.6, 0.4], [0.99, 0.01], [0.2, 0.8]],
                [[0.7, 0.3], [0.40, 0.60], [0.3, 0.7]],
                [[0.8, 0.2], [0.45, 0.55], [0.6, 0.4]],
                [[0.9, 0.1], [0.50, 0.50], [0.1, 0.9]]])
  h = -(p * np.log(p)).sum(-1)
  assert np.allclose(exits.entropy(p), h)
  # S = 0.62: example 0 first below at layer 1 (H = 0.611; 0.673 at layer 0), example 1 at
  # layer 0 (0.056), example 2 at layer 0 (0.5004). At S = 0.5 only example 1 exits early (0.5004
  # is not below 0.5); the last layer answers the others.
  assert exits.exits_entropy(p, 0.62).tolist() == [1, 0, 0]
  assert exits.exits_entropy(p, 0.5).tolist() == [3, 0, 3]
  # Patience 2: predictions per layer: ex0 0,0,0,0 -> exits at layer 2; ex1 0,1,1,1 -> layer 3;
  # ex2 1,1,0,1 -> never 3 equal in a row before the last layer -> 3.
  assert exits.exits_patience(p, 2).tolist() == [2, 3, 3]
  assert exits.exits_patience(p, 1).tolist() == [1, 2, 1]
  with pytest.raises(ValueError, match="patience"):
    exits.Patience(0)


@pytest.mark.parametrize("rule,offline,setting", [
    (exits.Threshold, exits.exits_cascade, 0.7),
    (exits.Entropy, exits.exits_entropy, 0.5),
    (exits.Patience, exits.exits_patience, 2)])
def test_real_early_exit_equals_computing_everything_then_selecting(rule, offline, setting):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(5, 40, 3)) * np.arange(1, 6)[:, None, None]
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  calls = []

  def step(k):
    def run(rows, carry):
      calls.append((k, rows.copy()))
      # The carry follows the rows that are still running: it holds their ids.
      assert carry is None or np.array_equal(carry, rows)
      return probs[k, rows], rows
    return run

  out, e, _, seen = exits.run([step(k) for k in range(5)], rule(setting), 40)
  want = offline(probs, setting)
  assert np.array_equal(e, want)
  assert np.array_equal(out, exits.select(probs, want))
  # No wasted work: step k saw exactly the examples that had not exited before it.
  for k, rows in calls:
    assert np.array_equal(rows, np.flatnonzero(want >= k))
  assert seen.tolist() == [int(np.sum(want >= k)) for k in range(5)]


def _loop_ranking_loss(conf, difficulty, partner, margin):
  """float64 reference: the mean over easy rows of max(0, -(c_e - c_h) + margin)."""
  terms = [max(0.0, -(float(conf[e]) - float(conf[partner[e]])) + margin)
           for e in range(len(conf)) if difficulty[e] == 0 and partner[e] >= 0]
  return float(np.mean(terms)) if terms else 0.0


def test_ranking_loss_matches_a_float64_per_pair_loop():
  rng = np.random.default_rng(1)
  for trial in range(20):
    b = 12
    conf = rng.uniform(0.3, 1.0, b)
    difficulty = rng.choice([losses.EASY, losses.HARD, losses.UNKNOWN], b)
    partner = np.asarray(losses.draw_partners(jax.random.key(trial), jnp.asarray(difficulty)))
    hard = np.flatnonzero(difficulty == losses.HARD)
    if len(hard):
      assert set(partner.tolist()) <= set(hard.tolist())  # partners are hard rows of the batch
    else:
      assert (partner == -1).all()
    for margin in (0.3, 0.5):
      got = float(losses.ranking_loss(jnp.asarray(conf, jnp.float32), jnp.asarray(difficulty),
                                      jnp.asarray(partner), margin))
      assert got == pytest.approx(_loop_ranking_loss(conf, difficulty, partner, margin), abs=1e-6)


def test_ranking_loss_is_zero_without_easy_or_hard_and_partners_are_uniform():
  conf = jnp.asarray([0.9, 0.6, 0.7, 0.8])
  for d in ([0, 0, 0, 0], [1, 1, 1, -1], [-1, -1, -1, -1]):
    d = jnp.asarray(d)
    partner = losses.draw_partners(jax.random.key(0), d)
    assert float(losses.ranking_loss(conf, d, partner, 0.5)) == 0.0
  # With replacement and uniform over the batch's hard rows.
  d = jnp.asarray([0, 1, 1, 1] + [0] * 12)
  draws = np.concatenate([np.asarray(losses.draw_partners(jax.random.key(k), d))
                          for k in range(300)])
  counts = np.bincount(draws, minlength=4)[1:4] / len(draws)
  assert np.allclose(counts, 1 / 3, atol=0.02)
  # The gradient pushes easy confidence up and hard confidence down.
  partner = jnp.asarray([1] + [-1] * 15)
  d2 = jnp.asarray([0, 1] + [-1] * 14)
  c = jnp.asarray([0.6, 0.7] + [0.5] * 14)
  g = jax.grad(lambda c: losses.ranking_loss(c, d2, partner, 0.5))(c)
  assert float(g[0]) < 0 < float(g[1])
  assert not np.any(np.asarray(g[2:]))


def test_exits_on_all_pairs_of_tiny_inputs():
  # Brute force over every 2-stage confidence pair on a grid: the rule is "stage 0 iff c0 > tau".
  grid = [0.5, 0.6, 0.7, 0.8, 0.9]
  for c0, c1, tau in itertools.product(grid, grid, grid):
    e = exits.exits_cascade(_probs([[c0], [c1]]), tau)
    assert e.tolist() == [0 if c0 > tau else 1]
