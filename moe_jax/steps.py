"""The pure training steps: state, optimizer, LM loss, `train_step` and `eval_step`.

One step function serves every trainable set (`moe_jax.trainable`: FFT, ESFT,
LoRA, task heads). The parameter tree is the spec's split tree (for FFT the
plain tree), every leaf labelled "train" or "frozen". The step differentiates only the trained
leaves, and `optax.multi_transform` gives the frozen ones `set_to_zero()`, so
they get no updates, no weight decay and no optimizer state.

Metrics are sums with their denominators (`loss_sum` / `tokens`). A step whose
loss or gradients are not finite leaves the state as it was. This module needs
only jax, flax and optax (no data pipeline), so benchmarks and every task's
loop (through `moe_jax.train_lib.compile_step`) build the same step.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import flax
import jax
import jax.numpy as jnp
import optax

from moe_jax import config as model_config
from moe_jax import trainable
from moe_jax.model import Transformer


@flax.struct.dataclass
class TrainState:
  """What a train step carries: step count, the (split) parameters, buffers and optimizer state."""
  step: jax.Array
  params: Any  # the split parameter tree (see moe_jax.trainable)
  buffers: Any  # non-trained variables (V3 router bias); may be {}
  opt_state: Any


class KeepOnlyState(NamedTuple):
  keep: Any  # a tree like the parameters: bool arrays, True where a dimension may move


def keep_only(keep) -> optax.GradientTransformation:
  """Zeroes every update outside `keep` (bool arrays shaped like the parameters), after the
  optimizer, so the frozen dimensions get no step and no weight decay either.

  The mask rides in the optimizer state, not in the step's closure: a step does not embed a
  parameter-sized constant, the state is sharded like the parameters (`sharding.like_params`),
  and a resumed run restores the mask it was trained with.
  """
  def init(params):
    del params
    return KeepOnlyState(jax.tree_util.tree_map(lambda k: jnp.asarray(k, bool), keep))

  def update(updates, state, params=None):
    del params
    return jax.tree_util.tree_map(lambda u, k: jnp.where(k, u, jnp.zeros_like(u)),
                                  updates, state.keep), state

  return optax.GradientTransformation(init, update)


def scale_heads(factors: dict[str, float]) -> optax.GradientTransformation:
  """Multiplies the updates of the named top-level subtrees (task heads) by their factors.

  After AdamW, whose whole update (step and weight decay) is proportional to the learning
  rate, a factor is exactly that head's own learning rate: lr x factor, same schedule.
  """
  def update(updates, state, params=None):
    del params
    missing = sorted(set(factors) - set(updates))
    if missing:
      raise KeyError(f"lr_scale names {missing}, not top-level parameters ({sorted(updates)})")
    return {k: jax.tree_util.tree_map(lambda u, f=factors.get(k): u * f, v) if k in factors else v
            for k, v in updates.items()}, state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(cfg, num_steps: int, spec: trainable.TrainableSpec,
                   keep=None, lr_scale: dict[str, float] | None = None) -> optax.GradientTransformation:
  """Clipping, then AdamW on trained leaves (decay on matrices only) and zero on frozen ones.

  cfg: the `optimizer` fields of a training config (learning_rate, schedule,
  warmup_steps, final_lr_fraction, b1, b2, weight_decay, grad_clip); any object
  with those attributes will do. keep: None, or bool arrays like the split
  parameters: only their True dimensions move (`keep_only`; Fine-purifying's
  fine-tune of the reset dimensions alone). lr_scale: {head name: factor}, that head's
  learning rate as a multiple of cfg.learning_rate (`scale_heads`; FormBERT's formation lr).
  """
  warmup = min(cfg.warmup_steps, max(num_steps - 1, 0))
  if cfg.schedule == "constant":
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, cfg.learning_rate, max(warmup, 1)),
         optax.constant_schedule(cfg.learning_rate)], [warmup]) if warmup else cfg.learning_rate
  elif cfg.schedule == "cosine":
    # optax needs at least one decay step after the (at least one) warmup step: a 1-step run too.
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, cfg.learning_rate, max(warmup, 1), max(num_steps, max(warmup, 1) + 1),
        end_value=cfg.learning_rate * cfg.final_lr_fraction)
  else:
    raise ValueError(f"config.optimizer.schedule: {cfg.schedule!r} is not 'constant' or 'cosine'")
  decay_mask = lambda p: jax.tree_util.tree_map(lambda x: x.ndim >= 2, p)
  adamw = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay,
                      mask=decay_mask)
  tx = optax.chain(
      optax.clip_by_global_norm(cfg.grad_clip),
      optax.multi_transform({trainable.TRAIN: adamw, trainable.FROZEN: optax.set_to_zero()},
                            lambda params: trainable.labels(params, spec)))
  if lr_scale:
    tx = optax.chain(tx, scale_heads(dict(lr_scale)))
  return tx if keep is None else optax.chain(tx, keep_only(keep))


def lm_loss(params, buffers, config: model_config.ModelConfig, batch: dict):
  """Mean next-token cross-entropy over trained targets, plus the MoE balance losses.

  batch: packed rows {"tokens", "loss_mask", "segment_ids", "positions"} [B, T].
  Returns (loss, (loss_sum, n_targets, MoEAux)).
  """
  tokens, seg = batch["tokens"], batch["segment_ids"]
  chex.assert_rank(tokens, 2)
  chex.assert_equal_shape([tokens, seg, batch["loss_mask"], batch["positions"]])
  out = Transformer(config).apply({"params": params, "buffers": buffers}, tokens[:, :-1],
                                  batch["positions"][:, :-1], seg[:, :-1])
  # A target counts if it is a training token of the same example as its input.
  weights = batch["loss_mask"][:, 1:] & (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] != 0)
  weights = weights.astype(jnp.float32)
  logp = jax.nn.log_softmax(out.logits.astype(jnp.float32), -1)
  nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]
  loss_sum, n = jnp.sum(nll * weights), jnp.sum(weights)
  aux = out.aux.balance_loss + out.aux.device_balance_loss
  return loss_sum / jnp.maximum(n, 1.0) + aux, (loss_sum, n, out.aux)


def make_train_step(config: model_config.ModelConfig, spec: trainable.TrainableSpec,
                    tx: optax.GradientTransformation, loss_fn=lm_loss):
  """train_step(state, batch) -> (state, metrics) for this model, trainable set and optimizer.

  loss_fn(params, buffers, config, batch) -> (loss, (loss_sum, n, MoEAux[, metrics])):
  the language-model loss by default; `moe_jax.prm` passes the process-reward
  and PPO losses. An optional fourth item, a dict of scalars, joins the metrics.
  """

  def train_step(state: TrainState, batch: dict):
    label_tree = trainable.labels(state.params, spec)
    trained, frozen = trainable.partition(state.params, label_tree)

    def objective(trained):
      params, fwd_config = trainable.for_forward(trainable.combine(trained, frozen), spec, config)
      return loss_fn(params, state.buffers, fwd_config, batch)

    (_, (loss_sum, n, aux, *extra)), grads = jax.value_and_grad(objective, has_aux=True)(trained)
    chex.assert_shape([loss_sum, n], ())  # sums with their denominators, as the metrics report them
    zeros = jax.tree_util.tree_map(jnp.zeros_like, frozen)  # unused by set_to_zero; DCE'd
    updates, opt_state = tx.update(trainable.combine(grads, zeros), state.opt_state,
                                   state.params)
    trained_updates, _ = trainable.partition(updates, label_tree)
    params = trainable.combine(optax.apply_updates(trained, trained_updates), frozen)
    grad_norm = optax.tree.norm(grads)
    ok = jnp.isfinite(loss_sum) & jnp.isfinite(grad_norm)
    new = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    # A non-finite step changes nothing, so the last good state can be checkpointed.
    new = jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, state)
    metrics = {"loss_sum": loss_sum, "tokens": n, "balance_loss": aux.balance_loss,
               "dropped": aux.dropped, "grad_norm": grad_norm,
               "update_norm": optax.tree.norm(trained_updates), "finite": ok, **(extra[0] if extra else {})}
    return new, metrics

  return train_step


def make_eval_step(config: model_config.ModelConfig, spec: trainable.TrainableSpec, loss_fn=lm_loss):
  """eval_step(state, batch) -> {loss_sum, tokens}: the loss of the current parameters, no update."""
  def eval_step(state: TrainState, batch: dict) -> dict:
    params, fwd_config = trainable.for_forward(state.params, spec, config)
    _, (loss_sum, n, *_) = loss_fn(params, state.buffers, fwd_config, batch)
    return {"loss_sum": loss_sum, "tokens": n}
  return eval_step
