"""Routing reports: a heatmap of expert shares per layer, and expert overlap between tasks."""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np


def heatmap(scores: Mapping[int, np.ndarray], path: str, title: str,
            selected: Mapping[str, list[int]] | None = None) -> str:
  """Writes a PNG: one row per MoE layer, one column per expert, colour = score share.

  Experts in `selected` ({"<layer>": ids}, the expert config's "experts") are boxed.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.patches import Rectangle

  layers = sorted(scores)
  grid = np.stack([scores[l] for l in layers])  # [L, E]
  n_layers, n_experts = grid.shape
  fig, ax = plt.subplots(figsize=(max(6, n_experts * 0.18 + 2), max(3, n_layers * 0.3 + 1.5)))
  im = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
  ax.set_yticks(range(n_layers), [str(l) for l in layers])
  ax.set_xlabel("routed expert")
  ax.set_ylabel("layer")
  ax.set_title(title)
  fig.colorbar(im, ax=ax, label="share of the layer's score")
  for row, layer in enumerate(layers):
    for e in (selected or {}).get(str(layer), []):
      ax.add_patch(Rectangle((e - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="red", lw=1.2))
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def overlap(experts_a: Mapping[str, list[int]], experts_b: Mapping[str, list[int]],
            n_experts: int) -> dict:
  """Per layer: shared selected experts, and what two random selections of those sizes share.

  The chance expectation for sets of sizes a and b among n experts is a * b / n.
  """
  rows = {}
  for layer in sorted(set(experts_a) & set(experts_b), key=int):
    a, b = set(experts_a[layer]), set(experts_b[layer])
    rows[layer] = {"shared": len(a & b), "size_a": len(a), "size_b": len(b),
                   "chance": len(a) * len(b) / n_experts}
  shared = sum(r["shared"] for r in rows.values())
  chance = sum(r["chance"] for r in rows.values())
  return {"layers": rows, "shared": shared, "chance": chance}
