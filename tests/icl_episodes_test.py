"""The synthetic ICL episodes (`moe_jax.icl.episodes`): texts, letters, rows, routing, training.

Every check re-derives what it expects by another route: classes by looking
the words up in the keyword lists, label positions and answers by decoding the
bytes and parsing the prompt text, expert frequencies by counting a cache-free
forward pass's routing in Python loops.
"""

import json
import re

import numpy as np
import pytest

from moe_jax import config as model_config
from moe_jax.icl import episodes, runner
from moe_jax.model import init_model
from moe_jax.tokenizer import ByteTokenizer

TOK = ByteTokenizer()
DEMO = re.compile(r"Review: (.*)\nSentiment:([A-Z])\n")


def _keyword_class(text: str) -> int:
  """The class of the one keyword in `text` (asserting there is exactly one)."""
  hits = [c for w in text.split(" ") for c, words in enumerate(episodes.KEYWORDS) if w in words]
  assert len(hits) == 1, text
  return hits[0]


def test_texts_hold_one_keyword_of_their_class_and_fillers():
  split = episodes.synthetic_split(203, seed=7)
  assert len(split.texts) == len(split.labels) == 203
  assert np.bincount(split.labels).tolist() == [51, 51, 51, 50]  # balanced
  for text, label in zip(split.texts, split.labels):
    words = text.split(" ")
    assert len(words) == 3
    assert _keyword_class(text) == label
    assert sum(w in episodes.FILLERS for w in words) == 2
  assert episodes.synthetic_split(20, 7).texts == episodes.synthetic_split(20, 7).texts
  assert episodes.synthetic_split(20, 7).texts != episodes.synthetic_split(20, 8).texts


def test_letters_are_a_fresh_permutation_per_episode():
  seen = set()
  for seed in range(40):
    words = episodes.template(seed).label_words
    assert sorted(words) == sorted(episodes.LETTERS)
    assert all(len(TOK.encode(w)) == 1 for w in words)
    seen.add(words)
  assert len(seen) > 10  # of the 24 permutations
  assert episodes.template(3) == episodes.template(3)


def test_make_episode_finds_the_letters():
  for seed in (0, 1, 2):
    ep = episodes.episode(seed, n_test=12)
    tpl, p = episodes.template(seed), ep.prompt
    assert len(p.label_pos) == episodes.N_CLASSES
    assert sorted(p.demo_labels.tolist()) == list(range(episodes.N_CLASSES))
    text = TOK.decode(p.ids)
    demos = DEMO.findall(text)
    assert len(demos) == episodes.N_CLASSES and "".join(
        f"Review: {t}\nSentiment:{l}\n" for t, l in demos) == text
    for pos, label, (demo_text, letter) in zip(p.label_pos, p.demo_labels, demos):
      assert TOK.decode(p.ids[pos - 2:pos + 1]) == "t:" + tpl.label_words[label] == "t:" + letter
      assert _keyword_class(demo_text) == label  # the demonstration is its class's text
    for q, gold in zip(ep.queries, ep.labels):
      m = re.fullmatch(r"Review: (.*)\nSentiment:", TOK.decode(q))
      assert m and _keyword_class(m.group(1)) == gold
    assert len(ep.queries) == 12


def test_episode_rows_mark_the_answer_letter():
  n, seq_len = 64, episodes.max_episode_len()
  rows = episodes.episode_rows(n, seq_len, seed=3)
  assert set(rows) == {"tokens", "loss_mask", "segment_ids", "positions"}
  assert all(v.shape == (n, seq_len) and v.dtype == np.int32 for v in rows.values())
  assert (rows["loss_mask"].sum(1) == 1).all()
  perms = set()
  for i in range(n):
    length = int(rows["segment_ids"][i].sum())
    assert (rows["segment_ids"][i, :length] == 1).all() and (rows["tokens"][i, length:] == 0).all()
    assert (rows["positions"][i, :length] == np.arange(length)).all()
    answer_at = int(np.argmax(rows["loss_mask"][i]))
    assert answer_at == length - 1
    text = TOK.decode(rows["tokens"][i, :length])
    m = re.fullmatch(r"((?:Review: .*\nSentiment:[A-Z]\n){4})Review: (.*)\nSentiment:([A-Z])", text)
    assert m, text
    demos = DEMO.findall(m.group(1))
    letter_of = {_keyword_class(t): l for t, l in demos}
    assert sorted(letter_of) == list(range(4)) and sorted(letter_of.values()) == list("ABCD")
    expected = letter_of[_keyword_class(m.group(2))]
    assert TOK.decode(rows["tokens"][i, answer_at:answer_at + 1]) == expected == m.group(3)
    perms.add(tuple(letter_of[c] for c in range(4)))
  assert len(perms) > 10
  with pytest.raises(ValueError, match="shorter than the longest episode"):
    episodes.episode_rows(1, seq_len - 1, 0)


def test_rows_of_several_queries_mark_each_answer():
  rows = episodes.episode_rows(16, episodes.max_episode_len(3), seed=4, queries=3)
  assert (rows["loss_mask"].sum(1) == 3).all()
  for i in range(16):
    length = int(rows["segment_ids"][i].sum())
    examples = DEMO.findall(TOK.decode(rows["tokens"][i, :length]) + "\n")
    assert len(examples) == 7
    letter_of = {_keyword_class(t): l for t, l in examples[:4]}
    marked = [TOK.decode([t]) for t in rows["tokens"][i][rows["loss_mask"][i] == 1]]
    assert marked == [letter_of[_keyword_class(t)] for t, _ in examples[4:]] == [
        l for _, l in examples[4:]]


@pytest.fixture(scope="module")
def tiny_model():
  cfg = model_config.tiny(model_type="deepseek", vocab_size=ByteTokenizer.vocab_size,
                          num_hidden_layers=2, first_k_dense_replace=0)
  return init_model(cfg, 0)


def test_expert_selection_counts_the_routing(tiny_model):
  ep = episodes.episode(5, n_test=4)
  sel = episodes.expert_selection(tiny_model, ep)
  ids = np.asarray(ep.prompt.ids)
  c, e = tiny_model.config, tiny_model.config.n_routed_experts
  pos = np.arange(len(ids), dtype=np.int32)[None]
  _, _, probes = runner.forward(c, tiny_model.variables, ids[None], pos, np.ones_like(pos),
                                capture=True)
  # Positions from the bytes: label words follow "t:"; a text runs from after "Review:" to "\n".
  text = TOK.decode(ids)
  label_pos = [k for k in range(2, len(ids)) if text[k - 2:k] == "t:"]
  text_pos = [k for m in DEMO.finditer(text) for k in range(m.start(1) - 1, m.end(1))]
  assert list(sel["layers"]) == c.moe_layers == [0, 1]
  assert (sel["n_label"], sel["n_text"]) == (4, len(text_pos))
  for row, layer in enumerate(c.moe_layers):
    routed = np.asarray(probes["experts"][layer])[0]  # [S, K]
    for name, where in (("label", label_pos), ("text", text_pos)):
      counts = [0] * e
      for k in where:
        for x in routed[k]:
          counts[int(x)] += 1
      np.testing.assert_allclose(sel[name][row], np.asarray(counts) / sum(counts), atol=1e-12)
    tv = sum(abs(a - b) for a, b in zip(sel["label"][row], sel["text"][row])) / 2
    np.testing.assert_allclose(sel["tv"][row], tv, atol=1e-12)
  mean = episodes.mean_selection([sel, sel])
  np.testing.assert_allclose(mean["label"], sel["label"])
  np.testing.assert_allclose(mean["tv"], sel["tv"])


def test_heatmap_writes_a_png(tmp_path):
  rng = np.random.default_rng(0)
  sels = []
  for _ in range(2):
    label, text = rng.dirichlet(np.ones(8), size=3), rng.dirichlet(np.ones(8), size=3)
    sels.append({"layers": np.asarray([1, 2, 3]), "label": label, "text": text})
  mean = episodes.mean_selection(sels)
  np.testing.assert_allclose(mean["label"], (sels[0]["label"] + sels[1]["label"]) / 2)
  path = episodes.heatmap(sels, str(tmp_path / "plots" / "routing.png"))
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def _tiny_train_config():
  c = episodes.default_config()
  c.model.update(dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      first_k_dense_replace=0, num_attention_heads=2, n_routed_experts=4,
                      moe_intermediate_size=16))
  c.data.batch_size = 4
  c.num_train_steps = 3
  c.log_every = 1
  c.eval_every = 0
  c.checkpoint_every = 2
  c.export_hf = False
  c.episodes.update(dict(train_rows=16, eval_rows=4, test_seeds=(0,), n_test=4))
  return c


def test_train_runs_and_resumes(tmp_path):
  cfg, workdir = _tiny_train_config(), str(tmp_path / "run")
  model, first = episodes.train(cfg, workdir)
  assert (first["start_step"], first["new_steps"]) == (0, 3)
  assert "eval_loss_before" in first and np.isfinite(first["eval_loss_after"])
  assert 0.0 <= first["icl_accuracy"] <= 1.0
  assert model.config.n_routed_experts == 4 and not model.config.use_mla
  _, second = episodes.train(cfg, workdir)
  assert (second["start_step"], second["new_steps"]) == (3, 0)
  assert "eval_loss_before" not in second  # the engine evaluates "before" only on a fresh start
  with open(f"{workdir}/metrics.jsonl") as f:
    steps = [r["step"] for r in map(json.loads, f) if "loss" in r]
  assert steps == [1, 2, 3]  # the rerun trained no step
  np.testing.assert_allclose(second["eval_loss_after"], first["eval_loss_after"], rtol=1e-6)
