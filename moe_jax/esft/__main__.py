"""ESFT command line.

    python -m moe_jax.esft select --routing-logs DIR --score token --top-p 0.2 --out expert_config.json
    python -m moe_jax.esft overlap A.json B.json --n-experts 64
    python -m moe_jax.esft report --model HF_DIR --tokenizer byte \
        --task intent=intent.jsonl --task law=law.jsonl --out report/
"""

from __future__ import annotations

import argparse
import json
import sys

from moe_jax.esft.report import overlap
from moe_jax.esft.selection import SCORE_FUNCTIONS, read_routing_logs, select_experts
from moe_jax.trainable import read_expert_config, write_expert_config


def _select(args) -> int:
  scores = read_routing_logs(args.routing_logs, top_k=args.top_k, n_experts=args.n_experts)
  decimals = None if args.no_official_rounding else 4
  cfg = select_experts(scores.get(args.score), args.top_p, decimals,
                       shared_experts=args.train_shared_experts,
                       non_expert_modules=args.train_non_expert_modules)
  write_expert_config(cfg, args.out)
  if args.summary:
    with open(args.summary, "w", encoding="utf-8") as f:
      json.dump(scores.to_json(), f)
  n = sum(len(v) for v in cfg["experts"].values())
  per_layer = [len(v) for v in cfg["experts"].values()]
  print(f"{len(per_layer)} layers, {n} experts selected ({min(per_layer)}-{max(per_layer)} per "
        f"layer) by {args.score} score at p={args.top_p}: {args.out}")
  return 0


def _overlap(args) -> int:
  a = read_expert_config(args.a)["experts"]
  b = read_expert_config(args.b)["experts"]
  result = overlap(a, b, args.n_experts)
  for layer, r in result["layers"].items():
    print(f"layer {layer:>3}: {r['shared']} shared of {r['size_a']} / {r['size_b']} "
          f"(chance {r['chance']:.2f})")
  print(f"total: {result['shared']} shared, {result['chance']:.2f} expected by chance")
  return 0


def _report(args) -> int:
  from moe_jax.esft.report import task_report
  from moe_jax.hf import from_pretrained
  from moe_jax.tokenizer import load_tokenizer

  tasks = {}
  for item in args.task:
    name, sep, path = item.partition("=")
    if not sep or not name or not path:
      raise ValueError(f"--task {item!r}: expected NAME=PATH")
    tasks[name] = path
  model = from_pretrained(args.model)
  result = task_report(model, tasks, load_tokenizer(args.tokenizer), args.out, args.score,
                       args.top_p, args.n_tokens, args.seq_len)
  for name, n in result["experts"].items():
    print(f"{name}: {n} experts selected; heatmap {args.out}/heatmap_{name}.png")
  for pair, o in result["overlap"].items():
    print(f"{pair}: {o['shared']} selected experts shared, {o['chance']:.2f} expected by chance")
  return 0


def main(argv=None) -> int:
  """The command line: `python -m moe_jax.esft {select,overlap,report} ...`."""
  parser = argparse.ArgumentParser(prog="python -m moe_jax.esft", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  s = sub.add_parser("select", help="expert config from official routing logs")
  s.add_argument("--routing-logs", required=True, help="directory of expert_weights_<layer>.txt")
  s.add_argument("--score", choices=SCORE_FUNCTIONS, default="token")
  s.add_argument("--top-p", type=float, required=True)
  s.add_argument("--out", required=True, help="expert config JSON to write")
  s.add_argument("--top-k", type=int, default=6, help="experts per token in the logs (V2-Lite: 6)")
  s.add_argument("--n-experts", type=int, default=None, help="routed experts (default: inferred)")
  s.add_argument("--summary", help="also write the scores as summary.json")
  s.add_argument("--train-shared-experts", action="store_true")
  s.add_argument("--train-non-expert-modules", action="store_true")
  s.add_argument("--no-official-rounding", action="store_true",
                 help="select on full-precision scores, not the 4-decimal ones the official "
                      "pipeline selected from")
  s.set_defaults(fn=_select)
  o = sub.add_parser("overlap", help="selected-expert overlap of two expert configs")
  o.add_argument("a")
  o.add_argument("b")
  o.add_argument("--n-experts", type=int, required=True)
  o.set_defaults(fn=_overlap)
  r = sub.add_parser("report", help="score a model on tasks: heatmaps, expert configs, overlap")
  r.add_argument("--model", required=True, help="Hugging Face model directory")
  r.add_argument("--tokenizer", default="byte", help="'byte' or a tokenizer.json / its directory")
  r.add_argument("--task", action="append", required=True, help="NAME=chat.jsonl (repeatable)")
  r.add_argument("--out", required=True)
  r.add_argument("--score", choices=SCORE_FUNCTIONS, default="token")
  r.add_argument("--top-p", type=float, default=0.2)
  r.add_argument("--n-tokens", type=int, default=131072)
  r.add_argument("--seq-len", type=int, default=512)
  r.set_defaults(fn=_report)
  args = parser.parse_args(argv)
  try:
    return args.fn(args)
  except (OSError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
