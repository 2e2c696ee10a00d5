"""One seed's analyses of an episode: what the CLI prints and the study aggregates.

Each function takes a model and an `Episode` and returns plain numbers and
numpy arrays per test query (predictions, top tokens, attention on the anchors),
so the comparisons (accuracy, loyalty, AUC) are computed by whoever holds
several of them, and the results can be cached as JSON.
"""

from __future__ import annotations

import time

import numpy as np

from moe_jax.icl import compress, deep, diagnose, flows, isolation, prompts, reweight, runner
from moe_jax.icl.tasks import Episode, Split
from moe_jax.model import Model

TOP = 10  # top tokens kept per query, for word loyalty at any k <= TOP


def readout(logits: np.ndarray, label_ids) -> dict:
  """Predictions, label-word probabilities [n, C] and the top tokens [n, TOP] from logits [n, V]."""
  restricted = logits[:, np.asarray(label_ids)].astype(np.float64)
  probs = np.exp(restricted - restricted.max(1, keepdims=True))
  probs /= probs.sum(1, keepdims=True)
  return {"pred": restricted.argmax(1), "probs": probs, "top": np.argsort(-logits, 1)[:, :TOP]}


def vanilla(model: Model, ep: Episode, key_layer: int | None = None) -> dict:
  """Plain ICL: predictions, AUCROC_l and R_l of A(q, p_i); with `key_layer`, also that
  layer's anchor keys [C, N*H] (a class's demonstrations averaged) and target queries
  [n, N*H] (for `confusion`)."""
  p = ep.prompt
  c = len(ep.label_ids)
  ctx = runner.prefill(model, p.ids, capture=key_layer is not None)

  def probe(pr, qi):
    out = {"anchor": deep.anchor_attention(pr["attention"], qi, p.label_pos, p.demo_labels, c)}
    if key_layer is not None:
      q = pr["queries"][key_layer][np.arange(len(qi)), qi]  # [n, N, H]
      out["q"] = q.reshape(len(qi), -1)
    return out

  r = runner.run_queries(model, ctx, ep.queries, probe=probe)
  out = readout(r.logits, ep.label_ids)
  anchor = np.concatenate([x["anchor"] for x in r.probed])  # [n, L, C]
  out["aucroc"] = deep.auroc_per_layer(anchor, out["pred"])
  out["r"] = deep.cumulative_r(out["aucroc"])
  if key_layer is not None:
    out["queries"] = np.concatenate([x["q"] for x in r.probed])
    keys = ctx.probes["keys"][key_layer][0, p.label_pos].reshape(len(p.label_pos), -1)
    out["keys"] = np.stack([keys[p.demo_labels == k].mean(0) for k in range(c)])  # [C, N*H]
  return out


def isolated(model: Model, ep: Episode, k: int, where: str, control: bool = False,
             seed: int = 0) -> dict:
  """Predictions with the label words (or, `control`, as many random context tokens)
  isolated in the first or last k layers."""
  p = ep.prompt
  positions = p.label_pos
  if control:
    positions = isolation.random_positions(np.arange(len(p.ids)), p.label_pos, len(p.label_pos),
                                           np.random.default_rng(seed))
  layers = isolation.layer_range(model.config.num_hidden_layers, k, where)
  hooks = isolation.isolation_bias(model.config.num_hidden_layers, len(p.ids), positions, layers)
  return _predict(model, runner.prefill(model, p.ids, hooks), ep)


def loyalty(base: dict, other: dict, k: int = 5) -> dict:
  """[n] label and word loyalty of `other`'s outputs to `base`'s."""
  if k > TOP:
    raise ValueError(f"word loyalty: k = {k} is more than the {TOP} top tokens kept")
  return {"label": isolation.label_loyalty(base["pred"], other["pred"]),
          "word": isolation.jaccard(np.asarray(base["top"])[:, :k], np.asarray(other["top"])[:, :k])}


def accuracy(out: dict, ep: Episode) -> float:
  """The share of the episode's test queries whose prediction is the gold label."""
  return float(np.mean(np.asarray(out["pred"]) == ep.labels))


def scored(base: dict, out: dict, ep: Episode, k: int = 5) -> dict:
  """Mean label and word loyalty of `out` to `base`, and `out`'s accuracy."""
  loy = loyalty(base, out, k)
  return {"label_loyalty": float(loy["label"].mean()), "word_loyalty": float(loy["word"].mean()),
          "accuracy": accuracy(out, ep)}


def isolation_grid(model: Model, ep: Episode, k: int, base: dict, seed: int = 0) -> dict:
  """`scored` for label words and random tokens isolated in the first and the last k layers:
  {"label_first", "label_last", "random_first", "random_last"}."""
  return {f"{kind}_{where}": scored(base, isolated(model, ep, k, where, kind == "random", seed), ep)
          for kind in ("label", "random") for where in ("first", "last")}


def _predict(model: Model, ctx: runner.ContextCache, ep: Episode) -> dict:
  return readout(runner.run_queries(model, ctx, ep.queries).logits, ep.label_ids)


def compressed(model: Model, ep: Episode, method: str, seed: int = 0, draws: int = 20,
               base: dict | None = None) -> dict:
  """Predictions with the context compressed by `method` (one of `compress.METHODS`)."""
  p = ep.prompt
  if method == "icl":
    return _predict(model, runner.prefill(model, p.ids), ep)
  if method == "text_anchor":
    return _predict(model, runner.prefill(model, compress.text_anchor_ids(p)[0]), ep)
  full = runner.prefill(model, p.ids)
  if method == "hidden_anchor":
    return _predict(model, full.keep(compress.anchor_slots(p)), ep)
  rng = np.random.default_rng(seed)
  if method == "hidden_random":
    return _predict(model, full.keep(compress.random_slots(p, rng)), ep)
  if method != "hidden_random_top":
    raise ValueError(f"unknown compression method {method!r}; choose one of {compress.METHODS}")
  if base is None:
    raise ValueError("hidden_random_top ranks its draws by label loyalty: pass the ICL outputs as base")
  best = None
  for _ in range(draws):
    out = _predict(model, full.keep(compress.random_slots(p, rng)), ep)
    score = loyalty(base, out)["label"].mean()
    if best is None or score > best[0]:
      best = (score, out)
  return best[1]


def speedup(model: Model, ep: Episode, repeats: int = 3) -> dict:
  """Wall time of the test queries as whole prompts (vanilla ICL) and against the
  Hidden_anchor cache, best of `repeats` after a compiling run; and the attended positions."""
  p = ep.prompt
  whole = [list(p.ids) + q for q in ep.queries]
  empty = runner.empty_context(model)
  anchored = runner.prefill(model, p.ids).keep(compress.anchor_slots(p))

  def timed(ctx, queries):
    runner.run_queries(model, ctx, queries)  # compile
    times = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      runner.run_queries(model, ctx, queries)
      times.append(time.perf_counter() - t0)
    return min(times)

  t_icl, t_anchor = timed(empty, whole), timed(anchored, ep.queries)
  l_x = float(np.mean([len(q) for q in ep.queries]))
  return {"icl_s": t_icl, "anchor_s": t_anchor, "speedup": t_icl / t_anchor,
          "l_demo": len(p.ids), "l_x": l_x, "kept": anchored.n,
          "attended_ratio": (len(p.ids) + l_x) / (anchored.n + l_x)}


def reweighted(model: Model, ep: Episode, cfg: reweight.ReweightConfig) -> dict:
  """Predictions after training beta on the episode's extra examples; and its loss history."""
  beta, history = reweight.train_beta(model, ep.prompt.ids, ep.prompt.label_pos, ep.train_queries,
                                      ep.train_labels, ep.label_ids, cfg)
  ctx = runner.prefill(model, ep.prompt.ids)
  out = readout(reweight.reweighted_queries(model, ctx, ep.queries, beta, ep.prompt.label_pos).logits,
                 ep.label_ids)
  return {**out, "history": np.asarray(history), "beta_abs_mean": float(np.abs(beta).mean())}


def flow_curves(model: Model, tokenizer, template, train: Split, test: Split, seed: int, n: int,
                per_head_abs: bool = False) -> np.ndarray:
  """[n, L, 3] (S_wp, S_pq, S_ww) per layer for n test examples, each with its own freshly
  sampled demonstrations (as the official attribution script does)."""
  label_ids = prompts.label_token_ids(tokenizer, template)
  rng = np.random.default_rng(seed)
  out = []
  for i in rng.permutation(len(test.texts))[:n]:
    demo = prompts.sample_demonstrations(train.labels, len(label_ids), 1, seed * 100_003 + int(i))
    p = prompts.build_prompt(tokenizer, template, [train.texts[j] for j in demo],
                             [train.labels[j] for j in demo], label_ids)
    ids = list(p.ids) + prompts.encode_query(tokenizer, template, test.texts[i])
    s = flows.saliency(model, ids, label_ids, test.labels[i], per_head_abs)
    out.append(flows.flows(s, p.label_pos, len(ids) - 1))
  return np.stack(out)


def confusion(base: dict, labels, m: int = 10) -> dict:
  """Predicted (anchor keys, m principal directions) and real (AUC) confusion from
  `vanilla(..., key_layer=...)`."""
  pred = diagnose.predicted_confusion(base["keys"], base["queries"], m)
  real = diagnose.real_confusion(base["probs"], labels)
  return {"predicted": pred, "real": real, "agreement": diagnose.agreement(pred, real)}
