"""The model configuration: one frozen dataclass whose fields mirror Hugging Face.

Field names are the ones in DeepSeek's `config.json` files (`hidden_size`,
`n_routed_experts`, `topk_method`, ...), so a checkpoint's config reads in
directly and writes back out unchanged. A few fields are ours and never written
to `config.json`: the token dispatch (`dispatch`, `capacity_factor`), the
device-level balance loss, the compute dtype, rematerialisation and ESFT's
expert layout.

Presets for the published models live at the bottom (`PRESETS`); `tiny()` gives
a small random-init model for tests and demos.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

_DEEPSEEK = ("deepseek", "deepseek_v2", "deepseek_v3")
_DENSE_DECODERS = ("llama", "qwen2", "mistral")  # config-only differences on the MHA path
_ENCODERS = ("bert", "mpnet")
_MODEL_TYPES = _DEEPSEEK + _DENSE_DECODERS + _ENCODERS
_ARCHITECTURES = {"deepseek": "DeepseekForCausalLM", "deepseek_v2": "DeepseekV2ForCausalLM",
                  "deepseek_v3": "DeepseekV3ForCausalLM", "llama": "LlamaForCausalLM",
                  "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM", "bert": "BertModel",
                  "mpnet": "MPNetModel"}
_HIDDEN_ACTS = ("silu", "gelu", "gelu_new", "gelu_pytorch_tanh", "relu")
_TOPK_METHODS = ("greedy", "group_limited_greedy", "noaux_tc")
_SCORING_FUNCS = ("softmax", "sigmoid")
_DISPATCHES = ("auto", "sorted", "grouped", "pallas", "ragged_dot", "dense")
_REMATS = ("none", "full", "dots")
_ROPE_TYPES = ("default", "yarn")


# Our fields, never written to config.json: how a model computes and trains, not what it is.
OWN_FIELDS = ("device_aux_loss_alpha", "n_balance_devices", "dispatch", "capacity_factor", "dtype",
              "param_dtype", "remat", "expert_split")
# Of those, the ones that leave the trained function unchanged: a run may resume with others.
COMPUTE_FIELDS = ("dispatch", "capacity_factor", "dtype", "remat")


class ConfigError(ValueError):
  """A configuration that cannot describe a model; the message names the field."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of a DeepSeek-family, Llama-family or BERT-style model.

  `model_type` selects the family. "deepseek" is standard multi-head attention
  (DeepSeekMoE 16B), "deepseek_v2"/"deepseek_v3" are multi-head latent attention
  (`kv_lora_rank=None` also means MHA). "llama", "qwen2" and "mistral" are dense
  decoders on the same MHA path (grouped-query attention, SwiGLU, RoPE); a dense
  model is `n_routed_experts=None`. "bert" is a bidirectional encoder
  (`moe_jax.encoder`): post-LayerNorm, GELU MLP, learned positions and token
  types; "mpnet" the same encoder without token types and with a relative
  position bias on every layer's attention (`relative_attention_num_buckets`).
  Any family becomes a DeepSeekMoE model by setting `n_routed_experts`: its MoE
  layers then hold routed and shared SwiGLU experts.

  The defaults are DeepSeek-V2-Lite's; build other families from a checkpoint
  (`from_hf_dict`) or a preset (`PRESETS`), which set every field they need.
  """

  model_type: str = "deepseek_v2"
  vocab_size: int = 102400
  hidden_size: int = 2048
  intermediate_size: int = 10944  # dense-layer SwiGLU width
  num_hidden_layers: int = 27
  num_attention_heads: int = 16
  num_key_value_heads: int | None = None  # MHA only; None = num_attention_heads
  head_dim: int | None = None  # MHA only; None = hidden_size // num_attention_heads
  max_position_embeddings: int = 4096
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  rope_scaling: dict | None = None  # {"type"/"rope_type": "yarn", "factor", ...}
  rope_interleave: bool = True  # MLA: rotary pairs are (x0, x1), (x2, x3), ...
  attention_bias: bool = False  # q, k, v and o biases (Qwen2: q, k, v only, whatever this says)
  sliding_window: int | None = None  # Mistral: a query sees the last `sliding_window` keys
  tie_word_embeddings: bool = False
  bos_token_id: int | None = 100000
  eos_token_id: int | None = 100001
  pad_token_id: int | None = None
  initializer_range: float = 0.006
  # Multi-head latent attention (V2/V3).
  kv_lora_rank: int | None = 512
  q_lora_rank: int | None = None
  qk_rope_head_dim: int = 64
  qk_nope_head_dim: int = 128
  v_head_dim: int = 128
  # Mixture of experts.
  n_routed_experts: int | None = 64
  n_shared_experts: int | None = 2
  num_experts_per_tok: int = 6
  moe_intermediate_size: int = 1408
  first_k_dense_replace: int = 1
  moe_layer_freq: int = 1
  topk_method: str = "greedy"
  n_group: int | None = None
  topk_group: int | None = None
  scoring_func: str = "softmax"
  norm_topk_prob: bool = False
  routed_scaling_factor: float = 1.0
  aux_loss_alpha: float = 0.001
  seq_aux: bool = True
  # BERT-style encoders.
  type_vocab_size: int = 2  # token-type (segment A/B) embeddings; 0: none (MPNet)
  # MPNet's relative position bias: T5-style bidirectional buckets of key - query distance (up to
  # 128), one learned [buckets, heads] table shared by every layer; 0: none (BERT, decoders).
  relative_attention_num_buckets: int = 0
  layer_norm_eps: float = 1e-12
  hidden_act: str = "silu"  # the dense MLP's activation: SwiGLU for "silu" decoders, plain for BERT
  # Ours, not Hugging Face's.
  device_aux_loss_alpha: float = 0.0  # DeepSeekMoE Eq. 14-15; 0 disables it
  n_balance_devices: int = 1  # D in the device-level loss: experts split in D groups
  # "auto" (by backend, see moe.dispatch_for), "sorted" (capacity buffers), "grouped", "pallas",
  # "ragged_dot", "dense"
  dispatch: str = "auto"
  capacity_factor: float = 0.0  # sorted dispatch (auto picks it when > 0); <= 0 means dropless
  dtype: str = "float32"  # activation dtype; the router always runs in float32
  param_dtype: str = "float32"
  # What the backward pass keeps of each decoder layer (moe_jax.model): "none" keeps every
  # activation; "full" keeps the layer's input and recomputes the rest; "dots" also keeps the
  # projections' outputs (matmuls without batch dimensions) and recomputes the expert FFNs.
  remat: str = "none"
  # ESFT's parameter layout, set by its steps (esft.partition.for_forward): None stores each
  # layer's routed experts as one stack; ((layer, expert ids), ...) stores the listed experts of
  # every MoE layer as `experts/selected` and the others as `experts/rest`.
  expert_split: tuple[tuple[int, tuple[int, ...]], ...] | None = None

  def __post_init__(self):
    _validate(self)

  def __hash__(self):  # rope_scaling is a dict; hash the JSON so jit can key on configs
    return hash(json.dumps(dataclasses.asdict(self), sort_keys=True))

  # Derived quantities ------------------------------------------------------

  @property
  def use_mla(self) -> bool:
    return self.model_type in ("deepseek_v2", "deepseek_v3") and self.kv_lora_rank is not None

  @property
  def is_encoder(self) -> bool:
    """Bidirectional (BERT-style) rather than a causal language model."""
    return self.model_type in _ENCODERS

  @property
  def qkv_bias(self) -> bool:
    return self.attention_bias or self.model_type == "qwen2"

  @property
  def o_bias(self) -> bool:
    return self.attention_bias and self.model_type != "qwen2"

  @property
  def mha_head_dim(self) -> int:
    return self.head_dim or self.hidden_size // self.num_attention_heads

  @property
  def qk_head_dim(self) -> int:
    return self.qk_nope_head_dim + self.qk_rope_head_dim

  @property
  def rope_dim(self) -> int:
    """Width of the rotary part of each query/key head."""
    return self.qk_rope_head_dim if self.use_mla else self.mha_head_dim

  def is_moe_layer(self, idx: int) -> bool:
    """DeepSeek's rule: MoE iff past the dense prefix and on the MoE frequency."""
    return (bool(self.n_routed_experts) and idx >= self.first_k_dense_replace
            and idx % self.moe_layer_freq == 0)

  @property
  def moe_layers(self) -> list[int]:
    return [i for i in range(self.num_hidden_layers) if self.is_moe_layer(i)]

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  # Hugging Face config.json ------------------------------------------------

  @classmethod
  def from_hf_dict(cls, d: dict, source: str = "config") -> "ModelConfig":
    """Reads a Hugging Face `config.json` dict; unknown architectures are errors."""
    model_type = d.get("model_type")
    if model_type not in _MODEL_TYPES:
      raise ConfigError(f"{source}: field 'model_type' is {model_type!r}; "
                        f"moe_jax reads {', '.join(_MODEL_TYPES)}")
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in d.items() if k in names and k not in OWN_FIELDS}
    # transformers 5 writes rope_parameters (with rope_theta inside) instead of
    # the original rope_scaling + rope_theta.
    rope = d.get("rope_parameters") or d.get("rope_scaling")
    if isinstance(rope, dict):
      rope = dict(rope)
      if "rope_theta" in rope:
        kwargs["rope_theta"] = rope.pop("rope_theta")
      kind = rope.get("rope_type", rope.get("type", "default"))
      kwargs["rope_scaling"] = None if kind == "default" else rope
    elif rope is not None:
      raise ConfigError(f"{source}: field 'rope_scaling' must be an object, got {rope!r}")
    _FAMILY_DEFAULTS[model_type](kwargs, d)
    for key in ("eos_token_id", "bos_token_id"):
      if isinstance(kwargs.get(key), list):
        kwargs[key] = kwargs[key][0]
    for key in ("n_group", "topk_group"):
      if kwargs.get(key) is None:
        kwargs.pop(key, None)
    try:
      return cls(**kwargs)
    except TypeError as e:  # a field of the wrong type, e.g. a string for an int
      raise ConfigError(f"{source}: {e}") from e

  def to_hf_dict(self) -> dict:
    """The `config.json` dict transformers (and DeepSeek's remote code) read."""
    d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    for ours in OWN_FIELDS:
      d.pop(ours)
    d["architectures"] = [_ARCHITECTURES[self.model_type]]
    d["num_key_value_heads"] = self.num_key_value_heads or self.num_attention_heads
    if self.rope_scaling is not None:
      d["rope_scaling"] = dict(self.rope_scaling)
    mla = ("kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim",
           "rope_interleave")
    routing = ("topk_method", "n_group", "topk_group")
    if self.n_routed_experts:
      d["n_group"] = self.n_group or 1
      d["topk_group"] = self.topk_group or 1
    else:  # a dense model: no MoE fields (an MoE llama or bert is ours alone)
      for k in ("n_routed_experts", "n_shared_experts", "num_experts_per_tok",
                "moe_intermediate_size", "first_k_dense_replace", "moe_layer_freq", "scoring_func",
                "norm_topk_prob", "routed_scaling_factor", "aux_loss_alpha", "seq_aux") + routing:
        d.pop(k)
    if self.model_type in ("deepseek_v2", "deepseek_v3"):
      d.pop("head_dim")
    else:  # multi-head attention
      for k in mla + (routing if self.model_type == "deepseek" else ()):
        d.pop(k, None)
      if self.head_dim is None or self.is_encoder:
        d.pop("head_dim")
    if self.model_type != "deepseek_v3":
      d.pop("rope_interleave", None)
    if self.model_type != "mpnet":
      d.pop("relative_attention_num_buckets")
    else:  # no token types
      d.pop("type_vocab_size")
    if self.is_encoder:
      for k in ("rms_norm_eps", "rope_theta", "rope_scaling", "tie_word_embeddings",
                "attention_bias", "sliding_window", "num_key_value_heads"):
        d.pop(k, None)
    else:
      for k in ("type_vocab_size", "layer_norm_eps"):
        d.pop(k)
      d["hidden_act"] = "silu"
    if self.model_type not in ("mistral",):
      d.pop("sliding_window", None)  # an encoder's branch above has dropped it already
    if self.model_type == "qwen2":
      d.pop("attention_bias")
    return d

  @classmethod
  def from_json_file(cls, path: str | os.PathLike) -> "ModelConfig":
    path = os.fspath(path)
    if not os.path.exists(path):
      raise ConfigError(f"{path}: no such file (a Hugging Face model directory needs config.json)")
    try:
      with open(path, encoding="utf-8") as f:
        d = json.load(f)
    except json.JSONDecodeError as e:
      raise ConfigError(f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e
    if not isinstance(d, dict):
      raise ConfigError(f"{path}: expected a JSON object, got {type(d).__name__}")
    return cls.from_hf_dict(d, source=path)



# What a family's config.json leaves implicit (kwargs: the fields read so far; d: the raw dict).

def _deepseek(kwargs: dict, d: dict) -> None:
  model_type = d["model_type"]
  if model_type != "deepseek":
    kwargs.pop("head_dim", None)  # transformers writes qk_rope_head_dim here for MLA models
  if model_type == "deepseek":
    kwargs["kv_lora_rank"] = None  # DeepSeekMoE 16B: MHA
    kwargs.setdefault("seq_aux", True)
    kwargs.setdefault("aux_loss_alpha", 0.001)
  if model_type == "deepseek_v3":
    kwargs.setdefault("topk_method", "noaux_tc")
    kwargs.setdefault("scoring_func", "sigmoid")
  if model_type == "deepseek_v2":
    kwargs.setdefault("rope_interleave", True)


def _dense_decoder(kwargs: dict, d: dict) -> None:
  """Llama, Qwen2, Mistral: MHA with GQA, every layer a dense SwiGLU, Llama's defaults."""
  for key in ("kv_lora_rank", "n_routed_experts", "n_shared_experts"):
    kwargs.setdefault(key, None)  # set only by an MoE model of this family that moe_jax wrote
  kwargs.setdefault("rms_norm_eps", 1e-6)
  kwargs.setdefault("initializer_range", 0.02)
  for key in ("bos_token_id", "eos_token_id"):
    kwargs.setdefault(key, None)
  if d["model_type"] == "qwen2" and not d.get("use_sliding_window"):
    kwargs["sliding_window"] = None  # Qwen2 writes a window it does not use
  act = d.get("hidden_act", "silu")
  if act != "silu":
    raise ConfigError(f"field 'hidden_act': {d['model_type']} models here are SwiGLU ('silu'), got {act!r}")


def _bert(kwargs: dict, d: dict) -> None:
  """BERT: MHA without rotary positions, post-LayerNorm, a dense MLP of `hidden_act`."""
  kwargs.update(kv_lora_rank=None, num_key_value_heads=None, head_dim=None, rope_scaling=None,
                attention_bias=True, bos_token_id=None, eos_token_id=None, tie_word_embeddings=False)
  for key in ("n_routed_experts", "n_shared_experts"):  # dense unless an MoE encoder (ours) says so
    kwargs.setdefault(key, None)
  kwargs.setdefault("hidden_act", "gelu")
  kwargs.setdefault("initializer_range", 0.02)
  kwargs.setdefault("pad_token_id", 0)
  kind = d.get("position_embedding_type", "absolute")
  if kind != "absolute":
    raise ConfigError(f"field 'position_embedding_type': {kind!r}; moe_jax's BERT reads 'absolute'")


# MPNetConfig's defaults, for the fields a config.json may leave out.
_MPNET_DEFAULTS = dict(vocab_size=30527, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                       intermediate_size=3072, max_position_embeddings=512, layer_norm_eps=1e-12,
                       relative_attention_num_buckets=32, pad_token_id=1, bos_token_id=0,
                       eos_token_id=2)


def _mpnet(kwargs: dict, d: dict) -> None:
  """MPNet: BERT's layers without token types, with a relative position bias (T5 buckets)."""
  for key, value in _MPNET_DEFAULTS.items():
    kwargs.setdefault(key, value)
  bos, eos = kwargs["bos_token_id"], kwargs["eos_token_id"]
  _bert(kwargs, d)  # which has no bos/eos: MPNet's <s> and </s> stay
  kwargs.update(bos_token_id=bos, eos_token_id=eos, type_vocab_size=0)  # MPNet has no token types


_FAMILY_DEFAULTS = {**{t: _deepseek for t in _DEEPSEEK}, **{t: _dense_decoder for t in _DENSE_DECODERS},
                    "bert": _bert, "mpnet": _mpnet}


def _validate_encoder(c: ModelConfig, fail) -> None:
  """The encoder families' own fields: MPNet's relative position bias and token types."""
  buckets = c.relative_attention_num_buckets
  if not isinstance(buckets, int) or isinstance(buckets, bool) or buckets < 0:
    fail("relative_attention_num_buckets", f"must be a non-negative integer, got {buckets!r}")
  if not isinstance(c.type_vocab_size, int) or c.type_vocab_size < 0:
    fail("type_vocab_size", f"must be a non-negative integer, got {c.type_vocab_size!r}")
  if c.model_type == "mpnet":
    if buckets != 32:  # transformers' MPNetEncoder.compute_position_bias hard-codes 32
      fail("relative_attention_num_buckets", f"MPNet buckets relative positions into 32 (as "
           f"transformers' MPNetModel does, whatever its config says), got {buckets}")
    if c.type_vocab_size:
      fail("type_vocab_size", f"MPNet has no token-type embeddings; must be 0, got {c.type_vocab_size}")
  elif buckets:
    fail("relative_attention_num_buckets", f"only MPNet has a relative position bias; a "
         f"{c.model_type!r} model takes 0, got {buckets}")


def _validate(c: ModelConfig) -> None:
  def fail(field, msg):
    raise ConfigError(f"field {field!r}: {msg}")

  if c.model_type not in _MODEL_TYPES:
    fail("model_type", f"{c.model_type!r} is not one of {_MODEL_TYPES}")
  for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
               "intermediate_size"):
    v = getattr(c, name)
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
      fail(name, f"must be a positive integer, got {v!r}")
  if c.hidden_act not in _HIDDEN_ACTS or (not c.is_encoder and c.hidden_act != "silu"):
    fail("hidden_act", f"{c.hidden_act!r}: decoders are SwiGLU ('silu'); encoders take {_HIDDEN_ACTS}")
  _validate_encoder(c, fail)
  if c.sliding_window is not None and c.sliding_window < 1:
    fail("sliding_window", f"must be a positive number of keys or None, got {c.sliding_window!r}")
  if c.topk_method not in _TOPK_METHODS:
    fail("topk_method", f"unknown method {c.topk_method!r}; expected one of {_TOPK_METHODS}")
  if c.scoring_func not in _SCORING_FUNCS:
    fail("scoring_func", f"unknown function {c.scoring_func!r}; expected one of {_SCORING_FUNCS}")
  if c.dispatch not in _DISPATCHES:
    fail("dispatch", f"unknown dispatch {c.dispatch!r}; expected one of {_DISPATCHES}")
  if c.remat not in _REMATS:
    fail("remat", f"unknown policy {c.remat!r}; expected one of {_REMATS}")
  kind = None
  if c.rope_scaling is not None:
    kind = c.rope_scaling.get("rope_type", c.rope_scaling.get("type"))
    if kind not in _ROPE_TYPES:
      fail("rope_scaling", f"unsupported rope type {kind!r}; expected one of {_ROPE_TYPES}")
    if kind == "yarn":
      for key in ("original_max_position_embeddings",):
        if key not in c.rope_scaling:
          fail("rope_scaling", f"YaRN needs {key!r}")
  if c.n_routed_experts:
    e, k = c.n_routed_experts, c.num_experts_per_tok
    if not isinstance(k, int) or k < 1:
      fail("num_experts_per_tok", f"must be a positive integer, got {k!r}")
    if k > e:
      fail("num_experts_per_tok", f"top-{k} is larger than n_routed_experts={e}")
    if c.moe_layer_freq < 1:
      fail("moe_layer_freq", f"must be >= 1, got {c.moe_layer_freq}")
    grouped = c.topk_method in ("group_limited_greedy", "noaux_tc")
    if grouped:
      g, tg = c.n_group or 1, c.topk_group or 1
      if e % g:
        fail("n_group", f"n_routed_experts={e} is not divisible by n_group={g}")
      if tg > g:
        fail("topk_group", f"topk_group={tg} is larger than n_group={g}")
      if tg * (e // g) < k:
        fail("topk_group", f"{tg} groups of {e // g} experts cannot supply top-{k}")
      if c.topk_method == "noaux_tc" and e // g < 2:
        fail("n_group", "noaux_tc scores a group by its top-2 experts; groups need >= 2 experts")
    if c.topk_method == "noaux_tc" and c.scoring_func != "sigmoid":
      fail("topk_method", "noaux_tc (V3) routing needs scoring_func='sigmoid'")
    if c.n_balance_devices < 1 or e % c.n_balance_devices:
      fail("n_balance_devices", f"must divide n_routed_experts={e}, got {c.n_balance_devices}")
    for layer, ids in c.expert_split or ():
      if not c.is_moe_layer(layer):
        fail("expert_split", f"layer {layer} is not a MoE layer")
      if len(set(ids)) != len(ids) or any(not 0 <= i < e for i in ids):
        fail("expert_split", f"layer {layer}: expert ids {list(ids)} are not distinct ids in 0..{e - 1}")
  if c.use_mla:
    if c.qk_rope_head_dim % 2:
      fail("qk_rope_head_dim", f"must be even for rotary embeddings, got {c.qk_rope_head_dim}")
  else:
    nkv = c.num_key_value_heads or c.num_attention_heads
    if c.num_attention_heads % nkv:
      fail("num_key_value_heads", f"{nkv} does not divide num_attention_heads={c.num_attention_heads}")
    if c.mha_head_dim % 2 and not c.is_encoder:  # BERT has no rotary embeddings
      fail("head_dim", f"must be even for rotary embeddings, got {c.mha_head_dim}")


# Presets ---------------------------------------------------------------------
# Values from DeepSeek's released config.json files (see shared spec deepseekmoe.md A.7).

def deepseek_moe_2b() -> ModelConfig:
  """DeepSeekMoE 2B validation model (paper Table 7): 1 shared + 63 routed, top-7, no dense layer."""
  return ModelConfig(model_type="deepseek", vocab_size=8192, hidden_size=1280, num_hidden_layers=9,
                     num_attention_heads=10, intermediate_size=3413, moe_intermediate_size=853,
                     n_routed_experts=63, n_shared_experts=1, num_experts_per_tok=7,
                     first_k_dense_replace=0, kv_lora_rank=None, aux_loss_alpha=0.01,
                     seq_aux=False, max_position_embeddings=2048)


def deepseek_moe_16b() -> ModelConfig:
  """deepseek-moe-16b-base: MHA, 2 shared + 64 routed experts, top-6, first layer dense."""
  return ModelConfig(model_type="deepseek", vocab_size=102400, hidden_size=2048,
                     num_hidden_layers=28, num_attention_heads=16, intermediate_size=10944,
                     moe_intermediate_size=1408, n_routed_experts=64, n_shared_experts=2,
                     num_experts_per_tok=6, kv_lora_rank=None, max_position_embeddings=4096)


def deepseek_v2_lite() -> ModelConfig:
  """DeepSeek-V2-Lite: MLA without query compression, YaRN x40, 64 routed experts top-6."""
  return ModelConfig(model_type="deepseek_v2", max_position_embeddings=163840,
                     rope_scaling={"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                                   "beta_fast": 32, "beta_slow": 1, "mscale": 0.707,
                                   "mscale_all_dim": 0.707})


def deepseek_v3() -> ModelConfig:
  """DeepSeek-V3 671B: sigmoid routing with correction bias, 8 groups keep 4, top-8 of 256."""
  return ModelConfig(model_type="deepseek_v3", vocab_size=129280, hidden_size=7168,
                     intermediate_size=18432, num_hidden_layers=61, num_attention_heads=128,
                     kv_lora_rank=512, q_lora_rank=1536, n_routed_experts=256, n_shared_experts=1,
                     num_experts_per_tok=8, moe_intermediate_size=2048, first_k_dense_replace=3,
                     topk_method="noaux_tc", n_group=8, topk_group=4, scoring_func="sigmoid",
                     norm_topk_prob=True, routed_scaling_factor=2.5, aux_loss_alpha=0.0001,
                     bos_token_id=0, eos_token_id=1, max_position_embeddings=163840,
                     rope_scaling={"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                                   "beta_fast": 32, "beta_slow": 1, "mscale": 1.0,
                                   "mscale_all_dim": 1.0})


def tiny(**overrides: Any) -> ModelConfig:
  """A few-hundred-thousand-parameter DeepSeekMoE for tests and CPU demos."""
  base = dict(model_type="deepseek_v2", vocab_size=264, hidden_size=64, intermediate_size=128,
              num_hidden_layers=2, num_attention_heads=4, kv_lora_rank=16, q_lora_rank=None,
              qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, n_routed_experts=8,
              n_shared_experts=1, num_experts_per_tok=2, moe_intermediate_size=32,
              first_k_dense_replace=1, max_position_embeddings=512, bos_token_id=1,
              eos_token_id=2, initializer_range=0.02)
  base.update(overrides)
  return ModelConfig(**base)


def all_minilm_l6_v2() -> ModelConfig:
  """sentence-transformers/all-MiniLM-L6-v2: a 6-layer, 384-wide BERT (22.7M parameters)."""
  return ModelConfig(model_type="bert", vocab_size=30522, hidden_size=384, intermediate_size=1536,
                     num_hidden_layers=6, num_attention_heads=12, max_position_embeddings=512,
                     type_vocab_size=2, layer_norm_eps=1e-12, hidden_act="gelu", pad_token_id=0,
                     initializer_range=0.02, attention_bias=True, kv_lora_rank=None,
                     n_routed_experts=None, n_shared_experts=None, bos_token_id=None,
                     eos_token_id=None)


def all_mpnet_base_v2() -> ModelConfig:
  """sentence-transformers/all-mpnet-base-v2: a 12-layer, 768-wide MPNet (109M parameters)."""
  return ModelConfig(model_type="mpnet", vocab_size=30527, hidden_size=768, intermediate_size=3072,
                     num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=514,
                     type_vocab_size=0, relative_attention_num_buckets=32, layer_norm_eps=1e-5,
                     hidden_act="gelu", pad_token_id=1, bos_token_id=0, eos_token_id=2,
                     initializer_range=0.02, attention_bias=True, kv_lora_rank=None,
                     n_routed_experts=None, n_shared_experts=None)


PRESETS = {
    "deepseek-moe-2b": deepseek_moe_2b,
    "deepseek-moe-16b": deepseek_moe_16b,
    "deepseek-v2-lite": deepseek_v2_lite,
    "deepseek-v3": deepseek_v3,
    "tiny": tiny,
    "all-minilm-l6-v2": all_minilm_l6_v2,
    "all-mpnet-base-v2": all_mpnet_base_v2,
}

