"""Which dimensions fine-tuning poisoned: drift, indicators, masks, and the reset.

With `delta = w_ft - w_init` per scalar weight and `H` a clean curvature
diagonal (`moe_jax.purify.curvature`), an indicator scores every dimension;
the top fraction `rho` is reset to its pre-trained value. No official code
exists for Fine-purifying, so the indicator is an ablation, not one formula:

  magnitude  |delta|                             (the drift alone)
  ratio      delta^2 / (H + eps)                 (drift against clean curvature: the
                                                  diffusion-theory reconstruction)
  logratio   2 log|delta| - log(H + eps)         (the log form; a monotone map of
                                                  `ratio`, so it selects the same
                                                  dimensions: kept to show it)
  random     uniform noise                       (Fine-mixing's random mask)

`eps` defaults to 1e-8 x the mean of H, scale-free. Weights that only the
fine-tuned model has (a task head) have no pre-trained value: they are never
scored or reset, and `drift` lists them.

Ranking is `global` (one top-rho over every dimension) or `per_tensor` (the
top-rho of each tensor); ties break towards the earlier dimension.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("magnitude", "ratio", "logratio", "random")
SCOPES = ("global", "per_tensor")


def named(tree) -> dict:
  """{"params/layers_0/mlp/up_proj/kernel": leaf} of a nested dict tree."""
  return {"/".join(str(getattr(k, "key", k)) for k in path): x
          for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def unflatten(flat: dict) -> dict:
  """The nested dict tree of `named`'s {"a/b/c": leaf} (its inverse)."""
  out: dict = {}
  for name, x in flat.items():
    *parents, leaf = name.split("/")
    node = out
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = x
  return out


def drift(w_init, w_ft) -> tuple[dict, list[str]]:
  """({name: w_ft - w_init} over the pre-trained weights, [names only w_ft has]).

  Raises ValueError naming the tensor when w_ft lacks a pre-trained weight or a
  shape differs.
  """
  init, ft = named(w_init), named(w_ft)
  missing = [n for n in init if n not in ft]
  if missing:
    raise ValueError(f"w_ft has no tensor {missing[0]!r} of w_init ({len(missing)} missing): "
                     "are they the same architecture?")
  for n, x in init.items():
    if np.shape(x) != np.shape(ft[n]):
      raise ValueError(f"tensor {n!r}: w_init has shape {np.shape(x)}, w_ft {np.shape(ft[n])}")
  return _subtract({n: ft[n] for n in init}, init), [n for n in ft if n not in init]


@jax.jit
def _subtract(ft: dict, init: dict) -> dict:
  # One program for every tensor: eager ops would compile one per op and shape.
  return {n: jnp.asarray(ft[n], jnp.float32) - jnp.asarray(x, jnp.float32) for n, x in init.items()}


def scores(kind: str, delta: dict, curvature: dict | None = None, eps: float | None = None,
           key: jax.Array | None = None) -> dict:
  """{name: score} per dimension for indicator `kind` (larger = more likely poisoned)."""
  if kind not in KINDS:
    raise ValueError(f"indicator kind {kind!r} is not one of {KINDS}")
  if kind == "magnitude":
    return _score(kind, delta, {}, 0.0, None)
  if kind == "random":
    return _score(kind, delta, {}, 0.0, jax.random.key(0) if key is None else key)
  if curvature is None:
    raise ValueError(f"indicator {kind!r} needs the clean curvature diagonal")
  h = named(curvature)
  absent = [n for n in delta if n not in h]
  if absent:
    raise ValueError(f"the curvature has no tensor {absent[0]!r} ({len(absent)} missing)")
  if eps is None:
    total = float(jax.jit(lambda t: sum(jnp.sum(x) for x in t.values()))({n: h[n] for n in delta}))
    eps = 1e-8 * total / max(sum(d.size for d in delta.values()), 1) or 1e-30
  return _score(kind, delta, {n: h[n] for n in delta}, eps, None)


@functools.partial(jax.jit, static_argnames="kind")
def _score(kind: str, delta: dict, h: dict, eps, key) -> dict:
  if kind == "magnitude":
    return {n: jnp.abs(d) for n, d in delta.items()}
  if kind == "random":
    return {n: jax.random.uniform(jax.random.fold_in(key, i), d.shape)
            for i, (n, d) in enumerate(delta.items())}
  if kind == "ratio":
    return {n: jnp.square(d) / (h[n] + eps) for n, d in delta.items()}
  return {n: 2 * jnp.log(jnp.abs(d)) - jnp.log(h[n] + eps) for n, d in delta.items()}


def _check_rho(rho: float) -> None:
  if not 0.0 < rho < 1.0:
    raise ValueError(f"rho={rho}: the fraction of dimensions to reset must be in (0, 1)")


def _top(flat: jax.Array, k: int) -> jax.Array:
  """Bool mask of the k largest entries of a 1-D array; ties go to the earlier entry."""
  order = jnp.argsort(-flat, stable=True)
  return jnp.zeros(flat.shape, bool).at[order[:k]].set(True)


def select_mask(score: dict, rho: float, scope: str = "global") -> dict:
  """{name: bool mask}: the top `rho` of the scores (`round(rho * size)` dimensions)."""
  _check_rho(rho)
  if scope not in SCOPES:
    raise ValueError(f"scope {scope!r} is not one of {SCOPES}")
  return _select(score, rho, scope)


@functools.partial(jax.jit, static_argnames=("rho", "scope"))
def _select(score: dict, rho: float, scope: str) -> dict:
  if scope == "per_tensor":
    return {n: _top(s.ravel(), round(rho * s.size)).reshape(s.shape) for n, s in score.items()}
  names = list(score)
  flat = jnp.concatenate([score[n].ravel() for n in names])
  picked = _top(flat, round(rho * flat.size))
  out, start = {}, 0
  for n in names:
    out[n] = picked[start:start + score[n].size].reshape(score[n].shape)
    start += score[n].size
  return out


def _routed(name: str) -> bool:
  """A MoE layer's stacked routed experts [E, ...] ("layers_3/mlp/experts/up_proj")."""
  parts = name.split("/")
  return len(parts) == 4 and parts[1:3] == ["mlp", "experts"]


def expert_mass(score: dict) -> dict[str, np.ndarray]:
  """{layer: [E] mean score over each routed expert's dimensions} (a non-finite score counts as
  the largest finite one of all routed experts): the indicator's mass per expert, comparable
  across layers."""
  routed = {n: np.asarray(s, np.float64) for n, s in score.items() if _routed(n)}
  top = max((float(s[np.isfinite(s)].max()) for s in routed.values() if np.isfinite(s).any()),
            default=0.0)
  sums: dict = {}
  for n, s in routed.items():
    s = np.where(np.isfinite(s), s, top)
    layer = n.split("/")[0]
    total, count = sums.get(layer, (0.0, 0))
    sums[layer] = (total + s.reshape(s.shape[0], -1).sum(1), count + s[0].size)
  return {layer: total / count for layer, (total, count) in sums.items()}


def select_experts(score: dict, rho: float) -> tuple[dict, list[tuple[str, int]]]:
  """({name: bool mask} of whole routed experts, [(layer, expert)] chosen): the experts of the
  largest mean score (`expert_mass`, over every MoE layer at once), as many as make up
  round(rho x all scored dimensions), at least one: the dimension-level mask's budget spent
  on whole experts. Raises ValueError when the model has no routed experts."""
  _check_rho(rho)
  mass = expert_mass(score)
  if not mass:
    raise ValueError("whole-expert reset needs an MoE model: the weights have no routed experts "
                     "(layers_i/mlp/experts/...)")
  per_expert = sum(int(np.asarray(s)[0].size) for n, s in score.items()
                   if _routed(n) and n.startswith(next(iter(mass)) + "/"))
  total = sum(int(np.size(s)) for s in score.values())
  ranked = sorted(((float(m), layer, e) for layer, ms in mass.items() for e, m in enumerate(ms)),
                  key=lambda t: (-t[0], t[1], t[2]))
  k = min(max(1, round(rho * total / per_expert)), len(ranked))
  chosen = [(layer, e) for _, layer, e in ranked[:k]]
  mask = {}
  for n, s in score.items():
    m = np.zeros(np.shape(s), bool)
    if _routed(n):
      for layer, e in chosen:
        if n.startswith(layer + "/"):
          m[e] = True
    mask[n] = m
  return mask, chosen


def reset(w_init, w_ft, mask: dict):
  """w_ft with the masked dimensions set to w_init's values; everything else is w_ft's, bit for bit.

  Returns a tree shaped like w_ft (task heads, absent from w_init, kept).
  """
  init, ft = named(w_init), named(w_ft)
  for n, m in mask.items():
    if n not in init or n not in ft:
      raise ValueError(f"mask tensor {n!r} is not in both w_init and w_ft")
    if m.shape != np.shape(ft[n]):
      raise ValueError(f"mask tensor {n!r} has shape {m.shape}, the weight {np.shape(ft[n])}")
  out = dict(ft)
  out.update(_where(mask, {n: init[n] for n in mask}, {n: ft[n] for n in mask}))
  return unflatten(out)


@jax.jit
def _where(mask: dict, init: dict, ft: dict) -> dict:
  return {n: jnp.where(m, jnp.asarray(init[n], ft[n].dtype), ft[n]) for n, m in mask.items()}

