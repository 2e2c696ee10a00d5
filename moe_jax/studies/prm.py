"""An offline reproduction of Math-Shepherd's findings on ArithChain (spec E), end to end on CPU.

    python -m moe_jax.studies.prm --out DIR [--quick]

1. SFT a small DeepSeekMoE on ArithChain gold solutions: a weak checkpoint,
   then a strong one trained further (generator and completer);
2. sample candidates for the RM-train problems and label every step
   automatically with hard (HE) and soft (SE) estimation from completer
   rollouts; score the labels against the exact checker's, by N (nested
   subsampling), for the strong and the weak completer;
3. train an ORM, a PRM on HE labels, a PRM on SE labels and an oracle PRM on
   exact labels, all from the strong SFT model;
4. best-of-N on held-out problems (and longer, out-of-distribution ones) for
   N up to 64: random, majority vote, ORM, each PRM (and each aggregation),
   SC + PRM, pass@N, with paired bootstrap confidence intervals;
5. step-by-step PPO (PRM-HE step rewards) against ORM-PPO from the same start;
   greedy accuracy before and after.

Writes DIR/RESULTS.md (tables, verdicts), DIR/results.json and
DIR/accuracy_vs_n.png. Every stage is cached in DIR, so an interrupted run
continues where it stopped. The paper's directions are the hypotheses; the
report states what was measured, whichever way it went.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections import defaultdict
from typing import Sequence

import jax
import ml_collections
import numpy as np

from moe_jax import config as model_config
from moe_jax import train_config, train_lib, trainable
from moe_jax.hf import from_pretrained, save_pretrained
from moe_jax.metric_writers import progress
from moe_jax.model import Model, init_variables
from moe_jax.prm import annotate, arith, gsm8k, ppo, reward, training
from moe_jax.prm.configs import ppo_config, prm_config
from moe_jax.prm.data import Example
from moe_jax.studies import prm_bon
from moe_jax.studies.prm_bon import answer
from moe_jax.studies.prm_report import plot, report


@dataclasses.dataclass(frozen=True)
class Plan:
  """Sizes of one reproduction: model, SFT, labelling, reward models, test sets and PPO."""
  hidden: int
  layers: int
  n_sft: int
  weak_steps: int  # SFT steps of the weak model
  strong_steps: int  # further steps from the weak model to the strong one
  batch: int
  seq_len: int
  n_dev: int
  n_rm: int  # RM-train problems
  n_cand: int  # candidates sampled per RM-train problem
  n_label: int  # rollouts per prefix for the training labels
  n_val: int  # RM-train problems whose labels are validated
  n_val_max: int  # rollouts per prefix on the validation subset
  rm_steps: int
  n_test: int
  n_test_cand: int
  n_ood: int
  ns: tuple[int, ...]
  ppo_iters: int
  ppo_batch: int
  gen_batch: int  # rows per compiled generate call
  bootstrap: int


def plan(quick: bool) -> Plan:
  """The full plan (fits 90 minutes on 2 CPU cores), or the --quick one that fits a test."""
  if quick:
    return Plan(64, 2, 400, 4, 8, 4, 192, 8, 8, 4, 4, 3, 4, 6, 6, 8, 2, (1, 4, 8), 2, 8, 32, 200)
  return Plan(128, 3, 20000, 200, 800, 32, 192, 200, 300, 8, 8, 60, 16, 80, 1000, 64, 100,
              (1, 4, 16, 64), 25, 32, 256, 2000)


_DISPATCH = "grouped"  # dropless, and the fastest dispatch on CPU (not saved in config.json)


def model_config_for(p: Plan, vocab: int) -> model_config.ModelConfig:
  """A small MLA DeepSeekMoE: 1 dense layer, then 8 fine-grained experts (top-2) + 1 shared."""
  return model_config.tiny(vocab_size=vocab, hidden_size=p.hidden,  # no ids the tokenizer lacks
                           num_hidden_layers=p.layers, num_attention_heads=4,
                           intermediate_size=3 * p.hidden, moe_intermediate_size=p.hidden,
                           n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1,
                           kv_lora_rank=p.hidden // 4, qk_nope_head_dim=p.hidden // 8,
                           qk_rope_head_dim=p.hidden // 8, v_head_dim=p.hidden // 4,
                           first_k_dense_replace=1, max_position_embeddings=384,
                           dispatch=_DISPATCH)


def _cfg(p: Plan, steps: int, lr: float, seed: int = 0) -> ml_collections.ConfigDict:
  c = train_config.base_config()
  c.unlock()
  c.seed = seed
  c.data.tokenizer = "arith"
  c.data.seq_len, c.data.batch_size = p.seq_len, p.batch
  c.data.eval_fraction = 0.02
  c.optimizer.update(learning_rate=lr, schedule="cosine", warmup_steps=max(1, steps // 20),
                     weight_decay=0.0)
  c.num_train_steps = steps
  c.log_every = max(1, steps // 10)
  c.eval_every = 0
  c.checkpoint_every = max(50, steps // 4)
  c.keep_checkpoints = 1
  c.export_hf = False
  return c


def _read_json(path: str, default=None):
  if not os.path.exists(path):
    return default
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _write_json(path: str, value) -> None:
  tmp = path + ".tmp"  # written whole, then renamed: never half a file
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(value, f)
  os.replace(tmp, path)


def _json(path: str, fn):
  """fn()'s result, cached as JSON at path."""
  value = _read_json(path)
  if value is None:
    value = fn()
    _write_json(path, value)
  return value


def cached_model(path: str, fn) -> Model:
  """fn()'s model, cached as a Hugging Face directory at path (read back with the study's dispatch)."""
  if os.path.exists(os.path.join(path, "config.json")):
    return from_pretrained(path, dispatch=_DISPATCH)
  model = fn()
  save_pretrained(model, path)
  return model


# -- 1. generator / completer -------------------------------------------------------

def sft_more(p: Plan, out: str, tok, problems: Sequence[arith.Problem], name: str, model: Model,
             steps: int, lr: float) -> Model:
  """`model` trained `steps` more SFT steps on the problems' gold solutions (cosine from `lr`)."""
  path = os.path.join(out, "data", "sft.jsonl")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if not os.path.exists(path):
    with open(path, "w", encoding="utf-8") as f:
      for q in problems:
        f.write(json.dumps({"messages": arith.chat_example(q)}) + "\n")
  cfg = _cfg(p, steps, lr)
  cfg.data.train_files = (path,)
  data = train_lib.load_data(cfg.data, tok, cfg.seed, os.path.join(out, "data", "tfds"))
  trained, _ = train_lib.train(cfg, os.path.join(out, "work", name), model, trainable.TrainableSpec(),
                               data, train_lib.make_mesh(cfg), name=name)
  return trained


def sft(p: Plan, out: str, tok, problems: Sequence[arith.Problem]) -> tuple[Model, Model]:
  """The weak and the strong generator/completer, SFT on gold solutions (cached in out/models)."""
  mcfg = model_config_for(p, tok.vocab_size)
  weak = cached_model(os.path.join(out, "models", "weak"), lambda: sft_more(
      p, out, tok, problems, "sft_weak", Model(mcfg, init_variables(mcfg, 0)), p.weak_steps, 3e-3))
  strong = cached_model(os.path.join(out, "models", "strong"), lambda: sft_more(
      p, out, tok, problems, "sft_strong", weak, p.strong_steps, 2e-3))
  return weak, strong


# -- sampling -----------------------------------------------------------------------

def _max_new(k: int) -> int:
  return -(-(14 * k + 12) // 8) * 8  # a gold step is <= 13 tokens; the answer adds ~8


def sample(model: Model, tok, problems: Sequence[arith.Problem], n: int, temperature: float,
           seed: int, p: Plan, prompt_len: int) -> list[list[list[str]]]:
  """n sampled solutions (step lists) per problem, generated in batches grouped by K."""
  out = [[None] * n for _ in problems]
  by_k = defaultdict(list)
  for i, q in enumerate(problems):
    by_k[q.k].extend((i, j) for j in range(n))
  questions = [q.question for q in problems]
  bar = progress(len(problems) * n, 0, "sample")
  for k, jobs in sorted(by_k.items()):
    for s in range(0, len(jobs), p.gen_batch):
      chunk = jobs[s:s + p.gen_batch]
      idx = np.asarray([i for i, _ in chunk] + [chunk[-1][0]] * (p.gen_batch - len(chunk)))
      r = ppo.rollout(model, tok, questions, idx, prompt_len, _max_new(k), temperature,
                      seed=seed + 7919 * k + s)
      for (i, j), steps in zip(chunk, r.steps):
        # The step tag is in the vocabulary (PRM inputs need it); a sampled one is noise.
        out[i][j] = [t for t in (x.replace(arith.STEP_TAG, "").strip() for x in steps) if t]
      bar.update(len(chunk))
  bar.close()
  return out


def prompt_len_for(tok, problems) -> int:
  """The prompt width that fits every problem's chat prompt, rounded up to a multiple of 16."""
  n = max(len(tok.encode(ppo.prompt_text(q.question))) + 1 for q in problems)
  return -(-n // 16) * 16


def accuracy(model: Model, tok, problems, p: Plan, prompt_len: int, temperature: float = 0.0,
             seed: int = 0) -> float:
  """Share of problems whose sampled (greedy by default) solution ends in the right answer."""
  sols = sample(model, tok, problems, 1, temperature, seed, p, prompt_len)
  return float(np.mean([gsm8k.answers_equal(answer(s[0]), str(q.answer))
                        for s, q in zip(sols, problems)]))


# -- 2. automatic labels ------------------------------------------------------------

def rollout_outcomes(completer_model: Model, tok, problems, prefixes: list[tuple[int, tuple]],
                     n: int, p: Plan, seed: int) -> np.ndarray:
  """bool [len(prefixes), n]: does each of n completions of each (problem, steps) prefix reach the answer."""
  out = np.zeros((len(prefixes), n), bool)
  by_rest = defaultdict(list)
  for j, (i, steps) in enumerate(prefixes):
    by_rest[max(problems[i].k - len(steps), 1)].append(j)
  bar = progress(len(prefixes), 0, f"rollouts x{n}")
  for rest, js in sorted(by_rest.items()):
    complete = annotate.model_completer(completer_model, tok, _max_new(rest), 1.0, seed + rest,
                                        batch_size=p.gen_batch)
    per_call = max(1, p.gen_batch // n)  # prefixes per compiled generate call
    for c in range(0, len(js), per_call):
      chunk = js[c:c + per_call]
      texts = complete([annotate.prefix_prompt(problems[prefixes[j][0]].question, prefixes[j][1])
                        for j in chunk], n)
      for a, j in enumerate(chunk):
        gold = str(problems[prefixes[j][0]].answer)
        out[j] = [gsm8k.answers_equal(gsm8k.extract_answer(t), gold) for t in texts[a * n:(a + 1) * n]]
      bar.update(len(chunk))
  bar.close()
  return out


def label_candidates(cands, problems, outcomes: dict, n: int, rng=None) -> list[dict]:
  """HE/SE labels per step from the first n (or a random n, given rng) rollouts, and exact labels."""
  rows = []
  for i, sols in enumerate(cands):
    q = problems[i]
    for steps in sols:
      he, se = [], []
      for s in range(len(steps) - 1):
        o = outcomes[(i, tuple(steps[:s + 1]))]
        o = o[rng.choice(len(o), n, replace=False)] if rng is not None else o[:n]
        he.append(float(o.any()))
        se.append(float(o.mean()))
      last = float(gsm8k.answers_equal(answer(steps), str(q.answer)))
      rows.append({"problem": i, "steps": steps, "hard": he + [last], "soft": se + [last],
                   "exact": arith.oracle_labels(q, steps)})
  return rows


def label_quality(rows: list[dict]) -> dict:
  """HE and SE against exact labels over all (solution, step) pairs."""
  g = np.asarray([x for r in rows for x in r["exact"]]) >= 0.5
  he = np.asarray([x for r in rows for x in r["hard"]]) >= 0.5
  se = np.clip(np.asarray([x for r in rows for x in r["soft"]]), 0.01, 0.99)
  nan = float("nan")
  tpr = (he & g).sum() / g.sum() if g.any() else nan  # rates of a class that is absent are nan
  tnr = (~he & ~g).sum() / (~g).sum() if (~g).any() else nan
  return {"steps": int(len(g)), "bad_share": float((~g).mean()),
          "he_accuracy": float((he == g).mean()), "he_balanced_accuracy": float((tpr + tnr) / 2),
          "he_false_positive_rate": float(1 - tnr), "he_false_negative_rate": float(1 - tpr),
          "se_cross_entropy": float(-np.mean(g * np.log(se) + (~g) * np.log(1 - se))),
          "se_brier": float(np.mean((se - g) ** 2)), "se_auc": reward.roc_auc(se, g)}


def quality_by_n(cands, problems, outcomes, ns, draws: int = 20) -> dict:
  """label_quality for each N, averaged over `draws` random N-subsets of the rollouts."""
  out = {}
  for n in ns:
    rng = np.random.default_rng(n)
    qs = [label_quality(label_candidates(cands, problems, outcomes, n, rng)) for _ in range(draws)]
    out[n] = {k: float(np.mean([q[k] for q in qs])) for k in qs[0]}
  return out


# -- 3. reward models ---------------------------------------------------------------

def rm_config(p: Plan, orm: bool, label: str) -> ml_collections.ConfigDict:
  """The reward models' training config: the "prm" task from the SFT model, p.rm_steps steps."""
  c = _cfg(p, p.rm_steps, 1e-3)
  c.task = "prm"
  c.data.seq_len = 256
  c.prm = prm_config().prm
  c.prm.update(train_file="", label=label, orm=orm)
  return c


def train_rms(p: Plan, out: str, strong: Model, tok, rows: list[dict], problems) -> dict[str, Model]:
  # Hold out the last problems' solutions: 10%, or more where that cannot fill a batch.
  """The ORM, PRM-HE, PRM-SE and oracle PRM, trained from the strong model (cached)."""
  cut = max(1, int(0.9 * len(problems)))
  while cut > 1 and sum(r["problem"] >= cut for r in rows) < 4 * p.batch:
    cut -= 1
  specs = {"orm": ("hard", True), "prm_he": ("hard", False), "prm_se": ("soft", False),
           "prm_oracle": ("exact", False)}
  mesh = train_lib.make_mesh(_cfg(p, 1, 0.0))
  models = {}
  for name, (key, orm) in specs.items():
    def fit(key=key, orm=orm, name=name):
      exs = [(r["problem"], Example(problems[r["problem"]].question, r["steps"], r[key])) for r in rows]
      train_ex = [e for i, e in exs if i < cut]
      eval_ex = [e for i, e in exs if i >= cut]
      cfg = rm_config(p, orm, "hard" if key == "hard" else "soft")
      model, _, summary = training.fit(cfg, os.path.join(out, "work", name), strong, tok, train_ex,
                                    eval_ex, mesh, name)
      with open(os.path.join(out, "work", name, "summary.json"), "w") as f:
        json.dump(summary, f)
      return model
    models[name] = cached_model(os.path.join(out, "models", name), fit)
  return models


# -- 5. PPO ---------------------------------------------------------------------------

def ppo_runs(p: Plan, out: str, strong: Model, rms: dict, tok, problems, test, prompt_len) -> dict:
  """Step PPO (PRM-HE delta rewards) and ORM PPO from the strong model; greedy test accuracy before and after."""
  questions = [q.question for q in problems]
  # Cached like the runs, so that a rerun of a finished study samples nothing.
  results = {"before": _json(os.path.join(out, "ppo_before.json"),
                             lambda: accuracy(strong, tok, test, p, prompt_len))}
  mesh = train_lib.make_mesh(_cfg(p, 1, 0.0))
  for name, fn in (("step_ppo", ppo.reward_model_fn(rms["prm_he"], tok, questions, "prm", "delta")),
                   ("orm_ppo", ppo.reward_model_fn(rms["orm"], tok, questions, "orm"))):
    def run(fn=fn, name=name):
      c = ppo_config()
      c.unlock()
      c.ppo.update(prompt_len=prompt_len, max_new_tokens=_max_new(6), minibatch_size=p.ppo_batch // 2,
                   epochs=2)
      c.data.batch_size = p.ppo_batch
      c.optimizer.update(learning_rate=1e-4, warmup_steps=2)
      c.num_train_steps = p.ppo_iters
      c.checkpoint_every = 5
      c.keep_checkpoints = 1
      model, summary = ppo.train(c, os.path.join(out, "work", name), strong, trainable.TrainableSpec(), tok,
                                 questions, fn, mesh, name=name)
      return {"accuracy": accuracy(model, tok, test, p, prompt_len),
              "history": summary["history"]}
    results[name] = _json(os.path.join(out, f"{name}.json"), run)
  return results


# -- the study -------------------------------------------------------------------------

def run_study(out: str, quick: bool) -> dict:
  """Runs (or resumes from `out`) every stage; writes RESULTS.md, results.json and the plot."""
  os.makedirs(out, exist_ok=True)
  p = plan(quick)
  t0 = time.time()
  tok = arith.ArithTokenizer()
  splits = {"sft": arith.make_split("sft", p.n_sft), "dev": arith.make_split("dev", p.n_dev),
            "rm": arith.make_split("rm_train", p.n_rm), "test": arith.make_split("test", p.n_test),
            "ood": arith.make_split("ood", p.n_ood, ks=(7, 8))}
  prompt_len = prompt_len_for(tok, [q for s in splits.values() for q in s])
  # Seconds of work since the study began, kept across restarts: a stage finished by an
  # earlier run keeps its time, and a later run's clock starts where the earlier one stopped.
  timings_path = os.path.join(out, "timings.json")
  timings = _read_json(timings_path, {})
  spent = max(timings.values(), default=0.0)

  def stage(name):
    if name not in timings:
      timings[name] = round(spent + time.time() - t0, 1)
      _write_json(timings_path, timings)
    print(f"[study] {name} ({timings[name]:.0f} s)", flush=True)

  weak, strong = sft(p, out, tok, splits["sft"])
  stage("sft done")
  calib = _json(os.path.join(out, "calibration.json"), lambda: {
      name: {"greedy": accuracy(m, tok, splits["dev"], p, prompt_len),
             "sampled": accuracy(m, tok, splits["dev"], p, prompt_len, 1.0, 1)}
      for name, m in (("weak", weak), ("strong", strong))})
  print(f"[study] dev accuracy: {calib}")
  rm_cands = _json(os.path.join(out, "rm_candidates.json"), lambda: [
      [list(s) for s in dict.fromkeys(tuple(s) for s in sols if s)]  # deduplicated, as in the paper
      for sols in sample(strong, tok, splits["rm"], p.n_cand, 1.0, 11, p, prompt_len)])
  stage("candidates sampled")
  rows, labels = _labels(p, out, tok, splits["rm"], rm_cands, weak, strong, stage)
  rms = train_rms(p, out, strong, tok, rows, splits["rm"])
  stage("reward models trained")
  test_cands = _json(os.path.join(out, "test_candidates.json"), lambda: sample(
      strong, tok, splits["test"], p.n_test_cand, 1.0, 23, p, prompt_len))
  ood_cands = _json(os.path.join(out, "ood_candidates.json"), lambda: sample(
      strong, tok, splits["ood"], p.n_test_cand, 1.0, 29, p, prompt_len))
  stage("test candidates sampled")
  scores = _json(os.path.join(out, "test_scores.json"), lambda: {
      name: prm_bon.score_all(m, tok, splits["test"], test_cands) for name, m in rms.items()})
  ood_scores = _json(os.path.join(out, "ood_scores.json"), lambda: {
      name: prm_bon.score_all(m, tok, splits["ood"], ood_cands) for name, m in rms.items()})
  stage("candidates scored")
  result = {
      "quick": quick, "plan": dataclasses.asdict(p), "jax": jax.__version__,
      "max_value": arith.MAX_VALUE, "max_operand": arith.MAX_OPERAND,
      "devices": str(jax.devices()[0].device_kind), "cpus": os.cpu_count(),
      "model": dataclasses.asdict(weak.config),
      "params": int(sum(x.size for x in jax.tree_util.tree_leaves(weak.params))),
      "calibration": calib, "labels": labels,
      "rm_summaries": {n: _rm_summary(os.path.join(out, "work", n, "summary.json")) for n in rms},
      **prm_bon.measure(splits["test"], test_cands, scores, splits["ood"], ood_cands, ood_scores,
                        p.ns, p.bootstrap),
  }
  stage("verification done")
  result["ppo"] = ppo_runs(p, out, strong, rms, tok, splits["rm"], splits["test"], prompt_len)
  stage("ppo done")
  result["timings_s"] = timings
  with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1)
  plot(result, os.path.join(out, "accuracy_vs_n.png"))
  with open(os.path.join(out, "RESULTS.md"), "w", encoding="utf-8") as f:
    f.write(report(result))
  print(f"[study] wrote {os.path.join(out, 'RESULTS.md')} in {time.time() - t0:.0f} s")
  return result


def _labels(p: Plan, out: str, tok, problems, rm_cands, weak: Model, strong: Model, stage):
  """HE/SE labels of the RM-train candidates from completer rollouts (cached), and their quality
  against the exact labels by N for the strong and the weak completer: (rows, labels)."""
  prefixes = sorted({(i, tuple(s[:k + 1])) for i, sols in enumerate(rm_cands) for s in sols
                     for k in range(len(s) - 1)})
  val = [pf for pf in prefixes if pf[0] < p.n_val]

  def outcomes(model, pfs, n, seed):
    o = rollout_outcomes(model, tok, problems, pfs, n, p, seed)
    return {"prefixes": [[i, list(s)] for i, s in pfs], "outcomes": o.tolist()}

  strong_o = _json(os.path.join(out, "rollouts_strong.json"),
                   lambda: outcomes(strong, prefixes, p.n_label, 101))
  strong_val = _json(os.path.join(out, "rollouts_strong_val.json"),
                     lambda: outcomes(strong, val, p.n_val_max, 202))
  weak_val = _json(os.path.join(out, "rollouts_weak_val.json"),
                   lambda: outcomes(weak, val, p.n_val_max, 303))
  stage("annotation done")
  as_map = lambda d: {(i, tuple(s)): np.asarray(o, bool) for (i, s), o in zip(d["prefixes"], d["outcomes"])}
  rows = label_candidates(rm_cands, problems, as_map(strong_o), p.n_label)
  val_cands = rm_cands[:p.n_val]
  ns_label = [n for n in (1, 2, 4, 8, 16, 32) if n <= p.n_val_max]
  labels = {"train_quality": label_quality(rows),
            "by_n": {"strong": quality_by_n(val_cands, problems, as_map(strong_val), ns_label),
                     "weak": quality_by_n(val_cands, problems, as_map(weak_val), ns_label)},
            "solutions": len(rows), "prefixes": len(prefixes),
            "right_answer_wrong_process": float(np.mean(
                [r["hard"][-1] == 1.0 and min(r["exact"]) == 0.0 for r in rows]))}
  return rows, labels


def _rm_summary(path):
  """The metrics of an RM's summary.json (empty if the run left none)."""
  s = _read_json(path, {})
  return {k: s[k] for k in ("metrics_before", "metrics_after", "eval_loss_after") if k in s}


def main(argv: Sequence[str] | None = None) -> int:
  """The command line: `python -m moe_jax.studies.prm --out DIR [--quick] [--report-only]`."""
  parser = argparse.ArgumentParser(prog="python -m moe_jax.studies.prm", description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True, help="output directory (stages cached there)")
  parser.add_argument("--quick", action="store_true", help="a tiny run in a few minutes (the test)")
  parser.add_argument("--report-only", action="store_true",
                      help="rewrite RESULTS.md and the plot from DIR/results.json")
  args = parser.parse_args(argv)
  if args.report_only:
    with open(os.path.join(args.out, "results.json"), encoding="utf-8") as f:
      result = json.load(f)
    plot(result, os.path.join(args.out, "accuracy_vs_n.png"))
    with open(os.path.join(args.out, "RESULTS.md"), "w", encoding="utf-8") as f:
      f.write(report(result))
    return 0
  run_study(args.out, args.quick)
  return 0


if __name__ == "__main__":
  sys.exit(main())
