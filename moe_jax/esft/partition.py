"""Which parameters train: full fine-tuning (FFT) or ESFT's selected experts.

Routed experts are stored stacked, [E, D, F] per layer. Freezing rows of a
stacked tensor would still give every expert optimizer state (and let weight
decay move "frozen" rows), so ESFT splits each MoE layer's stack into two
leaves: `experts/selected/*` [T_l, ...] holding the chosen experts and
`experts/rest/*` [E - T_l, ...] holding the others (T_l varies by layer; layers
are separate modules, so nothing is padded; an empty group has no leaf). The
model reads the split tree directly (`for_forward`), so routing and outputs are
unchanged and frozen experts need no weight gradient; `merge` puts the rows back
in expert order for checkpoints.

`labels` marks every leaf of the split tree "train" or "frozen"; the trainer's
`optax.multi_transform` gives frozen leaves `set_to_zero()` (no state) and only
differentiates the trained ones.

The same functions serve full fine-tuning (mode "fft": nothing split,
everything trains) and LoRA (mode "lora": {"base": frozen params, "lora": the
low-rank factors}, see `moe_jax.lora`), so the trainer has one step for all.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from moe_jax import lora as lora_lib
from moe_jax.config import ModelConfig
from moe_jax.esft.selection import ExpertConfigError, validate_expert_config
from moe_jax.moe import split_stacks

_PROJ = ("gate_proj", "up_proj", "down_proj")
TRAIN, FROZEN = "train", "frozen"


@dataclasses.dataclass(frozen=True)
class TrainableSpec:
  """What trains. "fft": everything; "esft": the listed experts (+ flags); "lora": low-rank factors."""

  mode: str = "fft"
  experts: tuple[tuple[int, tuple[int, ...]], ...] = ()  # (layer, selected expert ids)
  shared_experts: bool = False
  non_expert_modules: bool = False
  lora_rank: int = 8
  lora_scale: float = 2.0
  seed: int = 0  # LoRA's A initialisation

  def __post_init__(self):
    if self.mode not in ("fft", "esft", "lora"):
      raise ValueError(f"train mode {self.mode!r} is not 'fft', 'esft' or 'lora'")

  @property
  def selected(self) -> dict[int, tuple[int, ...]]:
    return dict(self.experts)

  @classmethod
  def from_expert_config(cls, cfg: Mapping, config: ModelConfig,
                         shared_experts: bool | None = None,
                         non_expert_modules: bool | None = None) -> "TrainableSpec":
    """From the official expert-config dict, checked against the model.

    A MoE layer the config does not list trains no routed experts. The flags
    default to the config's own `shared_experts` / `non_expert_modules`.
    """
    cfg = validate_expert_config(cfg, config.moe_layers, config.n_routed_experts)
    experts = tuple((int(l), tuple(ids)) for l, ids in sorted(cfg["experts"].items(),
                                                               key=lambda kv: int(kv[0])))
    return cls("esft", experts,
               cfg["shared_experts"] if shared_experts is None else shared_experts,
               cfg["non_expert_modules"] if non_expert_modules is None else non_expert_modules)

  def to_expert_config(self) -> dict:
    return {"experts": {str(l): list(ids) for l, ids in self.experts},
            "shared_experts": self.shared_experts, "non_expert_modules": self.non_expert_modules}


def _rows(x, ids):
  """x[ids] for arrays; logical PartitionSpecs (one per leaf) pass through unchanged."""
  return x if isinstance(x, jax.sharding.PartitionSpec) else x[np.asarray(ids, np.int32)]


def split(params: dict, spec: TrainableSpec, config: ModelConfig) -> dict:
  """The parameter tree with each MoE layer's experts split into selected/rest leaves.

  Also splits a tree of logical PartitionSpecs shaped like the parameters
  (except in LoRA mode: see `split_logical`).
  """
  if spec.mode == "fft":
    return params
  if spec.mode == "lora":
    return {"base": params, "lora": lora_lib.init(params, spec.lora_rank, spec.seed)}
  out = dict(params)
  selected = spec.selected
  for layer in config.moe_layers:
    name = f"layers_{layer}"
    sel, rest = split_stacks(selected.get(layer, ()), config.n_routed_experts)
    experts = params[name]["mlp"]["experts"]
    # An empty group is left out (checkpoints cannot hold zero-size arrays).
    split_experts = {group: {p: _rows(experts[p], ids) for p in _PROJ}
                     for group, ids in (("selected", sel), ("rest", rest)) if ids}
    out[name] = {**params[name], "mlp": {**params[name]["mlp"], "experts": split_experts}}
  return out


def merge(split_params: dict, spec: TrainableSpec, config: ModelConfig) -> dict:
  """Inverse of `split`: stacked [E, ...] experts in expert order, as checkpoints hold them."""
  if spec.mode == "fft":
    return split_params
  if spec.mode == "lora":
    return lora_lib.apply(split_params["base"], split_params["lora"], spec.lora_scale)
  out = dict(split_params)
  selected = spec.selected
  for layer in config.moe_layers:
    name = f"layers_{layer}"
    sel, rest = split_stacks(selected.get(layer, ()), config.n_routed_experts)
    inverse = np.argsort(np.asarray(sel + rest))
    parts = split_params[name]["mlp"]["experts"]
    groups = [parts[g] for g in ("selected", "rest") if g in parts]  # an empty group has no leaf
    experts = {p: jnp.concatenate([g[p] for g in groups])[inverse] for p in _PROJ}
    out[name] = {**split_params[name], "mlp": {**split_params[name]["mlp"], "experts": experts}}
  return out


def for_forward(split_params: dict, spec: TrainableSpec, config: ModelConfig) -> tuple[dict, ModelConfig]:
  """(params, config) for the model's forward pass over the split tree.

  ESFT: the split tree as it is, with a config that makes each MoE layer read
  its `selected` and `rest` stacks (`ModelConfig.expert_split`), so that
  differentiating only `selected` computes no weight gradient for the rest
  (merging them into one [E, ...] stack first would). LoRA: the factors
  applied. FFT: unchanged.
  """
  if spec.mode == "esft":
    return split_params, config.replace(expert_split=spec.experts)
  return merge(split_params, spec, config), config


def labels(split_params: dict, spec: TrainableSpec) -> dict:
  """"train" / "frozen" for every leaf of the split tree."""
  def label(path, _):
    keys = [getattr(k, "key", str(k)) for k in path]
    if spec.mode == "fft" or "value_head" in keys:  # a reward model's new head always trains
      return TRAIN
    if spec.mode == "lora":
      return TRAIN if keys[0] == "lora" else FROZEN
    if "experts" in keys:
      return TRAIN if keys[keys.index("experts") + 1] == "selected" else FROZEN
    if "shared_experts" in keys:
      return TRAIN if spec.shared_experts else FROZEN
    return TRAIN if spec.non_expert_modules else FROZEN
  return jax.tree_util.tree_map_with_path(label, split_params)


def split_logical(logical: dict, split_params: dict, spec: TrainableSpec,
                  config: ModelConfig) -> dict:
  """Logical axis names for the split tree; LoRA factors are small and replicated."""
  if spec.mode == "lora":
    return {"base": logical, "lora": jax.tree_util.tree_map(
        lambda _: jax.sharding.PartitionSpec(), split_params["lora"])}
  return split(logical, spec, config)


def partition(tree: dict, label_tree: dict) -> tuple[dict, dict]:
  """(trained, frozen): two trees shaped like `tree`, with None where the other label is."""
  trained = jax.tree_util.tree_map(lambda x, l: x if l == TRAIN else None, tree, label_tree)
  frozen = jax.tree_util.tree_map(lambda x, l: x if l == FROZEN else None, tree, label_tree)
  return trained, frozen


def combine(trained: dict, frozen: dict) -> dict:
  """Inverse of `partition`."""
  return jax.tree_util.tree_map(lambda a, b: b if a is None else a, trained, frozen,
                                is_leaf=lambda x: x is None)


def count(tree: dict, label_tree: dict) -> dict[str, int]:
  """Number of parameters per label."""
  n = {TRAIN: 0, FROZEN: 0}
  for x, l in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(label_tree)):
    n[l] += int(np.prod(x.shape))
  return n


def check_selection(spec: TrainableSpec, config: ModelConfig) -> None:
  """Raises ExpertConfigError if the spec names a layer or expert the model lacks."""
  for layer, ids in spec.experts:
    if layer not in config.moe_layers:
      raise ExpertConfigError(f"layer {layer} is not a MoE layer (MoE layers: {config.moe_layers})")
    if any(not 0 <= e < config.n_routed_experts for e in ids):
      raise ExpertConfigError(f"layer {layer}: expert ids {list(ids)} outside 0.."
                              f"{config.n_routed_experts - 1}")
