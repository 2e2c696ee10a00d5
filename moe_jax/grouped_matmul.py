"""A Pallas grouped matmul for the routed experts, with its backward.

The rows come sorted by expert, each expert's rows padded to a multiple of the
row block `bm` (the layout `moe.grouped_experts` builds), so every row block
belongs to one expert:

    gmm(x [M, K], w [E, K, N], block_expert [M // bm]) -> [M, N]
        row block i of the output is x's row block i @ w[block_expert[i]]

Unlike `moe.grouped_experts`, no weight is copied per block: each program reads
its expert's tiles straight from `w`. The backward is two more kernels:
dx = gmm(dy, w^T) and dw[e] = sum over e's row blocks of x_b^T dy_b ("tgmm").

The kernels are written for the Triton (GPU) lowering of Pallas, which they ask
for by name, and run in interpret mode anywhere else: the CPU tests check their
numbers interpreted, and their Triton lowering for CUDA (tests/grouped_matmul_test.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

# Triton compiler params select the Triton lowering: with none, jax >= 0.10 lowers
# GPU kernels through Mosaic GPU, which these kernels are not written for.
_TRITON = pl_triton.CompilerParams()


def _tile(dim: int, want: int) -> int:
  """The largest power of two <= want that divides dim (Triton tiles are powers of two)."""
  t = want
  while t > 1 and dim % t:
    t //= 2
  return t


def _gmm_kernel(expert_ref, x_ref, w_ref, o_ref, *, bk: int):
  """One [bm, bn] output tile: x's row block times its expert's [K, bn] column strip."""
  i = pl.program_id(0)
  e = expert_ref[i]
  bm, bn = o_ref.shape
  rows, col = pl.ds(i * bm, bm), pl.ds(pl.program_id(1) * bn, bn)

  def body(kk, acc):
    xb = x_ref[rows, pl.ds(kk * bk, bk)]
    wb = w_ref[e, pl.ds(kk * bk, bk), col]
    return acc + jnp.dot(xb, wb, preferred_element_type=jnp.float32)

  acc = jax.lax.fori_loop(0, x_ref.shape[1] // bk, body, jnp.zeros(o_ref.shape, jnp.float32))
  o_ref[...] = acc.astype(o_ref.dtype)


def _gmm(x, w, block_expert, bm: int, interpret: bool):
  m, k = x.shape
  n = w.shape[2]
  bn, bk = _tile(n, 128), _tile(k, 64)
  return pl.pallas_call(
      functools.partial(_gmm_kernel, bk=bk),
      out_shape=jax.ShapeDtypeStruct((m, n), x.dtype),
      grid=(m // bm, n // bn),
      # Whole-array refs read tile by tile: K and N need not be powers of two, only the tiles.
      in_specs=[pl.no_block_spec, pl.no_block_spec, pl.no_block_spec],
      out_specs=pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
      interpret=interpret,
      compiler_params=None if interpret else _TRITON,
  )(block_expert, x, w)


def _tgmm_kernel(starts_ref, x_ref, dy_ref, o_ref, *, bm: int):
  """One [bk, bn] tile of dw[e]: the sum over expert e's row blocks of x_b^T dy_b."""
  e = pl.program_id(0)
  bk, bn = o_ref.shape
  rows_k, rows_n = pl.ds(pl.program_id(1) * bk, bk), pl.ds(pl.program_id(2) * bn, bn)

  def body(b, acc):
    xb = x_ref[pl.ds(b * bm, bm), rows_k]
    yb = dy_ref[pl.ds(b * bm, bm), rows_n]
    return acc + jnp.dot(xb.T, yb, preferred_element_type=jnp.float32)

  acc = jax.lax.fori_loop(starts_ref[e], starts_ref[e + 1], body, jnp.zeros((bk, bn), jnp.float32))
  o_ref[...] = acc.astype(o_ref.dtype)


def _tgmm(x, dy, block_starts, n_experts: int, bm: int, interpret: bool):
  k, n = x.shape[1], dy.shape[1]
  bk, bn = _tile(k, 64), _tile(n, 64)
  return pl.pallas_call(
      functools.partial(_tgmm_kernel, bm=bm),
      out_shape=jax.ShapeDtypeStruct((n_experts, k, n), x.dtype),
      grid=(n_experts, k // bk, n // bn),
      in_specs=[pl.no_block_spec, pl.no_block_spec, pl.no_block_spec],
      out_specs=pl.BlockSpec((None, bk, bn), lambda e, a, b: (e, a, b)),
      interpret=interpret,
      compiler_params=None if interpret else _TRITON,
  )(block_starts, x, dy)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def gmm(x, w, block_expert, block_starts, bm: int, interpret: bool = False):
  """x [M, K] @ w[expert of each row block] -> [M, N]; M a multiple of bm.

  w: [E, K, N], or a tuple of stacks [E_i, K, N] of consecutive experts (ESFT's
  trained and frozen ones): each stack's weight gradient is its own kernel, so
  a stack that is not differentiated costs none.
  block_expert: int32 [M // bm], the expert of each row block (non-decreasing);
  block_starts: int32 [E + 1], expert e owns row blocks block_starts[e]:block_starts[e+1]
  (blocks past block_starts[E] are padding: zero rows, no gradient).
  """
  return _gmm(x, _stacked(w), block_expert, bm, interpret)


def _stacked(w):
  return jnp.concatenate(w) if isinstance(w, tuple) else w


def _gmm_fwd(x, w, block_expert, block_starts, bm, interpret):
  return gmm(x, w, block_expert, block_starts, bm, interpret), (x, w, block_expert, block_starts)


def _gmm_bwd(bm, interpret, res, dy):
  x, w, block_expert, block_starts = res
  dx = _gmm(dy, jnp.swapaxes(_stacked(w), 1, 2), block_expert, bm, interpret)
  # Expert e's gradient reads block_starts[e:e + 2], so a stack's slice starts at its first expert.
  sizes = [stack.shape[0] for stack in (w if isinstance(w, tuple) else (w,))]
  dw = tuple(_tgmm(x, dy, block_starts[lo:lo + n + 1], n, bm, interpret)
             for lo, n in zip(np.cumsum([0] + sizes[:-1]), sizes))
  return dx, (dw if isinstance(w, tuple) else dw[0]), None, None


gmm.defvjp(_gmm_fwd, _gmm_bwd)
