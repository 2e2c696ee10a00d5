"""Tokenizers: a local Hugging Face `tokenizer.json`, or bytes for tiny demos.

Both expose the same small interface (`encode`, `decode`, `vocab_size`,
`bos_id`, `eos_id`, `pad_id`); `load_tokenizer(spec)` picks one from a config
string: "byte" or a path to a tokenizer.json / a directory holding one.
"""

from __future__ import annotations

import os


class ByteTokenizer:
  """UTF-8 bytes shifted past three specials: 0 pad, 1 BOS, 2 EOS. 259 ids."""

  pad_id, bos_id, eos_id = 0, 1, 2
  _OFFSET = 3
  vocab_size = 256 + _OFFSET

  def encode(self, text: str) -> list[int]:
    return [b + self._OFFSET for b in text.encode("utf-8")]

  def decode(self, ids) -> str:
    data = bytes(int(i) - self._OFFSET for i in ids if self._OFFSET <= int(i) < self.vocab_size)
    return data.decode("utf-8", errors="replace")


class HFTokenizer:
  """A `tokenizers` tokenizer from a local tokenizer.json (no downloads)."""

  def __init__(self, path: str, bos_token: str | None = None, eos_token: str | None = None):
    from tokenizers import Tokenizer

    if os.path.isdir(path):
      path = os.path.join(path, "tokenizer.json")
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path}: no tokenizer.json there")
    self._tok = Tokenizer.from_file(path)
    self.vocab_size = self._tok.get_vocab_size()
    self.bos_id = self._special(bos_token, ("<｜begin▁of▁sentence｜>", "<s>", "<|begin_of_text|>", "<bos>"))
    self.eos_id = self._special(eos_token, ("<｜end▁of▁sentence｜>", "</s>", "<|end_of_text|>", "<eos>"))
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

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def decode(self, ids) -> str:
    return self._tok.decode([int(i) for i in ids])


def load_tokenizer(spec: str):
  """"byte" for the byte-level tokenizer, else a tokenizer.json path or its directory."""
  if spec == "byte":
    return ByteTokenizer()
  return HFTokenizer(spec)
