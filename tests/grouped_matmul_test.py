"""The Pallas grouped matmul lowers for CUDA through Triton, checked on any machine.

jax can lower a program for a platform it is not running on (`jax.export`), and the
Triton lowering of Pallas runs inside jaxlib. So the CPU suite can catch a kernel
that would fail to lower on the GPU. Numerics are checked in interpret mode by the
dispatch tests in moe_test.py.
"""

import re

import jax
import jax.numpy as jnp
import pytest
from jax import export

from moe_jax import moe

_TRITON = "__gpu$xla.gpu.triton"


def _lower_for_cuda(t, d, f, e, k, block, frozen=0):
  """The StableHLO text of a pallas expert layer's fwd+bwd, lowered for CUDA.

  frozen > 0: the weights come as two stacks, (e - frozen) trained experts and
  `frozen` more that are not differentiated (ESFT).
  """
  x = jax.ShapeDtypeStruct((t, d), jnp.bfloat16)
  idx = jax.ShapeDtypeStruct((t, k), jnp.int32)
  w = jax.ShapeDtypeStruct((t, k), jnp.float32)
  sizes = (e - frozen, frozen) if frozen else (e,)
  ws = [jax.ShapeDtypeStruct((n,) + s, jnp.bfloat16) for s in ((d, f), (d, f), (f, d)) for n in sizes]

  def loss(x, idx, w, *ws):
    wg, wu, wd = (tuple(ws[i:i + len(sizes)]) for i in range(0, len(ws), len(sizes)))
    y = moe.pallas_experts(x, idx, w, wg, wu, wd, block=block, interpret=False)
    return jnp.sum(y.astype(jnp.float32) ** 2)

  grad = jax.jit(jax.grad(loss, argnums=(0,) + tuple(range(3, 3 + len(ws), len(sizes)))))
  # Kernels have no serialization guarantee; we only read the lowered text.
  checks = [export.DisabledSafetyCheck.custom_call(_TRITON)]
  return export.export(grad, platforms=["cuda"], disabled_checks=checks)(x, idx, w, *ws).mlir_module()


@pytest.mark.parametrize("shape", [
    dict(t=256, d=64, f=32, e=8, k=2, block=64),
    dict(t=512, d=2048, f=1408, e=64, k=6, block=128),  # DeepSeek-V2-Lite's experts
], ids=["small", "v2lite"])
def test_pallas_kernels_lower_through_triton_for_cuda(shape):
  text = _lower_for_cuda(**shape)
  targets = re.findall(r"custom_call @(\S+?)\(", text)
  kernels = re.findall(r'name = "(_\w+_kernel)"', text)
  # Three forward matmuls, three input gradients, three weight gradients; all Triton
  # (jax >= 0.10 picks Mosaic GPU unless asked, and these kernels do not lower there).
  assert targets == [_TRITON] * 9, targets
  assert sorted(kernels) == ["_gmm_kernel"] * 6 + ["_tgmm_kernel"] * 3


def test_frozen_stack_gets_no_weight_gradient_kernel():
  """With (trained, frozen) stacks, only the trained stack's weight gradients are kernels."""
  text = _lower_for_cuda(t=256, d=64, f=32, e=8, k=2, block=64, frozen=6)
  kernels = re.findall(r'name = "(_\w+_kernel)"', text)
  assert sorted(kernels) == ["_gmm_kernel"] * 6 + ["_tgmm_kernel"] * 3
  # Each kernel's result type; the weight gradients are the 2 trained experts' alone.
  results = re.findall(r"custom_call @\S+?\(.*-> tensor<([\dx]+)x\w+>", text)
  assert sorted(r for r in results if r.count("x") == 2) == ["2x32x64", "2x64x32", "2x64x32"]
