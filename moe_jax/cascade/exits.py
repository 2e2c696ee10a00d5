"""Exit rules and cost accounting: which model (or layer) answers each example, and what it cost.

Three rules, each a function of the class probabilities an example has seen so far:

  cascade   CascadeBERT: complete models run small to large; an example exits at
            the first model whose top-class probability is strictly above tau
            (`c > tau`, as the official code tests it); the last model always answers.
  entropy   DeeBERT: internal classifiers after every layer of one encoder; exit
            at the first layer whose prediction entropy is below S.
  patience  PABEE: exit when the internal classifiers' predictions have stayed the
            same for `patience` consecutive layers (patience + 1 equal predictions
            in a row); else the last layer answers.

`exits_*` apply a rule to probabilities computed everywhere ([K, N, C]: a
stage or layer by example by class); `run` executes a rule for real, so that
only the examples still undecided reach the next stage or layer (no wasted
work), and must give exactly the same exits and predictions.

Costs. A stage's (or layer's) cost is its active parameters per token outside
the embeddings (`layer_costs`): attention 4 D^2, a dense FFN 2 D F, an MoE FFN
its router, shared experts and top-k routed experts. For BERT-shaped models
(F = 4 D) this is 12 D^2 a layer, proportional to the official trainer's
layers x hidden^2 count, so the speed-ups are the official ones; an MoE stage
pays only for the experts a token uses. An example that exits at stage k paid
for stages 0..k (`paid`); the speed-up is the largest model's cost over the
mean paid (`speedup`), as `expected_acceleration = 12 / avg_layers` is.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import jax
import numpy as np

from moe_jax.config import ModelConfig


# Costs ---------------------------------------------------------------------------------

def layer_costs(config: ModelConfig) -> np.ndarray:
  """[L] active non-embedding parameters per token of each layer (weights; biases ignored)."""
  d = config.hidden_size
  attn = 4 * d * d  # q, k, v and output projections (MHA with N x H = D)
  out = []
  for i in range(config.num_hidden_layers):
    if config.is_moe_layer(i):
      # Router, shared experts and the top-k routed experts, each a SwiGLU of three D x F matrices.
      active = config.num_experts_per_tok + (config.n_shared_experts or 0)
      ffn = d * config.n_routed_experts + 3 * d * config.moe_intermediate_size * active
    elif config.is_encoder:
      ffn = 2 * d * config.intermediate_size  # up and down projections
    else:
      ffn = 3 * d * config.intermediate_size  # SwiGLU
    out.append(attn + ffn)
  return np.asarray(out, np.float64)


def stage_costs(configs: Sequence[ModelConfig]) -> np.ndarray:
  """[K] the cost of running each complete model once."""
  return np.asarray([layer_costs(c).sum() for c in configs], np.float64)


def paid(exits: np.ndarray, costs: np.ndarray) -> np.ndarray:
  """[N] what each example cost: the stages (or layers) up to and including its exit."""
  return np.cumsum(np.asarray(costs, np.float64))[np.asarray(exits)]


def speedup(exits: np.ndarray, costs: np.ndarray, reference: float) -> float:
  """reference / mean cost paid: the official `expected_acceleration` (reference = the large model)."""
  return float(reference / paid(exits, costs).mean())


# Rules on probabilities computed everywhere ----------------------------------------------

def _check(probs: np.ndarray) -> np.ndarray:
  probs = np.asarray(probs, np.float64)
  if probs.ndim != 3:
    raise ValueError(f"probs: expected [K, N, C] (stage or layer, example, class), got {probs.shape}")
  return probs


def exits_cascade(probs: np.ndarray, tau: float) -> np.ndarray:
  """[N] the first stage whose top probability is strictly above `tau`; else the last."""
  conf = _check(probs).max(-1)  # [K, N]
  return _first(conf[:-1] > tau, len(conf))


def _first(hit: np.ndarray, k: int) -> np.ndarray:
  """[N] the first row of hit [K-1, N] that is True, else K-1 (the last stage or layer)."""
  if not len(hit):
    return np.zeros(hit.shape[1], np.int64)
  return np.where(hit.any(0), hit.argmax(0), k - 1)


def entropy(probs: np.ndarray) -> np.ndarray:
  """Shannon entropy (nats) over the last axis."""
  p = np.asarray(probs, np.float64)
  return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), -1)


def exits_entropy(probs: np.ndarray, threshold: float) -> np.ndarray:
  """[N] DeeBERT: the first layer whose entropy is below `threshold`; else the last."""
  return _first(entropy(_check(probs))[:-1] < threshold, len(probs))


def exits_patience(probs: np.ndarray, patience: int) -> np.ndarray:
  """[N] PABEE: the first layer at which the prediction has not changed for `patience` layers."""
  rule = Patience(patience)
  probs = _check(probs)
  state = rule.start(probs.shape[1])
  out = np.full(probs.shape[1], len(probs) - 1)
  alive = np.ones(probs.shape[1], bool)
  for layer, p in enumerate(probs[:-1]):
    stop = rule(state, p) & alive
    out[stop], alive = layer, alive & ~stop
  return out


def select(probs: np.ndarray, exits: np.ndarray) -> np.ndarray:
  """[N, C] each example's probabilities at its exit."""
  probs = _check(probs)
  return probs[np.asarray(exits), np.arange(probs.shape[1])]


# Rules as the real run applies them: (state, probs of the live examples) -> exit now? ------

class _Stateless:
  """A rule that looks at the current probabilities only (no state across steps)."""

  def start(self, n: int):
    return None


class Threshold(_Stateless):
  """CascadeBERT's rule: exit where the top probability is strictly above tau."""

  def __init__(self, tau: float):
    self.tau = float(tau)

  def __call__(self, state, probs: np.ndarray, rows=None) -> np.ndarray:
    return np.asarray(probs).max(-1) > self.tau


class Entropy(_Stateless):
  """DeeBERT's rule: exit where the entropy of the prediction is below the threshold."""

  def __init__(self, threshold: float):
    self.threshold = float(threshold)

  def __call__(self, state, probs: np.ndarray, rows=None) -> np.ndarray:
    return entropy(probs) < self.threshold


class Patience:
  """PABEE's rule: a per-example counter of unchanged predictions; exit when it reaches `patience`."""

  def __init__(self, patience: int):
    if patience < 1:
      raise ValueError(f"patience must be >= 1, got {patience}")
    self.patience = int(patience)

  def start(self, n: int) -> dict:
    return {"last": np.full(n, -1), "count": np.zeros(n, np.int64)}

  def __call__(self, state: dict, probs: np.ndarray, rows=None) -> np.ndarray:
    rows = np.arange(len(state["last"])) if rows is None else rows
    pred = np.asarray(probs).argmax(-1)
    same = pred == state["last"][rows]
    state["count"][rows] = np.where(same, state["count"][rows] + 1, 0)
    state["last"][rows] = pred
    return state["count"][rows] >= self.patience


def run(steps: Sequence[Callable], rule, n: int, carry=None):
  """Executes a rule for real: step k runs only on the examples no earlier step let exit.

  `steps[k](rows, carry) -> (probs [len(rows), C], carry)`: stage (or layer) k on
  the example ids `rows`, given what step k-1 returned for them (None first;
  a layer passes its hidden states on, a complete model nothing).
  Returns (probs [N, C] at each example's exit, exits [N], seconds [K] spent in
  each step, examples [K] each step saw).
  """
  state = rule.start(n)
  rows = np.arange(n)
  out_probs, exits = None, np.full(n, -1)
  seconds, seen = np.zeros(len(steps)), np.zeros(len(steps), np.int64)
  for k, step in enumerate(steps):
    if not len(rows):
      break
    t0 = time.perf_counter()
    probs, carry = step(rows, carry)
    seconds[k], seen[k] = time.perf_counter() - t0, len(rows)
    probs = np.asarray(probs, np.float64)
    if out_probs is None:
      out_probs = np.zeros((n, probs.shape[-1]))
    stop = np.ones(len(rows), bool) if k == len(steps) - 1 else rule(state, probs, rows)
    out_probs[rows[stop]], exits[rows[stop]] = probs[stop], k
    rows = rows[~stop]
    carry = None if carry is None else _take(carry, ~stop)
  return out_probs, exits, seconds, seen


def _take(carry, keep: np.ndarray):
  idx = np.flatnonzero(keep)
  return jax.tree_util.tree_map(lambda x: x[idx], carry)
