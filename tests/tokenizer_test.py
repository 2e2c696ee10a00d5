"""Tokenizers: a local tokenizer.json (made here with the tokenizers library) and the byte fallback."""

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from moe_jax.tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer


def test_byte_tokenizer_round_trips_unicode():
  tok = ByteTokenizer()
  text = "意图: FilmTele-Play 🎬\n"
  ids = tok.encode(text)
  assert min(ids) >= 3 and max(ids) < tok.vocab_size
  assert tok.decode([tok.bos_id] + ids + [tok.eos_id]) == text


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
  tok = Tokenizer(models.BPE(unk_token=None))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>", "<pad>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(["User: what is the weather\n\nAssistant: sunny"] * 50, trainer)
  d = tmp_path_factory.mktemp("tok")
  tok.save(str(d / "tokenizer.json"))
  return d


def test_local_tokenizer_json(tokenizer_dir):
  tok = load_tokenizer(str(tokenizer_dir))  # a directory holding tokenizer.json
  assert isinstance(tok, HFTokenizer)
  raw = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (raw.token_to_id("<s>"), raw.token_to_id("</s>"),
                                                  raw.token_to_id("<pad>"))
  text = "User: what is the weather\n\nAssistant: rainy"
  assert tok.encode(text) == raw.encode(text, add_special_tokens=False).ids
  assert tok.decode(tok.encode(text)) == text
  assert tok.vocab_size == raw.get_vocab_size()


def test_missing_tokenizer_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="tokenizer.json"):
    load_tokenizer(str(tmp_path))
