"""Rematerialisation (ModelConfig.remat): the same loss and gradients, fewer activations kept."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxpr_util import dot_shapes

from moe_jax import config as model_config
from moe_jax.model import Transformer, init_variables
from moe_jax.steps import lm_loss

CONFIG = model_config.tiny(num_hidden_layers=4, hidden_size=64, moe_intermediate_size=32,
                           n_routed_experts=8, num_experts_per_tok=2)


def _batch(b, t, seed=0):
  tokens = np.random.default_rng(seed).integers(3, CONFIG.vocab_size, (b, t + 1))
  return {"tokens": jnp.asarray(tokens, jnp.int32), "loss_mask": jnp.ones((b, t + 1), bool),
          "segment_ids": jnp.ones((b, t + 1), jnp.int32),
          "positions": jnp.broadcast_to(jnp.arange(t + 1, dtype=jnp.int32), (b, t + 1))}


def _value_and_grad(config):
  return jax.jit(jax.value_and_grad(lambda p, batch: lm_loss(p, {}, config, batch)[0]))


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_keeps_loss_and_gradients(remat):
  params = init_variables(CONFIG, 0)["params"]
  batch = _batch(2, 32)
  want_loss, want = _value_and_grad(CONFIG)(params, batch)
  got_loss, got = _value_and_grad(CONFIG.replace(remat=remat))(params, batch)
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6)
  for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6 * np.abs(w).max(), err_msg=str(path))


def test_remat_recomputes_in_the_backward_pass():
  """The backward pass recomputes matmuls: the batched (expert) ones with "dots", all with "full".

  (XLA:CPU's memory plan came out the same with and without rematerialisation,
  here and for a plain jax.checkpoint'ed MLP, so the test reads what JAX asks for.)
  """
  params = init_variables(CONFIG, 0)["params"]
  batch = _batch(2, 32)
  n_dots = {}
  for remat in ("none", "dots", "full"):
    config = CONFIG.replace(remat=remat)
    grad = jax.make_jaxpr(jax.grad(lambda p: lm_loss(p, {}, config, batch)[0]))(params)
    n_dots[remat] = sum(dot_shapes(grad.jaxpr).values())
  assert n_dots["none"] < n_dots["dots"] < n_dots["full"], n_dots


def test_remat_leaves_parameter_names_and_decoding_alone():
  params = init_variables(CONFIG, 0)["params"]
  remat = CONFIG.replace(remat="full")
  assert (jax.tree_util.tree_structure(jax.eval_shape(lambda: init_variables(remat, 0)["params"]))
          == jax.tree_util.tree_structure(params))
  tokens = _batch(2, 8)["tokens"]
  logits = {c.remat: jax.jit(Transformer(c).apply)({"params": params}, tokens).logits
            for c in (CONFIG, remat)}
  np.testing.assert_allclose(logits["full"], logits["none"], rtol=1e-6, atol=1e-6)
  with pytest.raises(model_config.ConfigError, match="'remat'"):
    CONFIG.replace(remat="some")
