"""Command line: label texts with a trained classifier.

    python -m moe_jax.classify predict --workdir=DIR --input=texts.txt [--output=preds.jsonl]

DIR is a finished "classify" run (train.py with configs/classify_*.py): its
Hugging Face export (hf/ with classifier.npz), labels.txt and summary.json
(which records the tokenizer and row length). The input is plain text, one
text per line, or classification JSONL (a `text` field; a `label` field, if
present, is scored: accuracy and macro-F1 are printed). Each output line is
{"text", "label", "probs": {name: p}}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np


def _read_texts(path: str) -> tuple[list[str], list | None]:
  from moe_jax.classify import datasets

  if path.endswith(".jsonl"):
    ex = datasets.read_jsonl(path)
    return list(ex.texts), [ex.label_names[i] for i in ex.labels]
  with open(path, encoding="utf-8") as f:
    texts = [line.rstrip("\n") for line in f]
  texts = [t for t in texts if t.strip()]
  if not texts:
    raise SystemExit(f"{path}: no texts")
  return texts, None


def predict(args) -> None:
  from moe_jax import heads, hf, tokenizer as tokenizer_lib, train_lib
  from moe_jax.classify import datasets, metrics, task

  with open(os.path.join(args.workdir, "summary.json"), encoding="utf-8") as f:
    run = json.load(f)
  names = datasets.read_label_file(os.path.join(args.workdir, task.LABELS_FILE))
  model = hf.from_pretrained(os.path.join(args.workdir, "hf"))
  model = heads.load_classifier(model, os.path.join(args.workdir, "hf", f"{heads.CLASSIFIER}.npz"))
  tok = tokenizer_lib.load_tokenizer(train_lib.resolve_data_path(run["tokenizer"]))
  texts, gold = _read_texts(args.input)
  rows = task.encode(texts, tok, model.config, run["seq_len"])
  probs = task.predict_probs(model, rows, args.batch_size)
  out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
  try:
    for text, p in zip(texts, probs):
      out.write(json.dumps({"text": text, "label": names[int(p.argmax())],
                            "probs": {n: round(float(q), 5) for n, q in zip(names, p)}},
                           ensure_ascii=False) + "\n")
  finally:
    if args.output:
      out.close()
  if gold is not None:
    unknown = sorted(set(gold) - set(names))
    if unknown:
      raise SystemExit(f"{args.input}: labels {unknown} are not among the model's {list(names)}")
    m = metrics.report(probs, np.array([names.index(g) for g in gold]), names)
    print(f"accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}, ECE {m['ece']:.4f} "
          f"({m['examples']} examples)", file=sys.stderr)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m moe_jax.classify", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("predict", help="label a file of texts with a trained classifier")
  p.add_argument("--workdir", required=True, help="a finished classify run's workdir")
  p.add_argument("--input", required=True, help="texts, one a line, or classification JSONL")
  p.add_argument("--output", default="", help="JSONL predictions (default: standard output)")
  p.add_argument("--batch_size", type=int, default=32)
  args = parser.parse_args(argv)
  predict(args)


if __name__ == "__main__":
  main()
