"""moe_jax benchmarks: side-by-side ratios measured in one run.

    python benchmarks/run.py --suite cpu            # minutes on 2 cores
    python benchmarks/run.py --suite gpu            # one GPU run of a few minutes
    python benchmarks/run.py --suite gpu --smoke    # the GPU suite's code on tiny shapes, any machine
    python benchmarks/run.py --suite gpu --sections train,v2lite   # some sections only

Each suite prints a table row by row, then one JSON line with every figure,
also when SIGTERM or Ctrl-C stops it early or a section fails (exit status 1). Record results in
benchmarks/RESULTS.md. This script imports only jax, flax, optax, numpy and
moe_jax's model code: no grain, tensorflow-datasets or ml_collections, which the
GPU machine lacks (tests/benchmarks_test.py runs the smoke suite without them).

Every ratio is measured side by side in the same process: an expert layer
against an equal-FLOPs dense SwiGLU, ESFT against full fine-tuning of the same
model, 64 experts against 8 with the same active parameters.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import platform
import signal
import sys
import time
import traceback
import types

import jax
import jax.numpy as jnp
import numpy as np

from moe_jax import config as C
from moe_jax import host, moe, trainable
from moe_jax.generate import generate
from moe_jax.model import Model, init_variables
from moe_jax.steps import TrainState, make_optimizer, make_train_step

# The optimizer fields of a training config (moe_jax.train_config), without ml_collections.
ADAMW = types.SimpleNamespace(learning_rate=1e-4, schedule="constant", warmup_steps=0,
                              final_lr_fraction=0.1, b1=0.9, b2=0.95, weight_decay=0.1,
                              grad_clip=1.0)
H200_BF16_PEAK = 989e12  # dense bf16 FLOP/s of an H200 SXM (NVIDIA's datasheet, no sparsity)


def _time(fn, *args, repeats=5):
  """Best wall time of fn(*args) over `repeats` calls, after one call that compiles."""
  return _time_in_turn([lambda: fn(*args)], repeats)[0]


def _time_in_turn(fns, repeats=5) -> list[float]:
  """Each no-argument fn's best wall time over `repeats` rounds, after one call that compiles.

  The fns take turns within a round, so that a slow spell of a shared machine
  slows them all rather than the one that happened to run then.
  """
  for fn in fns:
    jax.block_until_ready(fn())
  best = [float("inf")] * len(fns)
  for _ in range(repeats):
    for i, fn in enumerate(fns):
      t0 = time.perf_counter()
      jax.block_until_ready(fn())
      best[i] = min(best[i], time.perf_counter() - t0)
  return best


# The routed-expert layer ----------------------------------------------------------------

def _routing(tokens: int, n_experts: int, k: int, seed=0):
  """Uniformly random distinct top-k experts and gate weights for `tokens` tokens."""
  rng = np.random.default_rng(seed)
  idx = np.argsort(rng.random((tokens, n_experts), np.float32), -1)[:, :k].astype(np.int32)
  return jnp.asarray(idx), jnp.asarray(rng.uniform(0.1, 1.0, (tokens, k)), jnp.float32)


def _layer(backend: str, capacity: int, block: int | None):
  """(x, idx, w, wg, wu, wd) -> (y, dropped assignments) through one dispatch (moe's own table)."""
  return lambda x, idx, w, *ws: moe.expert_ffn(backend, x, idx, w, *ws, capacity_per_expert=capacity,
                                               block=block)


def expert_layer(backend: str, tokens: int, d: int, f: int, n_experts: int, k: int,
                 dtype=jnp.float32, capacity_factor: float = 1.25, block: int | None = None):
  """Seconds for fwd+bwd of one routed-expert layer, and dropped assignments (see `expert_layer_step`)."""
  step, dropped = expert_layer_step(backend, tokens, d, f, n_experts, k, dtype, capacity_factor, block)
  return _time(step, repeats=3), dropped


def expert_layer_step(backend: str, tokens: int, d: int, f: int, n_experts: int, k: int,
                      dtype=jnp.float32, capacity_factor: float = 1.25, block: int | None = None):
  """(a no-argument call running fwd+bwd (input and weight gradients) of one routed-expert
  layer, its dropped assignments).

  The routing is an argument of the jitted step, as in a model: a constant would
  let XLA fold the sort and the layout into the program at compile time.
  """
  idx, w = _routing(tokens, n_experts, k)
  keys = jax.random.split(jax.random.key(0), 4)
  x = jax.random.normal(keys[0], (tokens, d), dtype)
  ws = [jax.random.normal(kk, shape, dtype) * 0.02
        for kk, shape in zip(keys[1:], ((n_experts, d, f), (n_experts, d, f), (n_experts, f, d)))]
  layer = _layer(backend, math.ceil(capacity_factor * tokens * k / n_experts), block)

  @jax.jit
  def step(x, ws, idx, w):
    def loss(x, ws):
      y, dropped = layer(x, idx, w, *ws)
      return jnp.sum(y.astype(jnp.float32) ** 2), dropped
    return jax.grad(loss, argnums=(0, 1), has_aux=True)(x, ws)

  return (lambda: step(x, ws, idx, w)), int(step(x, ws, idx, w)[1])


def dense_swiglu(tokens: int, d: int, width: int, dtype=jnp.float32):
  """Seconds for fwd+bwd of a dense SwiGLU of `width`: the expert layer's FLOPs when width = k * f."""
  keys = jax.random.split(jax.random.key(1), 4)
  x = jax.random.normal(keys[0], (tokens, d), dtype)
  ws = (jax.random.normal(keys[1], (d, width), dtype) * 0.02,
        jax.random.normal(keys[2], (d, width), dtype) * 0.02,
        jax.random.normal(keys[3], (width, d), dtype) * 0.02)

  @jax.jit
  def step(x, ws):
    def loss(x, ws):
      g, u, dn = ws
      y = (jax.nn.silu(x @ g) * (x @ u)) @ dn
      return jnp.sum(y.astype(jnp.float32) ** 2)
    return jax.grad(loss, argnums=(0, 1))(x, ws)

  return _time(step, x, ws, repeats=3)


def expert_flops(tokens: int, d: int, f: int, k: int) -> float:
  """Useful fwd+bwd FLOPs of the routed experts: 3 matmuls, 2 FLOPs a MAC, backward twice the forward."""
  return 3 * 2 * tokens * k * d * f * 3


def agrees_with_dense(backend: str, dtype, block: int | None = None) -> float:
  """Max |backend - dense| / max |dense| on a small layer: a check that the timed code is right."""
  t, d, f, e, k = 512, 64, 32, 16, 4
  idx, w = _routing(t, e, k, seed=1)
  keys = jax.random.split(jax.random.key(2), 4)
  x = jax.random.normal(keys[0], (t, d), dtype)
  ws = [jax.random.normal(kk, s, dtype) * 0.1 for kk, s in zip(keys[1:], ((e, d, f), (e, d, f), (e, f, d)))]
  want = np.asarray(moe.dense_experts(x, idx, w, *ws), np.float32)
  got = _layer(backend, t, block)(x, idx, w, *ws)[0]  # capacity t: sorted drops nothing
  return float(np.abs(np.asarray(got, np.float32) - want).max() / np.abs(want).max())


# Training steps ------------------------------------------------------------------------

def _batch(cfg: C.ModelConfig, batch: int, seq: int) -> dict:
  tokens = np.random.default_rng(0).integers(3, cfg.vocab_size, (batch, seq + 1))
  return {"tokens": jnp.asarray(tokens, jnp.int32), "loss_mask": jnp.ones((batch, seq + 1), bool),
          "segment_ids": jnp.ones((batch, seq + 1), jnp.int32),
          "positions": jnp.broadcast_to(jnp.arange(seq + 1, dtype=jnp.int32), (batch, seq + 1))}


def esft_spec(cfg: C.ModelConfig, fraction: float = 0.1) -> trainable.TrainableSpec:
  """ESFT training `fraction` of each MoE layer's routed experts (the paper selects 5-15%)."""
  n = max(1, round(fraction * cfg.n_routed_experts))
  selection = {"experts": {str(l): list(range(n)) for l in cfg.moe_layers}}
  return trainable.TrainableSpec.from_expert_config(selection, cfg)


def random_params(cfg: C.ModelConfig, spec: trainable.TrainableSpec, seed: int = 0) -> dict:
  """Random weights in the split (trainable/frozen) layout, made one leaf at a time.

  A model-wide init program holds its random bits and intermediates for every
  leaf at once (230 GB of temporaries for full V2-Lite in XLA:CPU's plan, more
  than an H200 has); leaf by leaf, the peak is the weights plus one leaf's work.
  Norm scales are ones, everything else N(0, 0.02): timing needs no more.
  """
  shapes = jax.eval_shape(lambda: trainable.split(init_variables(cfg, 0)["params"], spec, cfg))
  leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  made = [_random_leaf(key, x.shape, x.dtype, getattr(path[-1], "key", "") == "scale")
          for key, (path, x) in zip(keys, leaves)]
  return jax.tree_util.tree_unflatten(treedef, made)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _random_leaf(key, shape, dtype, is_scale):  # compiled once per shape, for every model
  if is_scale:
    return jnp.ones(shape, dtype)
  return (0.02 * jax.random.normal(key, shape, jnp.float32)).astype(dtype)


class Trainer:
  """The trainer's own step (moe_jax.steps) on random weights; `advance` takes one step."""

  def __init__(self, cfg: C.ModelConfig, spec: trainable.TrainableSpec, batch: dict):
    params = random_params(cfg, spec)
    tx = make_optimizer(ADAMW, 1000, spec)
    self.state = TrainState(jnp.zeros((), jnp.int32), params, {}, jax.jit(tx.init)(params))
    self.step = jax.jit(make_train_step(cfg, spec, tx), donate_argnums=0).lower(
        self.state, batch).compile()
    memory = self.step.memory_analysis()  # XLA's plan: the step's temporaries, activations included
    self.temp_bytes = None if memory is None else int(memory.temp_size_in_bytes)
    self.batch = batch

  def advance(self):
    self.state, self.metrics = self.step(self.state, self.batch)
    return self.state

  def result(self, seconds: float) -> dict:
    """`seconds`, the last loss, dropped assignments and state bytes."""
    m = self.metrics
    return {"seconds": seconds, "loss": float(m["loss_sum"] / m["tokens"]),
            "dropped": int(m["dropped"]), "optimizer_bytes": _nbytes(self.state.opt_state),
            "param_bytes": _nbytes(self.state.params), "temp_bytes": self.temp_bytes}


def train_step(cfg: C.ModelConfig, spec: trainable.TrainableSpec, batch: dict, repeats=3) -> dict:
  """Times the trainer's step: best of `repeats` after compiling (see `Trainer.result`)."""
  return train_steps_side_by_side([Trainer(cfg, spec, batch)], repeats)[0]


def train_steps_side_by_side(trainers: list[Trainer], repeats: int) -> list[dict]:
  """Each trainer's best step time of `repeats`, their steps taken in turn (`_time_in_turn`)."""
  seconds = _time_in_turn([t.advance for t in trainers], repeats)
  return [t.result(s) for t, s in zip(trainers, seconds)]


def _nbytes(tree) -> int:
  return int(sum(x.nbytes for x in jax.tree_util.tree_leaves(tree) if hasattr(x, "nbytes")))


def param_counts(cfg: C.ModelConfig) -> tuple[int, int, int]:
  """(all parameters, routed-expert parameters, parameters a token uses in matmuls)."""
  shapes = jax.eval_shape(lambda: init_variables(cfg, 0)["params"])
  total = routed = embed = 0
  for path, x in jax.tree_util.tree_leaves_with_path(shapes):
    keys = [getattr(p, "key", str(p)) for p in path]
    total += x.size
    if "experts" in keys:
      routed += x.size
    if "embed_tokens" in keys:
      embed += x.size
  active = total - embed - routed + routed * cfg.num_experts_per_tok // max(cfg.n_routed_experts, 1)
  if cfg.tie_word_embeddings:
    active += embed  # the embedding is also the output projection
  return total, routed, active


def train_flops_per_token(cfg: C.ModelConfig, seq: int) -> float:
  """Useful training FLOPs a token: 6 x matmul parameters used + causal attention (scores and values)."""
  _, _, active = param_counts(cfg)
  qk = cfg.qk_head_dim if cfg.use_mla else cfg.mha_head_dim
  v = cfg.v_head_dim if cfg.use_mla else cfg.mha_head_dim
  attention = 2 * cfg.num_attention_heads * (qk + v) * (seq + 1) / 2 * cfg.num_hidden_layers
  return 3 * (2 * active + attention)


def training_bytes(cfg: C.ModelConfig, spec: trainable.TrainableSpec) -> dict:
  """Parameter, gradient and AdamW bytes (float32) of a trainable set; activations excluded."""
  total, routed, _ = param_counts(cfg)
  if spec.mode == "fft":
    trained = total
  else:
    per_expert = routed // (cfg.n_routed_experts * len(cfg.moe_layers))
    trained = sum(len(ids) for _, ids in spec.experts) * per_expert
  return {"params": 4 * total, "trained_params": trained, "grads": 4 * trained, "adam": 8 * trained,
          "total": 4 * total + 12 * trained}


def device_bytes() -> int | None:
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("bytes_limit")


# Generation ----------------------------------------------------------------------------------

def kv_cache(batch: int, prompt: int, new: int):
  """Seconds to sample `new` tokens for `batch` prompts with the KV cache and with a no-cache loop."""
  cfg = C.tiny()
  model = Model(cfg, init_variables(cfg, 0))
  ids = np.ones((batch, prompt), np.int32)
  cached = _time(lambda: generate(model, ids, new, eos_token_id=-1), repeats=2)

  @functools.partial(jax.jit, static_argnums=1)
  def no_cache(tokens, steps):  # recompute the whole prefix for every new token
    buf = jnp.concatenate([tokens, jnp.zeros((batch, steps), jnp.int32)], 1)
    def body(i, buf):
      logits = model.module.apply(model.variables, buf).logits
      nxt = jnp.argmax(logits[jnp.arange(batch), prompt + i - 1], -1).astype(jnp.int32)
      return buf.at[:, prompt + i].set(nxt)
    return jax.lax.fori_loop(0, steps, body, buf)

  uncached = _time(no_cache, jnp.asarray(ids), new, repeats=1)
  return cached, uncached


# Suites -----------------------------------------------------------------------------------------

class Report:
  """Prints each measurement as it is taken and keeps the figures for the closing JSON line.

  Rows go out at once, so a run cut short (a timeout's SIGTERM, Ctrl-C) has
  printed what it measured; `main` still ends it with the JSON line.
  """

  def __init__(self):
    self.figures = {}
    self.pending_stop = None  # a stop signal not yet acted on
    print(f"{'measurement':<78} value", flush=True)

  def stop(self, signum, frame=None):
    """A signal handler: stop now, or at the next check if the exception is swallowed
    (Python also runs handlers inside __del__ and weakref callbacks, which ignore it)."""
    self.pending_stop = signum
    raise KeyboardInterrupt(f"signal {signum}")

  def check(self) -> None:
    """Raises KeyboardInterrupt, once, if a stop signal came and was not acted on."""
    if self.pending_stop is not None:
      signum, self.pending_stop = self.pending_stop, None
      raise KeyboardInterrupt(f"signal {signum}")

  def row(self, name: str, value) -> None:
    text = f"{value:,.4g}" if isinstance(value, (int, float)) else str(value)
    print(f"{name:<78} {text}", flush=True)
    self.check()

  def figure(self, name: str, value) -> None:
    self.figures[name] = value


def cpu_expert_layers(out: Report, smoke: bool) -> None:
  """64 experts top-8 against 8 experts top-1 with the same active parameters."""
  tokens, d = (512, 64) if smoke else (4096, 256)
  pair = lambda backend, f64, f8: _time_in_turn([expert_layer_step(backend, tokens, d, f64, 64, 8)[0],
                                                  expert_layer_step(backend, tokens, d, f8, 8, 1)[0]])
  for backend, name in (("grouped", "grouped, dropless"), ("sorted", "sorted, capacity 1.25")):
    e64, e8 = pair(backend, d // 8, d)
    out.row(f"expert layer E=64 top-8 F={d // 8}, {tokens} tokens, d={d}, fwd+bwd, {name} (s)", e64)
    out.row(f"expert layer E=8 top-1 F={d}, same active parameters, {name} (s)", e8)
    out.figure("moe_e64_vs_e8_time_ratio" + ("" if backend == "grouped" else "_sorted"), e64 / e8)
  # The same comparison with experts as wide, relative to d, as DeepSeek-V2-Lite's (1408 / 2048):
  # F = d/8 above leaves XLA:CPU's batched matmuls too small to use both cores.
  f = round(d * 1408 / 2048)
  e64, e8 = pair("grouped", f, 8 * f)
  out.row(f"expert layer E=64 top-8 F={f} (V2-Lite's F/d), {tokens} tokens, d={d}, grouped (s)", e64)
  out.row(f"expert layer E=8 top-1 F={8 * f}, same active parameters, grouped (s)", e8)
  out.figure("moe_e64_vs_e8_time_ratio_v2lite_widths", e64 / e8)


def cpu_generation(out: Report, smoke: bool) -> None:
  """Sampling with the KV cache against recomputing the prefix for every token."""
  batch, new = (8, 16) if smoke else (64, 256)
  cached, uncached = kv_cache(batch=batch, prompt=16, new=new)
  out.row(f"generate {new} tokens, batch {batch}, KV cache (s)", cached)
  out.row(f"generate {new} tokens, batch {batch}, no cache (s)", uncached)
  out.figure("kv_cache_speedup", uncached / cached)


def cpu_train_steps(out: Report, smoke: bool) -> None:
  """ESFT against full fine-tuning of a small model: step time and optimizer bytes.

  With `grouped` (CPU's auto dispatch), and with `sorted` (a GPU's), which skips
  the frozen experts' weight gradients (the block dispatches compute and drop them).
  """
  for dispatch in ("grouped", "sorted"):
    cfg = C.tiny(hidden_size=128, num_hidden_layers=3, n_routed_experts=16, num_experts_per_tok=4,
                 moe_intermediate_size=64, dispatch=dispatch)
    batch = _batch(cfg, 2 if smoke else 8, 255)
    fft, es = train_steps_side_by_side([Trainer(cfg, trainable.TrainableSpec(), batch),
                                        Trainer(cfg, esft_spec(cfg, 2 / 16), batch)], repeats=10)
    tokens = batch["tokens"].shape[0] * 256
    out.row(f"train step FFT, 3-layer d=128, 16 experts top-4, {tokens} tokens, {dispatch} (s)",
            fft["seconds"])
    out.row(f"train step ESFT, 2 of 16 experts per layer, {dispatch} (s)", es["seconds"])
    suffix = "" if dispatch == "grouped" else "_" + dispatch
    out.figure("esft_vs_fft_step_time_ratio" + suffix, es["seconds"] / fft["seconds"])
  out.row("optimizer bytes FFT", fft["optimizer_bytes"])
  out.row("optimizer bytes ESFT", es["optimizer_bytes"])
  out.figure("esft_vs_fft_optimizer_bytes_ratio", es["optimizer_bytes"] / fft["optimizer_bytes"])


def gpu_expert_layers(out: Report, smoke: bool) -> None:
  """Every dispatch's routed-expert layer against an equal-FLOPs dense SwiGLU (and its correctness)."""
  dtype = jnp.bfloat16
  d, f, e, k = (64, 32, 16, 4) if smoke else (2048, 1408, 64, 6)  # DeepSeek-V2-Lite experts
  for backend in ("sorted", "grouped", "pallas", "ragged_dot"):
    try:
      err = agrees_with_dense(backend, dtype)
    except Exception as e:  # noqa: BLE001 -- e.g. a kernel that does not compile: say so, go on
      out.row(f"{backend}: failed ({type(e).__name__}: {str(e)[:100]})", float("nan"))
      out.figure(f"{backend}_failed", f"{type(e).__name__}: {str(e)[:300]}")
      continue
    out.figure(f"{backend}_rel_error_vs_dense", err)
    out.row(f"{backend}: max rel. error vs dense experts (bf16)", err)
  sizes = {"16k": 16384, "64k": 65536} if not smoke else {"16k": 512, "64k": 1024}
  for label, tokens in sizes.items():
    dense = dense_swiglu(tokens, d, k * f, dtype)
    flops = expert_flops(tokens, d, f, k)
    out.row(f"dense SwiGLU width k*f, {tokens} tokens, fwd+bwd TFLOP/s", flops / dense / 1e12)
    best = 0.0
    # ragged_dot materialises experts x rows x d: out of memory at 64k on an H200.
    backends = [("sorted", dict(capacity_factor=1.25)),
                ("sorted", dict(capacity_factor=e / k)),  # capacity = tokens: dropless
                ("grouped", dict(block=512))] + ([("ragged_dot", {})] if label == "16k" else [])
    if not smoke:  # interpreted off the GPU: far too slow to time there
      backends += [("pallas", dict(block=64)), ("pallas", dict(block=128))]
    for backend, kw in backends:
      try:
        t, dropped = expert_layer(backend, tokens, d, f, e, k, dtype, **kw)
      except Exception as err:  # noqa: BLE001 -- report an out-of-memory backend and go on
        out.row(f"{backend} {kw} {tokens} tokens: failed ({type(err).__name__})", float("nan"))
        continue
      ratio = dense / t
      name = f"{backend} {json.dumps(kw)}, {tokens} tokens"
      out.row(f"{name}: fwd+bwd TFLOP/s", flops / t / 1e12)
      out.row(f"{name}: vs dense", ratio)
      out.row(f"{name}: dropped assignments", dropped)
      if backend == "sorted" and kw["capacity_factor"] < e / k:
        # Balanced random routing may drop nothing here, but real routing would: reported apart.
        out.figure(f"expert_layer_vs_dense_{label}_capacity_1.25", ratio)
      else:  # dropless by construction: what the target counts
        best = max(best, ratio)
    out.figure(f"expert_layer_vs_dense_{label}", best)


def gpu_train_steps(out: Report, smoke: bool) -> None:
  """MFU of a depth-reduced DeepSeek-V2-Lite step; ESFT against FFT on it."""
  layers, batch_size, seq = (2, 2, 64) if smoke else (4, 8, 2048)
  base = (C.tiny if smoke else C.deepseek_v2_lite)().replace(num_hidden_layers=layers, dtype="bfloat16")
  batch = _batch(base, batch_size, seq)
  flops = train_flops_per_token(base, seq) * batch_size * seq
  per_assignment = expert_flops(1, base.hidden_size, base.moe_intermediate_size, 1)
  best = None
  dispatches = [("sorted", 1.25), ("grouped", 0.0)] + ([] if smoke else [("pallas", 0.0)])
  for dispatch, cf in dispatches:
    cfg = base.replace(dispatch=dispatch, capacity_factor=cf)
    try:
      trainer = Trainer(cfg, trainable.TrainableSpec(), batch)
      fft = train_steps_side_by_side([trainer], 3)[0]
    except Exception as err:  # noqa: BLE001 -- e.g. out of memory; the other dispatch may fit
      out.row(f"V2-Lite x{layers} FFT step, {dispatch}: failed ({type(err).__name__})", float("nan"))
      continue
    useful = flops - fft["dropped"] * per_assignment  # dropped tokens did no useful work
    mfu = useful / fft["seconds"] / H200_BF16_PEAK
    out.row(f"V2-Lite x{layers} layers, {batch_size}x{seq} tokens, {dispatch} "
            f"(capacity {cf or 'dropless'}): FFT step (s)", fft["seconds"])
    out.row("  dropped assignments", fft["dropped"])
    out.row("  useful TFLOP/s", useful / fft["seconds"] / 1e12)
    out.row("  MFU vs 989 TFLOP/s", mfu)
    if best is None or mfu > best[0]:
      best = (mfu, cfg, trainer)
    del trainer  # only the best dispatch's state stays on the device
  if best is None:
    return
  mfu, cfg, trainer = best
  fft, es = train_steps_side_by_side([trainer, Trainer(cfg, esft_spec(cfg), batch)], 3)
  out.figure("train_step_mfu", mfu)
  out.figure("esft_vs_fft_step_time_ratio", es["seconds"] / fft["seconds"])
  out.figure("esft_vs_fft_optimizer_bytes_ratio", es["optimizer_bytes"] / fft["optimizer_bytes"])
  out.row(f"ESFT step, 10% of experts, {cfg.dispatch} (s)", es["seconds"])
  out.row("  optimizer bytes FFT", fft["optimizer_bytes"])
  out.row("  optimizer bytes ESFT", es["optimizer_bytes"])
  for name, r in (("FFT", fft), ("ESFT", es)):
    out.row(f"  XLA temporaries {name} (GB)", float("nan") if r["temp_bytes"] is None else r["temp_bytes"] / 1e9)


def gpu_remat(out: Report, smoke: bool) -> None:
  """What recomputing each layer in the backward pass saves and costs (ModelConfig.remat)."""
  layers, batch_size, seq = (2, 2, 64) if smoke else (4, 8, 2048)
  base = (C.tiny if smoke else C.deepseek_v2_lite)().replace(
      num_hidden_layers=layers, dtype="bfloat16", dispatch="sorted", capacity_factor=1.25)
  batch = _batch(base, batch_size, seq)
  runs = {}
  for remat in ("none", "full"):  # one at a time: two FFT states of this model need not fit together
    runs[remat] = train_step(base.replace(remat=remat), trainable.TrainableSpec(), batch)
    temp = runs[remat]["temp_bytes"]
    out.row(f"V2-Lite x{layers} FFT step, {batch_size}x{seq} tokens, sorted 1.25, remat {remat} (s)",
            runs[remat]["seconds"])
    out.row("  XLA temporaries (GB)", float("nan") if temp is None else temp / 1e9)
  out.figure("remat_full_vs_none_step_time_ratio", runs["full"]["seconds"] / runs["none"]["seconds"])
  if runs["none"]["temp_bytes"]:
    out.figure("remat_full_vs_none_temp_bytes_ratio",
               runs["full"]["temp_bytes"] / runs["none"]["temp_bytes"])


def gpu_v2lite_fit(out: Report, smoke: bool) -> None:
  """Full-size V2-Lite: bytes of FFT vs ESFT with AdamW, then one real ESFT step."""
  # Capacity buffers (1.25): a dropless `sorted` layer would hold E/K times the activations.
  full = (C.tiny(num_hidden_layers=3) if smoke else C.deepseek_v2_lite()).replace(
      dtype="bfloat16", dispatch="sorted", capacity_factor=1.25)
  spec = esft_spec(full)
  limit = device_bytes()
  need = {name: training_bytes(full, s)["total"] for name, s in (("fft", trainable.TrainableSpec()),
                                                                  ("esft", spec))}
  out.figure("device_bytes", limit)
  out.figure("v2lite_fft_fits", None if limit is None else bool(need["fft"] < limit))
  out.row("V2-Lite (27 layers) params+grads+AdamW, FFT (GB)", need["fft"] / 1e9)
  out.row("V2-Lite params+grads+AdamW, ESFT 10% of experts (GB)", need["esft"] / 1e9)
  out.figure("v2lite_esft_fits", False)
  # Keeping every activation first; if that does not fit, recomputing each layer in the backward.
  for remat in ("none", "full"):
    try:
      cfg = full.replace(remat=remat)
      run = train_step(cfg, spec, _batch(cfg, 1, 64 if smoke else 2048), repeats=1)
    except Exception as err:  # noqa: BLE001 -- out of memory is the answer "does not fit"
      out.row(f"V2-Lite ESFT step, remat {remat}: failed: {type(err).__name__}: {str(err)[:60]}",
              float("nan"))
      continue
    out.figure("v2lite_esft_fits", bool(np.isfinite(run["loss"])))
    out.figure("v2lite_esft_remat", remat)
    out.row(f"V2-Lite ESFT step, 1x2048 tokens, sorted, capacity 1.25, remat {remat} (s)",
            run["seconds"])
    break


SUITES = {
    "cpu": {"layers": cpu_expert_layers, "generation": cpu_generation, "train": cpu_train_steps},
    "gpu": {"layers": gpu_expert_layers, "train": gpu_train_steps, "v2lite": gpu_v2lite_fit,
            "remat": gpu_remat},
}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--suite", choices=tuple(SUITES), default="cpu")
  parser.add_argument("--smoke", action="store_true", help="tiny shapes (checks the code, any machine)")
  parser.add_argument("--malloc", choices=("keep", "default"), default="keep",
                      help="keep: host.keep_freed_memory() first, so buffers are not page-faulted "
                           "in again every call (the recorded runs); default: leave glibc as it is")
  parser.add_argument("--sections", help="comma-separated sections to run (default: all): "
                      + "; ".join(f"{k}: {','.join(v)}" for k, v in SUITES.items()))
  args = parser.parse_args(argv)
  sections = SUITES[args.suite]
  chosen = args.sections.split(",") if args.sections else list(sections)
  unknown = sorted(set(chosen) - set(sections))
  if unknown:
    parser.error(f"--sections: no {unknown} in the {args.suite} suite; it has {list(sections)}")
  kept = args.malloc == "keep" and host.keep_freed_memory()
  t0 = time.time()
  out = Report()
  signal.signal(signal.SIGTERM, out.stop)  # `timeout` still gets the JSON line of what ran
  for name in chosen:
    try:
      sections[name](out, args.smoke)
      out.check()  # an interrupt swallowed after the section's last row
    except KeyboardInterrupt:
      out.pending_stop = None  # acted on: the closing rows and the JSON line print normally
      out.figure("interrupted_in", name)
      out.row(f"interrupted in section {name!r}: later sections did not run", "")
      break
    except Exception as err:  # noqa: BLE001 -- one broken section must not cost the others
      traceback.print_exc()
      out.figure(f"section_failed_{name}", f"{type(err).__name__}: {str(err)[:300]}")
      out.row(f"section {name!r} failed: {type(err).__name__} (traceback on stderr)", "")
  for name, v in out.figures.items():
    if name.endswith(("_ratio", "_speedup", "_mfu", "_widths", "_sorted")) or name.startswith("expert_layer_vs"):
      out.row(name, v)
  figures = dict(out.figures, suite=args.suite, smoke=args.smoke, sections=chosen, keep_freed_memory=kept,
                 seconds=round(time.time() - t0, 1), machine=platform.processor() or platform.machine(),
                 jax=jax.__version__, devices=str(jax.devices()[0].device_kind),
                 date=time.strftime("%Y-%m-%d"))
  print(json.dumps(figures), flush=True)
  return figures


if __name__ == "__main__":
  sys.exit(1 if any(k.startswith("section_failed_") for k in main()) else 0)
