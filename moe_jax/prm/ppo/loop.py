"""The PPO loop: rollouts, rewards, advantages and clipped updates through the trainer's step.

One iteration:
  1. rollout: sample a response per prompt with the KV cache (`generate`), from
     the parameters as the trainer holds them (for ESFT, the split tree);
  2. reward: the task's reward function on the rollouts (`moe_jax.prm.ppo.rewards`);
  3. score: one forward pass each of the policy (log-probs, and values from its
     value head) and of the frozen start policy; the per-token reward adds
     -kl_coef * (log pi - log pi_ref);
  4. GAE advantages (gamma, lambda), whitened over the batch;
  5. `epochs` passes of minibatch updates of the clipped PPO objective plus the
     clipped value loss, through the trainer's jitted step (FFT or ESFT).
"""

from __future__ import annotations

import functools
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from moe_jax import train_lib, trainable
from moe_jax.metric_writers import MetricWriter, progress
from moe_jax.model import Model
from moe_jax.prm import reward
from moe_jax.prm.ppo.objective import hyper, policy_params, ppo_loss, prepare
from moe_jax.prm.ppo.rewards import RewardFn
from moe_jax.prm.ppo.rollouts import rollout

_LOGGED = ("policy_loss", "value_loss", "entropy", "clip_fraction", "approx_kl", "grad_norm")


def _policy(model: Model) -> Model:
  """`model` without the critic's value head."""
  return Model(model.config, {**model.variables, "params": policy_params(model.params)})


def _epochs(step_fn, state, batch: dict, rng, epochs: int, minibatch: int, sharding):
  """`epochs` passes of minibatch updates over a prepared batch, in a fresh order each pass."""
  metrics, n = [], len(batch["mask"])
  for _ in range(epochs):
    order = rng.permutation(n)
    for j in range(0, n, minibatch):
      sel = order[j:j + minibatch]
      mini = {k: jax.device_put(np.asarray(v)[sel], sharding) for k, v in batch.items()}
      state, m = step_fn(state, mini)
      metrics.append(jax.device_get(m))
  return state, metrics


def train(cfg: ml_collections.ConfigDict, workdir: str, policy: Model, spec: trainable.TrainableSpec,
          tokenizer, questions: Sequence[str], reward_fn: RewardFn, mesh, name: str = "ppo",
          eval_fn: Callable[[Model], dict] | None = None) -> tuple[Model, dict]:
  """cfg.num_train_steps PPO iterations of cfg.data.batch_size rollouts each; resumable.

  `policy` is the start and the frozen reference. A value head (zeros) is
  added if it has none. `eval_fn(model) -> dict` runs before and after.
  Returns the trained policy (without the value head) and a summary.
  """
  p = cfg.ppo
  hp = hyper(p)
  bs, mb = cfg.data.batch_size, p.minibatch_size or cfg.data.batch_size
  if bs % mb:
    raise ValueError(f"config.ppo.minibatch_size={mb} does not divide config.data.batch_size={bs}")
  ref = _policy(policy)  # the frozen reference (start_run copies what it trains)
  model = reward.with_value_head(policy)
  iterations = cfg.num_train_steps
  critic = spec.with_heads({reward.VALUE_HEAD: reward.VALUE_HEAD_AXES})
  run = train_lib.start_run(cfg, workdir, model, critic, mesh, iterations * p.epochs * (bs // mb),
                            {"ppo": dict(p)})
  state, ckpt, mcfg = run.state, run.checkpointer, model.config
  step_fn = train_lib.compile_step(run, mcfg, functools.partial(ppo_loss, hp=hp))
  start = (run.data_state or {}).get("iteration", 0)
  if start:
    print(f"[{name}] resumed from {ckpt.directory} at iteration {start}")
  summary = dict(run.summary)
  if eval_fn is not None and start == 0:
    summary["before"] = eval_fn(ref)
    print(f"[{name}] before: {summary['before']}")
  print(f"[{name}] trainable parameters: {summary['trainable_params']:,} of "
        f"{summary['total_params']:,}; {iterations} iterations x {bs} rollouts")
  writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
  bar = progress(iterations, start, name, enabled=jax.process_index() == 0)
  history = []
  try:
    for it in range(start, iterations):
      t0 = time.time()
      rng = np.random.default_rng([cfg.seed, it])
      # The policy as the trainer holds it: on one process the split tree on the devices (no
      # copy, no merge); on several, each host samples from its own merged copy.
      live = train_lib.current_model(state, run.spec, mcfg, host=jax.process_count() > 1)
      r = rollout(_policy(live), tokenizer, questions, rng.choice(len(questions), bs,
                                                                   replace=len(questions) < bs),
                  p.prompt_len, p.max_new_tokens, p.temperature, seed=cfg.seed * 1_000_003 + it)
      task = reward_fn(r)
      batch, stats = prepare(live.config, live.params, ref.params, state.buffers,
                             {k: jnp.asarray(v) for k, v in r.batch().items()}, jnp.asarray(task), hp,
                             ref_config=mcfg)
      state, metrics = _epochs(step_fn, state, batch, rng, p.epochs, mb, run.batch_sharding)
      if not all(m["finite"] for m in metrics):
        raise FloatingPointError(f"[{name}] iteration {it + 1}: a non-finite PPO update; stopped "
                                 f"(the last checkpoint in {ckpt.directory} is intact)")
      row = {k: float(np.mean([m[k] for m in metrics])) for k in _LOGGED}
      row.update({k: float(v) for k, v in jax.device_get(stats).items()})
      row.update(response_tokens=float(r.mask.sum(1).mean()),
                 steps=float(np.mean([len(s) for s in r.steps])), seconds=time.time() - t0)
      history.append(row)
      writer.write(it + 1, row)
      bar.update(1)
      bar.set_postfix(reward=f"{row['task_reward']:.3f}", kl=f"{row['kl']:.3f}")
      ckpt.save(it + 1, state, {"iteration": it + 1}, run.meta)
    if ckpt.latest_step() != iterations:
      ckpt.save(iterations, state, {"iteration": iterations}, run.meta, force=True)
  finally:
    bar.close()
    ckpt.wait()
    ckpt.close()
    writer.close()
  summary["history"] = history
  out = _policy(train_lib.current_model(state, run.spec, mcfg))
  if eval_fn is not None:
    summary["after"] = eval_fn(out)
    print(f"[{name}] after: {summary['after']}")
  return out, summary
