"""The linear-chain CRF (moe_jax.finance.crf) against brute-force enumeration of every tag path."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax.finance import crf


def _brute(em, trans, start, end, length):
  """(log-partition, best path, best score) over all K^length paths, float64."""
  k = em.shape[-1]
  scores = {}
  for path in itertools.product(range(k), repeat=length):
    s = start[path[0]] + end[path[-1]] + sum(em[i, path[i]] for i in range(length))
    s += sum(trans[path[i], path[i + 1]] for i in range(length - 1))
    scores[path] = s
  vals = np.asarray(list(scores.values()))
  best = max(scores, key=scores.get)
  return np.log(np.sum(np.exp(vals - vals.max()))) + vals.max(), best, scores[best]


@pytest.fixture(name="problem")
def _problem():
  rng = np.random.default_rng(0)
  b, t, k = 4, 5, 3
  em = rng.normal(size=(b, t, k))
  trans, start, end = rng.normal(size=(k, k)), rng.normal(size=k), rng.normal(size=k)
  lengths = np.asarray([5, 3, 1, 4])
  mask = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)
  return em, trans, start, end, lengths, mask


def test_log_partition_viterbi_and_nll_match_brute_force(problem):
  em, trans, start, end, lengths, mask = problem
  args = [jnp.asarray(a, jnp.float32) for a in (trans, start, end)]
  z = np.asarray(crf.log_partition(jnp.asarray(em, jnp.float32), jnp.asarray(mask), *args))
  tags, best = crf.viterbi(jnp.asarray(em, jnp.float32), jnp.asarray(mask), *args)
  tags = np.asarray(tags)
  for i, n in enumerate(lengths):
    ref_z, ref_path, ref_best = _brute(em[i], trans, start, end, n)
    assert z[i] == pytest.approx(ref_z, abs=1e-4)
    assert tuple(tags[i, :n]) == ref_path and not tags[i, n:].any()
    assert float(best[i]) == pytest.approx(ref_best, abs=1e-4)
  # NLL of the Viterbi path = log Z - its score; every path's probability is at most 1.
  loss = np.asarray(crf.nll(jnp.asarray(em, jnp.float32), jnp.asarray(tags), jnp.asarray(mask),
                            *args))
  np.testing.assert_allclose(loss, z - np.asarray(best), atol=1e-4)
  assert np.all(loss >= -1e-5)


def test_padding_past_the_length_changes_nothing(problem):
  em, trans, start, end, _, mask = problem
  args = [jnp.asarray(a, jnp.float32) for a in (trans, start, end)]
  noisy = em + 100.0 * (1 - mask)[..., None] * np.random.default_rng(1).normal(size=em.shape)
  for fn in (crf.log_partition, lambda e, m, *a: crf.viterbi(e, m, *a)[0]):
    clean = fn(jnp.asarray(em, jnp.float32), jnp.asarray(mask), *args)
    padded = fn(jnp.asarray(noisy, jnp.float32), jnp.asarray(mask), *args)
    np.testing.assert_allclose(np.asarray(clean), np.asarray(padded), atol=1e-4)


def test_empty_row_scores_zero():
  em = jnp.ones((1, 3, 2))
  mask = jnp.zeros((1, 3), jnp.int32)
  p = [jnp.ones((2, 2)), jnp.ones(2), jnp.ones(2)]
  assert float(crf.log_partition(em, mask, *p)[0]) == 0.0
  assert float(crf.nll(em, jnp.zeros((1, 3), jnp.int32), mask, *p)[0]) == 0.0
