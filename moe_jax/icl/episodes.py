"""Synthetic ICL episodes, a small DeepSeekMoE trained on them, and its routing at the anchors.

The study's MoE part asks whether label words (the anchors) have experts of
their own. No pretrained MoE is at hand offline, so a small one is trained
here through the engine (`train_lib`) on episodes it can only solve in context
(the spec's "synthetic stand-in", other-seed-systems.md 2.10):

  * C = 4 classes, each a fixed list of 8 keywords (animals, colours, foods,
    tools). A text is 3 lowercase words: one keyword of its class and 2 words
    of a shared neutral list, shuffled.
  * The label words are the single letters "A".."D" (one byte each with the
    byte tokenizer; no leading space, which would make them two bytes), given
    to the classes by a fresh permutation per episode, as in the paper's
    semantically-unrelated-label appendix: the answer is only in the
    demonstrations.
  * A prompt is the paper's SST-2 format, `Template("Review:", "Sentiment:",
    letters)`: one demonstration per class, shuffled, then the query; the
    label positions are the trigram ("t", ":", letter).

`synthetic_split(n, seed)` and `template(seed)` are what `tasks.make_episode`
consumes (`episode(seed, n_test)` calls it); `episode_rows` packs one episode
a row for `steps.lm_loss`, the loss on the query's answer letter only (or on
each of several queries' answers);
`train(cfg, workdir)` trains `default_config()`'s model (resuming from the
workdir's checkpoints) and scores it on held-out episodes; `expert_selection`
and `heatmap` compare the routed experts at the label words with those at the
demonstrations' texts.

Every draw comes from a numpy Generator seeded with (seed, stream): no global
random state.
"""

from __future__ import annotations

import os
import time
from typing import Mapping, Sequence

import ml_collections
import numpy as np

from moe_jax import train_config, train_lib, trainable
from moe_jax.checkpoint import Checkpointer
from moe_jax.icl import experiments, prompts, runner, tasks
from moe_jax.model import Model
from moe_jax.tokenizer import ByteTokenizer

# One keyword list per class; no word is in two lists or in FILLERS.
KEYWORDS = (
    ("cat", "dog", "horse", "mouse", "tiger", "sheep", "goat", "duck"),  # animals
    ("red", "blue", "green", "yellow", "purple", "pink", "brown", "grey"),  # colours
    ("bread", "rice", "apple", "cheese", "soup", "pasta", "bean", "cake"),  # foods
    ("hammer", "saw", "drill", "wrench", "shovel", "chisel", "rake", "axe"),  # tools
)
FILLERS = ("the", "a", "very", "some", "this", "that", "my", "old", "new", "big", "small",
           "nice", "one", "two", "just", "really")
LETTERS = ("A", "B", "C", "D")  # the label words, one per class (a permutation per episode)
N_CLASSES = len(KEYWORDS)
N_FILLERS = 2  # words of a text besides its keyword
INPUT_PREFIX, LABEL_PREFIX = "Review:", "Sentiment:"  # the paper's SST-2 template

# Generator streams: each kind of draw has its own, so changing one never shifts another.
_TEXTS, _LETTERS, _ROWS, _TEST, _NULL = 0, 1, 2, 3, 4
_EVAL_ROWS_SEED = 1_000_000  # + cfg.seed: the held-out rows' seed, far from any training seed


def _rng(seed: int, stream: int) -> np.random.Generator:
  return np.random.default_rng([int(seed), stream])


def make_text(rng: np.random.Generator, label: int) -> str:
  """One keyword of class `label` and N_FILLERS filler words, in a random order."""
  words = [KEYWORDS[label][rng.integers(len(KEYWORDS[label]))]]
  words += [FILLERS[i] for i in rng.integers(len(FILLERS), size=N_FILLERS)]
  return " ".join(words[i] for i in rng.permutation(len(words)))


def synthetic_split(n: int, seed: int) -> tasks.Split:
  """n texts with their classes, as balanced as n allows (class i % C, shuffled)."""
  rng = _rng(seed, _TEXTS)
  labels = [int(c) for c in rng.permutation(np.arange(n) % N_CLASSES)]
  return tasks.Split([make_text(rng, c) for c in labels], labels)


def _template(perm: Sequence[int]) -> prompts.Template:
  """The template whose class c reads LETTERS[perm[c]]."""
  return prompts.Template(INPUT_PREFIX, LABEL_PREFIX, tuple(LETTERS[int(i)] for i in perm))


def template(seed: int) -> prompts.Template:
  """Episode `seed`'s template: the letters permuted with the seed (class c -> label_words[c])."""
  return _template(_rng(seed, _LETTERS).permutation(N_CLASSES))


def episode(seed: int, n_test: int = 64, n_train: int = 64) -> tasks.Episode:
  """Episode `seed` by the official protocol (`tasks.make_episode`): demonstrations from a
  split of n_train texts, n_test queries from another split, both drawn with the seed."""
  test_seed = int(_rng(seed, _TEST).integers(2**31))
  return tasks.make_episode(ByteTokenizer(), template(seed), synthetic_split(n_train, seed),
                            synthetic_split(n_test, test_seed), seed, n_test)


# Training rows ---------------------------------------------------------------------------

def _row_ids(rng: np.random.Generator, tok: ByteTokenizer, queries: int):
  """One training episode -> (tokens, answer indices): C shuffled demonstrations, then
  `queries` queries, each followed by its answer letter (and a newline before the next)."""
  tpl = _template(rng.permutation(N_CLASSES))
  label_ids = prompts.label_token_ids(tok, tpl)
  order = [int(c) for c in rng.permutation(N_CLASSES)]
  texts = [make_text(rng, c) for c in order]
  ids = list(prompts.build_prompt(tok, tpl, texts, order, label_ids).ids)
  answers = []
  for i in range(queries):
    query = int(rng.integers(N_CLASSES))
    ids += (tok.encode("\n") if i else []) + prompts.encode_query(tok, tpl, make_text(rng, query))
    answers.append(len(ids))
    ids.append(int(label_ids[query]))
  return ids, answers


def max_episode_len(queries: int = 1) -> int:
  """The longest training row an episode of `queries` queries can make (tokens)."""
  text = 1 + max(len(w) for ws in KEYWORDS for w in ws) + N_FILLERS * (1 + max(map(len, FILLERS)))
  example = len(INPUT_PREFIX) + text + 1 + len(LABEL_PREFIX) + 1  # "\n" and the letter
  return (N_CLASSES + queries) * (example + 1) - 1  # each but the last ends with "\n"


def episode_rows(n: int, seq_len: int, seed: int, queries: int = 1) -> dict:
  """n packed rows, one episode each (its own letters), for `steps.lm_loss`.

  Returns int32 [n, seq_len] arrays: "tokens" (padded with 0), "segment_ids"
  (1 on the episode, 0 on padding), "positions" (0.. on the episode) and
  "loss_mask" (1 only on the answer letters). A row is the C demonstrations and
  `queries` queries, each with its answer; later queries also see the earlier
  answered ones. With queries=1 (the paper's prompt) the answer is the row's
  last real token.
  """
  if seq_len < max_episode_len(queries):
    raise ValueError(f"seq_len={seq_len} is shorter than the longest episode of {queries} "
                     f"queries ({max_episode_len(queries)} tokens)")
  rng, tok = _rng(seed, _ROWS), ByteTokenizer()
  rows = {k: np.zeros((n, seq_len), np.int32)
          for k in ("tokens", "loss_mask", "segment_ids", "positions")}
  for i in range(n):
    ids, answers = _row_ids(rng, tok, queries)
    rows["tokens"][i, :len(ids)] = ids
    rows["segment_ids"][i, :len(ids)] = 1
    rows["positions"][i, :len(ids)] = np.arange(len(ids))
    rows["loss_mask"][i, answers] = 1
  return rows


# The model and its training --------------------------------------------------------------

def default_config() -> ml_collections.ConfigDict:
  """A 4-layer DeepSeekMoE (MHA; 1 dense layer, then 3 MoE layers of 1 shared + 8 routed
  experts, top-2) trained from scratch on episode rows.

  Sized for an accelerator: at ~2 s a step on 2 CPU cores its 5000 steps take hours there,
  and a few hundred steps (minutes) leave it at chance (see `train`).
  """
  c = train_config.base_config()
  c.data.tokenizer = "byte"
  c.data.seq_len = 208  # >= max_episode_len(episodes.queries) (204 for one query)
  c.data.batch_size = 32
  # "deepseek" is DeepSeekMoE's multi-head attention (no MLA), so keys and queries are sown.
  c.model.update(dict(
      preset="tiny", model_type="deepseek", vocab_size=ByteTokenizer.vocab_size, hidden_size=128,
      intermediate_size=256, num_hidden_layers=4, num_attention_heads=4, n_routed_experts=8,
      n_shared_experts=1, num_experts_per_tok=2, moe_intermediate_size=64,
      first_k_dense_replace=1, max_position_embeddings=256, bos_token_id=ByteTokenizer.bos_id,
      eos_token_id=ByteTokenizer.eos_id, pad_token_id=ByteTokenizer.pad_id))
  c.optimizer.update(dict(learning_rate=3e-3, schedule="cosine", warmup_steps=100,
                          weight_decay=0.1))
  c.num_train_steps = 5000
  c.log_every = 50
  c.eval_every = 1000
  c.checkpoint_every = 500
  c.mesh.data = 1
  c.episodes = ml_collections.ConfigDict(dict(
      train_rows=65536,  # distinct training episodes (cycled if the run asks for more)
      eval_rows=256,  # held-out rows for the engine's eval loss
      queries=1,  # answered queries per training row (1: the paper's prompt; see episode_rows)
      test_seeds=(100, 101, 102, 103, 104),  # held-out episodes for the ICL accuracy
      n_test=64,  # queries per test episode
  ))
  return c


def accuracy(model: Model, seeds: Sequence[int], n_test: int) -> float:
  """Mean answer accuracy of plain ICL (`experiments.vanilla`) over episodes `seeds`."""
  hits = []
  for seed in seeds:
    ep = episode(int(seed), n_test)
    hits.append(experiments.vanilla(model, ep)["pred"] == ep.labels)
  return float(np.mean(np.concatenate(hits)))


def _checkpoint_step(cfg: ml_collections.ConfigDict, workdir: str) -> int:
  """The step the workdir's latest checkpoint holds (0 for none): where `train` resumes."""
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), cfg.checkpoint_every,
                      cfg.keep_checkpoints)
  try:
    return ckpt.latest_step() or 0
  finally:
    ckpt.close()


def train(cfg: ml_collections.ConfigDict | None, workdir: str) -> tuple[Model, dict]:
  """Trains (or resumes, from `workdir`'s checkpoints) the episode model of `cfg`
  (None: `default_config()`) with the engine; returns (model, summary).

  The summary is the engine's (eval loss before and after, parameter counts) plus
  "start_step" / "new_steps" (where this call began, and the steps it ran),
  "train_seconds" and "icl_accuracy" on the held-out episodes `cfg.episodes.test_seeds`.

  The answer-only loss has a long plateau at ln C: on 2 CPU cores, up to 1000 steps of 32
  rows (and variants: smaller models, 1 keyword per class, 2 classes, 8 queries per row)
  stayed at chance.
  """
  cfg = default_config() if cfg is None else cfg
  e, seq_len = cfg.episodes, cfg.data.seq_len
  setup = train_lib.prologue(cfg, workdir)
  data = train_lib.make_data(episode_rows(e.train_rows, seq_len, cfg.seed, e.queries),
                             episode_rows(e.eval_rows, seq_len, _EVAL_ROWS_SEED + cfg.seed),
                             cfg.data.batch_size, cfg.seed, "the held-out episode rows")
  spec = trainable.TrainableSpec()  # a model trained from scratch: everything trains
  start = _checkpoint_step(cfg, workdir)
  t0 = time.time()
  model, summary = train_lib.train(cfg, workdir, setup.model, spec, data, setup.mesh, name="icl")
  summary.update(start_step=start, new_steps=cfg.num_train_steps - start,
                 train_seconds=time.time() - t0)
  summary["icl_accuracy"] = accuracy(model, e.test_seeds, e.n_test)
  print(f"[icl] held-out ICL accuracy: {summary['icl_accuracy']:.3f} "
        f"({len(e.test_seeds)} episodes x {e.n_test} queries; chance {1 / N_CLASSES:.2f})")
  return model, train_lib.epilogue(cfg, workdir, model, spec, summary, setup.tokenizer)


# Routing at the anchors -----------------------------------------------------------------

def _frequencies(ids: np.ndarray, n_experts: int) -> np.ndarray:
  """[E] the share of the routed slots ids [P, K] that go to each expert."""
  return np.bincount(ids.reshape(-1), minlength=n_experts) / max(ids.size, 1)


def expert_selection(model: Model, ep: tasks.Episode, null_draws: int = 50) -> dict:
  """Routed-expert frequencies at the demonstrations' label words and at their texts.

  From the context prefill's routing (`runner.prefill(..., capture=True)`).
  Returns {"layers": [L'] the MoE layers, "label": [L', E] and "text": [L', E]
  (each row the share of the top-K slots at those positions that each expert
  takes; the text span includes its leading space token), "tv": [L'] the total
  variation distance between the two rows, "tv_null": [L'] the mean distance of as many
  random text positions as there are label words from all the text (what sampling alone
  gives), "n_label" / "n_text": positions counted}.
  """
  p = ep.prompt
  probes = runner.prefill(model, p.ids, capture=True).probes["experts"]  # {layer: [1, S, K]}
  text_pos = np.concatenate([np.arange(*d["text"]) for d in p.demos])
  layers = sorted(probes)
  e = model.config.n_routed_experts
  label = np.stack([_frequencies(probes[l][0, p.label_pos], e) for l in layers])  # [L', E]
  text = np.stack([_frequencies(probes[l][0, text_pos], e) for l in layers])
  rng = _rng(len(p.ids), _NULL)
  draws = [rng.choice(text_pos, len(p.label_pos), replace=False) for _ in range(null_draws)]
  null = np.asarray([[0.5 * np.abs(_frequencies(probes[l][0, d], e) - text[i]).sum() for d in draws]
                     for i, l in enumerate(layers)]).mean(1)
  return {"layers": np.asarray(layers), "label": label, "text": text,
          "tv": 0.5 * np.abs(label - text).sum(1), "tv_null": null, "n_label": len(p.label_pos),
          "n_text": len(text_pos)}


def mean_selection(selections: Sequence[Mapping] | Mapping) -> dict:
  """Several episodes' `expert_selection`s averaged (frequencies, then their TV); one passes."""
  sel = [selections] if isinstance(selections, Mapping) else list(selections)
  label = np.mean([s["label"] for s in sel], 0)
  text = np.mean([s["text"] for s in sel], 0)
  return {"layers": np.asarray(sel[0]["layers"]), "label": label, "text": text,
          "tv": 0.5 * np.abs(label - text).sum(1), "episodes": len(sel)}


def heatmap(selections: Sequence[Mapping] | Mapping, path: str, title: str = "") -> str:
  """Writes a PNG of MoE layer x routed expert frequency at label words and at texts, side by
  side on one colour scale (an ESFT-style routing heatmap), episodes averaged; returns path."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  m = mean_selection(selections)
  n_layers, n_experts = m["label"].shape
  vmax = float(max(m["label"].max(), m["text"].max()))
  fig = Figure(figsize=(max(8, 2 * n_experts * 0.35 + 3), max(3, n_layers * 0.45 + 1.8)))
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, 2, sharey=True)
  for ax, key, name in zip(axes, ("label", "text"), ("label words", "demonstration texts")):
    im = ax.imshow(m[key], aspect="auto", cmap="viridis", interpolation="nearest", vmin=0,
                   vmax=vmax)
    ax.set_title(name)
    ax.set_xlabel("routed expert")
    ax.set_xticks(range(n_experts))
  axes[0].set_yticks(range(n_layers), [f"{l} (TV {tv:.2f})" for l, tv in zip(m["layers"], m["tv"])])
  axes[0].set_ylabel("MoE layer")
  fig.colorbar(im, ax=list(axes), label="share of the top-K slots")
  fig.suptitle(title or f"routed experts over {m['episodes']} episode(s)")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  return path
