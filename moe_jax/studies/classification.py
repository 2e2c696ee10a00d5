"""What the classification numbers mean: MiniLM fine-tuned vs an MoE encoder vs bag-of-words.

    python -m moe_jax.studies.classification --out docs/classification          # ~45 min, 2 cores
    python -m moe_jax.studies.classification --out DIR --quick                   # a minute; a test

On each real set (`moe_jax.classify.datasets`: tweets, reviews, intent, and
Reuters where installed) and each of 3 seeds, three systems are trained on the
same training subset and scored on the same held-out subset:

  minilm       the real pretrained all-MiniLM-L6-v2, fine-tuned (FFT) through the
               "classify" task (`moe_jax.classify.task.run`);
  moe_encoder  a DeepSeekMoE encoder of similar total size (8 routed + 1 shared
               experts, top-2), trained here from scratch through the same task;
  bow          multinomial logistic regression on binary bags of MiniLM's WordPiece
               tokens (L2, C = 1, L-BFGS: scikit-learn's defaults, written here).

Each run is cached in --out/runs (git-ignored; the trainer resumes an
interrupted one, a finished one is read back from its summary.json), and RESULTS.md reports accuracy, macro-F1 and
expected calibration error with 95% t-intervals over seeds, and marks two
claims held / failed / inconclusive (`moe_jax.studies.classification_report`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import jax
import numpy as np
import scipy.optimize
import scipy.sparse

from moe_jax import train_lib
from moe_jax.classify import configs, datasets, metrics, task
from moe_jax.classify import sources
from moe_jax.studies import common
from moe_jax.studies.classification_report import SYSTEMS, report
from moe_jax.tokenizer import load_tokenizer


@dataclasses.dataclass(frozen=True)
class Plan:
  sets: tuple[str, ...]
  seeds: int
  train_examples: int  # a random subset of the training split, drawn with the run's seed
  eval_examples: int  # one random subset of the test split (seed 0) for every run
  steps: int
  batch: int
  seq_len: int
  sample: bool  # the shipped samples instead of the full sets


def plan(quick: bool) -> Plan:
  if quick:
    return Plan(("tweets",), 1, 120, 16, 2, 8, 32, True)
  return Plan(("tweets", "reviews", "intent", "reuters"), 3, 1600, 400, 100, 16, 48, False)


def available_sets(p: Plan) -> tuple[str, ...]:
  """The plan's sets whose full data is here (Reuters needs Debian's weka files)."""
  if p.sample:
    return p.sets
  keep = []
  for name in p.sets:
    try:
      datasets.load(name, "test", limit=1)
      keep.append(name)
    except (datasets.DataError, FileNotFoundError, OSError) as e:
      print(f"[study] skipping {name}: {e}")
  return tuple(keep)


def moe_encoder_fields() -> dict:
  """The from-scratch MoE encoder: 4 layers of width 256, the first dense, then 8 routed experts
  (top-2) + 1 shared of width 256; about 16M parameters with MiniLM's 30,522-token embedding."""
  return dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
              n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2,
              moe_intermediate_size=256, first_k_dense_replace=1)


def run_config(p: Plan, name: str, system: str, seed: int):
  """The classify-task config of one neural run."""
  c = configs.classify_config()
  c.seed = seed
  c.classify.update(dict(dataset=name, sample=p.sample, max_train_examples=p.train_examples,
                         max_eval_examples=p.eval_examples))
  c.data.update(dict(seq_len=p.seq_len, batch_size=p.batch))
  c.num_train_steps = p.steps
  c.checkpoint_every = p.steps
  c.export_hf = False
  c.optimizer.warmup_steps = max(1, p.steps // 10)
  if system == "moe_encoder":
    c.init_from = ""
    c.model.update(dict(preset="all-minilm-l6-v2", **moe_encoder_fields()))
    c.optimizer.learning_rate = 1e-3
  return c


def bow_run(p: Plan, name: str, seed: int) -> dict:
  """Logistic regression on binary bags of WordPiece tokens; the same splits as the neural runs."""
  tok = load_tokenizer(train_lib.resolve_data_path(configs.MINILM))
  train = datasets.load(name, "train", p.train_examples, seed, p.sample)
  held = datasets.load(name, "test", p.eval_examples, 0, p.sample)
  vocab, x_train = _bags(tok, train.texts, None)
  _, x_held = _bags(tok, held.texts, vocab)
  w = fit_logistic_regression(x_train, np.asarray(train.labels), len(train.label_names))
  probs = softmax(x_held @ w[:-1] + w[-1])
  return metrics.report(probs, np.asarray(held.labels), held.label_names)


def _bags(tok, texts, vocab):
  """Binary token-presence rows (CSR) and the vocabulary: tokens in >= 2 training texts."""
  ids = [set(tok.encode(t)) for t in texts]
  if vocab is None:
    df = {}
    for s in ids:
      for i in s:
        df[i] = df.get(i, 0) + 1
    vocab = {i: j for j, i in enumerate(sorted(i for i, n in df.items() if n >= 2))}
  rows, cols = [], []
  for r, s in enumerate(ids):
    for i in s:
      if i in vocab:
        rows.append(r)
        cols.append(vocab[i])
  x = scipy.sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(texts), len(vocab)))
  return vocab, x


def softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def fit_logistic_regression(x, y: np.ndarray, classes: int, c: float = 1.0) -> np.ndarray:
  """Multinomial logistic regression, L2 penalty 1/(2C) |W|^2 (bias unpenalised), by L-BFGS.

  Returns W [features + 1, classes], the last row the bias.
  """
  n, d = x.shape
  onehot = np.eye(classes)[y]

  def loss_grad(flat):
    w = flat.reshape(d + 1, classes)
    p = softmax(x @ w[:-1] + w[-1])
    loss = -np.sum(onehot * np.log(np.clip(p, 1e-300, None))) + 0.5 / c * np.sum(w[:-1] ** 2)
    g = np.vstack([x.T @ (p - onehot) + w[:-1] / c, (p - onehot).sum(0)])
    return loss, g.ravel()

  res = scipy.optimize.minimize(loss_grad, np.zeros((d + 1) * classes), jac=True,
                                method="L-BFGS-B", options={"maxiter": 500})
  return res.x.reshape(d + 1, classes)


def _neural_run(p: Plan, out: str, name: str, system: str, seed: int) -> dict:
  workdir = os.path.join(out, "runs", name, system, f"seed{seed}")
  done = os.path.join(workdir, "summary.json")
  if not os.path.exists(done):
    task.run(run_config(p, name, system, seed), workdir)
    for bulky in ("checkpoints", "data"):  # the summary is the cache; a 22M-parameter Adam state is not
      shutil.rmtree(os.path.join(workdir, bulky), ignore_errors=True)
  with open(done, encoding="utf-8") as f:
    s = json.load(f)
  return {**s["metrics_after"], "trainable_params": s["total_params"]}


def run_study(out: str, quick: bool) -> dict:
  """Every (set, system, seed) run, cached under out/runs; writes results.json and RESULTS.md."""
  p = plan(quick)
  os.makedirs(out, exist_ok=True)
  runs = []
  for name in available_sets(p):
    for seed in range(p.seeds):
      for system in SYSTEMS:
        print(f"[study] {name} / {system} / seed {seed}")
        if system == "bow":
          cached = os.path.join(out, "runs", name, "bow", f"seed{seed}.json")
          if not os.path.exists(cached):
            os.makedirs(os.path.dirname(cached), exist_ok=True)
            with open(cached, "w", encoding="utf-8") as f:
              json.dump(bow_run(p, name, seed), f)
          with open(cached, encoding="utf-8") as f:
            m = json.load(f)
        else:
          m = _neural_run(p, out, name, system, seed)
        runs.append({"set": name, "system": system, "seed": seed,
                     **{k: m[k] for k in ("accuracy", "macro_f1", "ece", "log_loss", "examples")},
                     "params": m.get("trainable_params")})
  results = {"plan": dataclasses.asdict(p), "quick": quick, "runs": runs, "jax": jax.__version__,
             "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
             "reuters_dir": sources.REUTERS_DIR}
  with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2)
  with open(os.path.join(out, "RESULTS.md"), "w", encoding="utf-8") as f:
    f.write(report(results))
  print(f"[study] wrote {os.path.join(out, 'RESULTS.md')}")
  return results


def main(argv=None) -> int:
  return common.main("python -m moe_jax.studies.classification", __doc__, run_study,
                     lambda results, out: report(results), argv)


if __name__ == "__main__":
  raise SystemExit(main())
