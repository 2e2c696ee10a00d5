"""Expert relevance scores and ESFT expert selection (ESFT paper Sec. 3.3, Eqs. 6-8).

For every MoE layer and routed expert, over a sample of task tokens:
  * gate score:  the mean post-top-k gate value g_{i,t} (0 where i is not chosen);
  * token score: the share of the token's K choices that went to i (1/K each).
Each is normalised to sum to 1 within its layer (the paper's semantics; today's
official `generate_expert_config.py` normalises across layers instead, see the
spec). Per layer, experts are taken highest first until their cumulative score
reaches p; the expert that crosses p is included.

Scores come from a model run (`ScoreAccumulator`, fed by `moe_jax.esft.scoring`)
or from the official routing-log files (`read_routing_logs`). `select_experts`
returns the official expert config dict (see `moe_jax.trainable`): layers
numbered as the model numbers them (the first MoE layer of V2-Lite is "1").
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping

import numpy as np

from moe_jax.trainable import ExpertConfigError

SCORE_FUNCTIONS = ("token", "gate")


@dataclasses.dataclass
class ExpertScores:
  """Per-layer normalised scores: {layer index: [E] float64}, plus the tokens seen per layer."""

  token: dict[int, np.ndarray]
  gate: dict[int, np.ndarray]
  tokens: dict[int, int]

  def get(self, score_function: str) -> dict[int, np.ndarray]:
    if score_function not in SCORE_FUNCTIONS:
      raise ValueError(f"score function {score_function!r} is not one of {SCORE_FUNCTIONS}")
    return self.token if score_function == "token" else self.gate

  def to_json(self) -> dict:
    """The official summary.json layout: {"token_scores": {"1": {"0": s, ...}}, "gate_scores": ...}."""
    def table(scores):
      return {str(l): {str(e): float(v) for e, v in enumerate(s)} for l, s in sorted(scores.items())}
    return {"token_scores": table(self.token), "gate_scores": table(self.gate),
            "tokens": {str(l): n for l, n in sorted(self.tokens.items())}}


class ScoreAccumulator:
  """Sums gate values and selection counts per (layer, expert) over batches of routed tokens."""

  def __init__(self, n_experts: int, top_k: int):
    self.n_experts, self.top_k = n_experts, top_k
    self._gate: dict[int, np.ndarray] = {}
    self._count: dict[int, np.ndarray] = {}
    self._tokens: dict[int, int] = {}

  def add(self, layer: int, topk_idx, topk_weights, mask=None) -> None:
    """topk_idx, topk_weights: [..., K] for one layer; mask: [...] True for tokens to count."""
    idx = np.asarray(topk_idx).reshape(-1, self.top_k)
    w = np.asarray(topk_weights, np.float64).reshape(-1, self.top_k)
    if mask is not None:
      keep = np.asarray(mask).reshape(-1).astype(bool)
      idx, w = idx[keep], w[keep]
    if idx.size and (idx.min() < 0 or idx.max() >= self.n_experts):
      raise ExpertConfigError(f"layer {layer}: expert id outside 0..{self.n_experts - 1}")
    gate = self._gate.setdefault(layer, np.zeros(self.n_experts))
    count = self._count.setdefault(layer, np.zeros(self.n_experts))
    np.add.at(gate, idx.reshape(-1), w.reshape(-1))
    np.add.at(count, idx.reshape(-1), 1.0 / self.top_k)
    self._tokens[layer] = self._tokens.get(layer, 0) + len(idx)

  def result(self) -> ExpertScores:
    def norm(x):
      total = x.sum()
      return x / total if total > 0 else x
    return ExpertScores(token={l: norm(c) for l, c in self._count.items()},
                        gate={l: norm(g) for l, g in self._gate.items()},
                        tokens=dict(self._tokens))


def read_routing_logs(directory: str | os.PathLike, top_k: int = 6,
                      n_experts: int | None = None) -> ExpertScores:
  """Scores from official `expert_weights_<layer>.txt` files.

  Each line is one sequence: its token-major expert ids (K per token), two tabs,
  then the matching gate weights.
  """
  directory = os.fspath(directory)
  files = {}
  for name in os.listdir(directory):
    if name.startswith("expert_weights_") and name.endswith(".txt"):
      layer = name[len("expert_weights_"):-len(".txt")]
      if layer.isdigit():
        files[int(layer)] = os.path.join(directory, name)
  if not files:
    raise ExpertConfigError(f"{directory}: no expert_weights_<layer>.txt routing logs")
  parsed = {l: _parse_log(p, top_k) for l, p in sorted(files.items())}
  if n_experts is None:
    n_experts = 1 + max(int(ids.max()) for ids, _ in parsed.values() if ids.size)
  acc = ScoreAccumulator(n_experts, top_k)
  for layer, (ids, weights) in parsed.items():
    acc.add(layer, ids, weights)
  return acc.result()


def _parse_log(path: str, top_k: int) -> tuple[np.ndarray, np.ndarray]:
  ids, weights = [], []
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      line = line.rstrip("\n")
      if not line:
        continue
      where = f"{path}:{lineno}"
      if "\t\t" not in line:
        raise ExpertConfigError(f"{where}: expected expert ids, two tabs, then weights")
      left, right = line.split("\t\t", 1)
      try:
        i = np.array(left.split("\t"), np.int64)
        w = np.array(right.split("\t"), np.float64)
      except ValueError as e:
        raise ExpertConfigError(f"{where}: {e}") from e
      if len(i) != len(w) or len(i) % top_k:
        raise ExpertConfigError(f"{where}: {len(i)} ids and {len(w)} weights; both must be the "
                                f"same multiple of top-k={top_k}")
      tok = i.reshape(-1, top_k)
      if (np.sort(tok, 1)[:, 1:] == np.sort(tok, 1)[:, :-1]).any():
        raise ExpertConfigError(f"{where}: a token repeats an expert; is top-k really {top_k}?")
      ids.append(tok)
      weights.append(w.reshape(-1, top_k))
  if not ids:
    raise ExpertConfigError(f"{path}: empty routing log")
  return np.concatenate(ids), np.concatenate(weights)


def select_layer(scores: np.ndarray, top_p: float, decimals: int | None = None) -> list[int]:
  """The smallest highest-first prefix of experts whose scores sum to >= top_p.

  decimals: round scores first (the official pipeline wrote 4-decimal summaries
  and selected from those); ties keep expert-id order.
  """
  s = np.asarray(scores, np.float64)
  if decimals is not None:
    s = np.round(s, decimals)
  order = np.argsort(-s, kind="stable")
  chosen, total = [], 0.0
  for e in order:
    if total >= top_p:
      break
    chosen.append(int(e))
    total += s[e]
  return chosen


def select_experts(scores: Mapping[int, np.ndarray], top_p: float, decimals: int | None = None,
                   shared_experts: bool = False, non_expert_modules: bool = False) -> dict:
  """The official expert-config dict for per-layer scores."""
  if not 0 < top_p <= 1:
    raise ValueError(f"top_p must be in (0, 1], got {top_p}")
  # Layer keys in string order, as the official files have them.
  experts = {str(l): select_layer(s, top_p, decimals) for l, s in scores.items()}
  return {"experts": dict(sorted(experts.items())),
          "shared_experts": bool(shared_experts), "non_expert_modules": bool(non_expert_modules)}
