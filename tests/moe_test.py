"""Tests of `moe_jax.moe`: routing, the three token dispatches, capacity and balance losses.

Every reference here is independent of the code under test: float64 numpy
per-token loops written from DeepSeek's `MoEGate` / transformers' DeepSeek-V2/V3
gates (shared spec deepseekmoe.md A.4-A.5) and the DeepSeekMoE paper, plus torch
float64 autograd for the gradients.

  * `route`: chosen experts (as sets) and their weights for softmax greedy,
    V2 group-limited greedy, V3 noaux_tc (sigmoid + correction bias), and the
    norm_topk_prob / routed_scaling_factor rules.
  * `sorted_experts` (dropless), `ragged_experts`, `dense_experts`: outputs and
    gradients against a per-token loop; the model's logits and aux outputs are
    the same under dispatch "sorted", "grouped", "ragged_dot" and "dense".
  * `capacity` and token dropping: the dropped count and which assignments are
    kept (the first `capacity` per expert in (token, k) order).
  * `balance_losses`: DeepSeek's sequence-wise and batch-wise expert loss, the
    device-level loss (DeepSeekMoE Eq. 14-15), padding excluded; the MoE layer's
    output, loss and expert_counts.
"""

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from moe_jax import config as config_lib
from moe_jax import moe
from moe_jax.model import Model, Transformer, init_model

# Float32 results against float64 references.
RTOL = 2e-5
# A top-k decision closer than this (in score units) could flip under float32
# rounding; such tokens are left out of set comparisons.
MARGIN = 1e-6


def _cfg(**overrides):
  return config_lib.tiny(**overrides)


# Float64 reference routing ---------------------------------------------------


def _softmax(x):
  x = x - x.max(-1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(-1, keepdims=True)


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _silu(x):
  return x / (1.0 + np.exp(-x))


def _ref_route_token(row, c, bias):
  """One token's routing, written from transformers' DeepseekV2/V3 gates.

  Returns ({expert: weight}, the smallest margin of any top-k decision made).
  """
  e, k = c.n_routed_experts, c.num_experts_per_tok
  s = _softmax(row) if c.scoring_func == "softmax" else _sigmoid(row)
  choice = s.copy() if bias is None else s + bias
  margins = []
  if c.topk_method != "greedy":
    g = c.n_group
    size = e // g
    groups = choice.reshape(g, size)
    if c.topk_method == "group_limited_greedy":
      group_score, fill = groups.max(1), 0.0  # V2: masked_fill(..., 0.0)
    else:
      group_score, fill = np.sort(groups, 1)[:, -2:].sum(1), -np.inf  # V3: -inf
    g_order = np.argsort(-group_score, kind="stable")
    if c.topk_group < g:
      margins.append(group_score[g_order[c.topk_group - 1]] - group_score[g_order[c.topk_group]])
    masked = np.full(e, fill)
    for grp in g_order[:c.topk_group]:
      masked[grp * size:(grp + 1) * size] = choice[grp * size:(grp + 1) * size]
    choice = masked
  order = np.argsort(-choice, kind="stable")
  chosen = order[:k]
  if k < e:
    margins.append(choice[order[k - 1]] - choice[order[k]])
  w = s[chosen]  # weights are always the unbiased scores
  if c.scoring_func == "softmax":
    # DeepSeek MoEGate: `if top_k > 1 and norm_topk_prob: renormalise; else: scale`.
    if k > 1 and c.norm_topk_prob:
      w = w / (w.sum() + 1e-20)
    else:
      w = w * c.routed_scaling_factor
  else:
    # DeepseekV3TopkRouter: renormalise if asked, then always scale.
    if c.norm_topk_prob:
      w = w / (w.sum() + 1e-20)
    w = w * c.routed_scaling_factor
  return dict(zip(chosen.tolist(), w.tolist())), min(margins, default=np.inf)


def _ref_route(logits, c, bias=None):
  flat = np.asarray(logits, np.float64).reshape(-1, c.n_routed_experts)
  b = None if bias is None else np.asarray(bias, np.float64)
  out = [_ref_route_token(row, c, b) for row in flat]
  return [o[0] for o in out], np.array([o[1] for o in out])


_ROUTE = jax.jit(moe.route, static_argnums=1)

_ROUTING_CASES = {
    # DeepSeekMoE 16B / V2-Lite: raw softmax probabilities.
    "softmax_greedy": dict(num_experts_per_tok=4),
    # Not renormalised, so scaled (V2 236B uses 16).
    "softmax_greedy_scaled": dict(num_experts_per_tok=4, routed_scaling_factor=16.0),
    # Renormalised, so NOT scaled (DeepSeek remote code's if/else).
    "softmax_greedy_norm": dict(num_experts_per_tok=4, norm_topk_prob=True, routed_scaling_factor=2.5),
    # top-1 is never renormalised, so it is scaled.
    "softmax_greedy_norm_top1": dict(num_experts_per_tok=1, norm_topk_prob=True,
                                     routed_scaling_factor=2.0),
    "softmax_group_limited": dict(num_experts_per_tok=3, topk_method="group_limited_greedy",
                                  n_group=4, topk_group=2, routed_scaling_factor=16.0),
    "sigmoid_noaux_tc": dict(num_experts_per_tok=4, topk_method="noaux_tc", scoring_func="sigmoid",
                             n_group=4, topk_group=2, norm_topk_prob=True, routed_scaling_factor=2.5),
    # Biases push every biased score below zero: masked groups must lose to them (-inf fill).
    "sigmoid_noaux_tc_negative": dict(num_experts_per_tok=3, topk_method="noaux_tc",
                                      scoring_func="sigmoid", n_group=4, topk_group=1,
                                      norm_topk_prob=False, routed_scaling_factor=1.0),
}


@pytest.mark.parametrize("name", list(_ROUTING_CASES))
def test_route_matches_reference(name):
  c = _cfg(n_routed_experts=16, **_ROUTING_CASES[name])
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 2.0, (2, 32, 16)).astype(np.float32)
  bias = None
  if c.topk_method == "noaux_tc":
    bias = rng.normal(0, 0.5, 16).astype(np.float32)
    if name.endswith("negative"):
      bias = (bias - 3.0).astype(np.float32)
  idx, w, scores = _ROUTE(jnp.asarray(logits), c, None if bias is None else jnp.asarray(bias))
  assert idx.shape == (2, 32, c.num_experts_per_tok) and idx.dtype == jnp.int32
  assert w.shape == idx.shape and scores.shape == logits.shape
  idx, w = np.asarray(idx).reshape(64, -1), np.asarray(w).reshape(64, -1)
  ref, margins = _ref_route(logits, c, bias)
  clear = margins > MARGIN
  assert clear.sum() >= 0.9 * len(clear), "test data has too many near-ties"
  for t in np.flatnonzero(clear):
    assert set(idx[t].tolist()) == set(ref[t]), f"token {t}"
    want = np.array([ref[t][e] for e in idx[t]])
    np.testing.assert_allclose(w[t], want, rtol=RTOL, atol=1e-7, err_msg=f"token {t}")
  # The scores returned are the plain affinities, before bias or masking.
  ref_scores = (_softmax if c.scoring_func == "softmax" else _sigmoid)(logits.astype(np.float64))
  np.testing.assert_allclose(np.asarray(scores), ref_scores, rtol=RTOL, atol=1e-7)
  if c.topk_method != "greedy":
    # The group restriction (and bias) must actually have changed some choices.
    plain = np.argsort(-ref_scores.reshape(64, -1), -1)[:, :c.num_experts_per_tok]
    assert any(set(plain[t]) != set(ref[t]) for t in range(64))
  if name.endswith("negative"):
    # Every biased score is < 0, so a 0-filled mask would pick the dropped groups;
    # the -inf fill keeps every chosen expert in the one kept group.
    assert np.all(ref_scores + bias < 0)
    groups = idx // 4
    assert np.all(groups == groups[:, :1])


def test_route_bias_changes_choice_not_weights():
  """Raising one expert's bias makes it chosen everywhere, at its unbiased weight."""
  c = _cfg(n_routed_experts=16, num_experts_per_tok=2, topk_method="noaux_tc",
           scoring_func="sigmoid", n_group=4, topk_group=2, norm_topk_prob=False,
           routed_scaling_factor=1.0)
  logits = np.random.default_rng(1).normal(0, 1.0, (8, 16)).astype(np.float32)
  bias = np.zeros(16, np.float32)
  bias[5] = 10.0
  idx, w, scores = _ROUTE(jnp.asarray(logits), c, jnp.asarray(bias))
  idx, w = np.asarray(idx), np.asarray(w)
  assert np.all((idx == 5).sum(-1) == 1)
  np.testing.assert_allclose(w[idx == 5], _sigmoid(logits[:, 5].astype(np.float64)), rtol=RTOL)


# Dispatch ----------------------------------------------------------------------

T, D, F, E = 12, 8, 16, 8


def _expert_weights(rng, e=E, d=D, f=F):
  wg = rng.normal(0, d ** -0.5, (e, d, f)).astype(np.float32)
  wu = rng.normal(0, d ** -0.5, (e, d, f)).astype(np.float32)
  wd = rng.normal(0, f ** -0.5, (e, f, d)).astype(np.float32)
  return wg, wu, wd


def _ref_experts(x, idx, w, wg, wu, wd, keep=None):
  """Per token, per chosen expert: weight * down(silu(x gate) * (x up)), in float64."""
  x, w, wg, wu, wd = (np.asarray(a, np.float64) for a in (x, w, wg, wu, wd))
  y = np.zeros_like(x)
  for t in range(x.shape[0]):
    for j in range(idx.shape[1]):
      if keep is not None and not keep[t, j]:
        continue
      e = idx[t, j]
      h = _silu(x[t] @ wg[e]) * (x[t] @ wu[e])
      y[t] += w[t, j] * (h @ wd[e])
  return y


def _routing(kind, rng):
  """topk_idx [T, K] for the named routing pattern."""
  if kind == "some_experts_idle":  # experts 4, 6, 7 receive nothing
    pool = np.array([0, 1, 2, 3, 5])
    return np.stack([rng.choice(pool, 2, replace=False) for _ in range(T)]).astype(np.int32)
  if kind == "all_to_one":
    return np.full((T, 1), 3, np.int32)
  if kind == "distinct_k3":
    return np.stack([rng.choice(E, 3, replace=False) for _ in range(T)]).astype(np.int32)
  if kind == "every_expert":  # K = E
    return np.stack([rng.permutation(E) for _ in range(T)]).astype(np.int32)
  raise ValueError(kind)


_SORTED = jax.jit(moe.sorted_experts, static_argnums=6)
_GROUPED = jax.jit(moe.grouped_experts)
_PALLAS = jax.jit(moe.pallas_experts, static_argnames="block")  # interpreted on CPU
_RAGGED = jax.jit(moe.ragged_experts)
_DENSE = jax.jit(moe.dense_experts)


def _dispatch_inputs(kind, seed=0):
  rng = np.random.default_rng(seed)
  idx = _routing(kind, rng)
  w = rng.uniform(0.1, 1.0, idx.shape).astype(np.float32)
  x = rng.normal(0, 1, (T, D)).astype(np.float32)
  return x, idx, w, _expert_weights(rng)


@pytest.mark.parametrize("kind", ["some_experts_idle", "all_to_one", "distinct_k3", "every_expert"])
def test_dispatch_paths_match_loop(kind):
  x, idx, w, (wg, wu, wd) = _dispatch_inputs(kind)
  want = _ref_experts(x, idx, w, wg, wu, wd)
  atol = 1e-5 * np.abs(want).max()
  cap = moe.capacity(T, _cfg(n_routed_experts=E, num_experts_per_tok=idx.shape[1]))
  assert cap == T  # dropless
  y, dropped = _SORTED(x, idx, w, wg, wu, wd, cap)
  assert int(dropped) == 0
  np.testing.assert_allclose(np.asarray(y), want, rtol=RTOL, atol=atol, err_msg="sorted")
  y = _GROUPED(x, idx, w, wg, wu, wd)
  np.testing.assert_allclose(np.asarray(y), want, rtol=RTOL, atol=atol, err_msg="grouped")
  y = _PALLAS(x, idx, w, wg, wu, wd, block=8)
  np.testing.assert_allclose(np.asarray(y), want, rtol=RTOL, atol=atol, err_msg="pallas")
  y = _RAGGED(x, idx, w, wg, wu, wd)
  np.testing.assert_allclose(np.asarray(y), want, rtol=RTOL, atol=atol, err_msg="ragged_dot")
  y = _DENSE(x, idx, w, wg, wu, wd)
  np.testing.assert_allclose(np.asarray(y), want, rtol=RTOL, atol=atol, err_msg="dense")


class ExpertFFNTest(chex.TestCase):
  """`moe.expert_ffn`, the one dispatch table the model and the benchmarks call, equals the
  per-token loop for every dispatch, traced under jit and run op by op alike."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_every_dispatch_matches_loop(self):
    x, idx, w, (wg, wu, wd) = _dispatch_inputs("distinct_k3", seed=3)
    want = _ref_experts(x, idx, w, wg, wu, wd)
    for dispatch in ("sorted", "grouped", "ragged_dot", "dense"):
      y, dropped = self.variant(moe.expert_ffn, static_argnums=0)(dispatch, x, idx, w, wg, wu, wd)
      chex.assert_shape(y, x.shape)
      chex.assert_trees_all_close(np.asarray(y, np.float64), want, rtol=RTOL,
                                  atol=1e-5 * np.abs(want).max(), custom_message=dispatch)
      assert int(dropped) == 0, dispatch

  def test_unknown_dispatch_is_named(self):
    x, idx, w, (wg, wu, wd) = _dispatch_inputs("distinct_k3")
    with pytest.raises(ValueError, match="'sideways'"):
      moe.expert_ffn("sideways", x, idx, w, wg, wu, wd)


def test_grouped_blocks_with_skewed_load():
  """Several blocks per expert, partial last blocks, an idle expert: still the loop's result."""
  rng = np.random.default_rng(7)
  t, k = 300, 2
  probs = np.array([0.4, 0.2, 0.15, 0.1, 0.1, 0.05, 0.0, 0.0])
  idx = np.stack([rng.choice(E, k, replace=False, p=probs / probs.sum()) for _ in range(t)])
  assert moe.block_size(t * k, E) == 16  # so expert 0 (~240 rows) spans many blocks
  x = rng.normal(0, 1, (t, D)).astype(np.float32)
  w = rng.uniform(0.1, 1.0, idx.shape).astype(np.float32)
  wg, wu, wd = _expert_weights(rng)
  want = _ref_experts(x, idx, w, wg, wu, wd)
  got = _GROUPED(x, idx.astype(np.int32), w, wg, wu, wd)
  np.testing.assert_allclose(np.asarray(got), want, rtol=RTOL, atol=1e-5 * np.abs(want).max())
  got = _PALLAS(x, idx.astype(np.int32), w, wg, wu, wd, block=16)
  np.testing.assert_allclose(np.asarray(got), want, rtol=RTOL, atol=1e-5 * np.abs(want).max())


def _torch_grads(x, idx, w, wg, wu, wd, ct, keep=None):
  """Float64 autograd of sum(ct * loop(x)) wrt (x, weights, wg, wu, wd); `keep` [T, K] skips drops."""
  leaves = [torch.tensor(np.asarray(a, np.float64), requires_grad=True) for a in (x, w, wg, wu, wd)]
  tx, tw, tg, tu, td = leaves
  rows = []
  for t in range(x.shape[0]):
    acc = torch.zeros(x.shape[1], dtype=torch.float64)
    for j in range(idx.shape[1]):
      if keep is not None and not keep[t, j]:
        continue
      e = int(idx[t, j])
      h = torch.nn.functional.silu(tx[t] @ tg[e]) * (tx[t] @ tu[e])
      acc = acc + tw[t, j] * (h @ td[e])
    rows.append(acc)
  (torch.stack(rows) * torch.tensor(ct, dtype=torch.float64)).sum().backward()
  return [leaf.grad.numpy() for leaf in leaves]


@pytest.mark.parametrize("kind", ["some_experts_idle", "distinct_k3"])
def test_dispatch_gradients_agree(kind):
  x, idx, w, (wg, wu, wd) = _dispatch_inputs(kind, seed=1)
  ct = np.random.default_rng(2).normal(0, 1, (T, D)).astype(np.float32)
  jidx = jnp.asarray(idx)
  paths = {
      "sorted": lambda *a: moe.sorted_experts(a[0], jidx, *a[1:], T)[0],
      "grouped": lambda *a: moe.grouped_experts(a[0], jidx, *a[1:]),
      "pallas": lambda *a: moe.pallas_experts(a[0], jidx, *a[1:], block=8),
      "ragged_dot": lambda *a: moe.ragged_experts(a[0], jidx, *a[1:]),
      "dense": lambda *a: moe.dense_experts(a[0], jidx, *a[1:]),
  }
  want = _torch_grads(x, idx, w, wg, wu, wd, ct)
  names = ("x", "topk_weights", "gate_proj", "up_proj", "down_proj")
  for path, fn in paths.items():
    loss = lambda *a, fn=fn: jnp.sum(fn(*a) * ct)
    got = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))(x, w, wg, wu, wd)
    for name, g, r in zip(names, got, want):
      np.testing.assert_allclose(np.asarray(g), r, rtol=1e-4, atol=1e-5 * np.abs(r).max(),
                                 err_msg=f"{path}: d/d{name}")
  if kind == "some_experts_idle":  # idle experts get exactly zero gradient
    got = jax.grad(lambda g: jnp.sum(paths["sorted"](x, w, g, wu, wd) * ct))(wg)
    assert np.all(np.asarray(got)[[4, 6, 7]] == 0)


def _routed_params(wg, wu, wd):
  return {"params": {"gate_proj": wg, "up_proj": wu, "down_proj": wd}}


def test_routed_experts_module_dispatches_agree():
  """RoutedExperts on [B, S, D] under each dispatch equals the per-token loop."""
  rng = np.random.default_rng(3)
  b, s, k = 2, 6, 2
  idx = np.stack([rng.choice(E, k, replace=False) for _ in range(b * s)]).astype(np.int32)
  w = rng.uniform(0.1, 1.0, idx.shape).astype(np.float32)
  x = rng.normal(0, 1, (b * s, D)).astype(np.float32)
  wg, wu, wd = _expert_weights(rng)
  want = _ref_experts(x, idx, w, wg, wu, wd).reshape(b, s, D)
  for dispatch in ("sorted", "grouped", "pallas", "ragged_dot", "dense"):
    c = _cfg(hidden_size=D, moe_intermediate_size=F, n_routed_experts=E, num_experts_per_tok=k,
             dispatch=dispatch)
    y, dropped = moe.RoutedExperts(c).apply(_routed_params(wg, wu, wd), x.reshape(b, s, D),
                                            idx.reshape(b, s, k), w.reshape(b, s, k),
                                            np.ones((b, s), bool))
    assert int(dropped) == 0
    np.testing.assert_allclose(np.asarray(y), want, rtol=RTOL, atol=1e-5 * np.abs(want).max(),
                               err_msg=dispatch)


def test_model_logits_same_for_every_dispatch():
  base = _cfg()
  tokens = np.random.default_rng(4).integers(0, base.vocab_size, (2, 12)).astype(np.int32)
  segments = np.ones_like(tokens)
  segments[1, :3] = 0  # some padding: it must not change anything between dispatches
  # The dispatch changes no variable: same names and shapes, hence the same
  # values from the same seed. (Checked abstractly; compiling three inits is slow.)
  abstract = lambda c: jax.eval_shape(Transformer(c).init, jax.random.key(0),
                                      jnp.zeros((1, 1), jnp.int32))["params"]
  dispatches = ("auto", "sorted", "grouped", "pallas", "ragged_dot", "dense")
  shapes = {d: abstract(base.replace(dispatch=d)) for d in dispatches}
  assert all(shapes[d] == shapes["dense"] for d in dispatches)
  ref_model = init_model(base.replace(dispatch="dense"), seed=0)
  outs = {}
  for dispatch in dispatches:
    model = Model(base.replace(dispatch=dispatch), ref_model.variables)
    outs[dispatch] = model.apply(tokens, segment_ids=jnp.asarray(segments))
  ref = outs["dense"]
  scale = np.abs(np.asarray(ref.logits)).max()
  for dispatch in dispatches[:-1]:
    o = outs[dispatch]
    np.testing.assert_allclose(np.asarray(o.logits), np.asarray(ref.logits), rtol=1e-5,
                               atol=1e-5 * scale, err_msg=dispatch)
    np.testing.assert_array_equal(np.asarray(o.aux.expert_counts), np.asarray(ref.aux.expert_counts))
    np.testing.assert_allclose(float(o.aux.balance_loss), float(ref.aux.balance_loss), rtol=1e-5)
    assert int(o.aux.dropped) == 0
  # Padding tokens load no expert: one MoE layer, 21 real tokens, K assignments each.
  assert int(ref.aux.expert_counts.sum()) == segments.sum() * base.num_experts_per_tok


def test_auto_dispatch_by_backend_and_capacity():
  assert moe.dispatch_for(_cfg()) == {"cpu": "grouped", "gpu": "sorted", "tpu": "ragged_dot"}[
      jax.default_backend()]
  assert moe.dispatch_for(_cfg(capacity_factor=1.25)) == "sorted"  # only capacity buffers drop
  assert moe.dispatch_for(_cfg(dispatch="dense")) == "dense"


# Capacity and dropping ---------------------------------------------------------


@pytest.mark.parametrize("cf,tokens,k,e,want", [
    (0.0, 12, 2, 8, 12),  # dropless: one slot per token
    (-1.0, 12, 2, 8, 12),
    (1.0, 12, 2, 8, 3),  # 12 * 2 / 8 = 3 exactly
    (1.25, 12, 2, 8, 4),  # ceil(3.75)
    (0.01, 12, 2, 8, 1),  # never below one slot
    (100.0, 12, 2, 8, 12),  # never above one slot per token
    (2.0, 4096, 6, 64, 768),  # 2 * 4096 * 6 / 64
])
def test_capacity_math(cf, tokens, k, e, want):
  c = _cfg(n_routed_experts=e, num_experts_per_tok=k, capacity_factor=cf)
  assert moe.capacity(tokens, c) == want


def _ref_keep(idx, cap):
  """Keeps the first `cap` assignments of each expert in flattened (token, k) order."""
  seen = {}
  keep = np.zeros(idx.shape, bool)
  for t in range(idx.shape[0]):
    for j in range(idx.shape[1]):
      e = int(idx[t, j])
      keep[t, j] = seen.get(e, 0) < cap
      seen[e] = seen.get(e, 0) + 1
  return keep


def _skewed_inputs(seed, k=2):
  """(x, idx, w, weights) with experts 0 and 1 overloaded and several experts idle."""
  rng = np.random.default_rng(seed)
  idx = np.stack([rng.choice([0, 1, 2, 5], k, replace=False, p=[0.4, 0.3, 0.2, 0.1])
                  for _ in range(T)]).astype(np.int32)
  w = rng.uniform(0.1, 1.0, idx.shape).astype(np.float32)
  x = rng.normal(0, 1, (T, D)).astype(np.float32)
  return x, idx, w, _expert_weights(rng)


def test_sorted_dispatch_drops_beyond_capacity():
  k = 2
  x, idx, w, (wg, wu, wd) = _skewed_inputs(5, k)
  c = _cfg(n_routed_experts=E, num_experts_per_tok=k, capacity_factor=1.0)
  cap = moe.capacity(T, c)
  assert cap == math.ceil(T * k / E) == 3
  counts = np.bincount(idx.reshape(-1), minlength=E)
  want_dropped = int(np.maximum(counts - cap, 0).sum())
  assert want_dropped > 0
  keep = _ref_keep(idx, cap)
  assert (~keep).sum() == want_dropped
  y, dropped = _SORTED(x, idx, w, wg, wu, wd, cap)
  assert int(dropped) == want_dropped
  want = _ref_experts(x, idx, w, wg, wu, wd, keep)
  np.testing.assert_allclose(np.asarray(y), want, rtol=RTOL, atol=1e-5 * np.abs(want).max())
  # A token all of whose assignments were dropped gets exactly zero from the routed experts.
  for t in np.flatnonzero(~keep.any(1)):
    assert np.all(np.asarray(y)[t] == 0)


def test_sorted_gradients_with_drops_and_padding():
  """Dropped assignments and padding tokens pass no gradient; the rest match float64 autograd."""
  x, idx, w, (wg, wu, wd) = _skewed_inputs(11)
  valid = np.arange(T) >= 2  # two padding tokens in front
  cap = 3
  # The loop keeps, per expert, the first `cap` assignments of valid tokens (sorted order).
  keep = np.zeros(idx.shape, bool)
  keep[valid] = _ref_keep(idx[valid], cap)
  assert (~keep[valid]).any()  # something is dropped
  ct = np.random.default_rng(12).normal(0, 1, (T, D)).astype(np.float32)
  loss = lambda *a: jnp.sum(moe.sorted_experts(a[0], jnp.asarray(idx), *a[1:], cap, jnp.asarray(valid))[0] * ct)
  got = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))(x, w, wg, wu, wd)
  want = _torch_grads(x, idx, w, wg, wu, wd, ct, keep)
  for name, g, r in zip(("x", "topk_weights", "gate_proj", "up_proj", "down_proj"), got, want):
    np.testing.assert_allclose(np.asarray(g), r, rtol=1e-4, atol=1e-5 * np.abs(r).max(), err_msg=name)
  assert np.all(np.asarray(got[0])[:2] == 0) and np.all(np.asarray(got[1])[~keep] == 0)


def test_routed_experts_capacity_is_per_sequence():
  rng = np.random.default_rng(6)
  b, s, k = 3, 8, 2
  idx = np.stack([rng.choice([0, 1, 3], k, replace=False, p=[0.5, 0.3, 0.2])
                  for _ in range(b * s)]).astype(np.int32).reshape(b, s, k)
  w = rng.uniform(0.1, 1.0, idx.shape).astype(np.float32)
  x = rng.normal(0, 1, (b, s, D)).astype(np.float32)
  wg, wu, wd = _expert_weights(rng)
  c = _cfg(hidden_size=D, moe_intermediate_size=F, n_routed_experts=E, num_experts_per_tok=k,
           capacity_factor=1.0, dispatch="sorted")
  cap = moe.capacity(s, c)
  assert cap == 2
  y, dropped = moe.RoutedExperts(c).apply(_routed_params(wg, wu, wd), x, idx, w,
                                          np.ones((b, s), bool))
  want_dropped = 0
  for i in range(b):
    counts = np.bincount(idx[i].reshape(-1), minlength=E)
    want_dropped += int(np.maximum(counts - cap, 0).sum())
    keep = _ref_keep(idx[i], cap)
    want = _ref_experts(x[i], idx[i], w[i], wg, wu, wd, keep)
    np.testing.assert_allclose(np.asarray(y[i]), want, rtol=RTOL, atol=1e-5 * np.abs(want).max())
  assert want_dropped > 0 and int(dropped) == want_dropped


def test_padding_takes_no_capacity():
  """Left padding routed to the hot expert must not push real tokens out of its slots."""
  rng = np.random.default_rng(8)
  s, k, pad = 8, 1, 3
  idx = np.zeros((s, k), np.int32)  # everything wants expert 0
  idx[5:] = 1
  w = rng.uniform(0.1, 1.0, idx.shape).astype(np.float32)
  x = rng.normal(0, 1, (s, D)).astype(np.float32)
  wg, wu, wd = _expert_weights(rng)
  valid = np.arange(s) >= pad
  cap = 2
  y, dropped = _SORTED(x, idx, w, wg, wu, wd, cap, jnp.asarray(valid))
  # Real tokens 3, 4 take expert 0's two slots; tokens 5..7 go to expert 1 (2 slots, 1 dropped).
  keep = np.zeros((s, k), bool)
  keep[[3, 4, 5, 6]] = True
  want = _ref_experts(x, idx, w, wg, wu, wd, keep)
  np.testing.assert_allclose(np.asarray(y), want, rtol=RTOL, atol=1e-5 * np.abs(want).max())
  assert int(dropped) == 1  # token 7; padding is never counted as dropped


# Balance losses ----------------------------------------------------------------


def _ref_deepseek_aux(scores, topk, mask, e, k, alpha, seq_aux):
  """DeepSeek MoEGate's aux loss, applied to the non-padding tokens only."""
  if seq_aux:
    per_seq = []
    for b in range(scores.shape[0]):
      s, idx = scores[b][mask[b]], topk[b][mask[b]]
      seq_len = s.shape[0]
      ce = np.zeros(e)
      np.add.at(ce, idx.reshape(-1), 1.0)  # ce.scatter_add_(1, topk_idx, ones)
      ce /= seq_len * k / e
      per_seq.append((ce * s.mean(0)).sum())
    return float(np.mean(per_seq) * alpha)
  s, idx = scores[mask], topk[mask]
  ce = np.eye(e)[idx.reshape(-1)].mean(0)
  pi = s.mean(0)
  fi = ce * e
  return float((pi * fi).sum() * alpha)


def _ref_device_loss(scores, topk, mask, e, k, alpha2, n_dev):
  """DeepSeekMoE Eq. 14-15 over the batch's real tokens."""
  s, idx = scores[mask], topk[mask]
  t = s.shape[0]
  f = np.array([e / (k * t) * np.sum(idx == i) for i in range(e)])  # Eq. 13
  p = s.mean(0)
  groups = np.split(np.arange(e), n_dev)  # contiguous experts per device
  return float(alpha2 * sum(f[g].mean() * p[g].sum() for g in groups))


def _loss_inputs(b=3, s=10, e=8, k=2, seed=7):
  rng = np.random.default_rng(seed)
  scores = _softmax(rng.normal(0, 1.5, (b, s, e)))
  topk = np.argsort(-scores, -1)[..., :k].astype(np.int32)
  return scores, topk


def _padding_mask(b=3, s=10):
  mask = np.ones((b, s), bool)
  mask[0, -3:] = False  # right padding
  mask[1, :4] = False  # left padding
  return mask


@pytest.mark.parametrize("seq_aux", [True, False])
@pytest.mark.parametrize("padded", [False, True])
def test_expert_balance_loss(seq_aux, padded):
  e, k = 8, 2
  scores, topk = _loss_inputs(e=e, k=k)
  mask = _padding_mask() if padded else np.ones(scores.shape[:2], bool)
  if padded:  # garbage on the padding: it must not count
    scores[~mask] = np.eye(e)[0]
    topk[~mask] = np.arange(k)
  c = _cfg(n_routed_experts=e, num_experts_per_tok=k, seq_aux=seq_aux, aux_loss_alpha=0.003)
  got, dev = moe.balance_losses(jnp.asarray(scores, jnp.float32), jnp.asarray(topk),
                                jnp.asarray(mask), c)
  want = _ref_deepseek_aux(scores, topk, mask, e, k, 0.003, seq_aux)
  np.testing.assert_allclose(float(got), want, rtol=RTOL)
  assert float(dev) == 0.0  # device_aux_loss_alpha defaults to 0
  if padded:
    unmasked = _ref_deepseek_aux(scores, topk, np.ones_like(mask), e, k, 0.003, seq_aux)
    assert abs(unmasked - want) > 1e-3 * want  # the padding would have mattered


def test_all_padding_row_does_not_dilute_seq_aux():
  e, k = 8, 2
  scores, topk = _loss_inputs(e=e, k=k)
  mask = np.ones(scores.shape[:2], bool)
  c = _cfg(n_routed_experts=e, num_experts_per_tok=k, seq_aux=True, aux_loss_alpha=0.003)
  full = moe.balance_losses(jnp.asarray(scores[:2], jnp.float32), jnp.asarray(topk[:2]),
                            jnp.asarray(mask[:2]), c)[0]
  mask[2] = False  # the third row is all padding
  got = moe.balance_losses(jnp.asarray(scores, jnp.float32), jnp.asarray(topk),
                           jnp.asarray(mask), c)[0]
  np.testing.assert_allclose(float(got), float(full), rtol=RTOL)


def test_expert_balance_loss_uniform_is_alpha():
  """Perfect balance with uniform scores gives exactly alpha (the loss's minimum)."""
  e, k, s = 8, 2, 8
  topk = np.stack([[(2 * t) % e, (2 * t + 1) % e] for t in range(s)])[None].astype(np.int32)
  scores = np.full((1, s, e), 1.0 / e)
  for seq_aux in (True, False):
    c = _cfg(n_routed_experts=e, num_experts_per_tok=k, seq_aux=seq_aux, aux_loss_alpha=0.01)
    got, _ = moe.balance_losses(jnp.asarray(scores, jnp.float32), jnp.asarray(topk),
                                jnp.ones((1, s), bool), c)
    np.testing.assert_allclose(float(got), 0.01, rtol=1e-6)


@pytest.mark.parametrize("n_dev", [1, 2, 4, 8])
@pytest.mark.parametrize("padded", [False, True])
def test_device_balance_loss(n_dev, padded):
  e, k = 8, 2
  scores, topk = _loss_inputs(e=e, k=k, seed=8)
  mask = _padding_mask() if padded else np.ones(scores.shape[:2], bool)
  if padded:
    scores[~mask] = np.eye(e)[-1]
    topk[~mask] = np.arange(e - k, e)
  c = _cfg(n_routed_experts=e, num_experts_per_tok=k, seq_aux=False, aux_loss_alpha=0.003,
           device_aux_loss_alpha=0.05, n_balance_devices=n_dev)
  expert, got = moe.balance_losses(jnp.asarray(scores, jnp.float32), jnp.asarray(topk),
                                   jnp.asarray(mask), c)
  want = _ref_device_loss(scores, topk, mask, e, k, 0.05, n_dev)
  np.testing.assert_allclose(float(got), want, rtol=RTOL)
  if n_dev == 1:  # mean f is 1 and the P sum to 1
    np.testing.assert_allclose(float(got), 0.05, rtol=1e-6)
  if n_dev == e:  # one expert per device: the batch-wise expert loss with alpha2
    np.testing.assert_allclose(float(got) / 0.05, float(expert) / 0.003, rtol=1e-5)


def test_moe_layer_output_loss_and_counts():
  """The whole MoE layer vs float64: routed loop + shared experts, loss and counts."""
  c = _cfg(hidden_size=16, moe_intermediate_size=8, n_routed_experts=8, n_shared_experts=2,
           num_experts_per_tok=2, seq_aux=True, aux_loss_alpha=0.001,
           device_aux_loss_alpha=0.05, n_balance_devices=2)
  rng = np.random.default_rng(9)
  b, s = 2, 8
  x = rng.normal(0, 1, (b, s, 16)).astype(np.float32)
  mask = np.ones((b, s), bool)
  mask[1, :3] = False
  layer = moe.MoE(c)
  variables = layer.init(jax.random.key(0), x, mask)
  params = jax.tree.map(np.asarray, nn.meta.unbox(variables["params"]))
  # Bigger router weights than the init, so routing is decisive.
  params["gate"]["kernel"] = rng.normal(0, 1.0, (16, 8)).astype(np.float32)
  (y, aux), state = layer.apply({"params": params}, x, mask, mutable=["intermediates"])
  # Float64 reference.
  x64 = x.reshape(-1, 16).astype(np.float64)
  logits = x64 @ params["gate"]["kernel"].astype(np.float64)
  ref, margins = _ref_route(logits, c)
  assert np.all(margins > MARGIN)
  ref_idx = np.array([sorted(r) for r in ref])
  ref_w = np.array([[r[e] for e in sorted(r)] for r in ref])
  ex = params["experts"]
  want = _ref_experts(x64, ref_idx, ref_w, ex["gate_proj"], ex["up_proj"], ex["down_proj"])
  sh = params["shared_experts"]
  h = _silu(x64 @ sh["gate_proj"]["kernel"]) * (x64 @ sh["up_proj"]["kernel"])
  assert sh["gate_proj"]["kernel"].shape == (16, 8 * 2)  # width moe_intermediate * n_shared
  want = (want + h @ sh["down_proj"]["kernel"]).reshape(b, s, 16)
  np.testing.assert_allclose(np.asarray(y), want, rtol=RTOL, atol=1e-5 * np.abs(want).max())
  counts = np.bincount(ref_idx.reshape(b, s, -1)[mask].reshape(-1), minlength=8)
  np.testing.assert_array_equal(np.asarray(aux.expert_counts), counts)
  assert aux.expert_counts.sum() == mask.sum() * 2
  scores = _softmax(logits).reshape(b, s, 8)
  topk = ref_idx.reshape(b, s, -1)
  np.testing.assert_allclose(float(aux.balance_loss),
                             _ref_deepseek_aux(scores, topk, mask, 8, 2, 0.001, True), rtol=RTOL)
  np.testing.assert_allclose(float(aux.device_balance_loss),
                             _ref_device_loss(scores, topk, mask, 8, 2, 0.05, 2), rtol=RTOL)
  assert int(aux.dropped) == 0
  routing = state["intermediates"]["routing"][0]
  np.testing.assert_array_equal(np.sort(np.asarray(routing["topk_idx"]), -1), topk)
