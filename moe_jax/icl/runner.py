"""The model passes every ICL analysis shares: a context prefill, queries against it, probes.

The demonstrations are fixed per seed, so their context is run once into a
decoding cache (`prefill`) and every test query is a short pass against that
cache (`run_queries`). A compressed context is the same cache with only some
slots kept (`ContextCache.keep`): the kept keys and values carry the rotary
positions they were computed at, and the query continues from the last kept
position + 1 (the official choice for rotary models); keeping every slot is
exactly the full context. Isolation and re-weighting are attention `Hooks`
on the prefill or on the query pass. With `capture`, a pass also returns each
layer's attention probabilities, queries and keys (and, for MoE layers, the
routed experts) from the "intermediates" the model sows.

Shapes are bucketed (queries to a multiple of 16 tokens and a fixed batch,
contexts to a multiple of 32 slots) so a run compiles a handful of programs.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from moe_jax.attention import Hooks
from moe_jax.layers import layer_name
from moe_jax.model import Model, Transformer, init_cache

_Q_BUCKET, _CTX_BUCKET = 16, 32


def _round_up(n: int, k: int) -> int:
  return max(k, -(-n // k) * k)


@functools.partial(jax.jit, static_argnames=("config", "capture"))
def forward(config, variables, ids, positions, segment_ids, cache=None, hooks=None,
            capture: bool = False):
  """One decoder pass -> (logits [B, T, V], new cache, probes or None).

  probes: {"attention", "queries", "keys": lists over the layers of [B, N, T, S],
  [B, T, N, H] and [B, S, N, H] arrays; "experts": {moe layer: [B, T, K]}}; a field a pass did not sow is absent (an MLA
  pass that attends on the latents, as short queries against a long cache do, has
  no expanded keys to sow).
  """
  module = Transformer(config)
  if not capture:
    out = module.apply(variables, ids, positions, segment_ids, cache, hooks=hooks)
    return out.logits, out.cache, None
  out, state = module.apply(variables, ids, positions, segment_ids, cache, hooks=hooks,
                            mutable=["intermediates"])
  inter = state["intermediates"]
  probes = {}
  for name in ("attention", "queries", "keys"):
    layers = [inter[layer_name(i)]["self_attn"].get(name) for i in range(config.num_hidden_layers)]
    if all(x is not None for x in layers):
      probes[name] = [x[0] for x in layers]
  probes["experts"] = {i: inter[layer_name(i)]["mlp"]["routing"][0]["topk_idx"]
                       for i in config.moe_layers}
  return out.logits, out.cache, probes


@dataclasses.dataclass
class ContextCache:
  """A context's per-layer cache (batch 1) and the positions its slots were computed at.

  cache: the model's decoding cache with `n` written slots (index = padded length).
  positions: [n] the original position of each slot.
  """

  cache: dict
  positions: np.ndarray
  probes: dict | None = None  # the prefill's, when captured

  @property
  def n(self) -> int:
    return len(self.positions)

  @property
  def next_position(self) -> int:
    return int(self.positions[-1]) + 1 if self.n else 0

  def keep(self, slots: Sequence[int]) -> "ContextCache":
    """Only the given slots (sorted, distinct), gathered to the front: a compressed context."""
    slots = np.asarray(sorted(set(int(s) for s in slots)), np.int32)
    if slots.size and (slots[0] < 0 or slots[-1] >= self.n):
      raise IndexError(f"kept slots must lie in [0, {self.n}); got {slots[0]}..{slots[-1]}")
    size = _round_up(len(slots), _CTX_BUCKET)
    take = lambda x: jnp.zeros((x.shape[0], size) + x.shape[2:], x.dtype).at[:, :len(slots)].set(
        x[:, slots])
    cache = {"index": jnp.int32(size), "segment_ids": take(self.cache["segment_ids"]),
             "layers": jax.tree_util.tree_map(take, self.cache["layers"])}
    return ContextCache(cache, self.positions[slots])


def prefill(model: Model, ids: Sequence[int], hooks: Hooks | None = None,
            capture: bool = False, min_slots: int = 0) -> ContextCache:
  """Runs the context `ids` [S] once (batch 1) into a cache; hooks fields are [L, 1|B, N, S, S].

  min_slots: make the cache at least this long (contexts of one shape compile once).
  """
  ids = np.asarray(ids, np.int32)
  s = len(ids)
  size = _round_up(max(s, min_slots), _CTX_BUCKET)
  padded = np.zeros((1, size), np.int32)
  padded[0, :s] = ids
  seg = (np.arange(size) < s).astype(np.int32)[None]
  pos = np.minimum(np.arange(size), s - 1).astype(np.int32)[None]
  if hooks is not None:  # [L, B, N, S, S] -> the padded size (bias 0, multiplier 1 there)
    pad = lambda x, value: None if x is None else jnp.pad(
        x, [(0, 0)] * 3 + [(0, size - s), (0, size - s)], constant_values=value)
    hooks = Hooks(pad(hooks.bias, 0.0), pad(hooks.mult, 1.0))
  cache = init_cache(model.config, 1, size)
  _, cache, probes = forward(model.config, model.variables, padded, pos, seg, cache, hooks, capture)
  if probes is not None:
    probes = jax.tree_util.tree_map(lambda x: np.asarray(x), probes)
  cache = dict(cache, index=jnp.int32(size))
  return ContextCache(cache, np.arange(s), probes)


@dataclasses.dataclass
class QueryResult:
  """What the query passes give, per query: [n] rows."""

  logits: np.ndarray  # [n, V] at the target position q (the last query token)
  q_index: np.ndarray  # [n] q's row in its query pass
  probed: list | None = None  # probe(...)'s result for each batch chunk, in order


def query_batch(ctx: ContextCache, queries, batch: int):
  """(ids, positions, segment_ids) [batch, T]: the queries right-padded, continuing the context."""
  t = _round_up(max(len(q) for q in queries), _Q_BUCKET)
  ids = np.zeros((batch, t), np.int32)
  seg = np.zeros((batch, t), np.int32)
  for i, q in enumerate(queries):
    ids[i, :len(q)] = q
    seg[i, :len(q)] = 1
  pos = (ctx.next_position + np.arange(t, dtype=np.int32))[None].repeat(batch, 0)
  return ids, pos, seg


def cache_with_room(ctx: ContextCache, batch: int, t: int) -> dict:
  """The context cache broadcast to `batch` rows with `t` empty slots after it."""
  grow = lambda x: jnp.concatenate(
      [jnp.broadcast_to(x, (batch,) + x.shape[1:]),
       jnp.zeros((batch, t) + x.shape[2:], x.dtype)], axis=1)
  return {"index": ctx.cache["index"], "segment_ids": grow(ctx.cache["segment_ids"]),
          "layers": jax.tree_util.tree_map(grow, ctx.cache["layers"])}


def run_queries(model: Model, ctx: ContextCache, queries: Sequence[Sequence[int]],
                hooks_for=None, probe=None, batch: int = 8) -> QueryResult:
  """Each query (token ids) continued from the context; logits at its last token.

  hooks_for(q_index [B], n_query_slots T, n_cache_slots S) -> Hooks with [L, B, N, T, S]
    fields, for interventions on the query pass (anchor re-weighting); None for none.
  probe(probes, q_index [n]) -> anything: called on each chunk's captured probes (see
    `forward`; host arrays, rows cut to the chunk's n real queries) to keep what an
    analysis needs; None captures nothing.
  """
  if not queries:
    raise ValueError("no queries to run")
  logits, q_index, probed = [], [], []
  for start in range(0, len(queries), batch):
    chunk = list(queries[start:start + batch])
    n = len(chunk)
    ids, pos, seg = query_batch(ctx, chunk, batch)
    qi = np.asarray([len(q) - 1 for q in chunk] + [0] * (batch - n))
    cache = cache_with_room(ctx, batch, ids.shape[1])
    hooks = None if hooks_for is None else hooks_for(qi, ids.shape[1], cache["segment_ids"].shape[1])
    out, _, p = forward(model.config, model.variables, ids, pos, seg, cache, hooks, probe is not None)
    logits.append(np.asarray(out[np.arange(n), qi[:n]], np.float32))
    q_index.append(qi[:n])
    if probe is not None:
      probed.append(probe(_rows(p, n), qi[:n]))
  return QueryResult(np.concatenate(logits), np.concatenate(q_index),
                     probed if probe is not None else None)


def _rows(probes: dict, n: int) -> dict:
  """The probes of the first n batch rows, on the host."""
  return {k: ({l: np.asarray(x)[:n] for l, x in v.items()} if isinstance(v, dict)
              else [np.asarray(x)[:n] for x in v]) for k, v in probes.items()}


def empty_context(model: Model) -> ContextCache:
  """A context of nothing: queries against it are whole prompts run from position 0."""
  return prefill(model, [0]).keep([])


def full_logits(model: Model, ids: Sequence[int], hooks: Hooks | None = None) -> np.ndarray:
  """[V] the logits at the last token of one whole prompt run in a single pass (the reference)."""
  ids = np.asarray(ids, np.int32)[None]
  pos = np.arange(ids.shape[1], dtype=np.int32)[None]
  out, _, _ = forward(model.config, model.variables, ids, pos, np.ones_like(ids), None, hooks)
  return np.asarray(out[0, -1], np.float32)
