"""The process reward model command line: annotate, verify, convert.

    python -m moe_jax.prm annotate --config=configs/prm_annotate.py [--config.n=8 ...]
    python -m moe_jax.prm verify --candidates FILE [--max-n 64] [--model PRM_DIR]
    python -m moe_jax.prm convert IN OUT --to {trl,math_shepherd}
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _annotate(argv) -> int:
  from absl import app, flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "Annotation config file.", lock_config=True)
  flags.mark_flags_as_required(["config"])

  def main(_):
    run_annotation(flags.FLAGS.config)

  app.run(main, argv=["moe_jax.prm annotate"] + list(argv))
  return 0


def run_annotation(cfg) -> dict:
  """Labels `cfg.solutions` with `cfg.completer`'s rollouts; writes JSONL and both PRM formats."""
  from tqdm.auto import tqdm

  from moe_jax.hf import from_pretrained
  from moe_jax.prm import annotate, data
  from moe_jax.tokenizer import load_tokenizer
  from moe_jax.train_lib import resolve_data_path

  solutions = []
  with open(resolve_data_path(cfg.solutions), encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if line.strip():
        try:
          r = json.loads(line)
          solutions.append({"question": r["question"], "gold": str(r["gold"]), "steps": list(r["steps"])})
        except (json.JSONDecodeError, KeyError, TypeError) as e:
          raise ValueError(f"{cfg.solutions}:{lineno}: expected question, gold and steps ({e})") from e
  model = from_pretrained(resolve_data_path(cfg.completer))
  tokenizer = load_tokenizer(resolve_data_path(cfg.tokenizer))
  completer = annotate.model_completer(model, tokenizer, cfg.max_new_tokens, cfg.temperature,
                                       cfg.seed, cfg.batch_size)
  os.makedirs(cfg.out_dir, exist_ok=True)
  rows_path = os.path.join(cfg.out_dir, "labels.jsonl")
  with tqdm(total=len(solutions), desc="annotate") as bar:
    done = sum(1 for _ in open(rows_path, encoding="utf-8")) if os.path.exists(rows_path) else 0
    bar.update(done)
    annotate.annotate(solutions, completer, cfg.n, rows_path, progress=bar)
  with open(rows_path, encoding="utf-8") as f:
    rows = sorted((json.loads(l) for l in f), key=lambda r: r["index"])
  for kind in ("hard", "soft"):
    examples = [data.Example(r["question"], r["steps"], r[kind]) for r in rows]
    data.write_trl(examples, os.path.join(cfg.out_dir, f"{kind}_trl.jsonl"))
    if kind == "hard":
      data.write_math_shepherd(examples, os.path.join(cfg.out_dir, "hard_math_shepherd.jsonl"))
    else:  # Math-Shepherd holds only +/-: soft labels thresholded at 0.5 there
      data.write_math_shepherd(examples, os.path.join(cfg.out_dir, "soft_math_shepherd.jsonl"),
                               threshold=0.5)
  print(f"labelled {len(rows)} solutions: {cfg.out_dir}")
  return {"rows": len(rows), "out_dir": cfg.out_dir}


def _convert(argv) -> int:
  from moe_jax.prm import data

  parser = argparse.ArgumentParser(prog="python -m moe_jax.prm convert")
  parser.add_argument("input")
  parser.add_argument("output")
  parser.add_argument("--to", choices=("trl", "math_shepherd"), required=True)
  parser.add_argument("--tag", default=data.TAG)
  parser.add_argument("--threshold", type=float, default=None,
                      help="math_shepherd: label >= threshold is '+' (needed for soft labels)")
  args = parser.parse_args(argv)
  examples = data.read_examples(args.input, args.tag)
  if args.to == "trl":
    data.write_trl(examples, args.output)
  else:
    data.write_math_shepherd(examples, args.output, args.tag, threshold=args.threshold)
  print(f"{len(examples)} examples -> {args.output}")
  return 0


def _powers_of_two(max_n: int) -> list[int]:
  ns, n = [], 1
  while n <= max_n:
    ns.append(n)
    n *= 2
  if ns[-1] != max_n:
    ns.append(max_n)
  return ns


def _score_missing(problems: list, args) -> int:
  """Fills in missing step scores with the PRM at --model; returns how many it scored."""
  from moe_jax.hf import from_pretrained
  from moe_jax.prm.scoring import step_scores
  from moe_jax.tokenizer import load_tokenizer

  model = from_pretrained(args.model)
  tokenizer = load_tokenizer(args.tokenizer)
  scored = 0
  for p in problems:
    todo = [c for c in p.candidates if not c.step_scores]
    if not todo:
      continue
    if any(not c.steps for c in todo):
      raise ValueError(f"{p.where}: a candidate without step_scores has no steps or text to score")
    scores = step_scores(model, tokenizer, p.question, [c.steps for c in todo], tag=args.step_tag,
                         good=args.good, bad=args.bad)
    for c, s in zip(todo, scores):
      c.step_scores = [float(x) for x in s]
    scored += len(todo)
  return scored


def verify(argv) -> int:
  """`python -m moe_jax.prm verify`: print (and with --out write) accuracy by method and N.

  argv: the arguments after "verify". Returns the exit status: 0, or 2 with a
  message on stderr for bad input.
  """
  from moe_jax.prm import data, discrimination
  from moe_jax.prm.candidates import read_candidates
  from moe_jax.prm.verify import METHODS, evaluate, format_table

  parser = argparse.ArgumentParser(
      prog="python -m moe_jax.prm verify",
      description="Best-of-N, self-consistency and SC + RM accuracy from scored candidates, and "
                  "whether the reward model verifies (within-problem AUC, score-vs-length "
                  "correlation, step AUC within (problem, step index) groups).")
  parser.add_argument("--candidates", required=True, help="JSONL, one problem per line")
  parser.add_argument("--max-n", type=int, default=64,
                      help="largest N (capped at the most candidates any problem has); "
                           "N = 1, 2, 4, ... and the cap")
  parser.add_argument("--methods", nargs="+", default=None,
                      help=f"any of {', '.join(METHODS)} (default: all the data allows)")
  parser.add_argument("--out", help="write the results as JSON here")
  parser.add_argument("--model", help="PRM (Hugging Face directory) to score candidates that "
                                      "lack step_scores")
  parser.add_argument("--tokenizer", default="byte",
                      help="'byte' or a tokenizer.json / its directory (with --model)")
  parser.add_argument("--step-tag", default=data.TAG, help="the PRM's step tag (with --model)")
  parser.add_argument("--good", default=data.GOOD, help="the PRM's good-step label token (with --model)")
  parser.add_argument("--bad", default=data.BAD, help="the PRM's bad-step label token (with --model)")
  args = parser.parse_args(argv)
  methods = None
  if args.methods:
    methods = [m for spec in args.methods for m in spec.split(",") if m]
  try:
    if args.max_n < 1:
      raise ValueError(f"--max-n must be positive, got {args.max_n}")
    problems = read_candidates(args.candidates)
    if not problems:
      raise ValueError(f"{args.candidates}: no problems")
    if args.model and any(not c.step_scores for p in problems for c in p.candidates):
      print(f"scored {_score_missing(problems, args)} candidates with {args.model}")
    most = max(len(p.candidates) for p in problems)
    if most == 0:
      raise ValueError(f"{args.candidates}: no problem has any candidates")
    ns = _powers_of_two(min(args.max_n, most))
    result = evaluate(problems, ns, methods)
    diagnostics = discrimination.diagnose(problems)
  except (OSError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(format_table(result))
  print("\nDoes the reward model verify? (within problems, over distinct texts)")
  print(discrimination.format_diagnostics(diagnostics))
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump({"candidates": args.candidates, "ns": ns, **result, "diagnostics": diagnostics},
                f, indent=2)
    print(f"wrote {args.out}")
  return 0


def main(argv=None) -> int:
  """The command line: `python -m moe_jax.prm {convert,annotate,verify} ...`."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] not in ("annotate", "verify", "convert"):
    print(__doc__, file=sys.stderr)
    return 2
  command, rest = argv[0], argv[1:]
  try:
    if command == "annotate":
      return _annotate(rest)
    if command == "convert":
      return _convert(rest)
    return verify(rest)
  except (OSError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
