"""Label words are anchors, reproduced on SmolLM2-135M-Instruct and on a DeepSeekMoE trained here.

    python -m moe_jax.studies.icl_anchors --out docs/icl_anchors      # ~60 min, 2 cores
    python -m moe_jax.studies.icl_anchors --out DIR --quick           # a few minutes; a test

Per ICL task (`moe_jax.icl.tasks.TASKS`: tweets as the SST-2 stand-in, a
3-class tweet task, reviews, Reuters where installed) and seed (42..44; the
paper's five, 42..46, do not fit the hour on 2 cores), with one demonstration
per class fixed per seed:

  vanilla      ICL accuracy (and zero-shot, and 5 demonstrations per class),
               AUCROC_l and R_l of A(q, p_i) (paper Sec. 2.3)
  isolation    label words vs random tokens isolated in the first / last k layers:
               label and word loyalty (Sec. 2.2)
  compression  Text_anchor, Hidden_random, Hidden_random-top, Hidden_anchor:
               loyalty and accuracy; the measured speed-up (Sec. 3.2)
  reweight     anchor re-weighting trained on 4 extra examples per class (Sec. 3.1)
  flows        S_wp, S_pq, S_ww per layer on a few examples (Sec. 2.1)
  diagnose     predicted vs real confusion (the 3-class task; Sec. 3.3)

and, beyond the paper, the flows, isolation and routed experts of anchors in a
small DeepSeekMoE trained here on synthetic ICL episodes (`moe_jax.icl.episodes`).
Every (task, seed, experiment) result is cached as JSON under --out/runs
(git-ignored), so an interrupted study resumes; RESULTS.md and the plots are
written by `moe_jax.studies.icl_anchors_report`.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import numpy as np

import moe_jax
from moe_jax import train_lib
from moe_jax.icl import episodes, experiments as ex, flows, reweight, runner, tasks
from moe_jax.studies import common
from moe_jax.studies.icl_anchors_report import report
from moe_jax.tokenizer import ByteTokenizer, load_tokenizer


@dataclasses.dataclass(frozen=True)
class Plan:
  tasks: tuple[str, ...]
  seeds: tuple[int, ...]
  n_test: int  # test queries per seed (the paper's 1000)
  flow_examples: int  # per seed, each with its own demonstrations
  isolate_k: int  # layers isolated (the paper's 5 of GPT2-XL's 48)
  top_draws: int  # Hidden_random-top's draws (the paper's 20)
  speed_queries: int
  diagnose_task: str
  moe_steps: int | None  # None: episodes.default_config()'s (sized for an accelerator)
  moe_test: int
  sample: bool


def plan(quick: bool) -> Plan:
  if quick:
    return Plan(("sst2-tweets",), (42,), 6, 1, 5, 2, 4, "sst2-tweets", 2, 8, True)
  return Plan(("sst2-tweets", "tweets3", "reviews", "reuters"), (42, 43, 44), 32, 2, 5, 3,
              16, "tweets3", 200, 64, False)


def _arrays(d: dict) -> dict:
  return {k: np.asarray(v) if isinstance(v, list) else v for k, v in d.items()}


def _seed_runs(p: Plan, model, tok, name: str, seed: int, where: str) -> dict:
  """Every experiment of one (task, seed), each cached in `where`."""
  task = tasks.TASKS[name]
  train, test = tasks.load_split(task, "train", p.sample), tasks.load_split(task, "test", p.sample)
  ep = tasks.make_episode(tok, task.template, train, test, seed, p.n_test)
  at = lambda exp: os.path.join(where, f"{exp}.json")
  diag_layer = (2 * model.config.num_hidden_layers) // 3 if name == p.diagnose_task else None

  def vanilla():
    v = ex.vanilla(model, ep, diag_layer)
    out = {"accuracy": ex.accuracy(v, ep), "pred": v["pred"], "top": v["top"], "aucroc": v["aucroc"],
           "r": v["r"], "l_demo": len(ep.prompt.ids), "l_x": float(np.mean([len(q) for q in ep.queries]))}
    if diag_layer is not None:
      conf = ex.confusion(v, ep.labels)
      out["confusion"] = {"layer": diag_layer, "predicted": conf["predicted"], "real": conf["real"],
                          "agreement": conf["agreement"]}
    zero = ex.readout(runner.run_queries(model, runner.empty_context(model), ep.queries).logits,
                       ep.label_ids)
    out["zero_shot_accuracy"] = ex.accuracy(zero, ep)
    ep5 = tasks.make_episode(tok, task.template, train, test, seed, p.n_test, shots=5, train_per_class=0)
    out["shots5_accuracy"] = ex.accuracy(ex.vanilla(model, ep5), ep5)
    return out

  base = _arrays(common.cached(at("vanilla"), vanilla))

  runs = {"vanilla": base}
  runs["isolation"] = common.cached(at("isolation"),
                              lambda: ex.isolation_grid(model, ep, p.isolate_k, base, seed))
  runs["compression"] = common.cached(at("compression"), lambda: {
      **{m: ex.scored(base, ex.compressed(model, ep, m, seed, p.top_draws, base), ep)
         for m in ("text_anchor", "hidden_random", "hidden_random_top", "hidden_anchor")},
      "speed": ex.speedup(model, dataclasses.replace(ep, queries=ep.queries[:p.speed_queries]), 1)})
  runs["reweight"] = common.cached(at("reweight"), lambda: _reweight(model, ep, seed))
  runs["flows"] = common.cached(at("flows"), lambda: flows.normalised(ex.flow_curves(
      model, tok, task.template, train, test, seed, p.flow_examples)))
  return runs


def _reweight(model, ep, seed) -> dict:
  out = ex.reweighted(model, ep, reweight.ReweightConfig(seed=seed))
  return {"accuracy": ex.accuracy(out, ep), "history": out["history"], "beta_abs_mean": out["beta_abs_mean"]}


def _moe_runs(p: Plan, out: str) -> dict:
  """The DeepSeekMoE trained on synthetic episodes: accuracy, flows, isolation, experts."""
  cfg = episodes.default_config()
  if p.moe_steps is not None:  # what this CPU affords; the default config is sized for a GPU
    cfg.num_train_steps = p.moe_steps
    cfg.episodes.train_rows = p.moe_steps * cfg.data.batch_size
    cfg.checkpoint_every = cfg.eval_every = p.moe_steps
  if p.sample:  # --quick: the pipeline, not the model: a 2-layer one (one MoE layer), one small
    # test episode for the trainer's accuracy and one held-out batch (each program, not each
    # step, is what costs on CPU: a layer fewer compiles faster)
    cfg.model.num_hidden_layers = 2
    cfg.episodes.test_seeds, cfg.episodes.n_test = (100,), p.moe_test
    cfg.episodes.eval_rows = cfg.data.batch_size
  model, summary = episodes.train(cfg, os.path.join(out, "runs", "moe", "train"))
  tok = ByteTokenizer()
  results = {"config": {k: getattr(model.config, k) for k in (
      "hidden_size", "num_hidden_layers", "num_attention_heads", "n_routed_experts",
      "n_shared_experts", "num_experts_per_tok", "first_k_dense_replace")},
      "train_steps": cfg.num_train_steps, "icl_accuracy": summary["icl_accuracy"],
      "train_seconds": summary.get("train_seconds"), "seeds": {}}
  k = max(1, model.config.num_hidden_layers // 4)
  for seed in p.seeds:
    where = os.path.join(out, "runs", "moe", f"seed{seed}.json")
    results["seeds"][seed] = common.cached(where, lambda: _moe_seed(p, model, tok, seed, k))
  return results


def _moe_seed(p: Plan, model, tok, seed: int, k: int) -> dict:
  template = episodes.template(seed)
  train, test = episodes.synthetic_split(200, seed), episodes.synthetic_split(p.moe_test, seed + 1000)
  ep = tasks.make_episode(tok, template, train, test, seed, p.moe_test)
  base = ex.vanilla(model, ep)
  iso = ex.isolation_grid(model, ep, k, base, seed)
  fl = flows.normalised(ex.flow_curves(model, tok, template, train, test, seed, p.flow_examples))
  sel = episodes.expert_selection(model, ep)
  return {"accuracy": ex.accuracy(base, ep), "aucroc": base["aucroc"], "isolation": iso, "isolate_k": k,
          "flows": fl, "experts": sel}


def run_study(out: str, quick: bool, model=None, tokenizer=None) -> dict:
  """Every experiment (cached under out/runs), then results.json, RESULTS.md and the plots.

  model, tokenizer: the LM to study instead of SmolLM2-135M-Instruct (the tests pass a
  tiny random one with SmolLM2's tokenizer).
  """
  p = plan(quick)
  common.check_plan(p, out)
  path = "a given model"
  if model is None:
    path = train_lib.resolve_data_path(tasks.DEFAULT_MODEL)
    model, tokenizer = moe_jax.from_pretrained(path), load_tokenizer(path)
  tok = tokenizer
  available = [n for n in p.tasks if p.sample or _available(n)]
  results = {"plan": dataclasses.asdict(p), "quick": quick, "jax": jax.__version__,
             "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
             "model": os.path.basename(path), "layers": model.config.num_hidden_layers,
             "heads": model.config.num_attention_heads, "tasks": {}}
  start = time.time()
  for name in available:
    results["tasks"][name] = {}
    for seed in p.seeds:
      print(f"[study] {name} / seed {seed} ({time.time() - start:.0f} s)", flush=True)
      where = os.path.join(out, "runs", name, f"seed{seed}")
      results["tasks"][name][seed] = _seed_runs(p, model, tok, name, seed, where)
  print(f"[study] the MoE model on synthetic episodes ({time.time() - start:.0f} s)", flush=True)
  results["moe"] = _moe_runs(p, out)
  results["seconds"] = time.time() - start
  common.write_report(out, results, report)
  print(f"[study] wrote {os.path.join(out, 'RESULTS.md')} ({time.time() - start:.0f} s)")
  return results


def _available(name: str) -> bool:
  try:
    tasks.load_split(tasks.TASKS[name], "test")
    return True
  except (OSError, ValueError) as e:
    print(f"[study] skipping {name}: {e}")
    return False


def main(argv=None) -> int:
  return common.main("python -m moe_jax.studies.icl_anchors", __doc__, run_study, report, argv)


if __name__ == "__main__":
  raise SystemExit(main())
