"""Expert relevance scores from running a model over task data (ESFT paper Sec. 3.3).

The MoE layers sow their routing (`topk_idx`, `topk_weights`) into the
"intermediates" collection; this module runs the model over batches of packed
task rows, feeds each layer's choices for real (non-padding) tokens into a
`ScoreAccumulator`, and stops once `n_tokens` tokens were seen.
"""

from __future__ import annotations

import functools
from typing import Iterable

import jax
import numpy as np

from moe_jax.esft.selection import ExpertScores, ScoreAccumulator
from moe_jax.layers import layer_name
from moe_jax.model import Model, module_for


@functools.partial(jax.jit, static_argnames=("config",))
def _routing(config, variables, tokens, positions, segment_ids):
  _, state = module_for(config).apply(variables, tokens, positions, segment_ids,
                                     mutable=["intermediates"])
  inter = state["intermediates"]
  return {layer: inter[layer_name(layer)]["mlp"]["routing"][0] for layer in config.moe_layers}


def score_experts(model: Model, batches: Iterable[dict], n_tokens: int) -> ExpertScores:
  """Gate and token scores of every routed expert over about `n_tokens` task tokens.

  batches: dicts with "tokens", "positions", "segment_ids" [B, T] (padding has
  segment 0 and is not counted) and optionally "score_mask" [B, T] bool, the
  tokens to count (all real ones by default; an encoder's [CLS] alone, say). The
  last batch is cut so exactly min(n_tokens, available) tokens count.
  """
  c = model.config
  if not c.moe_layers:
    raise ValueError("the model has no MoE layers to score")
  acc = ScoreAccumulator(c.n_routed_experts, c.num_experts_per_tok)
  seen = 0
  for batch in batches:
    routing = _routing(c, model.variables, batch["tokens"], batch["positions"], batch["segment_ids"])
    mask = np.asarray(batch.get("score_mask", np.asarray(batch["segment_ids"]) != 0)).reshape(-1)
    keep_upto = np.cumsum(mask) <= n_tokens - seen
    mask &= keep_upto
    for layer, r in routing.items():
      acc.add(layer, r["topk_idx"], r["topk_weights"], mask)
    seen += int(mask.sum())
    if seen >= n_tokens:
      break
  if seen == 0:
    raise ValueError("no tokens to score experts on (empty dataset?)")
  return acc.result()
