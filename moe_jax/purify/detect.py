"""Where the reset dimensions sit: by layer and module, per routed expert, on the trigger's rows.

Reads the {name: mask} and {name: score} trees of `moe_jax.purify.indicators`
(names like "layers_3/self_attn/q_proj/kernel", relative to the model's params)
and reports, for each (layer, module) group, how many dimensions it has, how
many were selected and its share of all selected; for an MoE layer, the same
per routed expert (a stacked [E, ...] tensor's slices), so one sees whether a
backdoor settles in a few experts; and for a rare-word trigger, the share of
its embedding rows selected.
"""

from __future__ import annotations

import numpy as np

from moe_jax.purify import indicators

EMBEDDINGS = ("embed_tokens", "embed_positions", "embed_types", "relative_attention_bias")


def group_of(name: str) -> tuple[str, str]:
  """(layer or "-", module) of a parameter name."""
  parts = name.split("/")
  layer = parts[0] if parts[0].startswith("layers_") else "-"
  rest = parts[1:] if layer != "-" else parts
  if rest[0] in EMBEDDINGS or rest[0] == "embed_norm":
    return layer, "embeddings"
  if rest[0] == "self_attn":
    return layer, "attention"
  if rest[0] == "mlp":
    sub = rest[1] if len(rest) > 2 else ""
    return layer, {"experts": "routed experts", "shared_experts": "shared experts",
                   "gate": "router"}.get(sub, "ffn")
  if "norm" in rest[0]:
    return layer, "norms"
  return layer, rest[0]  # pooler, lm_head, ...


def distribution(mask: dict, score: dict | None = None) -> list[dict]:
  """One row per (layer, module): dims, selected, share of all selected, share of the score mass."""
  rows: dict = {}
  selected_total = sum(int(np.sum(m)) for m in mask.values()) or 1
  mass_total = sum(float(np.sum(np.asarray(s)[np.isfinite(s)])) for s in score.values()) if score else 0.0
  for name, m in mask.items():
    key = group_of(name)
    r = rows.setdefault(key, {"layer": key[0], "module": key[1], "dims": 0, "selected": 0, "mass": 0.0})
    r["dims"] += int(np.size(m))
    r["selected"] += int(np.sum(m))
    if score:
      s = np.asarray(score[name])
      r["mass"] += float(np.sum(s[np.isfinite(s)]))
  out = []
  for r in rows.values():
    r["selected_share"] = r["selected"] / selected_total
    r["selected_fraction"] = r["selected"] / max(r["dims"], 1)
    r["mass_share"] = r.pop("mass") / mass_total if mass_total else float("nan")
    out.append(r)
  return sorted(out, key=lambda r: (r["layer"] != "-", r["layer"], r["module"]))


def expert_shares(mask: dict, score: dict | None = None) -> dict[str, dict]:
  """{layer: {"selected": [E], "mass": [E]}} over each MoE layer's stacked routed experts."""
  out: dict = {}
  for name, m in mask.items():
    layer, module = group_of(name)
    if module != "routed experts":
      continue
    m = np.asarray(m)
    r = out.setdefault(layer, {"selected": np.zeros(m.shape[0]), "mass": np.zeros(m.shape[0])})
    r["selected"] += m.reshape(m.shape[0], -1).sum(1)
    if score:
      s = np.asarray(score[name]).reshape(m.shape[0], -1)
      r["mass"] += np.where(np.isfinite(s), s, 0.0).sum(1)
  return {k: {f: v[f].tolist() for f in v} for k, v in out.items()}


def trigger_rows(mask: dict, token_ids: list[int]) -> dict:
  """The share of the trigger tokens' word-embedding dimensions selected, against all rows'."""
  m = np.asarray(mask["embed_tokens/embedding"])
  ids = sorted(set(token_ids))
  return {"trigger_tokens": ids, "trigger_rows_selected": float(m[ids].mean()) if ids else float("nan"),
          "all_rows_selected": float(m.mean())}


def zero_curvature_share(mask: dict, curvature) -> float:
  """The share of the selected dimensions whose clean curvature is exactly 0: dimensions the
  clean set never moves (a word-embedding row of a token it lacks), where any drift, weight
  decay's included, makes drift / (H + eps) large."""
  h = indicators.named(curvature)
  hit = sum(int(np.sum(np.asarray(m) & (np.asarray(h[n]) == 0))) for n, m in mask.items())
  return hit / max(sum(int(np.sum(m)) for m in mask.values()), 1)


def table(rows: list[dict]) -> str:
  """A markdown table of `distribution`."""
  lines = ["| layer | module | dims | selected | of all selected | of the group |",
           "|---|---|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['layer']} | {r['module']} | {r['dims']:,} | {r['selected']:,} | "
                 f"{100 * r['selected_share']:.1f}% | {100 * r['selected_fraction']:.1f}% |")
  return "\n".join(lines)
