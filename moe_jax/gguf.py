"""GGUF files: a llama.cpp checkpoint read as a Hugging Face config, tensors and tokenizer.

Plumbing below everything else (it imports nothing from moe_jax):

    ckpt = gguf.read("SmolLM2-135M-Instruct.Q4_1.gguf")   # config dict + float32 HF tensors
    config = gguf.read_config(path)                          # the same dict, metadata only
    tok = gguf.tokenizer(path)                               # a `tokenizers.Tokenizer`

The header (metadata and tensor table) is parsed here with `struct`, which
takes a fraction of a second, so `read_config` and `tokenizer` stay cheap;
only `read` needs the `gguf` package (pip install gguf), for dequantisation.

Supported: `general.architecture == "llama"` (dense Llama-family decoders:
Llama 1/2/3.0, SmolLM, TinyLlama, ...) with tensors of type F32, F16, BF16,
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K or Q6_K, and RoPE without scaling or
with linear scaling. Not supported, each a `GGUFError`: other architectures
(qwen2, gemma, phi3, mamba, bert, ...), llama MoE files (`llama.expert_count`),
Llama 3.1-style RoPE (the `rope_freqs.weight` tensor), other quantisation
types (Q2_K, Q3_K, IQ*, TQ*, ...), and GGUF version 1.

The tokenizer: byte-level BPE (`tokenizer.ggml.model == "gpt2"`) only, split
before BPE the way llama.cpp splits for the file's `tokenizer.ggml.pre`.
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import Any, NamedTuple

import numpy as np


class GGUFError(ValueError):
  """A GGUF file moe_jax cannot read; the message names the file and the field or tensor."""


class GGUFCheckpoint(NamedTuple):
  config: dict  # a Hugging Face config.json dict (LlamaConfig field names)
  tensors: dict  # {HF tensor name: float32 array in HF layout, [out, in] for a Linear}


# The header -----------------------------------------------------------------------

_MAGIC = b"GGUF"
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}  # GGUF value type -> struct format
_STRING, _ARRAY = 8, 9
_NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32,
          6: np.float32, 7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}


class _TensorInfo(NamedTuple):
  shape: tuple[int, ...]  # numpy order: the file's dims reversed, so [out, in] for a Linear
  type_id: int  # a ggml type id, see _TYPES
  offset: int  # bytes from the start of the data section


class _Header(NamedTuple):
  path: str
  metadata: dict[str, Any]  # arrays come back as lists (strings) or numpy arrays (numbers)
  tensors: dict[str, _TensorInfo]
  data_start: int  # the file offset of the tensor data section


class _Cursor:
  """Reads little-endian values from a buffer; running off its end is a GGUFError."""

  def __init__(self, buf, path: str):
    self.buf, self.path, self.pos = buf, path, 0

  def unpack(self, fmt: str, what: str):
    try:
      (value,) = struct.unpack_from(fmt, self.buf, self.pos)
    except struct.error:
      raise GGUFError(f"{self.path}: truncated file, it ends inside {what}") from None
    self.pos += struct.calcsize(fmt)
    return value

  def string(self, what: str) -> str:
    n = self.unpack("<Q", what)
    if self.pos + n > len(self.buf):
      raise GGUFError(f"{self.path}: truncated file, it ends inside {what}")
    raw = self.buf[self.pos:self.pos + n]
    self.pos += n
    try:
      return raw.decode("utf-8")
    except UnicodeDecodeError as e:
      raise GGUFError(f"{self.path}: {what} is not UTF-8 ({e})") from None

  def value(self, type_id: int, what: str):
    if type_id in _SCALARS:
      return self.unpack(_SCALARS[type_id], what)
    if type_id == _STRING:
      return self.string(what)
    if type_id == _ARRAY:
      return self._array(what)
    raise GGUFError(f"{self.path}: {what} has unknown value type {type_id}")

  def _array(self, what: str):
    item_type, n = self.unpack("<I", what), self.unpack("<Q", what)
    if item_type in _NUMPY:  # numbers in one read, not one struct call each
      dtype = np.dtype(_NUMPY[item_type]).newbyteorder("<")
      if self.pos + n * dtype.itemsize > len(self.buf):
        raise GGUFError(f"{self.path}: truncated file, it ends inside {what}")
      out = np.frombuffer(self.buf, dtype, count=n, offset=self.pos).copy()
      self.pos += n * dtype.itemsize
      return out
    return [self.value(item_type, what) for _ in range(n)]


def _parse_header(buf, path: str) -> _Header:
  cur = _Cursor(buf, path)
  if bytes(buf[:4]) != _MAGIC:
    raise GGUFError(f"{path}: not a GGUF file (it starts {bytes(buf[:4])!r}, not {_MAGIC!r})")
  cur.pos = 4
  version = cur.unpack("<I", "the version")
  if version not in (2, 3):
    raise GGUFError(f"{path}: GGUF version {version} is not supported (2 and 3 are; "
                    "a huge number means a big-endian file)")
  n_tensors, n_kv = cur.unpack("<Q", "the tensor count"), cur.unpack("<Q", "the key count")
  metadata = {}
  for _ in range(n_kv):
    key = cur.string("a metadata key")
    metadata[key] = cur.value(cur.unpack("<I", f"metadata {key!r}"), f"metadata {key!r}")
  tensors = {}
  for _ in range(n_tensors):
    name = cur.string("a tensor name")
    what = f"the table entry of tensor {name!r}"
    dims = [cur.unpack("<Q", what) for _ in range(cur.unpack("<I", what))]
    tensors[name] = _TensorInfo(tuple(reversed(dims)), cur.unpack("<I", what), cur.unpack("<Q", what))
  align = metadata.get("general.alignment", 32)
  if not isinstance(align, int) or align <= 0:
    raise GGUFError(f"{path}: metadata 'general.alignment' is {align!r}, not a positive integer")
  return _Header(path, metadata, tensors, -(-cur.pos // align) * align)


def _read_header(f, path: str) -> _Header:
  """The header of the open file `f`, through a memory map closed before returning."""
  if os.fstat(f.fileno()).st_size < 24:  # magic, version and the two counts
    raise GGUFError(f"{path}: not a GGUF file (shorter than a GGUF header)")
  with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
    return _parse_header(mm, path)


def _header(path) -> _Header:
  path = os.fspath(path)
  with open(path, "rb") as f:
    return _read_header(f, path)


_REQUIRED = object()


def _meta(header: _Header, key: str, kind: type, default=_REQUIRED):
  """The value of metadata `key`, checked to be a `kind`.

  `kind` is int, float, str, bool, list (an array of strings) or np.ndarray (of numbers).
  """
  if key not in header.metadata:
    if default is _REQUIRED:
      raise GGUFError(f"{header.path}: missing metadata key {key!r}")
    return default
  value = header.metadata[key]
  if kind is float and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
    raise GGUFError(f"{header.path}: metadata {key!r} is {value!r}, expected a {kind.__name__}")
  return value


# The config -----------------------------------------------------------------------

def _config(header: _Header) -> dict:
  """The HF LlamaConfig dict this header describes; unsupported files are GGUFErrors."""
  arch = _meta(header, "general.architecture", str)
  if arch != "llama":
    raise GGUFError(f"{header.path}: general.architecture is {arch!r}; moe_jax reads 'llama' "
                    "GGUF files only")
  if _meta(header, "llama.expert_count", int, 0):
    raise GGUFError(f"{header.path}: llama.expert_count is set; llama MoE files are not supported")
  hidden = _meta(header, "llama.embedding_length", int)
  heads = _meta(header, "llama.attention.head_count", int)
  if heads <= 0:
    raise GGUFError(f"{header.path}: llama.attention.head_count is {heads}")
  head_dim = _meta(header, "llama.attention.key_length", int, hidden // heads)
  for key in ("llama.attention.value_length", "llama.rope.dimension_count"):
    if _meta(header, key, int, head_dim) != head_dim:  # HF Llama has one head size, fully rotated
      raise GGUFError(f"{header.path}: {key} is {header.metadata[key]}, not the head size {head_dim}")
  embed = header.tensors.get("token_embd.weight")
  if embed is None or len(embed.shape) != 2:
    raise GGUFError(f"{header.path}: tensor 'token_embd.weight' is missing or not 2-D")
  special = {k: _meta(header, f"tokenizer.ggml.{k}_token_id", int, None)
             for k in ("bos", "eos", "padding")}
  return {
      "model_type": "llama",
      "architectures": ["LlamaForCausalLM"],
      "vocab_size": embed.shape[0],
      "hidden_size": hidden,
      "intermediate_size": _meta(header, "llama.feed_forward_length", int),
      "num_hidden_layers": _meta(header, "llama.block_count", int),
      "num_attention_heads": heads,
      "num_key_value_heads": _meta(header, "llama.attention.head_count_kv", int, heads),
      "head_dim": head_dim,
      "max_position_embeddings": _meta(header, "llama.context_length", int),
      "rms_norm_eps": _meta(header, "llama.attention.layer_norm_rms_epsilon", float),
      "rope_theta": _meta(header, "llama.rope.freq_base", float, 10000.0),  # llama.cpp's default
      "rope_scaling": _rope_scaling(header),
      "tie_word_embeddings": "output.weight" not in header.tensors,
      "bos_token_id": special["bos"],
      "eos_token_id": special["eos"],
      "pad_token_id": special["padding"],
      "attention_bias": False,
      "mlp_bias": False,
      "hidden_act": "silu",
  }


def _rope_scaling(header: _Header) -> dict | None:
  """None, or linear scaling; anything else the file asks for is a GGUFError."""
  if "rope_freqs.weight" in header.tensors:  # per-frequency factors: Llama 3.1-style scaling
    raise GGUFError(f"{header.path}: tensor 'rope_freqs.weight' (Llama 3.1-style RoPE scaling) "
                    "is not supported")
  kind = _meta(header, "llama.rope.scaling.type", str, "none")
  factor = _meta(header, "llama.rope.scaling.factor", float, None)
  if "llama.rope.scale_linear" in header.metadata:  # the key older files wrote instead
    kind, factor = "linear", _meta(header, "llama.rope.scale_linear", float)
  if kind == "none" or (kind == "linear" and factor == 1.0):
    return None
  if kind == "linear" and factor:
    return {"rope_type": "linear", "factor": factor}
  raise GGUFError(f"{header.path}: llama.rope.scaling.type {kind!r} (factor {factor}) is not "
                  "supported; only none and linear are")


# The tensors ----------------------------------------------------------------------

# ggml type ids that gguf.quants.dequantize handles and that are tested here.
_TYPES = {0: "F32", 1: "F16", 30: "BF16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0",
          12: "Q4_K", 13: "Q5_K", 14: "Q6_K"}

_LAYER_TENSORS = {  # GGUF name in block i -> (HF name in layer i, shape key)
    "attn_q": ("self_attn.q_proj.weight", "q"),
    "attn_k": ("self_attn.k_proj.weight", "kv"),
    "attn_v": ("self_attn.v_proj.weight", "kv"),
    "attn_output": ("self_attn.o_proj.weight", "o"),
    "ffn_gate": ("mlp.gate_proj.weight", "up"),
    "ffn_up": ("mlp.up_proj.weight", "up"),
    "ffn_down": ("mlp.down_proj.weight", "down"),
    "attn_norm": ("input_layernorm.weight", "norm"),
    "ffn_norm": ("post_attention_layernorm.weight", "norm"),
}


def _tensor_map(config: dict) -> dict[str, tuple[str, tuple[int, ...], int]]:
  """{GGUF name: (HF name, HF shape, heads to un-permute or 0)} for every tensor the model has."""
  d, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
  n, k, h = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
  shapes = {"q": (n * h, d), "kv": (k * h, d), "o": (d, n * h), "up": (f, d), "down": (d, f),
            "norm": (d,)}
  out = {"token_embd.weight": ("model.embed_tokens.weight", (v, d), 0),
         "output_norm.weight": ("model.norm.weight", (d,), 0)}
  if not config["tie_word_embeddings"]:
    out["output.weight"] = ("lm_head.weight", (v, d), 0)
  for i in range(config["num_hidden_layers"]):
    for name, (hf, key) in _LAYER_TENSORS.items():
      heads = {"attn_q": n, "attn_k": k}.get(name, 0)
      out[f"blk.{i}.{name}.weight"] = (f"model.layers.{i}.{hf}", shapes[key], heads)
  return out


def _check_tensors(header: _Header, plan: dict) -> None:
  """Every tensor the model needs is there, of its shape and a supported type, and no other."""
  for name, info in header.tensors.items():
    if name not in plan:
      raise GGUFError(f"{header.path}: unexpected tensor {name!r} for a llama model of this config")
    if info.shape != plan[name][1]:
      raise GGUFError(f"{header.path}: tensor {name!r} has shape {list(info.shape)}, "
                      f"expected {list(plan[name][1])}")
    if info.type_id not in _TYPES:
      raise GGUFError(f"{header.path}: tensor {name!r} has type {_type_name(info.type_id)}; "
                      f"supported types: {', '.join(_TYPES.values())}")
  missing = [name for name in plan if name not in header.tensors]
  if missing:
    raise GGUFError(f"{header.path}: missing tensor {missing[0]!r} ({len(missing)} missing)")


def _type_name(type_id: int) -> str:
  try:
    return _gguf().GGMLQuantizationType(type_id).name
  except (ImportError, ValueError):
    return f"id {type_id}"


def _gguf():
  try:
    import gguf  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("moe_jax.gguf needs the `gguf` package to dequantise tensors: "
                      "pip install gguf") from e
  return gguf


def _dequantize(header: _Header, f, name: str) -> np.ndarray:
  """One tensor of the open file `f` as a float32 array in its (numpy-order) shape."""
  gguf = _gguf()
  info = header.tensors[name]
  qtype = gguf.GGMLQuantizationType(info.type_id)
  block, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
  if info.shape[-1] % block:
    raise GGUFError(f"{header.path}: tensor {name!r} has rows of {info.shape[-1]}, "
                    f"not a multiple of {qtype.name}'s block of {block}")
  row_bytes = info.shape[-1] // block * block_bytes
  nbytes = int(np.prod(info.shape[:-1], dtype=np.int64)) * row_bytes
  f.seek(header.data_start + info.offset)
  raw = f.read(nbytes)  # a copy, not a map: nothing returned keeps the file open
  if len(raw) < nbytes:
    raise GGUFError(f"{header.path}: truncated file, it ends inside tensor {name!r}")
  rows = np.frombuffer(raw, np.uint8).reshape(*info.shape[:-1], row_bytes)
  return gguf.quants.dequantize(rows, qtype).astype(np.float32).reshape(info.shape)


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
  """HF's rotate-half row order from llama.cpp's interleaved one, for a Q or K projection.

  llama.cpp rotates adjacent pairs (x0, x1), (x2, x3), ... of each head, so its
  converter reorders the rows of each head from HF's [first halves; second
  halves] to alternating: HF row c * H/2 + i sits at GGUF row 2 * i + c.
  """
  out_dim, in_dim = w.shape
  h = out_dim // heads
  return w.reshape(heads, h // 2, 2, in_dim).swapaxes(1, 2).reshape(out_dim, in_dim)


def read(path) -> GGUFCheckpoint:
  """The config and every tensor, dequantised to float32 and in HF names and layout."""
  path = os.fspath(path)
  with open(path, "rb") as f:
    header = _read_header(f, path)
    config = _config(header)
    plan = _tensor_map(config)
    _check_tensors(header, plan)
    tensors = {}
    for name, (hf_name, _, heads) in plan.items():
      w = _dequantize(header, f, name)
      tensors[hf_name] = _unpermute(w, heads) if heads else w
  return GGUFCheckpoint(config, tensors)


def read_config(path) -> dict:
  """The config `read` gives, from the metadata alone (nothing is dequantised)."""
  header = _header(path)
  config = _config(header)
  _check_tensors(header, _tensor_map(config))
  return config


# The tokenizer --------------------------------------------------------------------

# llama.cpp cuts out every numeric character (\p{N}: 0-9, ½, ², ...) before GPT-2's split
# for these pre values (SmolLM2's own tokenizer.json does it with a Digits pre-tokenizer).
_DIGITS_FIRST = ("smollm", "starcoder", "refact", "codeshell")
# Llama 3's split (tiktoken's cl100k pattern), for the files llama.cpp marks with these.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_LLAMA3 = ("llama-bpe", "llama3", "llama-v3")


def _pre_tokenizer(header: _Header):
  """How text is cut before BPE, as llama.cpp does for `tokenizer.ggml.pre`."""
  from tokenizers import Regex, pre_tokenizers  # pylint: disable=import-outside-toplevel

  pre = _meta(header, "tokenizer.ggml.pre", str, "gpt2")
  if pre == "gpt2":  # ByteLevel's own regex is GPT-2's split
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  if pre in _DIGITS_FIRST:
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
  if pre in _LLAMA3:
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), "isolated"),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  known = ", ".join(("gpt2",) + _DIGITS_FIRST + _LLAMA3)
  raise GGUFError(f"{header.path}: tokenizer.ggml.pre {pre!r} is not supported; known: {known}")


def _added_tokens(header: _Header, tokens: list) -> tuple[list, list]:
  """(control tokens, user-defined tokens) as `AddedToken`s, matched whole in any text."""
  from tokenizers import AddedToken  # pylint: disable=import-outside-toplevel

  types = _meta(header, "tokenizer.ggml.token_type", np.ndarray, np.zeros(0))
  control = [AddedToken(tokens[i], special=True, normalized=False) for i in np.flatnonzero(types == 3)]
  user = [AddedToken(tokens[i], special=False, normalized=False) for i in np.flatnonzero(types == 4)]
  return control, user


def _post_processor(header: _Header, tokens: list):
  """BOS / EOS around each sequence where the file's add_bos_token / add_eos_token say so."""
  from tokenizers import processors  # pylint: disable=import-outside-toplevel

  ends = {}  # "bos" / "eos" -> (token, id)
  for end in ("bos", "eos"):
    if _meta(header, f"tokenizer.ggml.add_{end}_token", bool, False):
      token_id = _meta(header, f"tokenizer.ggml.{end}_token_id", int)
      ends[end] = (tokens[token_id], token_id)
  if not ends:
    return None
  bos = [ends["bos"][0]] if "bos" in ends else []
  eos = [ends["eos"][0]] if "eos" in ends else []
  second = [f"{t}:1" for t in bos] + ["$B:1"] + [f"{t}:1" for t in eos]
  return processors.TemplateProcessing(single=bos + ["$A"] + eos, pair=bos + ["$A"] + eos + second,
                                       special_tokens=sorted(set(ends.values())))


def tokenizer(path):
  """A `tokenizers.Tokenizer` built from the file's `tokenizer.ggml.*` metadata."""
  from tokenizers import Tokenizer, decoders, models  # pylint: disable=import-outside-toplevel

  header = _header(path)
  kind = _meta(header, "tokenizer.ggml.model", str)
  if kind != "gpt2":
    raise GGUFError(f"{header.path}: tokenizer.ggml.model {kind!r} is not supported; "
                    "moe_jax builds byte-level BPE ('gpt2') tokenizers only")
  tokens = _meta(header, "tokenizer.ggml.tokens", list)
  merges = [tuple(m.split(" ")) for m in _meta(header, "tokenizer.ggml.merges", list)]
  bad = next((" ".join(m) for m in merges if len(m) != 2), None)
  if bad is not None:
    raise GGUFError(f"{header.path}: tokenizer.ggml.merges holds {bad!r}, not a pair")
  pre = _meta(header, "tokenizer.ggml.pre", str, "gpt2")
  try:  # Llama 3 takes a word whole when the vocabulary has it, merges or not
    bpe = models.BPE({t: i for i, t in enumerate(tokens)}, merges, ignore_merges=pre in _LLAMA3)
  except Exception as e:  # tokenizers raises a bare Exception for a merge of unknown tokens
    raise GGUFError(f"{header.path}: tokenizer.ggml.merges: {e}") from e
  tok = Tokenizer(bpe)
  tok.pre_tokenizer = _pre_tokenizer(header)
  tok.decoder = decoders.ByteLevel()
  control, user = _added_tokens(header, tokens)
  tok.add_special_tokens(control)
  tok.add_tokens(user)
  post = _post_processor(header, tokens)
  if post is not None:
    tok.post_processor = post
  return tok
