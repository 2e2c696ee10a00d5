"""`moe_jax.trainable`: the spec a config asks for, and task heads beside the transformer."""

import json

import jax
import numpy as np
import optax
import pytest

from moe_jax import config as C
from moe_jax import sharding, steps, train_config, train_lib, trainable
from moe_jax.model import Model, init_variables

CONFIG = C.tiny(num_hidden_layers=3)  # MoE layers 1 and 2, 8 experts
HEAD = {"kernel": jax.sharding.PartitionSpec(None), "bias": jax.sharding.PartitionSpec()}


def _cfg(mode, **esft):
  c = train_config.base_config()
  c.train_mode = mode
  c.seed = 7
  c.esft.update(esft)
  return c


def test_from_config_builds_each_mode(tmp_path):
  assert trainable.from_config(_cfg("fft"), CONFIG) == trainable.TrainableSpec()
  assert trainable.from_config(_cfg("lora"), CONFIG) == trainable.TrainableSpec(
      "lora", lora_rank=8, lora_scale=2.0, seed=7)
  # ESFT from a scoring callback, the config's flags applied over the dict's.
  picked = {"experts": {"2": [5], "1": [0, 3]}, "shared_experts": False, "non_expert_modules": False}
  spec = trainable.from_config(_cfg("esft", train_shared_experts=True), CONFIG, lambda: picked)
  assert spec == trainable.TrainableSpec("esft", ((1, (0, 3)), (2, (5,))), shared_experts=True)
  # ...and from a file, which wins over the callback (never called then).
  path = tmp_path / "expert_config.json"
  path.write_text(json.dumps({"experts": {"1": [7]}}))
  spec = trainable.from_config(_cfg("esft", expert_config=str(path)), CONFIG,
                               lambda: pytest.fail("scored although a file was given"))
  assert spec.experts == ((1, (7,)),)


def test_from_config_errors_name_the_field():
  with pytest.raises(ValueError, match=r"config.train_mode: 'lora' is not one of \('fft', 'esft'\)"):
    trainable.from_config(_cfg("lora"), CONFIG, modes=("fft", "esft"))
  with pytest.raises(ValueError, match="config.esft.expert_config"):
    trainable.from_config(_cfg("esft"), CONFIG)


@pytest.mark.parametrize("mode", ["fft", "esft", "lora"])
def test_a_head_trains_and_passes_through_unsplit(mode):
  params = init_variables(CONFIG, 0)["params"]
  head = {"kernel": np.arange(CONFIG.hidden_size, dtype=np.float32), "bias": np.float32(2.0)}
  base = {"fft": trainable.TrainableSpec(), "lora": trainable.TrainableSpec("lora", lora_rank=2),
          "esft": trainable.TrainableSpec("esft", ((1, (2,)),))}[mode]
  spec = base.with_heads({"value_head": HEAD})
  split = trainable.split({**params, "value_head": head}, spec, CONFIG)
  assert split["value_head"] is head  # beside the transformer's tree, untouched
  labels = trainable.labels(split, spec)
  assert labels["value_head"] == {"kernel": "train", "bias": "train"}
  # The transformer's leaves are labelled as without the head.
  without = trainable.labels(trainable.split(params, base, CONFIG), base)
  assert {k: v for k, v in labels.items() if k != "value_head"} == without
  merged = trainable.merge(split, spec, CONFIG)
  assert merged["value_head"] is head and set(merged) == set(params) | {"value_head"}
  fwd, _ = trainable.for_forward(split, spec, CONFIG)
  assert fwd["value_head"] is head


def test_an_undeclared_top_level_parameter_is_named(tmp_path):
  params = init_variables(CONFIG, 0)["params"]
  model = Model(CONFIG, {"params": {**params, "value_head": {"kernel": np.zeros(CONFIG.hidden_size),
                                                             "bias": np.float32(0)}}})
  cfg = _cfg("fft")
  cfg.data.batch_size = 1
  mesh = sharding.make_mesh({"data": -1})
  with pytest.raises(ValueError, match=r"parameters \['value_head'\] are not the model's"):
    train_lib.start_run(cfg, str(tmp_path), model, trainable.TrainableSpec(), mesh, 1)
  run = train_lib.start_run(cfg, str(tmp_path), model,
                            trainable.TrainableSpec().with_heads({"value_head": HEAD}), mesh, 1)
  assert run.summary["trainable_params"] == run.summary["total_params"]


def test_keep_only_moves_exactly_the_kept_dimensions():
  """make_optimizer(keep=...): AdamW with weight decay moves every kept dimension and leaves
  every other one bitwise as it was; the mask rides in the state, sharded like the params."""
  rng = np.random.default_rng(0)
  params = {"w": rng.normal(size=(6, 5)).astype(np.float32), "b": rng.normal(size=(5,)).astype(np.float32)}
  keep = {"w": rng.random((6, 5)) < 0.3, "b": np.zeros(5, bool)}
  cfg = train_config.base_config().optimizer
  cfg.learning_rate, cfg.weight_decay = 1e-1, 0.1
  tx = steps.make_optimizer(cfg, 3, trainable.TrainableSpec(), keep)
  state, p = tx.init(params), params
  for _ in range(3):
    grads = jax.tree_util.tree_map(lambda x: rng.normal(size=x.shape).astype(np.float32), p)
    updates, state = tx.update(grads, state, p)
    p = optax.apply_updates(p, updates)
  for name in params:
    moved = np.asarray(p[name]) != params[name]
    np.testing.assert_array_equal(moved, keep[name], err_msg=name)
  mesh = sharding.make_mesh({"data": -1})
  shardings = sharding.like_params(state, params, jax.tree_util.tree_map(
      lambda _: "param sharding", params), mesh)
  got = [s for path, s in jax.tree_util.tree_flatten_with_path(shardings)[0]
         if "keep" in jax.tree_util.keystr(path)]
  assert got == ["param sharding"] * 2


def test_lr_scale_gives_a_head_its_own_learning_rate():
  """make_optimizer(lr_scale={"head": 8}): the head moves exactly as AdamW at 8x the learning
  rate would move it alone (weight decay included); every other leaf as AdamW at the base rate."""
  rng = np.random.default_rng(1)
  params = {"body": {"w": rng.normal(size=(4, 3)).astype(np.float32)},
            "head": {"kernel": rng.normal(size=(3, 2)).astype(np.float32),
                     "bias": rng.normal(size=(2,)).astype(np.float32)}}
  cfg = train_config.base_config().optimizer
  cfg.schedule, cfg.warmup_steps, cfg.grad_clip = "constant", 0, 1e9
  cfg.learning_rate, cfg.weight_decay = 1e-2, 0.1
  spec = trainable.TrainableSpec().with_heads({"head": HEAD})
  tx = steps.make_optimizer(cfg, 3, spec, lr_scale={"head": 8.0})
  mask = lambda t: jax.tree_util.tree_map(lambda x: x.ndim >= 2, t)
  ref = {k: optax.adamw(cfg.learning_rate * (8.0 if k == "head" else 1.0), b1=cfg.b1, b2=cfg.b2,
                        weight_decay=cfg.weight_decay, mask=mask) for k in params}
  state, ref_state = tx.init(params), {k: ref[k].init(params[k]) for k in params}
  p, q = params, dict(params)
  for _ in range(3):
    grads = jax.tree_util.tree_map(lambda x: rng.normal(size=x.shape).astype(np.float32), p)
    updates, state = tx.update(grads, state, p)
    p = optax.apply_updates(p, updates)
    for k in q:
      u, ref_state[k] = ref[k].update(grads[k], ref_state[k], q[k])
      q[k] = optax.apply_updates(q[k], u)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), p, q)
  assert not np.allclose(p["head"]["kernel"], params["head"]["kernel"])
  with pytest.raises(KeyError, match="lr_scale names \\['nope'\\]"):
    bad = steps.make_optimizer(cfg, 3, spec, lr_scale={"nope": 2.0})
    bad.update(params, bad.init(params), params)
