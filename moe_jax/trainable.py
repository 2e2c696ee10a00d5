"""What trains: everything (FFT), ESFT's selected experts, LoRA factors, and task heads.

A `TrainableSpec` says what trains; `from_config` builds one from a training
config's `train_mode`. A run holds its parameters as the spec's *split tree*
and labels every leaf "train" or "frozen" (`labels`): `optax.multi_transform`
gives frozen leaves `set_to_zero()`, so they get no update, no weight decay and
no optimizer state, and the step differentiates the trained leaves only.

Each mode is one entry of `_MODES`, with the same operations: `split`
(params -> split tree), `merge` (its inverse, for export), `forward` and
`forward_config` (the params and the config the model reads), `label` (a
leaf's label from its path) and `logical` (the split tree's logical axis names).

  "fft"   the plain tree; everything trains.
  "esft"  each MoE layer's stacked experts [E, ...] split into `experts/selected`
          [T_l, ...] (trained) and `experts/rest` [E - T_l, ...] (frozen); an
          empty group has no leaf. The model reads the two stacks as they are
          (`ModelConfig.expert_split`), so the frozen experts need no weight
          gradient. Shared experts and the other modules train only when the
          spec says so.
  "lora"  {"base": the frozen params, "lora": the low-rank factors} (`moe_jax.lora`).
  "heads" the plain tree, all frozen: only the task heads train (linear probes,
          the anchor re-weighting of `moe_jax.icl`).

Task heads (a reward model's value head) sit beside the transformer's tree
under their own top-level names (`TrainableSpec.heads`): always trained,
never split.

ESFT's official expert config, `{"experts": {"<layer>": [ids]},
"shared_experts": bool, "non_expert_modules": bool}` with layers numbered as
the model numbers them, is an ESFT spec's file form (`read_expert_config`,
`write_expert_config`, `TrainableSpec.from_expert_config`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from moe_jax import lora as lora_lib
from moe_jax.config import ModelConfig
from moe_jax.layers import experts_path
from moe_jax.moe import split_stacks

TRAIN, FROZEN = "train", "frozen"
MODES = ("fft", "esft", "lora", "heads")
_PROJ = ("gate_proj", "up_proj", "down_proj")


class ExpertConfigError(ValueError):
  """An expert config or routing log that cannot apply; the message names the file and field."""


# The spec ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TrainableSpec:
  """What trains. "fft": everything; "esft": the listed experts (+ flags); "lora": low-rank
  factors; "heads": only the task heads."""

  mode: str = "fft"
  experts: tuple[tuple[int, tuple[int, ...]], ...] = ()  # (layer, selected expert ids)
  shared_experts: bool = False
  non_expert_modules: bool = False
  lora_rank: int = 8
  lora_scale: float = 2.0
  seed: int = 0  # LoRA's A initialisation
  # Task heads beside the transformer's tree, always trained: ((name, logical axes), ...), the
  # axes a tree of PartitionSpecs shaped like params[name]. Set with `with_heads`.
  heads: tuple[tuple[str, Any], ...] = ()

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"train mode {self.mode!r} is not one of {MODES}")
    clash = set(self.head_axes) & {"base", "lora"}
    if clash:
      raise ValueError(f"head names {sorted(clash)} are taken by LoRA's split tree")

  @property
  def selected(self) -> dict[int, tuple[int, ...]]:
    return dict(self.experts)

  @property
  def head_axes(self) -> dict[str, Any]:
    """{head name: its logical axes}."""
    return dict(self.heads)

  def with_heads(self, heads: Mapping[str, Any]) -> "TrainableSpec":
    """This spec with task heads {name: logical axes} (always trained) beside the transformer."""
    return dataclasses.replace(self, heads=tuple(sorted({**self.head_axes, **heads}.items())))

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


def from_config(cfg, config: ModelConfig, select_experts: Callable[[], dict] | None = None,
                modes: Sequence[str] = MODES) -> TrainableSpec:
  """The spec a training config's `train_mode` asks for (one of `modes`).

  cfg: a training config (`train_mode`, `seed`, `lora.*`, `esft.*`; see
  `moe_jax.train_config`). For "esft" the experts come from the file
  `esft.expert_config` if set, else from `select_experts()`, which returns an
  expert-config dict (the caller scores the experts on its task's data); the
  `esft.train_shared_experts` / `train_non_expert_modules` flags apply to both.
  """
  mode = cfg.train_mode
  if mode not in modes:
    raise ValueError(f"config.train_mode: {mode!r} is not one of {tuple(modes)}")
  if mode in ("fft", "heads"):
    return TrainableSpec(mode)
  if mode == "lora":
    return TrainableSpec("lora", lora_rank=cfg.lora.rank, lora_scale=cfg.lora.scale, seed=cfg.seed)
  e = cfg.esft
  if e.expert_config:
    expert_cfg = read_expert_config(e.expert_config, config.moe_layers, config.n_routed_experts)
  elif select_experts is not None:
    expert_cfg = select_experts()
  else:
    raise ValueError("config.train_mode='esft' needs config.esft.expert_config (a file) here")
  return TrainableSpec.from_expert_config(expert_cfg, config, e.train_shared_experts,
                                          e.train_non_expert_modules)


def check_selection(spec: TrainableSpec, config: ModelConfig) -> None:
  """Raises ExpertConfigError if the spec names a layer or expert the model lacks."""
  for layer, ids in spec.experts:
    if layer not in config.moe_layers:
      raise ExpertConfigError(f"layer {layer} is not a MoE layer (MoE layers: {config.moe_layers})")
    if any(not 0 <= e < config.n_routed_experts for e in ids):
      raise ExpertConfigError(f"layer {layer}: expert ids {list(ids)} outside 0.."
                              f"{config.n_routed_experts - 1}")


# The modes -----------------------------------------------------------------------------

def _get(tree: dict, path: tuple):
  for key in path:
    tree = tree[key]
  return tree


def _with(tree: dict, path: tuple, value) -> dict:
  """A copy of `tree` with the leaf or subtree at `path` replaced (the dicts on the path copied)."""
  if not path:
    return value
  return {**tree, path[0]: _with(tree[path[0]], path[1:], value)}


def _rows(x, ids):
  """x[ids] for arrays; logical PartitionSpecs (one per leaf) pass through unchanged."""
  return x if isinstance(x, jax.sharding.PartitionSpec) else x[np.asarray(ids, np.int32)]


class _Full:
  """FFT: the plain tree, everything trained."""

  def split(self, params, spec, config):
    return params

  def merge(self, tree, spec, config):
    return tree

  def forward(self, tree, spec, config):
    return tree

  def forward_config(self, spec, config):
    return config

  def label(self, keys, spec):
    return TRAIN

  def logical(self, logical, tree, spec, config):
    return logical


class _Frozen(_Full):
  """Heads only: the plain tree, every leaf of the transformer frozen."""

  def label(self, keys, spec):
    return FROZEN


class _Experts:
  """ESFT: each MoE layer's experts as `selected` (trained) and `rest` (frozen) stacks."""

  def split(self, params, spec, config):
    out, selected = params, spec.selected
    for layer in config.moe_layers:
      path = experts_path(layer)
      experts = _get(params, path)
      sel, rest = split_stacks(selected.get(layer, ()), config.n_routed_experts)
      # An empty group is left out (checkpoints cannot hold zero-size arrays).
      out = _with(out, path, {group: {p: _rows(experts[p], ids) for p in _PROJ}
                              for group, ids in (("selected", sel), ("rest", rest)) if ids})
    return out

  def merge(self, tree, spec, config):
    out, selected = tree, spec.selected
    for layer in config.moe_layers:
      path = experts_path(layer)
      sel, rest = split_stacks(selected.get(layer, ()), config.n_routed_experts)
      inverse = np.argsort(np.asarray(sel + rest))
      parts = _get(tree, path)
      groups = [parts[g] for g in ("selected", "rest") if g in parts]
      out = _with(out, path, {p: jnp.concatenate([g[p] for g in groups])[inverse] for p in _PROJ})
    return out

  def forward(self, tree, spec, config):
    # The split tree as it is: merging the stacks into one [E, ...] tensor first would make
    # differentiating `selected` compute every expert's weight gradient.
    return tree

  def forward_config(self, spec, config):
    return config.replace(expert_split=spec.experts)

  def label(self, keys, spec):
    if "experts" in keys:
      return TRAIN if keys[keys.index("experts") + 1] == "selected" else FROZEN
    if "shared_experts" in keys:
      return TRAIN if spec.shared_experts else FROZEN
    return TRAIN if spec.non_expert_modules else FROZEN

  def logical(self, logical, tree, spec, config):
    return self.split(logical, spec, config)


class _LoRA:
  """LoRA: the frozen params under "base", the trained factors under "lora"."""

  def split(self, params, spec, config):
    return {"base": params, "lora": lora_lib.init(params, spec.lora_rank, spec.seed)}

  def merge(self, tree, spec, config):
    return lora_lib.apply(tree["base"], tree["lora"], spec.lora_scale)

  def forward(self, tree, spec, config):
    return self.merge(tree, spec, config)

  def forward_config(self, spec, config):
    return config

  def label(self, keys, spec):
    return TRAIN if keys[0] == "lora" else FROZEN

  def logical(self, logical, tree, spec, config):
    # The factors are small: replicated.
    return {"base": logical, "lora": jax.tree_util.tree_map(
        lambda _: jax.sharding.PartitionSpec(), tree["lora"])}


_MODES = {"fft": _Full(), "esft": _Experts(), "lora": _LoRA(), "heads": _Frozen()}


def _beside_heads(tree: dict, spec: TrainableSpec, fn):
  """fn(the transformer's tree), with the spec's heads put back beside it unchanged."""
  if not spec.heads:
    return fn(tree)  # no copy: an FFT split tree is the params themselves
  body, heads = _apart(tree, spec)
  return {**fn(body), **heads}


def _apart(tree: dict, spec: TrainableSpec) -> tuple[dict, dict]:
  """(the transformer's tree, the heads) of a parameter tree, split or not."""
  names = spec.head_axes
  missing = [h for h in names if h not in tree]
  if missing:
    raise KeyError(f"the parameters have no head {missing[0]!r} (top level: {sorted(tree)})")
  return {k: v for k, v in tree.items() if k not in names}, {k: tree[k] for k in names}


# The split tree -----------------------------------------------------------------------

def split(params: dict, spec: TrainableSpec, config: ModelConfig) -> dict:
  """The tree a run trains: `params` laid out for `spec` (see the modes above)."""
  return _beside_heads(params, spec, lambda body: _MODES[spec.mode].split(body, spec, config))


def merge(split_params: dict, spec: TrainableSpec, config: ModelConfig) -> dict:
  """Inverse of `split`: the plain tree (experts stacked in expert order), as checkpoints hold it."""
  return _beside_heads(split_params, spec, lambda body: _MODES[spec.mode].merge(body, spec, config))


def for_forward(split_params: dict, spec: TrainableSpec, config: ModelConfig) -> tuple[dict, ModelConfig]:
  """(params, config) for the model's forward pass over the split tree.

  ESFT: the split tree as it is, with a config that makes each MoE layer read
  its `selected` and `rest` stacks (`ModelConfig.expert_split`); LoRA: the
  factors applied; FFT: unchanged. Heads stay at the top level.
  """
  mode = _MODES[spec.mode]
  return (_beside_heads(split_params, spec, lambda body: mode.forward(body, spec, config)),
          mode.forward_config(spec, config))


def labels(split_params: dict, spec: TrainableSpec) -> dict:
  """"train" / "frozen" for every leaf of the split tree."""
  mode, heads = _MODES[spec.mode], spec.head_axes

  def label(path, _):
    keys = [getattr(k, "key", str(k)) for k in path]
    return TRAIN if keys[0] in heads else mode.label(keys, spec)
  return jax.tree_util.tree_map_with_path(label, split_params)


def split_logical(logical: dict, split_params: dict, spec: TrainableSpec,
                  config: ModelConfig) -> dict:
  """Logical axis names (PartitionSpecs) for the split tree, from those of the plain tree."""
  tree = _apart(split_params, spec)[0]
  return _beside_heads(logical, spec, lambda body: _MODES[spec.mode].logical(body, tree, spec, config))


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


# The expert-config file ------------------------------------------------------------------

def write_expert_config(cfg: dict, path: str | os.PathLike) -> None:
  """Writes an expert config as JSON, whole or not at all (temporary file, then rename)."""
  path = os.fspath(path)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(cfg, f)
  os.replace(tmp, path)


def read_expert_config(path: str | os.PathLike, moe_layers: Sequence[int] | None = None,
                       n_experts: int | None = None) -> dict:
  """Reads and validates an official expert config against a model's MoE layers and experts."""
  path = os.fspath(path)
  try:
    with open(path, encoding="utf-8") as f:
      cfg = json.load(f)
  except FileNotFoundError:
    raise ExpertConfigError(f"{path}: no such file") from None
  except json.JSONDecodeError as e:
    raise ExpertConfigError(f"{path}: malformed JSON at line {e.lineno}: {e.msg}") from e
  return validate_expert_config(cfg, moe_layers, n_experts, source=path)


def validate_expert_config(cfg, moe_layers=None, n_experts=None, source="expert config") -> dict:
  """The expert config normalised (string layer keys, both flags present); ExpertConfigError naming `source` otherwise.

  Checks the layer keys against `moe_layers` and the ids against `n_experts` where given.
  """
  if not isinstance(cfg, dict) or not isinstance(cfg.get("experts"), dict):
    raise ExpertConfigError(f"{source}: expected an object with an 'experts' mapping")
  experts = {}
  for key, ids in cfg["experts"].items():
    if not str(key).isdigit():
      raise ExpertConfigError(f"{source}: layer key {key!r} is not a layer index")
    layer = int(key)
    if str(layer) in experts:
      raise ExpertConfigError(f"{source}: layer {layer} is listed twice")
    if moe_layers is not None and layer not in moe_layers:
      raise ExpertConfigError(f"{source}: layer {layer} is not a MoE layer of this model "
                              f"(MoE layers: {list(moe_layers)})")
    # bool is an int subclass, but JSON true/false are not expert ids.
    if not isinstance(ids, list) or not all(type(i) is int for i in ids):
      raise ExpertConfigError(f"{source}: layer {layer}: expected a list of expert ids")
    bad = [i for i in ids if i < 0 or (n_experts is not None and i >= n_experts)]
    if bad:
      raise ExpertConfigError(f"{source}: layer {layer}: expert ids {bad} do not exist "
                              f"(the model has {n_experts} routed experts)")
    if len(set(ids)) != len(ids):
      raise ExpertConfigError(f"{source}: layer {layer}: repeated expert ids {ids}")
    experts[str(layer)] = list(ids)
  for flag in ("shared_experts", "non_expert_modules"):
    if not isinstance(cfg.get(flag, False), bool):
      raise ExpertConfigError(f"{source}: field {flag!r} must be true or false")
  return {"experts": experts, "shared_experts": cfg.get("shared_experts", False),
          "non_expert_modules": cfg.get("non_expert_modules", False)}
