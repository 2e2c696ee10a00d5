"""PRM data: Math-Shepherd / TRL formats, tag-aware encoding, GSM8K answers.

Expected values are written out by hand: file texts, step splits, token
positions, normalized answers.
"""

import json
import re

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from moe_jax.prm import gsm8k
from moe_jax.prm.data import (Example, PRMDataError, encode, format_input, read_examples, write_math_shepherd,
                              write_trl)
from moe_jax.tokenizer import ByteTokenizer, HFTokenizer

# A Math-Shepherd record as released: question, one space, "Step k: ..." steps each ending " ки", joined by "\n".
MS_INPUT = ("Janet has 3 apples and buys 2 more. How many apples does she have? "
            "Step 1: She has 3 + 2 = <<3+2=5>>5 apples. ки\nStep 2: The answer is: 5 ки")
MS_LABEL = ("Janet has 3 apples and buys 2 more. How many apples does she have? "
            "Step 1: She has 3 + 2 = <<3+2=5>>5 apples. +\nStep 2: The answer is: 5 -")
MS_EXAMPLE = Example("Janet has 3 apples and buys 2 more. How many apples does she have?",
                     ["Step 1: She has 3 + 2 = <<3+2=5>>5 apples.", "Step 2: The answer is: 5"], [1.0, 0.0])

# Unicode and a step spanning two lines.
UNI = Example("Combien font 二 + 三 ? 🤔", ["Step 1: 二 = 2\n三 = 3", "Step 2: 2 + 3 = 5 ✓ (ответ)"],
              [1.0, 1.0])
UNI_INPUT = "Combien font 二 + 三 ? 🤔 Step 1: 二 = 2\n三 = 3 ки\nStep 2: 2 + 3 = 5 ✓ (ответ) ки"
UNI_LABEL = "Combien font 二 + 三 ? 🤔 Step 1: 二 = 2\n三 = 3 +\nStep 2: 2 + 3 = 5 ✓ (ответ) +"


def _write(path, records):
  path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records)
                  + "\n", encoding="utf-8")
  return path


def _lines(path):
  return [json.loads(l) for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]


# -- formats ------------------------------------------------------------------


def test_reads_math_shepherd_like_the_released_data(tmp_path):
  path = _write(tmp_path / "ms.jsonl", [{"input": MS_INPUT, "label": MS_LABEL, "task": "GSM8K"}, "",
                                        {"input": UNI_INPUT, "label": UNI_LABEL}])
  got = read_examples(path)
  assert got == [MS_EXAMPLE, UNI]
  assert got[1].source == f"{path}:3"


def test_question_split_falls_back_like_trl(tmp_path):
  path = _write(tmp_path / "ms.jsonl", [
      # lower-case marker
      {"input": "Add 1 and 1. step 1: 1 + 1 = 2 ки\nstep 2: The answer is: 2 ки",
       "label": "Add 1 and 1. step 1: 1 + 1 = 2 +\nstep 2: The answer is: 2 +"},
      # no marker: split after the first "?"
      {"input": "What is 2+2? Why? Two and two make four. ки\nThe answer is: 4 ки",
       "label": "What is 2+2? Why? Two and two make four. -\nThe answer is: 4 +"},
  ])
  assert read_examples(path) == [
      Example("Add 1 and 1.", ["step 1: 1 + 1 = 2", "step 2: The answer is: 2"], [1.0, 1.0]),
      Example("What is 2+2?", ["Why? Two and two make four.", "The answer is: 4"], [0.0, 1.0]),
  ]


def test_reads_trl_format(tmp_path):
  path = _write(tmp_path / "trl.jsonl", [
      {"prompt": "Q?", "completions": ["a\nb", "c"], "labels": [True, False]},
      {"prompt": "R?", "completions": ["d"], "labels": [0.25]},
      {"prompt": "S?", "completions": ["e", "f"], "labels": [1, 0]},
  ])
  assert read_examples(path) == [Example("Q?", ["a\nb", "c"], [1.0, 0.0]), Example("R?", ["d"], [0.25]),
                                 Example("S?", ["e", "f"], [1.0, 0.0])]


def test_math_shepherd_to_trl_and_back_is_lossless(tmp_path):
  records = [{"input": MS_INPUT, "label": MS_LABEL}, {"input": UNI_INPUT, "label": UNI_LABEL}]
  src = _write(tmp_path / "ms.jsonl", records)
  write_trl(read_examples(src), tmp_path / "trl.jsonl")
  assert _lines(tmp_path / "trl.jsonl") == [
      {"prompt": MS_EXAMPLE.question, "completions": MS_EXAMPLE.steps, "labels": [True, False]},
      {"prompt": "Combien font 二 + 三 ? 🤔",
       "completions": ["Step 1: 二 = 2\n三 = 3", "Step 2: 2 + 3 = 5 ✓ (ответ)"], "labels": [True, True]},
  ]
  assert "ответ" in (tmp_path / "trl.jsonl").read_text(encoding="utf-8")  # written as UTF-8, not escapes
  write_math_shepherd(read_examples(tmp_path / "trl.jsonl"), tmp_path / "back.jsonl")
  assert _lines(tmp_path / "back.jsonl") == records


def test_trl_to_math_shepherd_and_back_is_lossless(tmp_path):
  records = [
      {"prompt": "Q?", "completions": ["two\nlines", "  padded step  ", "\nleading newline"],
       "labels": [True, False, True]},
      {"prompt": "Ends with space ", "completions": ["Step 1: ünïcödéки-free", "Step 2: 🎲"],
       "labels": [False, True]},
  ]
  src = _write(tmp_path / "trl.jsonl", records)
  write_math_shepherd(read_examples(src), tmp_path / "ms.jsonl")
  assert _lines(tmp_path / "ms.jsonl") == [
      {"input": "Q? two\nlines ки\n  padded step   ки\n\nleading newline ки",
       "label": "Q? two\nlines +\n  padded step   -\n\nleading newline +"},
      {"input": "Ends with space  Step 1: ünïcödéки-free ки\nStep 2: 🎲 ки",
       "label": "Ends with space  Step 1: ünïcödéки-free -\nStep 2: 🎲 +"},
  ]
  write_trl(read_examples(tmp_path / "ms.jsonl"), tmp_path / "back.jsonl")
  assert _lines(tmp_path / "back.jsonl") == records


def test_custom_tag_and_label_tokens(tmp_path):
  ex = Example("Q?", ["Step 1: x", "Step 2: y\nz"], [0.0, 1.0])
  write_math_shepherd([ex], tmp_path / "ms.jsonl", tag="<step>", good="GOOD", bad="BAD")
  assert _lines(tmp_path / "ms.jsonl") == [{"input": "Q? Step 1: x<step>\nStep 2: y\nz<step>",
                                            "label": "Q? Step 1: xBAD\nStep 2: y\nzGOOD"}]
  assert read_examples(tmp_path / "ms.jsonl", tag="<step>", good="GOOD", bad="BAD") == [ex]
  # The default tokens do not read a file written with other ones.
  with pytest.raises(PRMDataError, match="ms.jsonl:1"):
    read_examples(tmp_path / "ms.jsonl", tag="<step>")


def test_soft_labels(tmp_path):
  ex = Example("Q?", ["Step 1: a", "Step 2: b"], [0.75, 0.25])
  write_trl([ex], tmp_path / "trl.jsonl")
  assert _lines(tmp_path / "trl.jsonl")[0]["labels"] == [0.75, 0.25]
  assert read_examples(tmp_path / "trl.jsonl") == [ex]
  with pytest.raises(PRMDataError, match="soft label"):
    write_math_shepherd([ex], tmp_path / "ms.jsonl")
  write_math_shepherd([ex], tmp_path / "ms.jsonl", threshold=0.5)
  assert _lines(tmp_path / "ms.jsonl")[0]["label"] == "Q? Step 1: a +\nStep 2: b -"


@pytest.mark.parametrize("ex, match", [
    (Example("Q?", ["Step 1: a ки b"], [1.0]), "contains the step tag"),
    (Example("Q ки?", ["Step 1: a"], [1.0]), "contains the step tag"),
    (Example("No question mark", ["just a step"], [1.0]), "cannot split the question"),
    (Example("Why? Really?", ["step"], [1.0]), "would not read back"),
    (Example("Q?", ["a", "b"], [1.0]), "mismatched counts"),
    (Example("Q?", ["a", " "], [1.0, 1.0]), "step 1 is empty"),
])
def test_math_shepherd_writer_refuses_what_would_not_read_back(tmp_path, ex, match):
  with pytest.raises(PRMDataError, match=match):
    write_math_shepherd([ex], tmp_path / "ms.jsonl")


GOOD_LINE = {"input": "Q? Step 1: a ки\nStep 2: b ки", "label": "Q? Step 1: a +\nStep 2: b -"}


@pytest.mark.parametrize("bad, match", [
    ('{"input": "Q? Step 1: a ки", "label"', "malformed JSON"),
    ({"input": "Q? Step 1: a ки\nStep 2: b ки", "label": "Q? Step 1: a +\nStep 2: b ки"}, "mismatched counts"),
    ({"input": "Q? Step 1: a ки\nStep 2: b ки", "label": "Q? Step 1: a +\nStep 2: b"}, "mismatched counts"),
    ({"input": "Q? Step 1: a ки", "label": "Q? Step 1: a + -"}, "mismatched counts"),
    ({"input": "Q? Step 1: a ки\nStep 2: b", "label": "Q? Step 1: a +\nStep 2: b"}, "mismatched counts"),
    ({"input": "Q? Step 1: a ки", "label": "Q? Step 1: A +"}, "differs from the input"),
    ({"input": "Q? Step 1: a ки", "label": "Q? Step 1: a *"}, "differs from the input"),
    ({"input": "Q? Step 1: a ки", "label": "Q? Step 1: a +!"}, "differs from the input"),
    ({"input": "Q? Step 1: a", "label": "Q? Step 1: a"}, "no step tag"),
    ({"input": "Q? Step 1: a ки\n ки", "label": "Q? Step 1: a +\n +"}, "step 1 is empty"),
    ({"input": "Sum 1 and 1. First, 2. ки", "label": "Sum 1 and 1. First, 2. +"}, "cannot split the question"),
    ({"prompt": "Q?", "completions": ["a", "b"], "labels": [True]}, "mismatched counts"),
    ({"prompt": "Q?", "completions": ["a"], "labels": [1.5]}, r"outside \[0, 1\]"),
    ({"prompt": "Q?", "completions": ["a"], "labels": [-0.1]}, r"outside \[0, 1\]"),
    ({"prompt": "Q?", "completions": ["a"], "labels": ["yes"]}, "expected a bool or a number"),
    ({"prompt": "Q?", "completions": ["a"], "labels": [None]}, "expected a bool or a number"),
    ({"prompt": "Q?", "completions": ["a", "  "], "labels": [1, 0]}, "step 1 is empty"),
    ({"prompt": "Q?", "completions": [], "labels": []}, "non-empty list of steps"),
    ({"prompt": [{"role": "user", "content": "Q?"}], "completions": ["a"], "labels": [1]}, "must be a string"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "unknown format"),
    ('["input", "label"]', "unknown format"),
])
def test_errors_name_the_line(tmp_path, bad, match):
  path = _write(tmp_path / "data.jsonl", [GOOD_LINE, "", bad])
  with pytest.raises(PRMDataError, match=match) as e:
    read_examples(path)
  assert f"{path}:3:" in str(e.value)


# -- encode -------------------------------------------------------------------

SIMPLE = Example("Q?", ["Step 1: a", "Step 2: b"], [1.0, 0.0])


def test_encode_byte_tokenizer_scores_last_byte_of_tag():
  tok = ByteTokenizer()
  assert len(tok.encode(" ки")) == 5  # space + two 2-byte Cyrillic letters
  out = encode(SIMPLE, tok)
  text = "Q? Step 1: a ки\nStep 2: b ки"
  assert format_input(SIMPLE) == text
  assert out["tokens"].dtype.name == "int32" and out["score_mask"].dtype == bool
  assert out["targets"].dtype.name == "float32"
  assert out["tokens"].tolist() == [tok.bos_id] + [b + 3 for b in text.encode("utf-8")]
  # BOS, then "Q? Step 1: a" (bytes 0-11), " ки" (12-16), "\nStep 2: b" (17-26), " ки" (27-31).
  assert out["score_mask"].nonzero()[0].tolist() == [17, 32]
  assert out["targets"].tolist() == [0.0] * 17 + [1.0] + [0.0] * 14 + [0.0]
  assert out["targets"][17] == 1.0 and out["targets"][32] == 0.0
  assert out["tokens"][17] == out["tokens"][32] == 0xB8 + 3  # last byte of "и"
  assert tok.decode(out["tokens"][:18]) == "Q? Step 1: a ки"


def test_encode_byte_tokenizer_unicode_multiline():
  tok = ByteTokenizer()
  ex = Example(UNI.question, UNI.steps, [0.25, 1.0])
  out = encode(ex, tok, line="x.jsonl:7")
  assert tok.decode(out["tokens"]) == UNI_INPUT
  pos = out["score_mask"].nonzero()[0].tolist()
  assert [tok.decode(out["tokens"][:p + 1]) for p in pos] == [
      "Combien font 二 + 三 ? 🤔 Step 1: 二 = 2\n三 = 3 ки", UNI_INPUT]
  assert out["targets"][pos].tolist() == [0.25, 1.0] and out["targets"].sum() == 1.25


def test_encode_matches_math_shepherd_input(tmp_path):
  path = _write(tmp_path / "ms.jsonl", [{"input": MS_INPUT, "label": MS_LABEL}])
  (ex,) = read_examples(path)
  tok = ByteTokenizer()
  assert tok.decode(encode(ex, tok)["tokens"]) == MS_INPUT


def _word_level(tmp_path, add_tag):
  words = ["[UNK]", "<s>", "Q", "?", "Step", "1", ":", "a", "2", "b"]
  tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  if add_tag:
    tok.add_tokens(["ки"])
  tok.save(str(tmp_path / "tokenizer.json"))
  return HFTokenizer(str(tmp_path))


def test_encode_tag_as_one_token(tmp_path):
  tok = _word_level(tmp_path, add_tag=True)
  assert tok.bos_id == 1 and tok.encode(" ки") == [10]
  out = encode(SIMPLE, tok)
  # <s> Q ? Step 1 : a ки Step 2 : b ки
  assert out["tokens"].tolist() == [1, 2, 3, 4, 5, 6, 7, 10, 4, 8, 6, 9, 10]
  assert out["score_mask"].nonzero()[0].tolist() == [7, 12]
  assert out["targets"].tolist() == [0] * 7 + [1.0] + [0] * 5
  assert [tok.decode([t]) for t in out["tokens"][out["score_mask"]]] == ["ки", "ки"]


def test_encode_tag_merged_with_neighbours_names_the_line(tmp_path):
  # A BPE over characters, no pre-tokenizer, that merges the tag with the newline after it.
  text = format_input(SIMPLE)
  vocab = {c: i for i, c in enumerate(sorted(set(text)))}
  for piece in ("ки", " ки", " ки\n"):
    vocab[piece] = len(vocab)
  tok = Tokenizer(models.BPE(vocab=vocab, merges=[("к", "и"), (" ", "ки"), (" ки", "\n")]))
  tok.save(str(tmp_path / "tokenizer.json"))
  hf = HFTokenizer(str(tmp_path))
  assert hf.encode(" ки") == [vocab[" ки"]]
  assert vocab[" ки\n"] in hf.encode(text)  # the first tag is merged, the last is not
  with pytest.raises(PRMDataError, match=r"data\.jsonl:7: the tokenizer splits/merges the step tag"):
    encode(SIMPLE, hf, line="data.jsonl:7")


def test_encode_uses_the_examples_source_and_rejects_a_tag_in_a_step(tmp_path):
  path = _write(tmp_path / "trl.jsonl", [{"prompt": "Q?", "completions": ["a ки b"], "labels": [True]}])
  (ex,) = read_examples(path)
  with pytest.raises(PRMDataError, match=re.escape(f"{path}:1: step 0 contains the step tag")):
    encode(ex, ByteTokenizer())


# -- GSM8K --------------------------------------------------------------------


@pytest.mark.parametrize("text, want", [
    ("She makes 2 * 540 = <<2*540=1080>>1080\n#### 1,080", "1,080"),
    ("Step 3: So she pays $18. The answer is: 18", "18"),
    ("Step 3: So she pays $18. The answer is: $18.00 ки", "$18.00 ки"),
    ("The answer is 18.", "18."),
    ("#### 5\nThe answer is: 7", "7"),
    ("The answer is: 7\n#### 5", "5"),
    ("the answer is: -3/4\n", "-3/4"),
    ("no answer here", None),
    ("The answer is:\n", None),
    ("", None),
    (None, None),
])
def test_extract_answer(text, want):
  assert gsm8k.extract_answer(text) == want


@pytest.mark.parametrize("raw, want", [
    ("1,080", "1080"),
    ("$18.00", "18"),
    ("18.", "18"),
    ("18.0", "18"),
    ("$1,000.00.", "1000"),
    ("-5", "-5"),
    ("-5.50", "-5.5"),
    ("3/4", "0.75"),
    (".75", "0.75"),
    ("-6/8", "-0.75"),
    ("1/3", "1/3"),
    ("007", "7"),
    ("  Monday ", "Monday"),
    ("3/0", "3/0"),
    ("", None),
    ("   ", None),
    (None, None),
])
def test_normalize(raw, want):
  assert gsm8k.normalize(raw) == want


@pytest.mark.parametrize("a, b, want", [
    ("1,080", "1080", True),
    ("$18.00", "18", True),
    ("18.", "18.0", True),
    ("3/4", "0.75", True),
    ("2/6", "1/3", True),
    ("1/3", "0.33", False),
    ("-5", "5", False),
    ("-5", "-5.0", True),
    ("Monday", " Monday", True),
    ("5", "6", False),
    (None, "5", False),
    ("5", None, False),
    (None, None, False),
])
def test_answers_equal(a, b, want):
  assert gsm8k.answers_equal(a, b) is want


def test_reference_steps():
  sol = "Half is 48/2 = <<48/2=24>>24 clips.\n\n  Total: 48+24 = <<48+24=72>>72  \n#### 72"
  assert gsm8k.reference_steps(sol) == (
      ["Half is 48/2 = <<48/2=24>>24 clips.", "Total: 48+24 = <<48+24=72>>72", "The answer is: 72"], "72")
  assert gsm8k.reference_steps(sol, strip_calculator=True)[0] == [
      "Half is 48/2 = 24 clips.", "Total: 48+24 = 72", "The answer is: 72"]


def test_load_sample(repo_root):
  rows = gsm8k.load(repo_root / "moe_jax/assets/gsm8k_train_sample.jsonl")
  assert len(rows) == 300
  for r in rows:
    assert set(r) == {"question", "steps", "answer", "solution"}
    assert r["steps"][-1] == f"The answer is: {r['answer']}"
    assert gsm8k.extract_answer(r["steps"][-1]) == r["answer"]
    assert gsm8k.extract_answer(r["solution"]) == r["answer"]
    assert all(s.strip() == s and s and "####" not in s for s in r["steps"])
  assert any("<<" in s for r in rows for s in r["steps"])
  stripped = gsm8k.load(repo_root / "moe_jax/assets/gsm8k_train_sample.jsonl", strip_calculator=True)
  assert not any("<<" in s for r in stripped for s in r["steps"])
  assert [r["answer"] for r in stripped] == [r["answer"] for r in rows]


def test_load_errors_name_the_line(tmp_path):
  path = _write(tmp_path / "g.jsonl", [{"question": "q", "answer": "a\n#### 1"}, {"question": "q", "answer": "a"}])
  with pytest.raises(PRMDataError, match=re.escape(f"{path}:2: no '####'")):
    gsm8k.load(path)


def test_full_gsm8k(shared_data):
  for split, n in (("train", 7473), ("test", 1319)):
    rows = gsm8k.load(shared_data / "gsm8k" / f"{split}.jsonl")
    assert len(rows) == n
    for r in rows:
      assert gsm8k.extract_answer(r["solution"]) == r["answer"]
      assert gsm8k.extract_answer(r["steps"][-1]) == r["answer"]
      assert re.fullmatch(r"-?\d+", gsm8k.normalize(r["answer"])), r["answer"]
      assert gsm8k.answers_equal(r["answer"], r["answer"].replace(",", "") + ".0")
