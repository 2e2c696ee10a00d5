"""generate.loglikelihood against each sequence scored alone, unpadded, in float64."""

import numpy as np
import pytest

from moe_jax import config as model_config
from moe_jax.generate import loglikelihood
from moe_jax.model import Model, init_variables


def test_loglikelihood_matches_one_sequence_at_a_time():
  cfg = model_config.tiny(vocab_size=50, hidden_size=32, num_hidden_layers=2, n_routed_experts=4,
                          num_experts_per_tok=2, max_position_embeddings=128)
  model = Model(cfg, init_variables(cfg, 0))
  rng = np.random.default_rng(0)
  prompts = [rng.integers(1, 50, int(rng.integers(1, 12))).tolist() for _ in range(7)]
  conts = [rng.integers(1, 50, int(rng.integers(1, 20))).tolist() for _ in range(7)]
  got = loglikelihood(model, prompts, conts, batch_size=3)  # several widths and a short batch
  for p, c, g in zip(prompts, conts, got):
    logits = np.asarray(model(np.asarray([p + c], np.int32)), np.float64)[0]
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    want = sum(logp[len(p) - 1 + j, tok] for j, tok in enumerate(c))
    assert g == pytest.approx(want, abs=2e-4 * len(c))
  with pytest.raises(ValueError, match="pair 1: an empty prompt"):
    loglikelihood(model, [[1], []], [[2], [3]])
  with pytest.raises(ValueError, match="2 prompts for 1 continuations"):
    loglikelihood(model, [[1], [2]], [[3]])
