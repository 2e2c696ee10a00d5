"""Training checkpoints with Orbax: the train state, the data iterator's position, and metadata.

Saves are asynchronous and atomic (Orbax writes to a temporary directory and
renames it when complete), so a run killed at any moment resumes from the last
finished checkpoint. The metadata records the model config and what trains; a
checkpoint written under another config is refused with the differing fields
named, never half-restored.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointMismatchError(ValueError):
  """The checkpoint in the workdir was written by a run with a different configuration."""


class Checkpointer:
  """Periodic, asynchronous, keep-the-last-N checkpoints under `directory`."""

  def __init__(self, directory: str, save_every: int, keep: int, async_save: bool = True):
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=save_every,
                                           enable_async_checkpointing=async_save, create=True)
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict, meta: dict, force: bool = False) -> bool:
    """Saves if `step` is on the interval (or `force`); returns whether it saved."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=ocp.args.JsonSave(data_state), meta=ocp.args.JsonSave(meta))
    return self._manager.save(step, args=args, force=force)

  def restore(self, step: int, abstract_state: Any, meta: dict) -> tuple[Any, dict]:
    """(state, data_state) of `step`, after checking its metadata equals `meta`."""
    saved = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    diffs = _diff(saved, meta)
    if diffs:
      raise CheckpointMismatchError(
          f"{self.directory}: the checkpoint at step {step} was written with a different "
          f"configuration ({'; '.join(diffs[:6])}). Use a fresh --workdir, or restore the "
          f"original config.")
    out = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return out["state"], out["data"]

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def _diff(saved, current, prefix="") -> list[str]:
  if isinstance(saved, dict) and isinstance(current, dict):
    out = []
    for k in sorted(set(saved) | set(current)):
      out += _diff(saved.get(k), current.get(k), f"{prefix}{k}.")
    return out
  if saved != current:
    return [f"{prefix.rstrip('.')}: checkpoint {saved!r}, now {current!r}"]
  return []


def abstract(tree, shardings) -> Any:
  """ShapeDtypeStructs carrying the target shardings, for restoring onto a mesh."""
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
