"""Remakes the classification samples shipped in moe_jax/assets from the full sets.

    python scripts/make_classify_samples.py [NAME ...]   # default: all four

Each sample, `classify_<name>_sample.jsonl`, holds both splits (a "split"
field on every line), `PER_LABEL` examples of each label per split where the
split has that many. The choice is a salted hash of the text
(`datasets.balanced_subset`), so it is the same on every run; repeated texts
are taken once, and a test text is never also a train text. Needs every full
set named (see `datasets.DATASETS` for where each comes from).
"""

import sys

from moe_jax.classify import datasets

# (train, test) examples per label: about 150-180 lines a sample, kept small for the repository.
PER_LABEL = {"intent": (12, 4), "tweets": (40, 15), "reviews": (60, 20), "reuters": (60, 20)}


def build(name: str) -> dict[str, datasets.Examples]:
  """{split: Examples}: the sample of one set, from its full data."""
  train_n, test_n = PER_LABEL[name]
  test = datasets.balanced_subset(datasets.load(name, "test"), test_n, salt=f"{name} test ")
  train = datasets.balanced_subset(datasets.load(name, "train"), train_n, salt=f"{name} train ",
                                   exclude=test.texts)
  return {"train": train, "test": test}


def main(argv: list[str]) -> int:
  for name in argv or list(PER_LABEL):
    sample = build(name)
    datasets.write_jsonl(datasets.sample_path(name), sample)
    counts = {split: ex.label_counts() for split, ex in sample.items()}
    print(f"{datasets.sample_path(name)}: {counts}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main(sys.argv[1:]))
