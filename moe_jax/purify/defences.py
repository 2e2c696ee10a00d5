"""The defences, each a map from the suspect's parameters to the ones fine-tuned on the clean set.

  none       the suspect as it is (no clean fine-tuning either)
  finetune   the suspect, fine-tuned on the clean set
  mixing     Fine-mixing: a random rho of the dimensions reset to pre-trained
  magnitude  the rho with the largest drift |w_ft - w_init| reset
  ratio      Fine-purifying as reconstructed: drift^2 / clean curvature
  logratio   its log form (selects what `ratio` does; kept to show it)
  pruning    Fine-pruning: the rho of FFN neurons in the last layers least active on
             the clean set zeroed (an encoder's MLP)
  experts    beyond the paper, for an MoE model: whole routed experts reset, those of
             the largest mean ratio score, as many as rho of the dimensions
             (ESFT's expert granularity applied to defence)

`purified(...)` returns the new parameters and a report of what was reset
where (`moe_jax.purify.detect.distribution`). Every defence but `none` is then
fine-tuned on the clean set by the "purify" task.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from moe_jax import encoder
from moe_jax.layers import layer_name
from moe_jax.model import module_for
from moe_jax.purify import curvature as curv
from moe_jax.purify import indicators

DEFENCES = ("none", "finetune", "mixing", "magnitude", "ratio", "logratio", "pruning", "experts")
_INDICATOR = {"mixing": "random", "magnitude": "magnitude", "ratio": "ratio", "logratio": "logratio",
              "experts": "ratio"}


def needs_curvature(defence: str) -> bool:
  return _INDICATOR.get(defence) in ("ratio", "logratio")


def clean_curvature(model, batches, method: str = "fisher", micro_batch: int = 8,
                    fisher_labels: str = "empirical", probes: int = 16, seed: int = 0):
  """The curvature diagonal of the classifier's loss on the clean batches, at the suspect's weights."""
  log_probs = curv.classifier_log_probs(model.config, model.variables.get("buffers", {}))
  if method == "fisher":
    return curv.fisher_diag(model.params, log_probs, batches, micro_batch, fisher_labels)
  if method == "hutchinson":
    return curv.hutchinson_diag(model.params, log_probs, batches, probes, jax.random.key(seed))
  raise ValueError(f"config.purify.curvature: {method!r} is not 'fisher' or 'hutchinson'")


def indicator_mask(defence: str, w_init, w_ft, h=None, rho: float = 0.3, scope: str = "global",
                   seed: int = 0) -> tuple[dict, dict]:
  """({name: bool mask} of the dimensions to reset, {name: score}) for an indicator defence."""
  delta, _ = indicators.drift(w_init, w_ft)
  score = indicators.scores(_INDICATOR[defence], delta, h, key=jax.random.key(seed))
  if defence == "experts":
    return indicators.select_experts(jax.device_get(score), rho)[0], score
  return indicators.select_mask(score, rho, scope), score


def neuron_activations(model, batches, layers: int) -> dict[str, np.ndarray]:
  """{"layers_i": [F] mean activation of each FFN neuron over real tokens} of the last `layers`."""
  c = model.config
  if not c.is_encoder:
    raise ValueError(f"Fine-pruning reads an encoder's MLP; {c.model_type!r} is not an encoder")
  if not 1 <= layers <= c.num_hidden_layers:
    raise ValueError(f"config.purify.prune_layers={layers} must be in 1..{c.num_hidden_layers}")
  names = [layer_name(i) for i in range(c.num_hidden_layers - layers, c.num_hidden_layers)]
  act = encoder.activation(c)
  params = {k: v for k, v in model.params.items() if k != "classifier"}

  @jax.jit
  def sums(batch):
    _, state = module_for(c).apply(
        {"params": params, "buffers": model.variables.get("buffers", {})}, batch["tokens"],
        batch.get("positions"), batch.get("segment_ids"),
        capture_intermediates=lambda mdl, _: mdl.name == "up_proj", mutable=["intermediates"])
    real = (batch["segment_ids"] != 0).astype(jnp.float32)[..., None]  # [B, T, 1]
    inter = state["intermediates"]
    return {n: jnp.sum(act(inter[n]["mlp"]["up_proj"]["__call__"][0]) * real, (0, 1)) for n in names}, real.sum()

  total, count = None, 0.0
  for batch in batches:
    s, n = sums({k: jnp.asarray(v) for k, v in batch.items() if k != "label"})
    total = s if total is None else jax.tree_util.tree_map(jnp.add, total, s)
    count += float(n)
  return {n: np.asarray(v) / max(count, 1.0) for n, v in total.items()}


def prune(params: dict, activations: dict, rho: float) -> tuple[dict, dict]:
  """(params with the rho least active FFN neurons of each listed layer zeroed, {layer: neuron ids}).

  A pruned neuron's up_proj column and bias and its down_proj row become 0, so it
  adds nothing to the layer's output.
  """
  indicators._check_rho(rho)
  out = jax.tree_util.tree_map(lambda x: x, params)
  pruned = {}
  for name, a in activations.items():
    ids = np.argsort(a, kind="stable")[:round(rho * a.size)]
    mlp = dict(out[name]["mlp"])
    mlp["up_proj"] = {"kernel": mlp["up_proj"]["kernel"].at[:, ids].set(0),
                      "bias": mlp["up_proj"]["bias"].at[ids].set(0)}
    mlp["down_proj"] = {**mlp["down_proj"], "kernel": mlp["down_proj"]["kernel"].at[ids].set(0)}
    out[name] = {**out[name], "mlp": mlp}
    pruned[name] = ids.tolist()
  return out, pruned
