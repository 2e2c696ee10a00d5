"""The 18 word-formation tags of FormBERT, in the id order its official code hard-codes.

`run.py` of TobiasLee/FormBERT maps a row's `formation` string to an id with

    ['状中', '方位', '前缀', '后缀', '连谓', '定中', '主谓', '名量', '述补',
     '介宾', '复量', '述宾', '10', '重叠', '联合', '00', '01', '数量']

and the formation embedding and predictor have one row / class per id. The
codes '10', '00' and '01' are not explained anywhere public; FiCLS is
unreleased. Our lexicon (`moe_jax.wsd.lexicon`) uses '00' for "no rule
applies" and never emits '10' or '01'; that is our choice, not the authors'.
"""

from __future__ import annotations

# (tag, meaning) in the official id order.
FORMATIONS: tuple[tuple[str, str], ...] = (
    ("状中", "adverbial-head (modifier + verb/adjective)"),
    ("方位", "locative (noun + localizer)"),
    ("前缀", "prefix + root"),
    ("后缀", "root + suffix"),
    ("连谓", "serial verbs"),
    ("定中", "attributive-head (modifier + noun)"),
    ("主谓", "subject-predicate"),
    ("名量", "noun + classifier"),
    ("述补", "verb + complement"),
    ("介宾", "preposition + object"),
    ("复量", "compound classifier"),
    ("述宾", "verb-object"),
    ("10", "official code, meaning unpublished"),
    ("重叠", "reduplication"),
    ("联合", "coordinate"),
    ("00", "official code, meaning unpublished (our lexicon: no rule applies)"),
    ("01", "official code, meaning unpublished"),
    ("数量", "numeral + classifier"),
)
TAGS: tuple[str, ...] = tuple(t for t, _ in FORMATIONS)
NUM_FORMATIONS = len(TAGS)  # 18
TAG_ID: dict[str, int] = {t: i for i, t in enumerate(TAGS)}


def formation_id(tag: str) -> int:
  """The official id of a tag; KeyError naming the 18 tags otherwise."""
  if tag not in TAG_ID:
    raise KeyError(f"{tag!r} is not a formation tag; the tags are {list(TAGS)}")
  return TAG_ID[tag]
