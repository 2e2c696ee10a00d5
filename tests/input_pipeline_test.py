"""Chat JSONL reading, ESFT prompt formatting, packing and batching."""

import json

import numpy as np
import pytest

from moe_jax import input_pipeline as ip
from moe_jax.tokenizer import ByteTokenizer

TOK = ByteTokenizer()


def _write(path, records):
  path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)
                            for r in records) + "\n", encoding="utf-8")
  return path


def test_encode_chat_follows_esft_format():
  msgs = [{"role": "user", "content": "查天气"}, {"role": "assistant", "content": "晴"}]
  tokens, mask = ip.encode_chat(msgs, TOK)
  prompt = [TOK.bos_id] + list("User: 查天气\n\nAssistant:".encode()) 
  answer = list(" 晴".encode())
  want = prompt[:1] + [b + 3 for b in prompt[1:]] + [b + 3 for b in answer] + [TOK.eos_id]
  assert tokens.tolist() == want
  assert mask.tolist() == [False] * len(prompt) + [True] * (len(answer) + 1)


def test_masked_assistant_turn_is_not_trained():
  msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "mask": 1},
          {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
  tokens, mask = ip.encode_chat(msgs, TOK)
  text = TOK.decode(tokens[mask])
  assert text == " d"


def test_pack_keeps_examples_whole_and_separate():
  rng = np.random.default_rng(0)
  examples = [(rng.integers(3, 200, n).astype(np.int32), rng.random(n) < 0.5)
              for n in (5, 9, 3, 14, 20, 2, 7)]
  rows = ip.pack(examples, seq_len=16, pad_id=0)
  got = []
  for r in range(len(rows["tokens"])):
    seg = rows["segment_ids"][r]
    for s in range(1, seg.max() + 1):
      sel = seg == s
      got.append((rows["tokens"][r][sel], rows["loss_mask"][r][sel]))
      assert rows["positions"][r][sel].tolist() == list(range(sel.sum()))
    assert (rows["tokens"][r][seg == 0] == 0).all()
  assert len(got) == len(examples)
  for (t, m), (et, em) in zip(got, examples):
    et, em = et[-16:], em[-16:]  # the 20-token example keeps its last 16 tokens
    np.testing.assert_array_equal(t, et)
    np.testing.assert_array_equal(m, em)
  # Greedy rows: 5+9 | 3 (14 no fit) | 14 | 16 (truncated) | 2+7
  assert rows["segment_ids"].max(axis=1).tolist() == [2, 1, 1, 1, 2]


def test_read_errors_name_file_and_line(tmp_path):
  good = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
  bad = _write(tmp_path / "bad.jsonl", [good, '{"messages": [', good])
  with pytest.raises(ip.DataError, match=r"bad.jsonl:2: malformed JSON"):
    ip.read_chat_jsonl(bad)
  no_answer = _write(tmp_path / "q.jsonl", [good, {"messages": [{"role": "user", "content": "a"}]}])
  with pytest.raises(ip.DataError, match=r"q.jsonl:2: no assistant turn"):
    ip.read_chat_jsonl(no_answer)
  role = _write(tmp_path / "r.jsonl", [{"messages": [{"role": "bot", "content": "a"}]}])
  with pytest.raises(ip.DataError, match=r"r.jsonl:1: message 0 needs 'role'"):
    ip.read_chat_jsonl(role)
  empty = tmp_path / "empty.jsonl"
  empty.write_text("\n")
  with pytest.raises(ip.DataError, match="empty.jsonl: no examples"):
    ip.read_chat_jsonl(empty)
  with pytest.raises(ip.DataError, match="no such file"):
    ip.read_chat_jsonl(tmp_path / "missing.jsonl")


def test_batches_are_a_function_of_the_step():
  rows = ip.pack([(np.arange(3, 10, dtype=np.int32) + i, np.ones(7, bool)) for i in range(40)], 8, 0)
  a = ip.batches(rows, batch_size=4, seed=3)
  b = ip.batches(rows, batch_size=4, seed=3)
  for step in (0, 7, 25):  # 25 is in a later epoch
    np.testing.assert_array_equal(a[step]["tokens"], b[step]["tokens"])
  epoch0 = np.concatenate([a[i]["tokens"][:, 0] for i in range(10)])
  assert sorted(epoch0.tolist()) == sorted(rows["tokens"][:, 0].tolist())  # each row once per epoch
  with pytest.raises(ip.DataError, match="cannot fill a batch"):
    ip.batches({k: v[:2] for k, v in rows.items()}, batch_size=4, seed=0)


def test_shipped_samples_read(repo_root):
  for name in ("intent_train_sample.jsonl", "law_train_sample.jsonl"):
    examples = ip.read_chat_jsonl(repo_root / "moe_jax" / "assets" / name)
    assert len(examples) >= 100


def test_full_esft_training_files_read(shared_data):
  for task, n in (("intent", 7280), ("law", 927)):
    assert len(ip.read_chat_jsonl(shared_data / "esft" / "train" / f"{task}.jsonl")) == n
