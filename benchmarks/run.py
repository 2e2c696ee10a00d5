"""moe_jax benchmarks: side-by-side ratios measured in one run.

    python benchmarks/run.py --suite cpu      # minutes on 2 cores

Prints a table, then one JSON line with every figure. Record results in
benchmarks/RESULTS.md. (The GPU suite of issue #7 is not written yet.)
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from moe_jax import config as C
from moe_jax import esft, moe, train_config, train_lib
from moe_jax.generate import generate
from moe_jax.model import Model, init_variables


def _time(fn, *args, repeats=5):
  jax.block_until_ready(fn(*args))  # compile
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t0)
  return best


def expert_layer(n_experts: int, top_k: int, width: int, tokens=4096, d=256):
  """fwd+bwd seconds of the routed-expert layer (sorted dispatch, capacity 1.25)."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(8, tokens // 8, d)), jnp.float32)
  idx = jnp.asarray(np.argsort(rng.random((8, tokens // 8, n_experts)), -1)[..., :top_k], jnp.int32)
  w = jnp.asarray(rng.random(idx.shape), jnp.float32)
  cfg = C.tiny(hidden_size=d, n_routed_experts=n_experts, num_experts_per_tok=top_k,
               moe_intermediate_size=width, capacity_factor=1.25)
  layer = moe.RoutedExperts(cfg)
  params = layer.init(jax.random.key(0), x, idx, w, jnp.ones(x.shape[:2], bool))

  @jax.jit
  def step(params, x):
    loss = lambda p, x: jnp.sum(layer.apply(p, x, idx, w, jnp.ones(x.shape[:2], bool))[0] ** 2)
    return jax.grad(loss, argnums=(0, 1))(params, x)

  return _time(step, params, x)


def kv_cache(batch=8, prompt=16, new=64):
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

  uncached = _time(no_cache, jnp.asarray(ids), new, repeats=2)
  return cached, uncached


def esft_vs_fft(steps=5):
  cfg = C.tiny(hidden_size=128, num_hidden_layers=3, n_routed_experts=16, num_experts_per_tok=4,
               moe_intermediate_size=64)
  params = init_variables(cfg, 0)["params"]
  rng = np.random.default_rng(0)
  batch = {"tokens": jnp.asarray(rng.integers(3, 250, (8, 256)), jnp.int32),
           "loss_mask": jnp.ones((8, 256), bool), "segment_ids": jnp.ones((8, 256), jnp.int32),
           "positions": jnp.broadcast_to(jnp.arange(256, dtype=jnp.int32), (8, 256))}
  ocfg = train_config.base_config().optimizer
  out = {}
  selection = {"experts": {str(l): [0, 5] for l in cfg.moe_layers}}
  for name, spec in (("fft", esft.TrainableSpec()),
                     ("esft", esft.TrainableSpec.from_expert_config(selection, cfg))):
    split = esft.split(params, spec, cfg)
    tx = train_lib.make_optimizer(ocfg, steps, spec)
    state = train_lib.TrainState(jnp.zeros((), jnp.int32), split, {}, tx.init(split))
    step = jax.jit(train_lib.make_train_step(cfg, spec, tx))
    out[name] = (_time(step, state, batch, repeats=steps),
                 sum(x.nbytes for x in jax.tree_util.tree_leaves(state.opt_state)))
  return out


def cpu_suite() -> dict:
  rows, figures = [], {}
  e64 = expert_layer(64, 8, 32)
  e8 = expert_layer(8, 1, 256)
  figures["moe_e64_vs_e8_time_ratio"] = e64 / e8
  rows += [("expert layer E=64 top-8 F=32, 4096 tokens fwd+bwd (s)", e64),
           ("expert layer E=8 top-1 F=256, 4096 tokens fwd+bwd (s)", e8)]
  cached, uncached = kv_cache()
  figures["kv_cache_speedup"] = uncached / cached
  rows += [("generate 64 tokens, batch 8, KV cache (s)", cached),
           ("generate 64 tokens, batch 8, no cache (s)", uncached)]
  r = esft_vs_fft()
  figures["esft_vs_fft_step_time_ratio"] = r["esft"][0] / r["fft"][0]
  figures["esft_vs_fft_optimizer_bytes_ratio"] = r["esft"][1] / r["fft"][1]
  rows += [("train step FFT (s)", r["fft"][0]), ("train step ESFT 2/16 experts (s)", r["esft"][0]),
           ("optimizer bytes FFT", r["fft"][1]), ("optimizer bytes ESFT", r["esft"][1])]
  for k, v in figures.items():
    rows.append((k, v))
  print(f"{'measurement':<60} value")
  for name, v in rows:
    print(f"{name:<60} {v:,.4g}")
  figures.update(machine=platform.processor() or platform.machine(), jax=jax.__version__,
                 devices=str(jax.devices()[0].device_kind), date=time.strftime("%Y-%m-%d"))
  return figures


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--suite", choices=("cpu",), default="cpu")
  parser.parse_args()
  print(json.dumps(cpu_suite()))


if __name__ == "__main__":
  main()
