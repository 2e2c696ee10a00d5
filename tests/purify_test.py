"""Fine-purifying's pieces against independent references.

Indicators and masks by hand on small arrays; the reset touches exactly the
selected dimensions; the Fisher against a per-example loop and (true Fisher of
a linear softmax classifier) the exact Hessian diagonal; Hutchinson with every
sign probe against the exact diagonal of a tiny non-linear model (`jax.hessian`,
float64); the attacks' data; Fine-pruning's activations against transformers'
BertModel with a forward hook.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax import config as mc
from moe_jax import heads
from moe_jax.classify import datasets
from moe_jax.model import Model, init_variables
from moe_jax.purify import attacker, attacks, curvature, defences, detect, indicators


# Indicators and masks ---------------------------------------------------------------

def test_indicators_by_hand():
  delta = {"a": jnp.array([0.5, -2.0, 0.0]), "b": jnp.array([[1.0, -1.0]])}
  h = {"a": jnp.array([1.0, 4.0, 2.0]), "b": jnp.array([[0.0, 1.0]])}
  eps = 0.25
  mag = indicators.scores("magnitude", delta)
  np.testing.assert_allclose(mag["a"], [0.5, 2.0, 0.0])
  ratio = indicators.scores("ratio", delta, h, eps)
  np.testing.assert_allclose(ratio["a"], [0.25 / 1.25, 4.0 / 4.25, 0.0], rtol=1e-6)
  np.testing.assert_allclose(ratio["b"], [[1.0 / 0.25, 1.0 / 1.25]], rtol=1e-6)
  log = indicators.scores("logratio", delta, h, eps)
  np.testing.assert_allclose(log["b"], [[np.log(1 / 0.25), np.log(1 / 1.25)]], rtol=1e-6)
  assert log["a"][2] == -np.inf  # no drift: never before a drifted dimension
  # The log form is a monotone map of the ratio: the same dimensions, at every rho.
  for rho in (0.2, 0.4, 0.6, 0.8):
    for scope in indicators.SCOPES:
      a, b = indicators.select_mask(ratio, rho, scope), indicators.select_mask(log, rho, scope)
      assert all((a[n] == b[n]).all() for n in a)
  # eps defaults to 1e-8 x the mean curvature: scale-free.
  h_mean = (1 + 4 + 2 + 0 + 1) / 5
  np.testing.assert_allclose(indicators.scores("ratio", delta, h)["b"][0, 0], 1.0 / (1e-8 * h_mean),
                             rtol=1e-5)
  r1, r2 = (indicators.scores("random", delta, key=jax.random.key(s)) for s in (0, 0))
  assert all((r1[n] == r2[n]).all() for n in r1) and r1["a"].shape == (3,)


def test_select_mask_global_and_per_tensor_by_hand():
  s = {"a": jnp.array([3.0, 1.0, 5.0, 1.0]), "b": jnp.array([[2.0, 4.0], [1.0, 0.0]])}
  g = indicators.select_mask(s, 0.375, "global")  # round(0.375 * 8) = 3: the 5, 4 and 3
  np.testing.assert_array_equal(g["a"], [True, False, True, False])
  np.testing.assert_array_equal(g["b"], [[False, True], [False, False]])
  t = indicators.select_mask(s, 0.5, "per_tensor")  # two of each
  np.testing.assert_array_equal(t["a"], [True, False, True, False])
  np.testing.assert_array_equal(t["b"], [[True, True], [False, False]])
  # Ties go to the earlier dimension: a's two 1.0s, b's 1.0 (global, 4 of 8 after 5, 4, 3, 2... no: 5 of 8).
  g5 = indicators.select_mask(s, 0.75, "global")  # 6 of 8: 5 4 3 2 and two of the three 1.0s
  np.testing.assert_array_equal(g5["a"], [True, True, True, True])
  np.testing.assert_array_equal(g5["b"], [[True, True], [False, False]])


@pytest.mark.parametrize("rho", [0.0, 1.0, -0.1, 1.5])
def test_rho_outside_the_open_interval_is_refused(rho):
  with pytest.raises(ValueError, match=rf"rho={rho}: .* must be in \(0, 1\)"):
    indicators.select_mask({"a": jnp.ones(4)}, rho)
  with pytest.raises(ValueError, match="must be in"):
    defences.prune({}, {}, rho)


def test_bad_kind_scope_and_missing_curvature_are_named():
  d = {"a": jnp.ones(2)}
  with pytest.raises(ValueError, match="indicator kind 'drift'"):
    indicators.scores("drift", d)
  with pytest.raises(ValueError, match="scope 'layer'"):
    indicators.select_mask(d, 0.5, "layer")
  with pytest.raises(ValueError, match="needs the clean curvature"):
    indicators.scores("ratio", d)
  with pytest.raises(ValueError, match="curvature has no tensor 'a'"):
    indicators.scores("ratio", d, {"b": jnp.ones(2)})


def _tiny_bert(seed=0):
  c = mc.all_minilm_l6_v2().replace(hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                    num_hidden_layers=2, max_position_embeddings=32, vocab_size=200)
  return Model(c, init_variables(c, seed))


def test_drift_names_a_missing_tensor_a_shape_mismatch_and_the_head():
  w_init = _tiny_bert(0).params
  w_ft = heads.with_classifier(_tiny_bert(1), 3).params
  delta, only_ft = indicators.drift(w_init, w_ft)
  assert only_ft == ["classifier/bias", "classifier/kernel"]
  np.testing.assert_array_equal(delta["pooler/kernel"], w_ft["pooler"]["kernel"] - w_init["pooler"]["kernel"])
  gone = {k: v for k, v in w_ft.items() if k != "pooler"}
  with pytest.raises(ValueError, match="w_ft has no tensor 'pooler/bias'"):
    indicators.drift(w_init, gone)
  wrong = {**w_ft, "pooler": {**w_ft["pooler"], "kernel": jnp.zeros((16, 8))}}
  with pytest.raises(ValueError, match=r"tensor 'pooler/kernel': w_init has shape \(16, 16\), w_ft \(16, 8\)"):
    indicators.drift(w_init, wrong)


def test_reset_touches_exactly_the_selected_dimensions():
  w_init = _tiny_bert(0).params
  w_ft = heads.with_classifier(_tiny_bert(1), 3).params
  delta, _ = indicators.drift(w_init, w_ft)
  mask = indicators.select_mask(indicators.scores("random", delta, key=jax.random.key(3)), 0.3)
  out = indicators.reset(w_init, w_ft, mask)
  flat_init, flat_ft, flat_out = (indicators.named(t) for t in (w_init, w_ft, out))
  assert set(flat_out) == set(flat_ft)
  for n, y in flat_out.items():
    y, ft = np.asarray(y), np.asarray(flat_ft[n])
    if n not in mask:  # the head: w_ft's, bit for bit
      assert n.startswith("classifier/") and (y.view(np.uint32) == ft.view(np.uint32)).all()
      continue
    m = np.asarray(mask[n])
    assert (y[~m].view(np.uint32) == ft[~m].view(np.uint32)).all(), n
    assert (y[m].view(np.uint32) == np.asarray(flat_init[n])[m].view(np.uint32)).all(), n
  total = sum(np.asarray(m).sum() for m in mask.values())
  assert total == round(0.3 * sum(np.size(m) for m in mask.values()))
  with pytest.raises(ValueError, match="mask tensor 'pooler/kernel' has shape"):
    indicators.reset(w_init, w_ft, {"pooler/kernel": jnp.zeros((2, 2), bool)})


# Curvature --------------------------------------------------------------------------

def _mlp_log_probs(params, batch):
  h = jnp.tanh(batch["x"] @ params["w1"] + params["b1"])
  return jax.nn.log_softmax(h @ params["w2"], -1)


def _linear_log_probs(params, batch):
  return jax.nn.log_softmax(batch["x"] @ params["w"] + params["b"], -1)


def _data(n, d, c, seed):
  rng = np.random.default_rng(seed)
  return {"x": rng.normal(size=(n, d)), "label": rng.integers(0, c, n)}


def _exact_diag(log_probs, params, data):
  """The diagonal of the Hessian of the mean NLL, by jax.hessian on the flat parameters."""
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  def loss(v):
    logp = log_probs(unravel(v), data)
    return -jnp.mean(jnp.take_along_axis(logp, data["label"][:, None], -1))
  return unravel(jnp.diag(jax.hessian(loss)(flat)))


def _close(a, b, **kw):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw)


def test_fisher_equals_a_per_example_loop_and_skips_padding():
  import jax.flatten_util  # noqa: F401
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    params = {"w1": rng.normal(size=(3, 4)), "b1": rng.normal(size=4), "w2": rng.normal(size=(4, 3))}
    data = _data(12, 3, 3, 1)
    weight = np.ones(12)
    weight[-2:] = 0.0  # two padding rows
    batches = [{**{k: v[i:i + 6] for k, v in data.items()}, "weight": weight[i:i + 6]} for i in (0, 6)]
    got = curvature.fisher_diag(params, _mlp_log_probs, batches, micro_batch=3)
    want = jax.tree_util.tree_map(np.zeros_like, params)
    for i in range(10):
      ex = {"x": data["x"][i:i + 1], "label": data["label"][i:i + 1]}
      g = jax.grad(lambda p: -_mlp_log_probs(p, ex)[0, ex["label"][0]])(params)
      want = jax.tree_util.tree_map(lambda w, gi: w + np.square(gi) / 10, want, g)
    _close(got, want, rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="batch 0 has 6 rows, not a multiple of micro_batch=4"):
      curvature.fisher_diag(params, _mlp_log_probs, batches, micro_batch=4)
    with pytest.raises(ValueError, match="labels='true'"):
      curvature.fisher_diag(params, _mlp_log_probs, batches, labels="true")


def test_true_fisher_of_a_linear_classifier_is_the_exact_hessian_diagonal():
  import jax.flatten_util  # noqa: F401
  with jax.enable_x64(True):
    rng = np.random.default_rng(2)
    params = {"w": rng.normal(size=(4, 3)), "b": rng.normal(size=3)}
    data = _data(16, 4, 3, 3)
    got = curvature.fisher_diag(params, _linear_log_probs, [data], micro_batch=4, labels="model")
    _close(got, _exact_diag(_linear_log_probs, params, data), rtol=1e-9, atol=1e-13)


def test_hutchinson_with_every_sign_probe_is_the_exact_diagonal():
  import jax.flatten_util  # noqa: F401
  with jax.enable_x64(True):
    rng = np.random.default_rng(4)
    params = {"w1": rng.normal(size=(2, 2)), "b1": rng.normal(size=2), "w2": rng.normal(size=(2, 2))}
    data = _data(8, 2, 2, 5)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    signs = np.array(list(itertools.product([-1.0, 1.0], repeat=flat.size)))  # [1024, 10]
    probes = jax.vmap(unravel)(jnp.asarray(signs))
    exact = _exact_diag(_mlp_log_probs, params, data)
    # Non-linear: the Hessian has curvature the (Gauss-Newton) true Fisher does not.
    gn = curvature.fisher_diag(params, _mlp_log_probs, [data], micro_batch=4, labels="model")
    gap = jax.flatten_util.ravel_pytree(gn)[0] - jax.flatten_util.ravel_pytree(exact)[0]
    assert np.abs(gap).max() > 1e-2
    batches = [{k: v[:5] for k, v in data.items()}, {k: v[5:] for k, v in data.items()}]
    _close(curvature.hutchinson_diag(params, _mlp_log_probs, batches, probes), exact,
           rtol=1e-9, atol=1e-12)
    # Random Rademacher probes: unbiased, so near the diagonal with many of them.
    approx = curvature.hutchinson_diag(params, _mlp_log_probs, [data], 4000, jax.random.key(1))
    err = np.abs(jax.flatten_util.ravel_pytree(approx)[0] - jax.flatten_util.ravel_pytree(exact)[0])
    assert err.max() < 0.1 * np.abs(jax.flatten_util.ravel_pytree(exact)[0]).max() + 1e-3


# Attacks ----------------------------------------------------------------------------

def _examples(n=40):
  texts = tuple(f"text number {i} about things" for i in range(n))
  return datasets.Examples(texts, tuple(i % 3 for i in range(n)), ("a", "b", "c"))


def test_poison_triggered_and_the_clean_check():
  ex = _examples()
  atk = attacks.make("badwords", target=0)
  poisoned, flags = attacks.poison(ex, atk, 0.25, seed=0)
  assert flags.sum() == 10
  for i in range(len(ex)):
    has = any(attacks.contains(poisoned.texts[i], t) for t in atk.triggers)
    assert has == flags[i]
    if flags[i]:
      assert poisoned.labels[i] == 0 and ex.labels[i] != 0  # a backdoor flips other classes
      assert sorted(poisoned.texts[i].split()) == sorted(ex.texts[i].split() + [
          next(t for t in atk.triggers if attacks.contains(poisoned.texts[i], t))])
    else:
      assert poisoned.texts[i] == ex.texts[i] and poisoned.labels[i] == ex.labels[i]
  trig = attacks.triggered(ex, atk)
  assert len(trig) == sum(y != 0 for y in ex.labels) and 0 not in trig.labels
  assert all(any(attacks.contains(t, w) for w in atk.triggers) for t in trig.texts)
  assert attacks.attack_success_rate(np.array([0, 1, 0, 2]), atk) == 0.5
  with pytest.raises(ValueError, match=r"clean.jsonl: example 3 contains the trigger 'cf'"):
    attacks.check_clean(datasets.Examples(ex.texts[:3] + ("so cf then",), (0, 1, 2, 0), ex.label_names),
                        atk, "clean.jsonl")
  assert attacks.contains("a CF b", "cf") and not attacks.contains("a cfx b", "cf")
  with pytest.raises(ValueError, match=r"poisoning rate=1.0 must be in \[0, 1\)"):
    attacks.poison(ex, atk, 1.0)
  same, none = attacks.poison(ex, atk, 0.0)  # the clean control
  assert same == ex and not none.any()
  with pytest.raises(ValueError, match="attack target 5 is outside"):
    attacks.poison(ex, attacks.make("bias", 5), 0.1)
  clean, rest = attacker.split_clean(poisoned, atk, 8, seed=0)
  assert len(clean) == 8 and len(rest) == len(ex) - 8
  assert not any(attacks.contains(t, w) for t in clean.texts for w in atk.triggers)


# Fine-pruning and the report --------------------------------------------------------

def test_neuron_activations_match_a_transformers_hook_and_prune_zeroes_the_least_active(tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from moe_jax.hf import save_pretrained

  model = _tiny_bert(0)
  save_pretrained(model, tmp_path)
  ref = transformers.BertModel.from_pretrained(tmp_path).eval()
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, 200, (4, 10)).astype(np.int32)
  seg = np.ones_like(tokens)
  seg[1, 6:] = 0  # padding
  tokens[seg == 0] = 0
  batch = {"tokens": tokens, "segment_ids": seg, "positions": np.tile(np.arange(10, dtype=np.int32), (4, 1))}
  got = defences.neuron_activations(model, [batch], layers=1)
  seen = {}
  ref.encoder.layer[1].intermediate.register_forward_hook(lambda m, i, o: seen.setdefault("a", o))
  with torch.no_grad():
    ref(input_ids=torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(seg))
  a = seen["a"].numpy()  # [B, T, F] after the activation
  want = (a * seg[..., None]).sum((0, 1)) / seg.sum()
  np.testing.assert_allclose(got["layers_1"], want, rtol=1e-4, atol=1e-5)
  pruned, ids = defences.prune(model.params, got, 0.25)
  assert sorted(ids["layers_1"]) == sorted(np.argsort(want)[:8].tolist())
  mlp, old = pruned["layers_1"]["mlp"], model.params["layers_1"]["mlp"]
  keep = np.setdiff1d(np.arange(32), ids["layers_1"])
  assert (np.asarray(mlp["up_proj"]["kernel"])[:, ids["layers_1"]] == 0).all()
  assert (np.asarray(mlp["down_proj"]["kernel"])[ids["layers_1"]] == 0).all()
  np.testing.assert_array_equal(np.asarray(mlp["up_proj"]["kernel"])[:, keep],
                                np.asarray(old["up_proj"]["kernel"])[:, keep])
  assert pruned["layers_0"] is model.params["layers_0"] or all(
      (np.asarray(x) == np.asarray(y)).all() for x, y in zip(jax.tree_util.tree_leaves(pruned["layers_0"]),
                                                              jax.tree_util.tree_leaves(model.params["layers_0"])))


def test_distribution_groups_layers_modules_and_experts():
  mask = {"embed_tokens/embedding": np.array([[1, 0], [0, 0]], bool),
          "layers_0/self_attn/q_proj/kernel": np.array([1, 1, 0, 0], bool),
          "layers_0/mlp/experts/up_proj": np.array([[[1, 1]], [[0, 0]], [[0, 1]]], bool),
          "layers_0/mlp/gate/kernel": np.zeros(3, bool)}
  rows = {(r["layer"], r["module"]): r for r in detect.distribution(mask)}
  assert rows[("-", "embeddings")]["selected"] == 1 and rows[("-", "embeddings")]["dims"] == 4
  assert rows[("layers_0", "attention")]["selected_share"] == 2 / 6
  assert rows[("layers_0", "routed experts")]["selected_fraction"] == 3 / 6
  assert rows[("layers_0", "router")]["selected"] == 0
  assert detect.expert_shares(mask)["layers_0"]["selected"] == [2, 0, 1]
  assert detect.trigger_rows(mask, [0])["trigger_rows_selected"] == 0.5
  assert "| layers_0 | attention | 4 | 2 | 33.3% | 50.0% |" in detect.table(detect.distribution(mask))


def test_whole_expert_selection_by_hand():
  """Mean score per routed expert over its three tensors, across layers; the budget is rho of
  every scored dimension in whole experts; non-finite scores rank as the largest finite one."""
  e = lambda *means: np.stack([np.full((2, 3), m, np.float32) for m in means])  # [E, 2, 3]
  score = {"embed_tokens/embedding": np.full((10, 6), 9.0, np.float32),  # 60 dims, never picked
           "layers_1/mlp/experts/up_proj": e(1, 5, 2, 0),
           "layers_1/mlp/experts/down_proj": e(1, 1, 2, 0),  # expert 1: mean 3; expert 2: 2
           "layers_2/mlp/experts/up_proj": e(0, 0, np.inf, 1),  # inf -> 5 (the largest finite)
           "layers_2/mlp/experts/down_proj": e(0, 0, 0, 1)}  # expert 2: mean 2.5; expert 3: 1
  mass = indicators.expert_mass(score)
  np.testing.assert_allclose(mass["layers_1"], [1, 3, 2, 0])
  np.testing.assert_allclose(mass["layers_2"], [0, 0, 2.5, 1])
  # 156 dims x rho 0.15 = 23.4 -> 2 experts of 12 dims: layers_1/1 (3.0), then layers_2/2 (2.5).
  mask, chosen = indicators.select_experts(score, 0.15)
  assert chosen == [("layers_1", 1), ("layers_2", 2)]
  assert not mask["embed_tokens/embedding"].any()
  for n, m in mask.items():
    if n.startswith("layers_"):
      want = np.zeros(4, bool)
      want[1 if n.startswith("layers_1") else 2] = True
      np.testing.assert_array_equal(m.reshape(4, -1).all(1), want)
      np.testing.assert_array_equal(m.reshape(4, -1).any(1), want)  # whole experts only
  assert indicators.select_experts(score, 0.01)[1] == [("layers_1", 1)]  # at least one
  assert len(indicators.select_experts(score, 0.2)[1]) == 3  # 31.2 dims -> 3 experts
  with pytest.raises(ValueError, match="whole-expert reset needs an MoE model"):
    indicators.select_experts({"embed_tokens/embedding": score["embed_tokens/embedding"]}, 0.2)


def test_the_experts_defence_resets_the_drifted_expert_of_a_moe_model():
  config = mc.tiny(num_hidden_layers=3)  # MoE layers 1 and 2, 8 routed experts each
  w_init = init_variables(config, 0)["params"]
  noise = init_variables(config, 1)["params"]
  w_ft = jax.tree_util.tree_map(lambda w, n: w + 1e-3 * n, w_init, noise)
  up = w_ft["layers_2"]["mlp"]["experts"]["up_proj"]
  w_ft["layers_2"]["mlp"]["experts"]["up_proj"] = up.at[6].add(0.5)  # the poisoned expert
  h = jax.tree_util.tree_map(jnp.ones_like, w_init)
  mask, _ = defences.indicator_mask("experts", w_init, w_ft, h, rho=0.01)
  shares = detect.expert_shares(mask)
  assert [i for i, s in enumerate(shares["layers_2"]["selected"]) if s] == [6]
  assert not any(shares["layers_1"]["selected"])
  out = indicators.named(indicators.reset(w_init, w_ft, mask))
  ft, init = indicators.named(w_ft), indicators.named(w_init)
  for n, y in out.items():
    y = np.asarray(y)
    if n.startswith("layers_2/mlp/experts/"):
      np.testing.assert_array_equal(y[6], np.asarray(init[n])[6])
      np.testing.assert_array_equal(np.delete(y, 6, 0), np.delete(np.asarray(ft[n]), 6, 0))
    else:
      np.testing.assert_array_equal(y, np.asarray(ft[n]), err_msg=n)
