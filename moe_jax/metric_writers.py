"""Where training metrics go: a JSONL file and TensorBoard event files in the workdir, and a progress bar.

Only process 0 writes (pass `enabled=False` elsewhere). TensorBoard files are
written with tensorboardX, which needs no TensorFlow.
"""

from __future__ import annotations

import json
import os


class MetricWriter:
  """Appends {"step": s, **metrics} lines to workdir/metrics.jsonl and scalars to workdir/tensorboard."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self._tb = None
    if not enabled:
      return
    from tensorboardX import SummaryWriter

    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    self._jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
    self._jsonl.flush()
    for k, v in metrics.items():
      self._tb.add_scalar(k, v, step)

  def close(self) -> None:
    if not self.enabled:
      return
    self._jsonl.close()
    self._tb.close()


def progress(total: int, initial: int, desc: str, enabled: bool = True):
  """A tqdm bar (loss, tokens/s and ETA) on stderr."""
  from tqdm.auto import tqdm
  return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True,
              mininterval=0.5)
