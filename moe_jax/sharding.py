"""The device mesh, and shardings derived from the logical axis names (`moe_jax.axes`).

Model code names dimensions by role (`embed`, `mlp`, `exp`, ...), never by mesh
axis. `DEFAULT_RULES` maps the roles onto a mesh with axes
(data, fsdp, expert, tensor); a config can pass other rules without touching
the model. A mesh axis that does not divide a dimension is dropped for that
array (it is replicated along it), so any model runs on any mesh.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from moe_jax.axes import BATCH, EMBED, EXP, HEADS, KV, KV_LORA, LENGTH, MLP, NORM, Q_LORA, VOCAB

# Mesh axes, outermost first.
MESH_AXES = ("data", "fsdp", "expert", "tensor")

# Outside the MoE layers the expert axis acts as another FSDP axis (MaxText's default):
# the batch is split over data, fsdp and expert; weights over fsdp (embed), expert (exp)
# and tensor (mlp, heads, vocab).
DEFAULT_RULES = (
    (BATCH, ("data", "fsdp", "expert")),
    (LENGTH, None),
    (VOCAB, "tensor"),
    (EMBED, "fsdp"),
    (MLP, "tensor"),
    (HEADS, "tensor"),
    (KV, None),
    (EXP, "expert"),
    (Q_LORA, None),
    (KV_LORA, None),
    (NORM, None),
)


def make_mesh(shape: dict, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A Mesh over MESH_AXES; `shape` maps axis -> size, one of them may be -1 (the rest)."""
  unknown = set(shape) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"mesh: unknown axes {sorted(unknown)}; axes are {MESH_AXES}")
  devices = list(devices if devices is not None else jax.devices())
  sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh: at most one axis may be -1, got {shape}")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"mesh: {len(devices)} devices are not divisible by {known}")
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(f"mesh: {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, "
                     f"there are {len(devices)}")
  try:
    grid = mesh_utils.create_device_mesh(sizes, devices)
  except Exception:  # non-TPU topologies without a physical layout: plain order
    grid = np.asarray(devices).reshape(sizes)
  return Mesh(grid, MESH_AXES)


def _fit(spec: P, shape: tuple, mesh: Mesh) -> P:
  """Drops mesh axes that do not divide their dimension."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    if axes is None:
      out.append(None)
      continue
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    kept, size = [], 1
    for a in axes:
      if dim % (size * mesh.shape[a]) == 0:
        kept.append(a)
        size *= mesh.shape[a]
    out.append(tuple(kept) if len(kept) > 1 else (kept[0] if kept else None))
  return P(*out)


def logical_sharding(logical: tuple, shape: tuple, mesh: Mesh, rules=DEFAULT_RULES) -> NamedSharding:
  """NamedSharding for an array of `shape` whose dims have the logical names `logical`."""
  spec = nn.logical_to_mesh_axes(logical, rules)
  return NamedSharding(mesh, _fit(spec, shape, mesh))


def tree_shardings(logical_tree, shape_tree, mesh: Mesh, rules=DEFAULT_RULES):
  """Shardings for a tree of arrays, given a matching tree of logical PartitionSpecs."""
  return jax.tree_util.tree_map(
      lambda spec, x: logical_sharding(tuple(spec), x.shape, mesh, rules),
      logical_tree, shape_tree, is_leaf=lambda s: isinstance(s, P))


def batch_sharding(mesh: Mesh, ndim: int = 2, rules=DEFAULT_RULES) -> NamedSharding:
  """Batch arrays [B, T, ...]: B split over the batch axes."""
  spec = nn.logical_to_mesh_axes((BATCH,) + (None,) * (ndim - 1), rules)
  return NamedSharding(mesh, spec)


def replicated(mesh: Mesh) -> NamedSharding:
  """A sharding that keeps a full copy on every device of the mesh."""
  return NamedSharding(mesh, P())


def _keys(path) -> tuple:
  return tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", str(k)))) for k in path)


def like_params(tree, param_shapes, param_shardings, mesh: Mesh):
  """Shardings for a tree whose leaves mirror parameters (e.g. an optax state).

  A leaf whose key path ends with a parameter's path and has its shape gets that
  parameter's sharding (Adam's mu and nu); anything else is replicated.
  """
  by_path = {}
  for (path, x), s in zip(jax.tree_util.tree_flatten_with_path(param_shapes)[0],
                          jax.tree_util.tree_leaves(param_shardings)):
    by_path[_keys(path)] = (tuple(x.shape), s)

  def pick(path, x):
    keys = _keys(path)
    for start in range(len(keys)):
      hit = by_path.get(keys[start:])
      if hit is not None and hit[0] == tuple(x.shape):
        return hit[1]
    return replicated(mesh)
  return jax.tree_util.tree_map_with_path(pick, tree)
