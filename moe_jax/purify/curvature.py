"""The Hessian's diagonal of a classifier's loss on a small clean set: Fisher and Hutchinson.

Fine-purifying weighs how far fine-tuning moved each weight against how much the
clean task curves the loss along it (`moe_jax.purify.indicators`). Two estimates
of that curvature, both returning a tree shaped (and sharded) like `params`:

  fisher_diag      the Fisher's diagonal: the mean over clean examples of the
                   squared per-example gradient of -log p(y | x), from
                   `jax.vmap(jax.grad)` over micro-batches summed with `lax.scan`.
                   labels="empirical" takes the data's label y; labels="model"
                   the expectation over the model's own prediction, exactly over
                   the C classes (the true Fisher: the Gauss-Newton diagonal, and
                   for a linear softmax classifier the Hessian's diagonal itself).
  hutchinson_diag  E_z[z * (H z)] over Rademacher probes z, with Hessian-vector
                   products by forward-over-reverse differentiation: unbiased for
                   the diagonal of the Hessian of the mean loss, curvature the
                   Fisher does not see included.

`log_probs_fn(params, batch) -> [B, C]` gives log-probabilities; a batch holds
"label" [B] int, an optional "weight" [B] (0 for padding rows) and whatever the
function reads, every field with the same leading B. `classifier_log_probs`
makes the function for a model with a classifier head (`moe_jax.heads`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp

from moe_jax import heads

FISHER_LABELS = ("empirical", "model")


def classifier_log_probs(config, buffers) -> Callable:
  """log_probs_fn of a sequence classifier: log-softmax of `heads.sequence_logits`."""
  def log_probs(params, batch):
    logits, _ = heads.sequence_logits(params, buffers, config, batch)
    return jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  return log_probs


def _weights(batch: dict) -> jax.Array:
  return batch.get("weight", jnp.ones(batch["label"].shape, jnp.float32)).astype(jnp.float32)


def _out_shardings(params):
  leaves = jax.tree_util.tree_leaves(params)
  if leaves and all(isinstance(x, jax.Array) for x in leaves):
    return jax.tree_util.tree_map(lambda x: x.sharding, params)
  return None


def _per_example_square(log_probs_fn, labels: str):
  """f(params, example) -> the example's squared-gradient tree, times its weight."""
  def log_probs(params, example):
    return log_probs_fn(params, jax.tree_util.tree_map(lambda x: x[None], example))[0]  # [C]

  def square(params, example):
    w = _weights(example)
    if labels == "empirical":
      g = jax.grad(lambda p: -log_probs(p, example)[example["label"]])(params)
      return jax.tree_util.tree_map(lambda x: w * jnp.square(x), g)
    probs = jax.lax.stop_gradient(jnp.exp(log_probs(params, example)))  # [C]
    jac = jax.jacrev(log_probs)(params, example)  # leaves [C, ...]
    return jax.tree_util.tree_map(
        lambda x: w * jnp.tensordot(probs, jnp.square(x), axes=1), jac)
  return square


def fisher_diag(params, log_probs_fn: Callable, batches: Iterable[dict], micro_batch: int = 8,
                labels: str = "empirical"):
  """The Fisher's diagonal at `params`, averaged over the (weighted) examples of `batches`.

  Each batch's B must be a multiple of `micro_batch`: per-example gradients of
  `micro_batch` examples live at once (memory: micro_batch x params).
  """
  if labels not in FISHER_LABELS:
    raise ValueError(f"fisher_diag: labels={labels!r} is not one of {FISHER_LABELS}")
  square = _per_example_square(log_probs_fn, labels)

  def add_batch(total, params, batch):
    def add_chunk(acc, chunk):
      sq = jax.vmap(square, in_axes=(None, 0))(params, chunk)  # leaves [m, ...]
      return jax.tree_util.tree_map(lambda a, s: a + s.sum(0), acc, sq), None
    chunks = jax.tree_util.tree_map(
        lambda x: x.reshape((-1, micro_batch) + x.shape[1:]), batch)  # [B/m, m, ...]
    return jax.lax.scan(add_chunk, total, chunks)[0]

  params = jax.tree_util.tree_map(jnp.asarray, params)
  step = jax.jit(add_batch, out_shardings=_out_shardings(params), donate_argnums=0)
  total = jax.tree_util.tree_map(jnp.zeros_like, params)
  count = 0.0
  for i, batch in enumerate(batches):
    n = len(batch["label"])
    if n % micro_batch:
      raise ValueError(f"fisher_diag: batch {i} has {n} rows, not a multiple of "
                       f"micro_batch={micro_batch}")
    total = step(total, params, batch)
    count += float(jnp.sum(_weights(batch)))
  if not count:
    raise ValueError("fisher_diag: no (weighted) examples in `batches`")
  return jax.tree_util.tree_map(lambda t: t / count, total)


def rademacher_probes(params, samples: int, key: jax.Array):
  """`samples` random sign trees shaped like `params`, stacked: leaves [S, ...] of +-1."""
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree_util.tree_unflatten(treedef, [
      jax.random.rademacher(k, (samples,) + x.shape, jnp.float32).astype(x.dtype)
      for k, x in zip(keys, leaves)])


def hutchinson_diag(params, log_probs_fn: Callable, batches: Iterable[dict],
                    probes: int | object = 32, key: jax.Array | None = None):
  """The diagonal of the Hessian of the mean -log p(y | x) over `batches`, by Hutchinson's estimate.

  probes: how many Rademacher probes (drawn from `key`), or the probes themselves
  as a tree shaped like `params` with a leading probe axis (every sign vector of a
  tiny model gives the diagonal exactly).
  """
  params = jax.tree_util.tree_map(jnp.asarray, params)
  if isinstance(probes, int):
    if probes < 1:
      raise ValueError(f"hutchinson_diag: probes={probes} must be at least 1")
    probes = rademacher_probes(params, probes, jax.random.key(0) if key is None else key)

  def nll_sum(p, batch):
    logp = log_probs_fn(p, batch)
    picked = jnp.take_along_axis(logp, batch["label"][:, None], -1)[:, 0]
    return -jnp.sum(_weights(batch) * picked)

  def add_batch(total, params, probes, batch):
    def add_probe(acc, z):
      _, hz = jax.jvp(lambda p: jax.grad(nll_sum)(p, batch), (params,), (z,))
      return jax.tree_util.tree_map(lambda a, zi, h: a + zi * h, acc, z, hz), None
    return jax.lax.scan(add_probe, total, probes)[0]

  step = jax.jit(add_batch, out_shardings=_out_shardings(params), donate_argnums=0)
  total = jax.tree_util.tree_map(jnp.zeros_like, params)
  count = 0.0
  for batch in batches:
    total = step(total, params, probes, batch)
    count += float(jnp.sum(_weights(batch)))
  if not count:
    raise ValueError("hutchinson_diag: no (weighted) examples in `batches`")
  n_probes = jax.tree_util.tree_leaves(probes)[0].shape[0]
  return jax.tree_util.tree_map(lambda t: t / (count * n_probes), total)
