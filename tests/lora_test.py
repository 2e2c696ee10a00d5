"""LoRA as a trainable spec: the merged weights, and what trains."""

import jax
import numpy as np

from moe_jax import config as C
from moe_jax import input_pipeline, lora, train_config, trainable
from moe_jax.model import init_variables
from moe_jax.steps import TrainState, make_optimizer, make_train_step
from moe_jax.tokenizer import ByteTokenizer

CONFIG = C.tiny(num_hidden_layers=2)


def test_merged_weights_are_base_plus_scaled_product():
  params = init_variables(CONFIG, 0)["params"]
  factors = lora.init(params, rank=3, seed=1)
  rng = np.random.default_rng(0)
  factors = {k: {"a": v["a"], "b": rng.normal(size=v["b"].shape).astype(np.float32)}
             for k, v in factors.items()}
  merged = lora.apply(params, factors, scale=2.0)
  # Every matrix but the embedding and output head has factors; norms have none.
  names = set(factors)
  assert "layers_1.mlp.experts.gate_proj" in names and "layers_1.self_attn.o_proj.kernel" in names
  assert not any(n.startswith(("embed_tokens", "lm_head")) or "layernorm" in n for n in names)
  o = params["layers_1"]["self_attn"]["o_proj"]["kernel"]  # [N, H, D]: N*H inputs
  f = factors["layers_1.self_attn.o_proj.kernel"]
  want = np.asarray(o, np.float64) + 2.0 * (np.asarray(f["a"], np.float64) @ f["b"]).reshape(o.shape)
  np.testing.assert_allclose(merged["layers_1"]["self_attn"]["o_proj"]["kernel"], want, rtol=1e-5,
                             atol=1e-6)
  g = params["layers_1"]["mlp"]["experts"]["down_proj"]  # [E, F, D]: one pair per expert
  f = factors["layers_1.mlp.experts.down_proj"]
  for e in range(CONFIG.n_routed_experts):
    want = np.asarray(g[e], np.float64) + 2.0 * np.asarray(f["a"][e], np.float64) @ f["b"][e]
    np.testing.assert_allclose(merged["layers_1"]["mlp"]["experts"]["down_proj"][e], want,
                               rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(merged["embed_tokens"]["embedding"], params["embed_tokens"]["embedding"])


def test_lora_trains_only_factors(repo_root):
  params = init_variables(CONFIG, 0)["params"]
  spec = trainable.TrainableSpec("lora", lora_rank=4, seed=0)
  split = trainable.split(params, spec, CONFIG)
  np.testing.assert_array_equal(  # B = 0: the merged model starts as the base model
      trainable.merge(split, spec, CONFIG)["layers_1"]["mlp"]["experts"]["up_proj"],
      params["layers_1"]["mlp"]["experts"]["up_proj"])
  cfg = train_config.base_config()
  cfg.optimizer.learning_rate = 1e-2
  tx = make_optimizer(cfg.optimizer, 3, spec)
  state = TrainState(step=np.int32(0), params=split, buffers={}, opt_state=tx.init(split))
  rows = input_pipeline.load_packed([str(repo_root / "moe_jax/assets/intent_train_sample.jsonl")],
                                    ByteTokenizer(), 64, max_examples=40)
  batch = {k: v[:4] for k, v in rows.items()}
  step = jax.jit(make_train_step(CONFIG, spec, tx))
  new = state
  for _ in range(2):
    new, m = step(new, batch)
  assert bool(m["finite"])
  for a, b in zip(jax.tree_util.tree_leaves(split["base"]), jax.tree_util.tree_leaves(new.params["base"])):
    np.testing.assert_array_equal(a, b)
  changed = [not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(split["lora"]),
                                                       jax.tree_util.tree_leaves(new.params["lora"]))]
  assert all(changed)
  n = trainable.count(split, trainable.labels(split, spec))
  opt_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(new.opt_state))
  assert 8 * n["train"] <= opt_bytes < 8 * n["train"] + 64  # Adam mu, nu for the factors only
