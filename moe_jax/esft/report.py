"""Routing reports: a heatmap of expert shares per layer, and expert overlap between tasks.

`python -m moe_jax.esft report --model HF_DIR --task intent=a.jsonl --task law=b.jsonl --out DIR`
scores a model on each task and writes one heatmap and expert config per task
plus overlap.json (shared selected experts per layer vs chance).
"""

from __future__ import annotations

import json
import os
from typing import Mapping

import numpy as np


def heatmap(scores: Mapping[int, np.ndarray], path: str, title: str,
            selected: Mapping[str, list[int]] | None = None) -> str:
  """Writes a PNG: one row per MoE layer, one column per expert, colour = score share.

  Experts in `selected` ({"<layer>": ids}, the expert config's "experts") are boxed.
  """
  # A pyplot-free Figure: no global backend switch, so notebooks keep inline plots.
  from matplotlib.figure import Figure
  from matplotlib.patches import Rectangle

  layers = sorted(scores)
  grid = np.stack([scores[l] for l in layers])  # [L, E]
  n_layers, n_experts = grid.shape
  fig = Figure(figsize=(max(6, n_experts * 0.18 + 2), max(3, n_layers * 0.3 + 1.5)))
  ax = fig.subplots()
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


def task_report(model, tasks: Mapping[str, str], tokenizer, out_dir: str, score_function: str,
                top_p: float, n_tokens: int, seq_len: int = 512, batch_size: int = 8) -> dict:
  """Scores `model`'s experts on each task's chat JSONL; writes heatmaps, expert configs, overlaps.

  tasks: {name: path}. Returns {"experts": {task: n selected}, "overlap": {"a|b": ...}}.
  """
  from moe_jax import input_pipeline
  from moe_jax.esft.scoring import score_experts
  from moe_jax.esft.selection import select_experts
  from moe_jax.trainable import write_expert_config

  os.makedirs(out_dir, exist_ok=True)
  selected, result = {}, {"experts": {}, "overlap": {}}
  for name, path in tasks.items():
    rows = input_pipeline.load_packed([path], tokenizer, seq_len)
    n = len(rows["tokens"])
    batches = ({k: v[i:i + batch_size] for k, v in rows.items()} for i in range(0, n, batch_size))
    scores = score_experts(model, batches, n_tokens).get(score_function)
    cfg = select_experts(scores, top_p)
    write_expert_config(cfg, os.path.join(out_dir, f"expert_config_{name}.json"))
    heatmap(scores, os.path.join(out_dir, f"heatmap_{name}.png"),
            f"{name}: {score_function} scores (selected boxed, p={top_p})", cfg["experts"])
    selected[name] = cfg["experts"]
    result["experts"][name] = sum(len(v) for v in cfg["experts"].values())
  names = list(tasks)
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      result["overlap"][f"{a}|{b}"] = overlap(selected[a], selected[b], model.config.n_routed_experts)
  with open(os.path.join(out_dir, "overlap.json"), "w", encoding="utf-8") as f:
    json.dump(result, f, indent=2)
  return result
