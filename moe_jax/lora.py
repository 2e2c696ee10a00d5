"""LoRA (Hu et al., 2021) for the DeepSeek model, as a parameter transform.

Every weight matrix except the embedding and output head gets a low-rank
update W + scale * A @ B, A: [in, r], B: [r, out] (stacked experts get one pair
per expert). The base weights stay frozen; only the A/B leaves train. This is
the ESFT paper's LoRA baseline (rank 8, scaling 2, all parameters but the
embeddings and LM head). It plugs into `moe_jax.esft.partition` as
TrainableSpec(mode="lora"), so the trainer's one step serves it too.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

_SKIP = ("embed_tokens", "lm_head")


def _layout(keys: tuple, shape: tuple) -> tuple[int, int] | None:
  """(batch dims, input dims) of a kernel, or None if the leaf gets no LoRA."""
  if len(shape) < 2 or keys[-1] not in ("kernel", "gate_proj", "up_proj", "down_proj"):
    return None
  if any(k in _SKIP for k in keys):
    return None
  if "experts" in keys and keys[-1] != "kernel":  # stacked [E, in, out]
    return 1, 1
  if keys[-2] == "o_proj":  # [N, H, D]: heads and head width are the input
    return 0, 2
  return 0, 1


def _keys(path) -> tuple:
  return tuple(getattr(k, "key", str(k)) for k in path)


def init(params: dict, rank: int, seed: int = 0) -> dict:
  """LoRA leaves {"layers_1.self_attn.q_proj.kernel": {"a": [*batch, in, r], "b": [*batch, r, out]}}.

  A is normal(0, 1/sqrt(in)), B is zero, so training starts from the base model.
  """
  flat = {}
  rng = np.random.default_rng(seed)
  for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    keys = _keys(path)
    layout = _layout(keys, x.shape)
    if layout is None:
      continue
    nb, ni = layout
    batch, d_in, d_out = x.shape[:nb], math.prod(x.shape[nb:nb + ni]), math.prod(x.shape[nb + ni:])
    a = rng.normal(0, 1 / math.sqrt(d_in), batch + (d_in, rank)).astype(np.float32)
    flat[".".join(keys)] = {"a": jnp.asarray(a, x.dtype),
                            "b": jnp.zeros(batch + (rank, d_out), x.dtype)}
  return flat


def apply(params: dict, lora: dict, scale: float) -> dict:
  """params with every LoRA'd kernel replaced by W + scale * A @ B (differentiable in A, B)."""
  def update(path, x):
    ab = lora.get(".".join(_keys(path)))
    if ab is None:
      return x
    delta = jnp.matmul(ab["a"], ab["b"]).reshape(x.shape)
    return x + (scale * delta).astype(x.dtype)
  return jax.tree_util.tree_map_with_path(update, params)
