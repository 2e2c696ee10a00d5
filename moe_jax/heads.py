"""Task heads on an encoder or a decoder: sequence and token classifiers, sentence embeddings.

A head sits beside the model's parameter tree under its own top-level name
(`params["classifier"]`, as a reward model's `params["value_head"]`), so
`moe_jax.trainable` trains it with any mode: declare it with
`TrainableSpec.with_heads({CLASSIFIER: CLASSIFIER_AXES})`.

  sequence_logits   BertForSequenceClassification on an encoder (the classifier
                    on the pooled first token); LlamaForSequenceClassification
                    on a decoder (on the final hidden state of each row's last
                    non-padding token).
  token_logits      BertForTokenClassification: the classifier on every token.
  sentence_embedding  sentence-transformers' mean pooling over non-padding
                    tokens, L2-normalised (all-MiniLM-L6-v2's recipe).

The loss functions take the trainer's signature, (params, buffers, config,
batch) with batch {"tokens", "segment_ids", "positions"} (the last two may be
left out: defaults as the model's) and, for encoders, an optional
"token_type_ids" (all [B, T]). Dimension letters are model.py's; C is
the number of labels.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from moe_jax import axes as ax
from moe_jax.config import ModelConfig
from moe_jax.model import Model, module_for

CLASSIFIER = "classifier"  # where a model holds the head: params["classifier"], beside the model's
# Its logical axes: the kernel's input is the model width; the C labels are few, so replicated.
CLASSIFIER_AXES = {"kernel": P(ax.EMBED, None), "bias": P(None)}


def init_classifier(config: ModelConfig, num_labels: int, seed: int = 0) -> dict:
  """A classifier {"kernel": [D, C] normal(initializer_range), "bias": [C] zeros}, float32."""
  kernel = config.initializer_range * jax.random.normal(
      jax.random.key(seed), (config.hidden_size, num_labels), jnp.float32)
  return {"kernel": kernel, "bias": jnp.zeros((num_labels,), jnp.float32)}


def heads_from_hf(tensors) -> dict:
  """The classifier of a transformers `*For{Sequence,Token}Classification` checkpoint.

  tensors: a mapping with `in` and `.get(name)` (a dict, or `hf.SafetensorsDir`)
  holding BERT's `classifier.weight` [C, D] and `classifier.bias` [C], or a
  Llama-family `score.weight` [C, D] (no bias).
  """
  for prefix in ("classifier", "score"):
    if f"{prefix}.weight" in tensors:
      head = {"kernel": jnp.asarray(np.asarray(tensors.get(f"{prefix}.weight"), np.float32).T)}
      if f"{prefix}.bias" in tensors:
        head["bias"] = jnp.asarray(np.asarray(tensors.get(f"{prefix}.bias"), np.float32))
      return head
  raise KeyError("no classifier in the tensors: expected 'classifier.weight' or 'score.weight'")


def _classify(head: dict, x):
  """x: [..., D] -> [..., C] float32; a classifier without "bias" (Llama's `score`) has none."""
  y = x.astype(jnp.float32) @ head["kernel"].astype(jnp.float32)
  return y + head["bias"].astype(jnp.float32) if "bias" in head else y


def _forward(params, buffers, config: ModelConfig, batch: dict):
  """The model's forward pass over params without the head: EncoderOutput, or Output with hidden."""
  variables = {"params": {k: v for k, v in params.items() if k != CLASSIFIER}, "buffers": buffers}
  args = (variables, batch["tokens"], batch.get("positions"), batch.get("segment_ids"))
  types = batch.get("token_type_ids")
  if config.is_encoder:
    return module_for(config).apply(*args, token_type_ids=types)
  if types is not None:
    raise ValueError(f"batch['token_type_ids']: a {config.model_type!r} decoder has no token types")
  return module_for(config).apply(*args, return_hidden=True)


def _dropout(x, rate: float, rng):
  if not rate:
    return x
  if rng is None:
    raise ValueError("dropout > 0 needs an rng")
  keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0)


def last_token_index(segment_ids):
  """[B] index of each row's last non-padding token (segment id != 0), left or right padded.

  As transformers' `*ForSequenceClassification` decoders pick it: the rightmost
  non-padding position (0 for an all-padding row).
  """
  t = segment_ids.shape[1]
  return jnp.argmax(jnp.arange(t) * (segment_ids != 0), axis=-1)


def sequence_logits(params, buffers, config: ModelConfig, batch: dict, dropout: float = 0.0,
                    rng=None):
  """([B, C] float32 logits, MoEAux) of one sequence per row.

  params: the model's tree plus params["classifier"]. An encoder classifies its
  pooled output (dropout on it, at `dropout` with `rng`, as
  BertForSequenceClassification trains; none by default); a decoder classifies
  the final hidden state of each row's last non-padding token.
  """
  out = _forward(params, buffers, config, batch)
  if config.is_encoder:
    x = out.pooled  # [B, D]
  else:
    segments = batch.get("segment_ids")
    last = last_token_index(jnp.ones_like(batch["tokens"]) if segments is None else segments)
    x = jnp.take_along_axis(out.hidden, last[:, None, None], axis=1)[:, 0]  # [B, D]
  return _classify(params[CLASSIFIER], _dropout(x, dropout, rng)), out.aux


def token_logits(params, buffers, config: ModelConfig, batch: dict):
  """[B, T, C] float32 logits of every token (BertForTokenClassification; padding's are junk)."""
  return _classify(params[CLASSIFIER], _forward(params, buffers, config, batch).hidden)


def mean_pool(hidden, mask):
  """hidden: [B, T, D], mask: [B, T] (nonzero = a real token) -> [B, D] float32 mean over tokens."""
  m = mask.astype(jnp.float32)[..., None]  # [B, T, 1]
  total = jnp.sum(hidden.astype(jnp.float32) * m, axis=1)
  return total / jnp.maximum(jnp.sum(m, axis=1), 1e-9)  # sentence-transformers' clamp


def sentence_embedding(model: Model, tokens, segment_ids, normalize: bool = True):
  """[B, D] sentence embeddings: the mean of the final hidden states over non-padding tokens
  (segment id != 0), L2-normalised unless not `normalize` (all-MiniLM-L6-v2's recipe)."""
  segment_ids = jnp.asarray(segment_ids, jnp.int32)
  hidden = model.apply(tokens, segment_ids=segment_ids, return_hidden=True).hidden
  emb = mean_pool(hidden, segment_ids != 0)
  if normalize:  # torch.nn.functional.normalize's eps
    emb = emb / jnp.maximum(jnp.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
  return emb


def with_classifier(model: Model, num_labels: int, seed: int = 0) -> Model:
  """`model` with a classifier of `num_labels`: its own if it has one of that size, else a new one."""
  head = model.params.get(CLASSIFIER)
  if head is None or head["kernel"].shape[-1] != num_labels:
    head = init_classifier(model.config, num_labels, seed)
  return Model(model.config, {**model.variables, "params": {**model.params, CLASSIFIER: head}})


def load_classifier(model: Model, path: str) -> Model:
  """`model` with the classifier saved at `path` (the `classifier.npz` a run's hf/ export holds)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no classifier head (a finished classify run exports one)")
  with np.load(path) as f:
    head = {k: jnp.asarray(f[k]) for k in f.files}
  if "kernel" not in head or head["kernel"].shape[0] != model.config.hidden_size:
    raise ValueError(f"{path}: expected a 'kernel' [{model.config.hidden_size}, C], "
                     f"got {({k: v.shape for k, v in head.items()})}")
  return Model(model.config, {**model.variables, "params": {**model.params, CLASSIFIER: head}})
