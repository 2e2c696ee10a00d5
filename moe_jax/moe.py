"""The DeepSeekMoE layer: router, balance losses, token dispatch and the expert FFNs.

Routing (`route`) implements every DeepSeek variant: softmax or sigmoid scores,
greedy, group-limited greedy (V2) and bias-corrected group routing (V3
`noaux_tc`), with renormalisation and scaling as the references do
(DeepSeekMoE paper Eq. 9-11; shared spec deepseekmoe.md A.4).

Dispatch runs the routed experts behind one interface, selected by
`config.dispatch` ("auto", the default, picks by backend: `dispatch_for`):
  * "sorted"     sort each sequence's (token, expert) pairs by expert into
                 [E, capacity, D] buffers and run three batched matmuls; the
                 only dispatch that drops (`capacity_factor <= 0`: dropless).
  * "grouped"    sort the whole batch's assignments by expert once, pad each
                 expert's rows to a multiple of a small block, and run the
                 three matmuls batched over blocks (dropless; work grows with
                 tokens x K, not with the number of experts).
  * "pallas"     the same layout through Pallas grouped-matmul kernels that read
                 each expert's weights in place (`moe_jax.grouped_matmul`; GPU,
                 interpreted elsewhere).
  * "ragged_dot" the same sort, then `jax.lax.ragged_dot` grouped matmuls
                 (dropless; fast on TPU, not on GPU or CPU).
  * "dense"      every expert on every token, weighted by the (mostly zero)
                 gates: the reference the others are tested against.

All but "dense" move tokens in and out of their expert buffers with gathers
only, forward and backward (`_rows_in`, `_rows_out`); `expert_ffn` is the one
table of dispatches.

Dimension letters are model.py's (B, T, D, E, K, F, ...), plus, inside the
dispatches: G the tokens routed together (a flattened batch B * T, or one
sequence under "sorted"), A = G * K their (token, expert) assignments, C an
expert's capacity, M the rows of an expert buffer.
"""

from __future__ import annotations

import math

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from moe_jax import grouped_matmul
from moe_jax import axes as ax
from moe_jax.config import ModelConfig
from moe_jax.layers import SwiGLU, dense, dense_init


@flax.struct.dataclass
class MoEAux:
  """What a MoE layer reports besides its output. Summed over layers by the model."""

  balance_loss: jax.Array  # scalar: expert-level loss, already times aux_loss_alpha
  device_balance_loss: jax.Array  # scalar: device-level loss, times device_aux_loss_alpha
  expert_counts: jax.Array  # [E] (token, expert) assignments per expert, before dropping
  dropped: jax.Array  # int32 scalar: assignments dropped by the capacity limit


def sum_aux(auxes: list[MoEAux], n_routed_experts: int | None) -> MoEAux:
  """A model's MoEAux: losses and drops summed over its MoE layers, counts stacked [L_moe, E]."""
  if not auxes:  # a dense model: zeros, so losses add the same code path's terms
    zero = jnp.zeros((), jnp.float32)
    return MoEAux(zero, zero, jnp.zeros((0, n_routed_experts or 0), jnp.int32),
                  jnp.zeros((), jnp.int32))
  return MoEAux(balance_loss=sum(a.balance_loss for a in auxes),
                device_balance_loss=sum(a.device_balance_loss for a in auxes),
                expert_counts=jnp.stack([a.expert_counts for a in auxes]),
                dropped=sum(a.dropped for a in auxes))


# Routing ---------------------------------------------------------------------

def route(logits, config: ModelConfig, bias=None):
  """Chooses K experts per token.

  Args:
    logits: [..., E] router logits, float32.
    bias: [E] V3 `e_score_correction_bias`; it changes which experts are picked,
      never their weights.
  Returns:
    (topk_idx [..., K] int32, topk_weights [..., K] float32, scores [..., E] float32),
    where scores are the softmax/sigmoid affinities before any bias or masking.
  """
  c = config
  e, k = c.n_routed_experts, c.num_experts_per_tok
  scores = jax.nn.softmax(logits, -1) if c.scoring_func == "softmax" else jax.nn.sigmoid(logits)
  if c.topk_method == "greedy":
    _, idx = jax.lax.top_k(scores, k)
  else:
    choice = scores if bias is None else scores + bias
    g = c.n_group or 1
    grouped = choice.reshape(choice.shape[:-1] + (g, e // g))
    if c.topk_method == "group_limited_greedy":
      group_scores = grouped.max(-1)  # V2: a group is as good as its best expert
      fill = 0.0
    else:
      group_scores = jax.lax.top_k(grouped, 2)[0].sum(-1)  # V3: sum of its top-2
      fill = -jnp.inf
    _, keep = jax.lax.top_k(group_scores, c.topk_group or 1)  # [..., topk_group]
    group_mask = jnp.sum(jax.nn.one_hot(keep, g, dtype=jnp.bool_), axis=-2) > 0  # [..., g]
    masked = jnp.where(group_mask[..., None], grouped, fill).reshape(choice.shape)
    _, idx = jax.lax.top_k(masked, k)
  weights = jnp.take_along_axis(scores, idx, axis=-1)
  if c.scoring_func == "softmax":
    # DeepSeek's MoEGate: renormalise (top-k > 1) or scale, never both.
    if c.norm_topk_prob and k > 1:
      weights = weights / (weights.sum(-1, keepdims=True) + 1e-20)
    else:
      weights = weights * c.routed_scaling_factor
  else:
    if c.norm_topk_prob:  # V3 renormalises the unbiased sigmoid scores, then scales
      weights = weights / (weights.sum(-1, keepdims=True) + 1e-20)
    weights = weights * c.routed_scaling_factor
  return idx.astype(jnp.int32), weights, scores


def balance_losses(scores, topk_idx, token_mask, config: ModelConfig):
  """Expert- and device-level balance losses (DeepSeekMoE Eq. 12-15, V2 Eq. 23-27).

  Args:
    scores: [B, T, E] router affinities.
    topk_idx: [B, T, K] the chosen experts.
    token_mask: [B, T] bool, False for padding (which neither loads experts nor
      counts in means).
  Returns:
    (expert_loss, device_loss), each already multiplied by its alpha.
  With `seq_aux` the expert-level loss is computed per sequence and averaged, as
  DeepSeek's MoEGate does; sigmoid scores are first normalised over experts per
  token (the V3 sequence-wise loss).
  """
  c = config
  e, k = c.n_routed_experts, c.num_experts_per_tok
  if c.scoring_func == "sigmoid":
    scores = scores / (scores.sum(-1, keepdims=True) + 1e-20)
  m = token_mask.astype(jnp.float32)  # [B, T]
  load = jnp.sum(jax.nn.one_hot(topk_idx, e, dtype=jnp.float32), axis=-2) * m[..., None]  # [B, T, E]
  p = scores * m[..., None]
  if c.seq_aux:
    n = jnp.maximum(m.sum(-1), 1.0)[:, None]  # [B, 1] real tokens per sequence
    f = load.sum(1) / (n * k / e)  # [B, E]
    has_tokens = (m.sum(-1) > 0).astype(jnp.float32)  # all-padding rows do not dilute the mean
    per_seq = jnp.sum(f * (p.sum(1) / n), -1)
    expert = jnp.sum(per_seq * has_tokens) / jnp.maximum(has_tokens.sum(), 1.0) * c.aux_loss_alpha
  else:
    n = jnp.maximum(m.sum(), 1.0)
    f = load.sum((0, 1)) * e / (n * k)  # [E]
    expert = jnp.sum(f * p.sum((0, 1)) / n) * c.aux_loss_alpha
  n = jnp.maximum(m.sum(), 1.0)
  f_all = load.sum((0, 1)) * e / (n * k)  # [E]
  p_all = p.sum((0, 1)) / n  # [E]
  d = c.n_balance_devices
  f_dev = f_all.reshape(d, e // d).mean(-1)  # mean f of each device's experts
  p_dev = p_all.reshape(d, e // d).sum(-1)  # total affinity of each device's experts
  device = jnp.sum(f_dev * p_dev) * c.device_aux_loss_alpha
  return expert, device


# Dispatch --------------------------------------------------------------------

# What "auto" runs: the fastest dropless dispatch measured on CPU (benchmarks/RESULTS.md),
# jax's grouped matmul on TPU, and capacity buffers on GPU until the GPU suite has measured
# the others there.
_AUTO = {"cpu": "grouped", "gpu": "sorted", "tpu": "ragged_dot"}


def dispatch_for(config: ModelConfig) -> str:
  """The dispatch a config runs: its own, or for "auto" the backend's (capacity buffers when
  a capacity factor is set, since only they drop)."""
  if config.dispatch != "auto":
    return config.dispatch
  if config.capacity_factor > 0:
    return "sorted"
  return _AUTO.get(jax.default_backend(), "sorted")


def capacity(tokens: int, config: ModelConfig) -> int:
  """Slots per expert for a group of `tokens` tokens; `tokens` itself when dropless."""
  cf = config.capacity_factor
  if cf <= 0:
    return tokens  # a token picks an expert at most once, so this never drops
  return min(tokens, max(1, math.ceil(cf * tokens * config.num_experts_per_tok / config.n_routed_experts)))


def _sort_by_expert(topk_idx, n_experts):
  """Orders the flattened (token, k) assignments by expert.

  Returns (order [A], sorted_expert [A], counts [E]) for A = tokens * K, where
  order[i] is the flat assignment index at sorted position i.
  """
  flat = topk_idx.reshape(-1)
  order = jnp.argsort(flat, stable=True)
  return order, flat[order], jnp.bincount(flat, length=n_experts)


# Rows in, rows out ------------------------------------------------------------
# Every dropless or capacity dispatch lays the (token, expert) assignments out as
# rows of a buffer [M, D], described by two index maps: row_of [G, K], the buffer
# row of assignment (g, j) (M or more: dropped), and assignment_of [M], the flat
# assignment g * K + j a row holds (G * K: an empty row). The maps are one-to-one,
# so both moves and both of their transposes are gathers: "row r takes token g"
# transposes to "token g sums its K rows". No scatter-add runs forward or
# backward (XLA runs scatters serially on CPU and with atomics on GPU).

def _layout_maps(order, row, n_rows: int, topk_shape):
  """(row_of [G, K], assignment_of [n_rows]) from the row of each sorted assignment.

  order [A]: flat assignment at each sorted position; row [A]: its buffer row
  (n_rows or more: dropped).
  """
  a = order.shape[0]
  row = row.astype(jnp.int32)
  row_of = jnp.zeros((a,), jnp.int32).at[order].set(row).reshape(topk_shape)
  assignment_of = jnp.full((n_rows,), a, jnp.int32).at[row].set(order.astype(jnp.int32), mode="drop")
  return row_of, assignment_of


@jax.custom_vjp
def _rows_in(x, row_of, assignment_of):
  """x [G, D] -> buffer [M, D]: each row its assignment's token (zeros in empty rows)."""
  return jnp.take(x, assignment_of // row_of.shape[1], axis=0, mode="fill", fill_value=0)


def _rows_in_fwd(x, row_of, assignment_of):
  return _rows_in(x, row_of, assignment_of), row_of


def _rows_in_bwd(row_of, g):
  # g: [M, D] -> each token sums the cotangents of its K rows
  picked = jnp.take(g, row_of, axis=0, mode="fill", fill_value=0)  # [G, K, D]; dropped: 0
  return jnp.sum(picked.astype(jnp.float32), 1).astype(g.dtype), None, None


_rows_in.defvjp(_rows_in_fwd, _rows_in_bwd)


@jax.custom_vjp
def _rows_out(y, weights, row_of, assignment_of):
  """Each token's gate-weighted sum of its K rows: y [M, D], weights [G, K] -> [G, D] float32."""
  picked = jnp.take(y, row_of, axis=0, mode="fill", fill_value=0)  # [G, K, D]; dropped: 0
  return jnp.einsum("tkd,tk->td", picked.astype(jnp.float32), weights.astype(jnp.float32))


def _rows_out_fwd(y, weights, row_of, assignment_of):
  return _rows_out(y, weights, row_of, assignment_of), (y, weights, row_of, assignment_of)


def _rows_out_bwd(res, g):
  y, weights, row_of, assignment_of = res  # g: [G, D] float32
  k = row_of.shape[1]
  w_ext = jnp.append(weights.reshape(-1).astype(jnp.float32), 0.0)  # index G * K: empty row
  g_rows = jnp.take(g, assignment_of // k, axis=0, mode="fill", fill_value=0)  # [M, D]
  dy = (g_rows * w_ext[assignment_of][:, None]).astype(y.dtype)
  picked = jnp.take(y, row_of, axis=0, mode="fill", fill_value=0).astype(jnp.float32)
  dweights = jnp.einsum("tkd,td->tk", picked, g).astype(weights.dtype)
  return dy, dweights, None, None


_rows_out.defvjp(_rows_out_fwd, _rows_out_bwd)


def _swiglu_stacked(x, wg, wu, wd):
  """x: [E, C, D] through each expert's SwiGLU: wg, wu [E, D, F], wd [E, F, D]."""
  h = jax.nn.silu(jnp.einsum("ecd,edf->ecf", x, wg)) * jnp.einsum("ecd,edf->ecf", x, wu)
  return jnp.einsum("ecf,efd->ecd", h, wd)


def _groups(w) -> tuple:
  return tuple(w) if isinstance(w, (tuple, list)) else (w,)


def sorted_experts(x, topk_idx, topk_weights, wg, wu, wd, capacity_per_expert, valid=None):
  """Capacity-buffer dispatch for one group. x: [G, D], topk_*: [G, K].

  wg, wu [E, D, F], wd [E, F, D]; or, each, a tuple of stacks of consecutive
  experts (ESFT's trained and frozen ones): each stack runs its own matmuls, so
  one that is not differentiated gets no weight gradient computed.
  valid: [G] bool; padding tokens (False) take no expert slot and are not
  counted as dropped. Returns (y [G, D], dropped assignments of valid tokens).
  """
  n, k = topk_idx.shape
  groups = tuple(zip(_groups(wg), _groups(wu), _groups(wd)))
  e, cap = sum(g[0].shape[0] for g in groups), capacity_per_expert
  if valid is not None:  # padding goes to a sentinel expert E that sorts last and is always dropped
    topk_idx = jnp.where(valid[:, None], topk_idx, e)
  order, sorted_e, counts = _sort_by_expert(topk_idx, e + 1)
  starts = jnp.cumsum(counts) - counts
  pos = jnp.arange(n * k) - starts[sorted_e]  # rank of each assignment within its expert
  kept = (pos < cap) & (sorted_e < e)
  slot = jnp.where(kept, sorted_e * cap + pos, e * cap)  # e * cap: out of range = dropped
  row_of, assignment_of = _layout_maps(order, slot, e * cap, (n, k))
  buf = _rows_in(x, row_of, assignment_of).reshape(e, cap, -1)
  bounds = np.cumsum([0] + [g[0].shape[0] for g in groups])
  out = jnp.concatenate([_swiglu_stacked(buf[lo:hi], *g) for g, lo, hi in
                         zip(groups, bounds[:-1], bounds[1:])]).reshape(e * cap, -1)
  dropped = jnp.sum(~kept & (sorted_e < e)).astype(jnp.int32)
  return _rows_out(out, topk_weights, row_of, assignment_of).astype(x.dtype), dropped


def block_size(assignments: int, n_experts: int) -> int:
  """Rows per block for `grouped_experts`: a power of two near a quarter of an expert's share.

  Padding costs at most n_experts * (block - 1) rows, so about a quarter of the
  useful rows; 8 <= block <= 128 keeps the matmuls reasonably shaped.
  """
  share = max(1, assignments // (4 * n_experts))
  return int(min(128, max(8, 2 ** math.floor(math.log2(share)))))


def _block_layout(topk_idx, n_experts: int, block: int):
  """Sorted assignments laid out in row blocks that each belong to one expert.

  Returns (row_of [G, K], assignment_of [M], block_expert [n_blocks],
  block_starts [E + 1]) for M = n_blocks * block buffer rows: expert e owns row
  blocks block_starts[e]:block_starts[e + 1] (later blocks are padding).
  """
  a = topk_idx.size
  n_blocks = -(-a // block) + n_experts  # static bound: sum_e ceil(count_e / block) <= a / block + E
  order, sorted_e, counts = _sort_by_expert(topk_idx, n_experts)
  blocks = -(-counts // block)  # [E]
  block_starts = jnp.concatenate([jnp.zeros((1,), blocks.dtype), jnp.cumsum(blocks)]).astype(jnp.int32)
  rank = jnp.arange(a) - (jnp.cumsum(counts) - counts)[sorted_e]  # within its expert
  row_of, assignment_of = _layout_maps(order, block_starts[sorted_e] * block + rank,
                                       n_blocks * block, topk_idx.shape)
  # Padding blocks past the last expert hold zeros; any expert maps zeros to zeros.
  block_expert = jnp.minimum(jnp.searchsorted(block_starts[1:], jnp.arange(n_blocks), side="right"),
                             n_experts - 1).astype(jnp.int32)
  return row_of, assignment_of, block_expert, block_starts


def grouped_experts(x, topk_idx, topk_weights, wg, wu, wd, block: int | None = None):
  """Dropless block-grouped matmuls. x: [G, D], topk_*: [G, K].

  The assignments are sorted by expert once; each expert's rows are padded to a
  multiple of a block, so every block belongs to one expert, and the three
  matmuls run batched over blocks with each block's expert weights. Work grows
  with G * K plus at most one padded block per expert, not with G * E
  as a dropless capacity buffer does. Each block reads its own copy of its
  expert's weights ([blocks, D, F] gathered), which suits CPUs and small models;
  a larger `block` (default `block_size`) trades padding for fewer copies.
  """
  e = wg.shape[0]
  block = block or block_size(topk_idx.size, e)
  row_of, assignment_of, block_expert, _ = _block_layout(topk_idx, e, block)
  n_blocks = block_expert.shape[0]
  buf = _rows_in(x, row_of, assignment_of).reshape(n_blocks, block, -1)
  out = _swiglu_stacked(buf, wg[block_expert], wu[block_expert], wd[block_expert])
  return _rows_out(out.reshape(n_blocks * block, -1), topk_weights, row_of, assignment_of).astype(x.dtype)


def pallas_experts(x, topk_idx, topk_weights, wg, wu, wd, block: int = 64,
                   interpret: bool | None = None):
  """The grouped layout through the Pallas grouped-matmul kernels (`moe_jax.grouped_matmul`).

  Dropless; no per-block weight copies. The weights may be tuples of stacks of
  consecutive experts, as in `sorted_experts`, with the same effect. Compiled
  with Triton on GPU and interpreted elsewhere (`interpret` defaults to "not on
  a GPU").
  """
  if interpret is None:
    interpret = jax.default_backend() != "gpu"
  wg, wu, wd = map(_groups, (wg, wu, wd))
  e = sum(w.shape[0] for w in wg)
  row_of, assignment_of, block_expert, block_starts = _block_layout(topk_idx, e, block)
  buf = _rows_in(x, row_of, assignment_of)
  mm = lambda a, w: grouped_matmul.gmm(a, w, block_expert, block_starts, block, interpret)
  h = jax.nn.silu(mm(buf, wg)) * mm(buf, wu)
  return _rows_out(mm(h, wd), topk_weights, row_of, assignment_of).astype(x.dtype)


def ragged_experts(x, topk_idx, topk_weights, wg, wu, wd):
  """Grouped-matmul dispatch with `jax.lax.ragged_dot`; dropless. x: [G, D], topk_*: [G, K]."""
  order, _, counts = _sort_by_expert(topk_idx, wg.shape[0])
  row_of, assignment_of = _layout_maps(order, jnp.arange(order.shape[0]), order.shape[0], topk_idx.shape)
  xs = _rows_in(x, row_of, assignment_of)  # [A, D], grouped by expert
  h = jax.nn.silu(jax.lax.ragged_dot(xs, wg, counts)) * jax.lax.ragged_dot(xs, wu, counts)
  return _rows_out(jax.lax.ragged_dot(h, wd, counts), topk_weights, row_of, assignment_of).astype(x.dtype)


def dense_experts(x, topk_idx, topk_weights, wg, wu, wd):
  """Every expert on every token (E/K times the work): the reference. x: [G, D]."""
  e = wg.shape[0]
  gates = jnp.sum(jax.nn.one_hot(topk_idx, e, dtype=jnp.float32) * topk_weights[..., None], -2)  # [G, E]
  h = jax.nn.silu(jnp.einsum("td,edf->tef", x, wg)) * jnp.einsum("td,edf->tef", x, wu)
  y = jnp.einsum("tef,efd->ted", h, wd).astype(jnp.float32)
  return jnp.einsum("ted,te->td", y, gates).astype(x.dtype)


def expert_ffn(dispatch: str, x, topk_idx, topk_weights, wg, wu, wd,
               capacity_per_expert: int | None = None, block: int | None = None, valid=None):
  """One routing group's routed experts through `dispatch` (any but "auto"): the one table of
  dispatches, which the model and the benchmarks both call.

  x: [G, D]; topk_*: [G, K]; wg, wu [E, D, F], wd [E, F, D] (tuples of stacks for "sorted" and
  "pallas", see `sorted_experts`). `capacity_per_expert` (default G, dropless) and `valid` apply
  to "sorted", `block` to "grouped" and "pallas". Returns (y [G, D], dropped assignments).
  """
  none = jnp.zeros((), jnp.int32)
  if dispatch == "sorted":
    return sorted_experts(x, topk_idx, topk_weights, wg, wu, wd,
                          capacity_per_expert or x.shape[0], valid)
  if dispatch == "grouped":
    return grouped_experts(x, topk_idx, topk_weights, wg, wu, wd, block=block), none
  if dispatch == "pallas":
    return pallas_experts(x, topk_idx, topk_weights, wg, wu, wd, block=block or 64), none
  if dispatch == "ragged_dot":
    return ragged_experts(x, topk_idx, topk_weights, wg, wu, wd), none
  if dispatch == "dense":
    return dense_experts(x, topk_idx, topk_weights, wg, wu, wd), none
  raise ValueError(f"dispatch {dispatch!r} is not one of sorted, grouped, pallas, ragged_dot, dense")


def split_stacks(selected, n_experts: int) -> tuple[list[int], list[int]]:
  """ESFT's two expert stacks: (the selected ids as listed, the rest ascending).

  `RoutedExperts` reads its `selected` and `rest` stacks in this order, and
  `moe_jax.trainable.split` / `merge` write and undo it.
  """
  chosen = set(selected)
  return list(selected), [e for e in range(n_experts) if e not in chosen]


def _expert_params(module: nn.Module, c: ModelConfig, n: int):
  """`module`'s stack of n SwiGLU experts, in the compute dtype: gate, up [n, D, F], down [n, F, D]."""
  d, f, pdt = c.hidden_size, c.moe_intermediate_size, jnp.dtype(c.param_dtype)
  wg = module.param("gate_proj", dense_init(c, (ax.EXP, ax.EMBED, ax.MLP)), (n, d, f), pdt)
  wu = module.param("up_proj", dense_init(c, (ax.EXP, ax.EMBED, ax.MLP)), (n, d, f), pdt)
  wd = module.param("down_proj", dense_init(c, (ax.EXP, ax.MLP, ax.EMBED)), (n, f, d), pdt)
  return tuple(w.astype(c.dtype) for w in (wg, wu, wd))


class _ExpertStack(nn.Module):
  """n experts stored apart from the layer's others (ESFT's `selected` or `rest`)."""

  config: ModelConfig
  n: int

  @nn.compact
  def __call__(self):
    return _expert_params(self, self.config, self.n)


class RoutedExperts(nn.Module):
  """The E routed SwiGLU experts, stored stacked: gate/up [E, D, F], down [E, F, D].

  With `selected` (ESFT, see `moe_jax.trainable`) the listed experts are
  stored as their own stack `selected` and the others as `rest`, and experts
  are renumbered by their row in the two stacks. `sorted` and `pallas` run each
  stack's weight gradient apart, so a step that differentiates only `selected`
  computes none for the rest; the other dispatches run on the concatenation
  and compute, then discard, the rest's.
  """

  config: ModelConfig
  selected: tuple[int, ...] | None = None

  @nn.compact
  def __call__(self, x, topk_idx, topk_weights, token_mask):
    """x: [B, T, D], topk_*: [B, T, K], token_mask: [B, T] -> (y [B, T, D], dropped)."""
    c = self.config
    e = c.n_routed_experts
    if self.selected is None:
      stacks = [_expert_params(self, c, e)]
    else:
      sel, rest = split_stacks(self.selected, e)
      stacks = [_ExpertStack(c, len(ids), name=name)() for name, ids in
                (("selected", sel), ("rest", rest)) if ids]
      # Experts are numbered by their row in the stacks' concatenation from here on.
      topk_idx = jnp.asarray(np.argsort(sel + rest), jnp.int32)[topk_idx]
    b, t, _ = x.shape
    dispatch = dispatch_for(c)
    if dispatch in ("sorted", "pallas"):  # these take the stacks as they are: see sorted_experts
      wg, wu, wd = zip(*stacks)
    else:
      wg, wu, wd = (jnp.concatenate(w) if len(w) > 1 else w[0] for w in zip(*stacks))
    if dispatch == "sorted":
      # One routing group per sequence keeps the batch axis free for data parallelism.
      # Under a capacity limit padding must not take real tokens' slots; dropless, it is harmless.
      valid = token_mask if c.capacity_factor > 0 else jnp.ones_like(token_mask)
      fn = lambda xb, ib, wb, mb: expert_ffn("sorted", xb, ib, wb, wg, wu, wd, capacity(t, c), valid=mb)
      y, dropped = jax.vmap(fn)(x, topk_idx, topk_weights, valid)
      return y, dropped.sum()
    flat = lambda a: a.reshape((b * t,) + a.shape[2:])
    y, dropped = expert_ffn(dispatch, flat(x), flat(topk_idx), flat(topk_weights), wg, wu, wd)
    return y.reshape(x.shape), dropped


class MoE(nn.Module):
  """Routed experts plus always-on shared experts (DeepSeekMoE Eq. 9)."""

  config: ModelConfig
  selected: tuple[int, ...] | None = None  # ESFT's split expert storage: see RoutedExperts

  @nn.compact
  def __call__(self, x, token_mask):
    """x: [B, T, D], token_mask: [B, T] bool (False = padding) -> (y [B, T, D], MoEAux)."""
    c = self.config
    # The router runs in float32 (as DeepSeek's does), whatever the activation dtype.
    gate = dense(c, c.n_routed_experts, (ax.EMBED, ax.EXP), "gate", dtype=jnp.float32,
                 param_dtype=jnp.float32)
    logits = gate(x.astype(jnp.float32))  # [B, T, E]
    bias = None
    if c.topk_method == "noaux_tc":
      # A buffer, not a parameter: the optimizer never sees it (V3 updates it by load).
      bias = self.variable("buffers", "e_score_correction_bias",
                           lambda: jnp.zeros((c.n_routed_experts,), jnp.float32)).value
    topk_idx, topk_weights, scores = route(logits, c, bias)
    self.sow("intermediates", "routing",
             {"scores": scores, "topk_idx": topk_idx, "topk_weights": topk_weights})
    y, dropped = RoutedExperts(c, self.selected, name="experts")(x, topk_idx, topk_weights,
                                                                 token_mask)
    if c.n_shared_experts:
      y = y + SwiGLU(c, c.moe_intermediate_size * c.n_shared_experts, name="shared_experts")(x)
    # V3's sequence-wise loss counts the top-k of the unbiased affinities (V3 report Eq. 17-20).
    loss_idx = topk_idx if bias is None else jax.lax.top_k(scores, c.num_experts_per_tok)[1]
    expert_loss, device_loss = balance_losses(scores, loss_idx, token_mask, c)
    counts = jnp.sum(jax.nn.one_hot(topk_idx, c.n_routed_experts, dtype=jnp.int32)
                     * token_mask[..., None, None], axis=(0, 1, 2))
    return y, MoEAux(expert_loss, device_loss, counts, dropped)
