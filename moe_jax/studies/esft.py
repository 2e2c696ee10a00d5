"""Reproduce the DeepSeekMoE and ESFT findings at small scale, offline, with honest numbers.

    python -m moe_jax.studies.esft --out DIR            # the full study (~1 h on 2 CPU cores)
    python -m moe_jax.studies.esft --out DIR --quick    # minutes; the test suite runs this

The hypotheses, from the two papers:
  H1 fine-grained experts + shared experts beat coarse (GShard-style) experts at
     equal total and active parameters, and both beat a dense model of the same
     active size (DeepSeekMoE Table 1);
  H2 a task's routing concentrates on few experts, and different tasks use
     different experts (ESFT Sec. 3.2);
  H3 training only the task-relevant experts (ESFT) approaches full fine-tuning
     on the task and forgets less elsewhere; random experts or shared experts
     alone do worse (ESFT Tables 1-4);
  H4 finer experts make the selection work better: ESFT falls further behind
     FFT on a coarse model (ESFT Fig. 7).

Every number comes from runs made here; RESULTS.md in --out records them with
seeds and 95% confidence intervals, and says which hypotheses held (written by
`moe_jax.studies.esft_report`).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import time

import jax
import numpy as np

from moe_jax import config as model_config
from moe_jax import esft, input_pipeline, sharding, train_config, train_lib, trainable
from moe_jax.generate import generate
from moe_jax.hf import save_pretrained
from moe_jax.model import Model, init_variables
from moe_jax.steps import lm_loss, make_optimizer
from moe_jax.studies.esft_report import COARSE_METHODS, DOMAINS, METHODS, report
from moe_jax.tokenizer import ByteTokenizer

TOKENIZER = ByteTokenizer()


# Data ------------------------------------------------------------------------------

def _chat(user: str, answer: str) -> list[dict]:
  return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def arithmetic_example(rng: np.random.Generator) -> list[dict]:
  """A generated multi-step arithmetic problem with its worked solution (the fourth domain)."""
  n_ops = int(rng.integers(2, 5))
  value = int(rng.integers(2, 50))
  expr, steps = str(value), []
  for _ in range(n_ops):
    op, b = "+-*"[int(rng.integers(0, 3))], int(rng.integers(2, 20))
    new = {"+": value + b, "-": value - b, "*": value * b}[op]
    steps.append(f"{value} {op} {b} = {new}.")
    expr, value = f"({expr} {op} {b})", new
  return _chat(f"Compute {expr}.", " ".join(steps) + f" The answer is {value}.")


def _intent_eval_examples(path: str) -> list[list[dict]]:
  """The ESFT intent eval set in zero-shot form: each prompt's final query and its gold answer."""
  out = []
  marker = "请分析下面这句话的意图"
  with open(path, encoding="utf-8") as f:
    for line in f:
      r = json.loads(line)
      query = r["prompt"][r["prompt"].rindex(marker):]
      query = query.split("\n\nAssistant:")[0].rstrip()
      out.append(_chat(query, r["answers"][0] + "。"))
  return out


def _gsm8k(path: str) -> list[list[dict]]:
  with open(path, encoding="utf-8") as f:
    return [_chat(r["question"], r["answer"]) for r in map(json.loads, f)]


def build_domains(data_dir: str | None, quick: bool, seed: int = 0) -> dict:
  """{domain: {"pretrain": [...], "adapt": [...], "eval": [...]}} of chat examples.

  intent: a fifth of the training examples join the pretraining mixture, the rest
  are the adaptation task's data, and the ESFT eval set (zero-shot) is held out.
  Other domains: 90% pretraining, 10% held out for the retention losses.
  """
  rng = np.random.default_rng(seed)
  assets = train_lib.resolve_data_path("assets:")
  full = data_dir is not None and not quick
  if full:
    gsm = _gsm8k(os.path.join(data_dir, "gsm8k", "train.jsonl"))
    intent = input_pipeline.read_chat_jsonl(os.path.join(data_dir, "esft", "train", "intent.jsonl"))
    law = input_pipeline.read_chat_jsonl(os.path.join(data_dir, "esft", "train", "law.jsonl"))
    intent_eval = _intent_eval_examples(os.path.join(data_dir, "esft", "eval", "intent.jsonl"))
    n_arith = 6000
  else:
    gsm = _gsm8k(os.path.join(assets, "gsm8k_train_sample.jsonl"))
    intent = input_pipeline.read_chat_jsonl(os.path.join(assets, "intent_train_sample.jsonl"))
    law = input_pipeline.read_chat_jsonl(os.path.join(assets, "law_train_sample.jsonl"))
    intent_eval = None
    n_arith = 300
  arith = [arithmetic_example(rng) for _ in range(n_arith)]
  out = {}
  for name, examples in (("gsm8k", gsm), ("law", law), ("arith", arith)):
    train, held = input_pipeline.split_examples(examples, 0.1, seed)
    out[name] = {"pretrain": train, "adapt": [], "eval": held}
  order = rng.permutation(len(intent))
  if intent_eval is None:  # quick: hold out a slice of the sample instead
    n_eval = max(8, len(intent) // 10)
    intent_eval = [intent[i] for i in order[:n_eval]]
    order = order[n_eval:]
  n_pre = len(order) // 5
  out["intent"] = {"pretrain": [intent[i] for i in order[:n_pre]],
                   "adapt": [intent[i] for i in order[n_pre:]], "eval": intent_eval}
  return out


def _write(examples, path):
  with open(path, "w", encoding="utf-8") as f:
    for m in examples:
      f.write(json.dumps({"messages": m}, ensure_ascii=False) + "\n")
  return path


# Models ------------------------------------------------------------------------------

def model_configs(quick: bool) -> dict[str, model_config.ModelConfig]:
  """Equal active and total FFN width: 1 shared + 15 routed x 64 (top-3) = 8 x 128 (top-2)."""
  d, layers = (64, 1) if quick else (128, 4)
  base = dict(model_type="deepseek", vocab_size=264, hidden_size=d, num_hidden_layers=layers,
              num_attention_heads=4, kv_lora_rank=None, first_k_dense_replace=0,
              max_position_embeddings=1024, bos_token_id=1, eos_token_id=2,
              initializer_range=0.02, aux_loss_alpha=0.01, seq_aux=False, capacity_factor=2.0)
  f = d // 2  # fine-grained expert width; the coarse expert is twice that
  return {
      "fine": model_config.ModelConfig(**base, n_routed_experts=15, n_shared_experts=1,
                                       num_experts_per_tok=3, moe_intermediate_size=f,
                                       intermediate_size=4 * f),
      "coarse": model_config.ModelConfig(**base, n_routed_experts=8, n_shared_experts=None,
                                         num_experts_per_tok=2, moe_intermediate_size=2 * f,
                                         intermediate_size=4 * f),
      "dense": model_config.ModelConfig(**{**base, "first_k_dense_replace": layers},
                                        n_routed_experts=None, n_shared_experts=None,
                                        intermediate_size=4 * f),
  }


@dataclasses.dataclass
class Plan:
  """Sizes of one study: sequence length, batch, step counts, seeds and evaluation sizes."""
  seq_len: int
  batch: int
  pretrain_steps: int
  adapt_steps: int
  seeds: tuple[int, ...]
  score_tokens: int
  em_examples: int
  em_new_tokens: int


def plan(quick: bool, seeds: int) -> Plan:
  """The full plan, or the --quick one that fits a test."""
  if quick:
    return Plan(128, 4, 10, 2, (0,), 2048, 8, 24)
  return Plan(256, 8, 600, 100, tuple(range(seeds)), 32768, 300, 96)


def _run_config(p: Plan, steps: int, lr: float, files: list[str], seed: int, mode="fft"):
  c = train_config.base_config()
  c.unlock()
  c.seed = seed
  c.train_mode = mode
  c.data.train_files = tuple(files)
  c.data.seq_len, c.data.batch_size = p.seq_len, p.batch
  c.data.eval_fraction = 0.05
  c.optimizer.learning_rate = lr
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_steps = max(1, steps // 20)
  c.num_train_steps = steps
  c.log_every = max(1, steps // 10)
  c.eval_every = 0
  c.checkpoint_every = 10 * steps  # one at the end: these runs are short
  c.keep_checkpoints = 1
  return c


# Measurements ------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames="config")
def _loss_sums(config, params, buffers, batch):
  """(summed loss, target tokens) of one batch. Jitted once here, not per call: every model of
  a config (a base and each of its adaptations) shares one compiled program."""
  return lm_loss(params, buffers, config, batch)[1][:2]


def domain_losses(model: Model, rows_by_domain: dict, batch: int) -> dict[str, float]:
  """Mean loss per target token of each domain's held-out packed rows."""
  out = {}
  for name, rows in rows_by_domain.items():
    loss, n = 0.0, 0.0
    for i in range(0, len(rows["tokens"]) - batch + 1, batch):
      s, k = _loss_sums(model.config, model.params, model.variables.get("buffers", {}),
                        {key: v[i:i + batch] for key, v in rows.items()})
      loss, n = loss + float(s), n + float(k)
    out[name] = loss / max(n, 1.0)
  return out


def _normalise_json_answer(text: str):
  """(intent, slots) of an answer like '{"intent": ..., "slots": {...}}。', or None."""
  text = text.split("\n")[0].strip().rstrip("。").strip()
  try:
    obj = json.loads(text)
    slots = {str(k).replace(" ", ""): str(v).replace(" ", "") for k, v in obj.get("slots", {}).items()}
    return str(obj.get("intent", "")).replace(" ", ""), tuple(sorted(slots.items()))
  except (json.JSONDecodeError, AttributeError):
    return None


def intent_exact_match(model: Model, examples: list, max_new_tokens: int, batch: int = 100) -> float:
  """Share of eval queries whose greedy answer has the gold intent and slot set (ESFT's metric)."""
  hits = 0
  for i in range(0, len(examples), batch):
    chunk = examples[i:i + batch]
    prompts = [[TOKENIZER.bos_id] + TOKENIZER.encode(f"User: {m[0]['content']}\n\nAssistant:")
               for m in chunk]
    width = max(map(len, prompts))
    ids = np.zeros((len(prompts), width), np.int32)
    mask = np.zeros_like(ids)
    for j, p in enumerate(prompts):  # left padding
      ids[j, width - len(p):], mask[j, width - len(p):] = p, 1
    out = np.asarray(generate(model, ids, max_new_tokens, prompt_mask=mask,
                              eos_token_id=TOKENIZER.eos_id))
    for j, m in enumerate(chunk):
      gold = _normalise_json_answer(m[1]["content"])
      pred = _normalise_json_answer(TOKENIZER.decode(out[j, width:]))
      hits += int(gold is not None and pred == gold)
  return hits / len(examples)


def _dir_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


# Routing analysis ----------------------------------------------------------------------

def routing_analysis(model: Model, rows_by_domain: dict, p: Plan, out_dir: str) -> dict:
  """Concentration and task specificity of the fine-grained model's routing (H2).

  As in ESFT's Fig. 3, each domain's held-out rows are split in two halves; the
  experts selected (p=0.2) on one half are compared with those of the other half
  (same task) and with other tasks' (cross task), against chance.
  """
  c = model.config

  def select(rows, name=None):
    n = len(rows["tokens"])
    batches = ({k: v[i:i + p.batch] for k, v in rows.items()} for i in range(0, n, p.batch))
    scores = esft.score_experts(model, batches, p.score_tokens).token
    chosen = esft.select_experts(scores, 0.2)["experts"]
    if name:
      esft.heatmap(scores, os.path.join(out_dir, f"heatmap_{name}.png"),
                   f"{name}: token selection share (p=0.2 selection boxed)", chosen)
    return scores, chosen

  table, halves = {}, {}
  k = c.num_experts_per_tok
  for name, rows in rows_by_domain.items():
    scores, chosen = select(rows, name)
    top = [np.sort(v)[::-1] for v in scores.values()]
    table[name] = {
        f"top{k}_share": float(np.mean([t[:k].sum() for t in top])),
        "experts_for_p0.2": float(np.mean([len(v) for v in chosen.values()])),
        "experts_for_p0.5": float(np.mean([int(np.searchsorted(np.cumsum(t), 0.5) + 1) for t in top])),
        "uniform_top_share": k / c.n_routed_experts,
    }
    halves[name] = [select({key: v[h::2] for key, v in rows.items()})[1] for h in (0, 1)]
  same = {d: esft.overlap(h[0], h[1], c.n_routed_experts) for d, h in halves.items()}
  names = list(halves)
  cross = {f"{a}|{b}": esft.overlap(halves[a][0], halves[b][0], c.n_routed_experts)
           for i, a in enumerate(names) for b in names[i + 1:]}
  brief = lambda o: {"shared": o["shared"], "chance": round(o["chance"], 3)}
  return {"concentration": table, "same_task": {d: brief(o) for d, o in same.items()},
          "cross_task": {k: brief(o) for k, o in cross.items()}}


# The study -------------------------------------------------------------------------------

LR = {"fft": 1e-3, "esft_token": 1e-3, "esft_gate": 1e-3, "random": 1e-3, "shared_only": 1e-3,
      "lora": 3e-3}


def _spec(method: str, model: Model, scores: esft.ExpertScores, seed: int) -> trainable.TrainableSpec:
  c = model.config
  if method == "fft":
    return trainable.TrainableSpec()
  if method == "lora":
    return trainable.TrainableSpec("lora", lora_rank=8, lora_scale=2.0, seed=seed)
  if method == "shared_only":
    return trainable.TrainableSpec("esft", (), shared_experts=True)
  token = esft.select_experts(scores.token, 0.2)["experts"]
  if method == "esft_token":
    chosen = token
  elif method == "esft_gate":
    chosen = esft.select_experts(scores.gate, 0.1)["experts"]
  else:  # random experts, as many per layer as ESFT-Token picked
    rng = np.random.default_rng(1000 + seed)
    chosen = {l: sorted(rng.choice(c.n_routed_experts, len(ids), replace=False).tolist())
              for l, ids in token.items()}
  return trainable.TrainableSpec.from_expert_config({"experts": chosen}, c)


def adapt(name: str, method: str, base: Model, scores, p: Plan, files: dict, eval_rows: dict,
          intent_eval: list, seed: int, out_dir: str, before: dict, mesh) -> dict:
  """Fine-tunes `base` on the intent task with one method; measures everything the tables need."""
  run_dir = os.path.join(out_dir, "runs", f"{name}_{method}_s{seed}")
  spec = _spec(method, base, scores, seed)
  cfg = _run_config(p, p.adapt_steps, LR[method], [files["intent_adapt"]], seed)
  data = train_lib.load_data(cfg.data, TOKENIZER, seed, os.path.join(out_dir, "data_cache"))
  t0 = time.time()
  model, summary = train_lib.train(cfg, run_dir, Model(base.config, base.variables), spec, data,
                                   mesh, name=f"{name}/{method}/s{seed}")
  wall = time.time() - t0
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    rates = [r["tokens_per_s"] for r in map(json.loads, f) if "tokens_per_s" in r]
  losses = domain_losses(model, eval_rows, p.batch)
  tx = make_optimizer(cfg.optimizer, cfg.num_train_steps, spec)
  split = trainable.split(base.params, spec, base.config)
  opt_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(jax.eval_shape(tx.init, split)))
  counts = trainable.count(split, trainable.labels(split, spec))
  adapter_dir = os.path.join(run_dir, "export")
  if spec.mode == "esft":
    esft.save_adapter(model, spec, adapter_dir)
  elif spec.mode == "lora":
    from safetensors.numpy import save_file
    os.makedirs(adapter_dir, exist_ok=True)
    trained = jax.device_get(split["lora"])  # shapes only matter for the size
    save_file({f"{k}.{ab}": np.asarray(v[ab]) for k, v in trained.items() for ab in ("a", "b")},
              os.path.join(adapter_dir, "lora.safetensors"))
  else:
    save_pretrained(model, adapter_dir)
  others = [d for d in DOMAINS if d != "intent"]
  return {
      "model": name, "method": method, "seed": seed,
      "intent_em": intent_exact_match(model, intent_eval, p.em_new_tokens),
      "intent_loss": losses["intent"],
      "retention_delta": float(np.mean([losses[d] - before[d] for d in others])),
      "losses": losses,
      "trainable_params": counts["train"], "total_params": counts["train"] + counts["frozen"],
      "tokens_per_s": float(np.median(rates)) if rates else float("nan"),
      "wall_s": wall, "optimizer_bytes": int(opt_bytes), "export_bytes": _dir_bytes(adapter_dir),
      "experts_trained": sum(len(ids) for _, ids in spec.experts) if spec.mode == "esft" else None,
  }


def run_study(out: str, data_dir: str | None, quick: bool, seeds: int = 3) -> dict:
  """Runs (or resumes from `out`) every stage of the study; writes and returns the results."""
  os.makedirs(out, exist_ok=True)
  p = plan(quick, seeds)
  mesh = sharding.make_mesh({"data": -1})
  domains = build_domains(data_dir, quick)
  data_out = os.path.join(out, "data")
  os.makedirs(data_out, exist_ok=True)
  files = {"pretrain": [_write(v["pretrain"], os.path.join(data_out, f"{d}_pretrain.jsonl"))
                        for d, v in domains.items()],
           "intent_adapt": _write(domains["intent"]["adapt"], os.path.join(data_out, "intent_adapt.jsonl"))}
  eval_rows = {d: input_pipeline.pack((input_pipeline.encode_chat(m, TOKENIZER) for m in v["eval"]),
                                      p.seq_len, TOKENIZER.pad_id) for d, v in domains.items()}
  intent_eval = domains["intent"]["eval"][:p.em_examples]
  results: dict = {"plan": dataclasses.asdict(p), "quick": quick, "full_data": data_dir is not None and not quick,
                   "jax": jax.__version__, "devices": str(jax.devices()[0].device_kind),
                   "pretrain": {}, "adapt": []}

  # H1: equal-compute pretraining.
  bases = {}
  for name, mcfg in model_configs(quick).items():
    cfg = _run_config(p, p.pretrain_steps, 3e-3, files["pretrain"], 0)
    data = train_lib.load_data(cfg.data, TOKENIZER, 0, os.path.join(out, "data_cache"))
    model = Model(mcfg, init_variables(mcfg, 0))
    t0 = time.time()
    model, _ = train_lib.train(cfg, os.path.join(out, "runs", f"pretrain_{name}"), model,
                               trainable.TrainableSpec(), data, mesh, name=f"pretrain/{name}")
    bases[name] = model
    split = model.params
    n_total = sum(x.size for x in jax.tree_util.tree_leaves(split))
    results["pretrain"][name] = {"losses": domain_losses(model, eval_rows, p.batch),
                                 "params": int(n_total), "active_ffn_width": _active_width(mcfg),
                                 "wall_s": time.time() - t0}

  # H2: routing of the fine-grained model.
  results["routing"] = routing_analysis(bases["fine"], eval_rows, p, out)

  # H3/H4: adaptation to the intent task.
  for name, methods in (("fine", METHODS), ("coarse", COARSE_METHODS)):
    base = bases[name]
    intent_rows = input_pipeline.load_packed([files["intent_adapt"]], TOKENIZER, p.seq_len)
    n = len(intent_rows["tokens"])
    scores = esft.score_experts(base, ({k: v[i:i + p.batch] for k, v in intent_rows.items()}
                                       for i in range(0, n, p.batch)), p.score_tokens)
    before = results["pretrain"][name]["losses"]
    results.setdefault("base_intent_em", {})[name] = intent_exact_match(base, intent_eval, p.em_new_tokens)
    for method in methods:
      for seed in p.seeds:
        results["adapt"].append(adapt(name, method, base, scores, p, files, eval_rows, intent_eval,
                                      seed, out, before, mesh))
        with open(os.path.join(out, "results.json"), "w") as f:
          json.dump(results, f, indent=2)
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  with open(os.path.join(out, "RESULTS.md"), "w", encoding="utf-8") as f:
    f.write(report(results))
  return results


def _active_width(c: model_config.ModelConfig) -> int:
  if not c.n_routed_experts:
    return c.intermediate_size
  return c.moe_intermediate_size * (c.num_experts_per_tok + (c.n_shared_experts or 0))


def main(argv=None) -> int:
  """The command line: `python -m moe_jax.studies.esft --out DIR [--quick]`."""
  parser = argparse.ArgumentParser(prog="python -m moe_jax.studies.esft", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", required=True)
  parser.add_argument("--quick", action="store_true", help="tiny settings on the shipped samples")
  parser.add_argument("--data", default=os.environ.get("MOE_JAX_DATA"),
                      help="the shared data folder (gsm8k/, esft/); default $MOE_JAX_DATA or "
                           "../shared/data beside the checkout")
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--report-only", action="store_true",
                      help="rewrite RESULTS.md from an existing (possibly partial) results.json")
  args = parser.parse_args(argv)
  if args.report_only:
    with open(os.path.join(args.out, "results.json")) as f:
      text = report(json.load(f))
    with open(os.path.join(args.out, "RESULTS.md"), "w", encoding="utf-8") as f:
      f.write(text)
    print(f"wrote {os.path.join(args.out, 'RESULTS.md')}")
    return 0
  data = args.data
  if data is None:
    guess = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data")  # beside the checkout
    data = os.path.abspath(guess) if os.path.isdir(guess) else None
  if not args.quick and data is None:
    parser.error("the full study needs the shared datasets: pass --data or set MOE_JAX_DATA")
  run_study(args.out, data, args.quick, args.seeds)
  print(f"wrote {os.path.join(args.out, 'RESULTS.md')}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
