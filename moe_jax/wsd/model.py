"""The FormBERT head (`FormationMTLBertForSequenceClassification`) on any moe_jax encoder.

Per pair row "[CLS] context [SEP] gloss [SEP]" (B rows, T tokens, D the width,
F = 18 formations), as TobiasLee/FormBERT's model.py computes it:

  pooled = encoder(pair).pooled                                     # [B, D]
  e      = encoder.embed(context alone)   # word + position + type, LayerNorm; no layers  [B, T, D]
  z      = Linear(D, D) -> ReLU -> Linear(D, D) on every token of e  # [B, T, D]
  f_hat  = Linear(D, F)(mean over tokens of z)                      # [B, F] formation logits
  f      = the gold formation in training (teacher forcing), argmax f_hat at evaluation
  logits = classifier(pooled + E_form[f])                           # [B, 2], E_form [F, D]
  loss   = CE(logits, label) + 0.5 * CE(f_hat, gold formation)

The official mean runs over all T positions, padding included (its predictor
takes no mask): `pool_padding=True` replicates that; the default averages the
real tokens only (`heads.mean_pool`), so a row's prediction does not depend on
how far it is padded. The context's embeddings come from the encoder's own
`Encoder.embed` stage (shared weights: the formation loss trains the word
embeddings too). The official dropout on the pooled output and the embeddings
is left out (every moe_jax encoder computes deterministically).

All formation weights (E_form and the predictor) live under one head,
`params["formation"]`, so one `lr_scale` factor gives them the official
separate learning rate; the pair classifier is `heads.CLASSIFIER` (2 labels)
and learns at the base rate. A model without the formation head is the same
encoder without formations (the baseline).

Because E_form[f] is added before a linear classifier and f is one formation per
context, it shifts the logit margin of every candidate gloss of a context by the
same amount: it changes pair decisions (accuracy, F1) but, in exact arithmetic,
never the argmax over a context's candidates for given encoder weights (float32
rounding can flip nearly tied candidates). Sense-level accuracy can move
only through training (the bias it absorbs, the formation loss on the shared
embeddings). `tests/wsd_test.py` checks this by hand.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from moe_jax import axes as ax
from moe_jax import heads
from moe_jax.config import ModelConfig
from moe_jax.model import Model, module_for
from moe_jax.wsd.formations import NUM_FORMATIONS

FORMATION = "formation"  # the head holding every formation weight: params["formation"]
FORMATION_WEIGHT = 0.5  # the official `formation_cls_weight`
SOURCES = ("gold", "predicted", "none")  # where the added formation comes from
# Logical axes of params["formation"]; the D x D kernels name their output `mlp` so that their two
# dims never share a mesh axis (as the encoder's pooler), the small tables are replicated.
FORMATION_AXES = {
    "embedding": P(None, ax.EMBED),
    "predictor": {"mlp_in": {"kernel": P(ax.EMBED, ax.MLP), "bias": P(None)},
                  "mlp_out": {"kernel": P(ax.MLP, ax.EMBED), "bias": P(None)},
                  "classifier": {"kernel": P(ax.EMBED, None), "bias": P(None)}},
}


class FormationPredictor(nn.Module):
  """Per-token Linear(D, D) -> ReLU -> Linear(D, D), mean over tokens, Linear(D, F)."""

  hidden: int  # D
  init_std: float = 0.02  # BERT's initializer_range, as `init_weights` draws every Linear
  num_formations: int = NUM_FORMATIONS
  pool_padding: bool = False  # True: average over all T positions (the official code)

  @nn.compact
  def __call__(self, x, mask):
    """x: [B, T, D] context embeddings, mask: [B, T] (nonzero = real) -> [B, F] float32."""
    dense = lambda n, name: nn.Dense(n, kernel_init=nn.initializers.normal(self.init_std),
                                     name=name)
    z = dense(self.hidden, "mlp_out")(jax.nn.relu(dense(self.hidden, "mlp_in")(
        x.astype(jnp.float32))))  # [B, T, D]
    pooled = jnp.mean(z, axis=1) if self.pool_padding else heads.mean_pool(z, mask)  # [B, D]
    return dense(self.num_formations, "classifier")(pooled)


def init_formation(config: ModelConfig, seed: int = 0) -> dict:
  """params["formation"]: {"embedding": [F, D] normal(initializer_range), "predictor": {...}}."""
  k_emb, k_pred = jax.random.split(jax.random.key(seed))
  d = config.hidden_size
  predictor = FormationPredictor(d, config.initializer_range).init(
      k_pred, jnp.zeros((1, 1, d), jnp.float32), jnp.ones((1, 1), jnp.int32))["params"]
  emb = config.initializer_range * jax.random.normal(k_emb, (NUM_FORMATIONS, d), jnp.float32)
  return {"embedding": emb, "predictor": predictor}


def with_formbert(model: Model, use_formation: bool, seed: int = 0) -> tuple[Model, dict]:
  """`model` with a 2-label pair classifier and (if `use_formation`) the formation head, and
  the heads' logical axes for `TrainableSpec.with_heads`."""
  model = heads.with_classifier(model, 2, seed)
  axes = {heads.CLASSIFIER: heads.CLASSIFIER_AXES}
  if not use_formation:
    return model, axes
  params = {**model.params, FORMATION: init_formation(model.config, seed + 1)}
  return Model(model.config, {**model.variables, "params": params}), {**axes, FORMATION: FORMATION_AXES}


def _encoder_variables(params, buffers) -> dict:
  return {"params": {k: v for k, v in params.items() if k not in (FORMATION, heads.CLASSIFIER)},
          "buffers": buffers}


def context_embeddings(params, buffers, config: ModelConfig, batch: dict):
  """[B, T, D] the encoder's embedding-layer output of "[CLS] context [SEP]" (types 0, default
  positions), through the encoder's own `embed` stage."""
  tokens, segments = batch["context_tokens"], batch["context_segment_ids"]
  return module_for(config).apply(_encoder_variables(params, buffers), tokens, None, segments,
                                  method="embed")


def formation_logits(params, buffers, config: ModelConfig, batch: dict, pool_padding: bool = False):
  """[B, F] float32 the formation predictor's logits from the context alone."""
  x = context_embeddings(params, buffers, config, batch)
  return FormationPredictor(config.hidden_size, config.initializer_range,
                            pool_padding=pool_padding).apply(
      {"params": params[FORMATION]["predictor"]}, x, batch["context_segment_ids"])


def formbert_logits(params, buffers, config: ModelConfig, batch: dict, source: str = "gold",
                    pool_padding: bool = False):
  """([B, 2] pair logits, [B, F] formation logits or None, MoEAux).

  source: which formation is added to the pooled output: "gold" (batch["formation"],
  teacher forcing), "predicted" (argmax of the predictor) or "none". A model
  without params["formation"] adds none, whatever `source` says.
  """
  if source not in SOURCES:
    raise ValueError(f"formation source {source!r} is not one of {SOURCES}")
  types = batch.get("token_type_ids") if config.type_vocab_size else None
  out = module_for(config).apply(_encoder_variables(params, buffers), batch["tokens"],
                                 batch.get("positions"), batch.get("segment_ids"),
                                 token_type_ids=types)
  h = out.pooled.astype(jnp.float32)  # [B, D]
  f_logits = None
  if FORMATION in params:
    f_logits = formation_logits(params, buffers, config, batch, pool_padding)
    if source != "none":
      f = batch["formation"] if source == "gold" else jnp.argmax(f_logits, -1)  # [B]
      h = h + params[FORMATION]["embedding"].astype(jnp.float32)[f]
  head = params[heads.CLASSIFIER]
  logits = h @ head["kernel"].astype(jnp.float32) + head["bias"].astype(jnp.float32)
  return logits, f_logits, out.aux


def _nll(logits, labels):
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  return -jnp.take_along_axis(logp, labels[:, None], -1)[:, 0]


def formbert_loss(formation_weight: float = FORMATION_WEIGHT, pool_padding: bool = False):
  """The trainer's loss: mean over rows of CE_wsd + formation_weight * CE_formation (teacher
  forcing), plus the MoE balance losses; all-padding rows (filling a batch) count for nothing.

  Returns (loss, (joint loss sum, rows, MoEAux, {"wsd_ce", "formation_ce",
  "formation_accuracy"})); without a formation head the formation terms are 0.
  """

  def loss_fn(params, buffers, config, batch):
    logits, f_logits, aux = formbert_logits(params, buffers, config, batch, "gold", pool_padding)
    live = (batch["segment_ids"][:, 0] != 0).astype(jnp.float32)
    n = jnp.sum(live)
    wsd = jnp.sum(_nll(logits, batch["label"]) * live)
    form, hits = jnp.zeros(()), jnp.zeros(())
    if f_logits is not None:
      form = jnp.sum(_nll(f_logits, batch["formation"]) * live)
      hits = jnp.sum((jnp.argmax(f_logits, -1) == batch["formation"]) * live)
    total = wsd + formation_weight * form
    loss = total / jnp.maximum(n, 1.0) + aux.balance_loss + aux.device_balance_loss
    per = lambda s: s / jnp.maximum(n, 1.0)
    return loss, (total, n, aux, {"wsd_ce": per(wsd), "formation_ce": per(form),
                                  "formation_accuracy": per(hits)})

  return loss_fn
