"""BERT-style bidirectional encoders on the decoders' stack; any layer may be a DeepSeekMoE block.

`Encoder` is the Flax module for `model_type="bert"` and `"mpnet"`: word,
learned-position and (BERT) token-type embeddings, summed and LayerNormed;
`num_hidden_layers` post-LN layers, x = LN(x + attn(x)) then x = LN(x + ffn(x)),
every projection with a bias; and the pooler, tanh(dense(hidden state of each
row's first token)).

MPNet (all-mpnet-base-v2) is the same stack with three differences: no
token-type embeddings (`type_vocab_size=0`); position-table rows that start past
the padding row (row = padding_idx + 1 + position, padding_idx = 1, as
transformers' `create_position_ids_from_input_ids` numbers them); and a relative
position bias added to every layer's attention scores: the key-minus-query
distance falls into one of 32 T5-style bidirectional buckets (exact up to 8,
logarithmic up to 128, `relative_position_bucket`), and one learned
[buckets, heads] table (`relative_attention_bias`) gives each head's bias. The
bias is computed once per forward pass and shared by the layers.

`positions` [B, T] means each token's 0-based index within its own sequence,
in every family: BERT reads row `positions` of its position table (default
0..T-1), MPNet row `positions + 2` (padding, segment 0, reads row 1) and takes
its relative distances as differences of `positions`. MPNet's default counts
the real tokens of each segment (`default_positions`), so a padded or packed
row computes what each of its sequences computes alone, and the ids equal
transformers' for a padded batch. Explicit positions 0..n-1 (what
`moe_jax.classify` writes for every encoder) are right for both families.

Attention is the decoders' segment masking without the causal part: a token
sees every token of its own segment and no other, and segment 0 is padding, so
padded rows and packed rows share one mechanism (`attention.attention_mask`).
Padding never changes what the other tokens compute.

An MoE encoder is a config away: a layer that `config.is_moe_layer(i)` runs
`moe.MoE` (DeepSeekMoE's routed and shared SwiGLU experts) instead of the dense
`hidden_act` MLP. Layers are named as the decoder names them (`layers_{i}`,
whose FFN is `mlp`), so the routed experts sit at `layers.experts_path(i)`,
where ESFT, the trainers and sharding look for them.

The staged API (early exits, cascades) runs the same computation a piece at a
time through `module.apply(variables, ..., method=...)`:

    m = Encoder(config)
    x = m.apply(v, ids, positions, segment_ids, token_type_ids, method="embed")  # [B, T, D]
    for i in range(config.num_hidden_layers):  # on any subset of rows, i static
      x = m.apply(v, i, x, segment_ids, positions, method="layer")             # [B, T, D]
    pooled = m.apply(v, x, method="pool")                                       # [B, D]

`layer` recomputes the mask (and MPNet's bias) from `segment_ids` and
`positions`; pass it the positions `embed` used (`default_positions(config,
ids, segment_ids)` when they were defaulted). The composition equals
`__call__` bitwise, and `EncoderOutput.layer_first` holds every layer's
first-token state for internal classifiers.

Dimension letters are those of layers.py (B, T, D, N, H, F, E, ...).
"""

from __future__ import annotations

import functools
import math

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from moe_jax import axes as ax
from moe_jax.attention import Hooks, attend, attention_mask
from moe_jax.config import ModelConfig
from moe_jax.layers import REMAT_POLICIES, dense, layer_name
from moe_jax.moe import MoE, MoEAux, sum_aux

MPNET_PADDING_IDX = 1  # transformers' MPNetEmbeddings hard-codes it (the <pad> id)
MAX_DISTANCE = 128  # MPNet's (and T5's) largest distinguished relative distance


@flax.struct.dataclass
class EncoderOutput:
  """What an encoder's forward pass returns."""

  hidden: jax.Array  # [B, T, D] the last layer's output (after its LayerNorm)
  pooled: jax.Array  # [B, D] tanh(dense(hidden[:, 0])): BERT's pooler on each row's first token
  aux: MoEAux  # summed over MoE layers; expert_counts is [L_moe, E] (zero rows when dense)
  layer_first: jax.Array | None = None  # [L, B, D] each layer's output at position 0


# transformers' names: "gelu" is the exact (erf) GELU, "gelu_new" and "gelu_pytorch_tanh" the tanh
# approximation; every activation here is a plain MLP's, never gated.
_ACTIVATIONS = {"gelu": functools.partial(jax.nn.gelu, approximate=False),
                "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
                "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
                "relu": jax.nn.relu, "silu": jax.nn.silu}


def activation(config: ModelConfig):
  """The MLP's activation function (`hidden_act`), as the encoder applies it."""
  return _ACTIVATIONS[config.hidden_act]


def _layer_norm(c: ModelConfig, name: str) -> nn.LayerNorm:
  # Two-pass variance: BERT's activations have large means, where E[x^2] - E[x]^2 loses digits.
  return nn.LayerNorm(
      epsilon=c.layer_norm_eps, dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype),
      use_fast_variance=False, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, (ax.NORM,)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (ax.NORM,)))


def _embed(c: ModelConfig, rows: int, axes: tuple, name: str, features: int | None = None) -> nn.Embed:
  return nn.Embed(rows, features or c.hidden_size, dtype=jnp.dtype(c.dtype),
                  param_dtype=jnp.dtype(c.param_dtype), name=name,
                  embedding_init=nn.with_logical_partitioning(
                      nn.initializers.normal(c.initializer_range), axes))


# MPNet's relative positions ----------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _bucket_of_distance(num_buckets: int, max_distance: int) -> np.ndarray:
  """[max_distance + 1] the one-direction bucket of |distance| 0..max_distance (farther: the last).

  Computed once on the host in float32 with transformers' operations, so the
  truncation of log-spaced values agrees with it exactly, whatever XLA does to
  the arithmetic inside a jit.
  """
  half = num_buckets // 2
  max_exact = half // 2
  n = np.arange(max_distance + 1)
  scaled = (np.log(np.maximum(n, 1).astype(np.float32) / np.float32(max_exact))
            / np.float32(math.log(max_distance / max_exact)) * np.float32(half - max_exact))
  large = np.minimum(max_exact + scaled.astype(np.int64), half - 1)
  return np.where(n < max_exact, n, large).astype(np.int32)


def relative_position_bucket(relative_position, num_buckets: int = 32,
                             max_distance: int = MAX_DISTANCE):
  """T5 / MPNet bidirectional buckets of `relative_position` (key - query), any int array.

  Half the buckets for keys after the query, half for keys at or before it; in
  each half the first quarter of the buckets are exact distances, the rest
  log-spaced up to `max_distance`, beyond which all distances share the last.
  Equal to transformers' `MPNetEncoder.relative_position_bucket`.
  """
  table = jnp.asarray(_bucket_of_distance(num_buckets, max_distance))
  rel = jnp.asarray(relative_position).astype(jnp.int32)
  after = (rel > 0).astype(jnp.int32) * (num_buckets // 2)
  return after + table[jnp.minimum(jnp.abs(rel), max_distance)]


def default_positions(config: ModelConfig, input_ids, segment_ids):
  """[B, T] int32 the positions the encoder uses when given none.

  BERT: 0..T-1 in every row. MPNet: each token's index among the real tokens of
  its segment (real: segment != 0 and, as transformers counts, id != <pad>;
  `input_ids` may be None to count by segments alone), 0 for the others: a
  padded row's tokens are 0..n-1, and each packed sequence restarts at 0.
  """
  b, t = segment_ids.shape
  if config.model_type != "mpnet":
    return jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  real = segment_ids != 0
  if input_ids is not None:
    real &= input_ids != MPNET_PADDING_IDX
  same = segment_ids[:, :, None] == segment_ids[:, None, :]  # [B, T, S]
  upto = jnp.arange(t)[None, :] <= jnp.arange(t)[:, None]  # [T, S]: key slot <= query slot
  count = jnp.sum(same & upto[None] & real[:, None, :], axis=-1, dtype=jnp.int32)  # [B, T]
  return jnp.where(real, count - 1, 0)


# Layers ------------------------------------------------------------------------------------

class EncoderAttention(nn.Module):
  """Bidirectional multi-head self-attention with q, k, v and output biases (BERT's)."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x, mask, bias=None):
    """x: [B, T, D], mask: [B, 1, T, T] bool, bias: [B|1, N, T, T] float32 or None -> [B, T, D]."""
    c = self.config
    n, h = c.num_attention_heads, c.mha_head_dim
    q, k, v = (dense(c, (n, h), (ax.EMBED, ax.HEADS, ax.KV), name, use_bias=True)(x)
               for name in ("q_proj", "k_proj", "v_proj"))  # each [B, T, N, H]
    hooks = None if bias is None else Hooks(bias=bias)  # added to the scaled scores
    out = attend(q, k, v, mask, h ** -0.5, q.dtype, hooks)  # [B, T, N, H], softmax in float32
    return dense(c, c.hidden_size, (ax.HEADS, ax.KV, ax.EMBED), "o_proj", in_axes=(-2, -1),
                 use_bias=True)(out)


class EncoderMLP(nn.Module):
  """down(act(up(x))): BERT's intermediate and output projections, with biases."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x):  # x: [B, T, D] -> [B, T, D]
    c = self.config
    h = dense(c, c.intermediate_size, (ax.EMBED, ax.MLP), "up_proj", use_bias=True)(x)  # [B, T, F]
    return dense(c, c.hidden_size, (ax.MLP, ax.EMBED), "down_proj",
                 use_bias=True)(_ACTIVATIONS[c.hidden_act](h))


class EncoderLayer(nn.Module):
  """Post-LN attention then post-LN FFN (a DeepSeekMoE block where `moe`, else `EncoderMLP`)."""

  config: ModelConfig
  moe: bool
  selected: tuple[int, ...] | None = None  # ESFT's split expert storage: see moe.RoutedExperts

  @nn.compact
  def __call__(self, x, mask, token_mask, bias=None):
    """x: [B, T, D], mask: [B, 1, T, T], token_mask: [B, T] (False = padding),
    bias: [B|1, N, T, T] (MPNet's relative position bias) or None."""
    c = self.config
    x = _layer_norm(c, "post_attention_layernorm")(
        x + EncoderAttention(c, name="self_attn")(x, mask, bias))
    if self.moe:
      h, aux = MoE(c, self.selected, name="mlp")(x, token_mask)
    else:
      h, aux = EncoderMLP(c, name="mlp")(x), None
    return _layer_norm(c, "post_mlp_layernorm")(x + h), aux


class Encoder(nn.Module):
  """A BERT-style encoder (`config.is_encoder`: BERT or MPNet), dense or with DeepSeekMoE layers.

  `__call__` is the whole forward pass; `embed`, `layer` and `pool` are its
  stages (module docstring), callable with `apply(..., method=...)`.
  """

  config: ModelConfig

  def setup(self):
    c = self.config
    self.embed_tokens = _embed(c, c.vocab_size, (ax.VOCAB, ax.EMBED), "embed_tokens")
    if c.type_vocab_size:
      self.embed_types = _embed(c, c.type_vocab_size, (ax.TABLE, ax.EMBED), "embed_types")
    self.embed_positions = _embed(c, c.max_position_embeddings, (ax.TABLE, ax.EMBED),
                                  "embed_positions")
    self.embed_norm = _layer_norm(c, "embed_norm")
    if c.relative_attention_num_buckets:
      self.relative_attention_bias = _embed(c, c.relative_attention_num_buckets,
                                            (ax.TABLE, ax.HEADS), "relative_attention_bias",
                                            features=c.num_attention_heads)
    split = None if c.expert_split is None else dict(c.expert_split)
    layer_cls = EncoderLayer
    if c.remat != "none":
      layer_cls = nn.remat(EncoderLayer, policy=REMAT_POLICIES[c.remat])
    # A list attribute names its modules layers_0, layers_1, ... (`layers.layer_name`).
    self.layers = [layer_cls(c, c.is_moe_layer(i), None if split is None else tuple(split.get(i, ())),
                             name=layer_name(i)) for i in range(c.num_hidden_layers)]
    # A D x D kernel: its output is named `mlp` so its two dims never share a mesh axis.
    self.pooler = dense(c, c.hidden_size, (ax.EMBED, ax.MLP), "pooler", use_bias=True)

  # Stages ----------------------------------------------------------------------------------

  def _inputs(self, input_ids, positions, segment_ids, token_type_ids):
    """Checked inputs with the defaults filled in: (segment_ids, positions)."""
    chex.assert_rank(input_ids, 2)
    chex.assert_type(input_ids, int)
    chex.assert_equal_shape([input_ids] + [a for a in (positions, segment_ids, token_type_ids)
                                           if a is not None])
    if segment_ids is None:
      segment_ids = jnp.ones(input_ids.shape, jnp.int32)
    if positions is None:
      positions = default_positions(self.config, input_ids, segment_ids)
    return segment_ids, positions

  def embed(self, input_ids, positions=None, segment_ids=None, token_type_ids=None):
    """input_ids: int [B, T] -> the embeddings' LayerNormed sum x [B, T, D].

    positions, segment_ids: as `__call__` takes them (defaults: `default_positions`, all ones).
    token_type_ids: [B, T] segment A/B ids (default zeros); an error for MPNet, which has none.
    """
    c = self.config
    segment_ids, positions = self._inputs(input_ids, positions, segment_ids, token_type_ids)
    b, t = input_ids.shape
    x = self.embed_tokens(input_ids)
    if c.type_vocab_size:
      if token_type_ids is None:
        token_type_ids = jnp.zeros((b, t), jnp.int32)
      x = x + self.embed_types(token_type_ids)
    elif token_type_ids is not None:
      raise ValueError(f"token_type_ids: a {c.model_type!r} encoder has no token-type embeddings "
                       "(type_vocab_size=0)")
    if c.model_type == "mpnet":  # rows past the padding row; padding reads the padding row
      real = (segment_ids != 0) & (input_ids != MPNET_PADDING_IDX)
      positions = jnp.where(real, positions + MPNET_PADDING_IDX + 1, MPNET_PADDING_IDX)
    return self.embed_norm(x + self.embed_positions(positions))  # [B, T, D]

  def _attention_inputs(self, segment_ids, positions):
    """The [B, 1, T, T] mask and MPNet's [B, N, T, T] float32 bias (None for BERT)."""
    mask = attention_mask(segment_ids, segment_ids, 0, causal=False)  # [B, 1, T, T]
    c = self.config
    if not c.relative_attention_num_buckets:
      return mask, None
    if positions is None:
      positions = default_positions(c, None, segment_ids)
    rel = positions[:, None, :] - positions[:, :, None]  # [B, T, S]: key - query
    buckets = relative_position_bucket(rel, c.relative_attention_num_buckets)
    bias = self.relative_attention_bias(buckets).astype(jnp.float32)  # [B, T, S, N]
    return mask, jnp.transpose(bias, (0, 3, 1, 2))

  def layer(self, i: int, x, segment_ids=None, positions=None, with_aux: bool = False):
    """Layer i (static) on x [B, T, D] -> [B, T, D] (and its MoEAux or None, `with_aux`).

    segment_ids: [B, T] (default all ones); positions: [B, T], what `embed` used
    (only MPNet reads them; its default counts by `segment_ids` alone).
    """
    b, t, _ = x.shape
    if segment_ids is None:
      segment_ids = jnp.ones((b, t), jnp.int32)
    mask, bias = self._attention_inputs(segment_ids, positions)
    x, aux = self.layers[i](x, mask, segment_ids != 0, bias)
    return (x, aux) if with_aux else x

  def pool(self, x):
    """x: [B, T, D] -> [B, D]: tanh(dense(x[:, 0])), BERT's pooler."""
    return jnp.tanh(self.pooler(x[:, 0]))

  # The whole pass --------------------------------------------------------------------------

  def __call__(self, input_ids, positions=None, segment_ids=None, cache=None,
               return_hidden: bool = False, token_type_ids=None) -> EncoderOutput:
    """input_ids: int [B, T].

    positions: [B, T] each token's index in its sequence (module docstring; default
      `default_positions`: 0..T-1 for BERT, MPNet's count of real tokens).
    segment_ids: [B, T] int, 0 for padding; a token attends to every token of
      its own segment (default: all ones).
    cache: must be None (an encoder reads the whole sequence at once).
    return_hidden: accepted for the decoder's signature; the hidden states are always returned.
    token_type_ids: [B, T] segment A/B ids (default zeros; BERT only).
    """
    c = self.config
    if cache is not None:
      raise ValueError("Encoder: no KV cache; a bidirectional encoder reads the whole sequence "
                       "at once and cannot decode token by token")
    segment_ids, positions = self._inputs(input_ids, positions, segment_ids, token_type_ids)
    b, t = input_ids.shape
    x = self.embed(input_ids, positions, segment_ids, token_type_ids)
    mask, bias = self._attention_inputs(segment_ids, positions)  # once for every layer
    auxes, first = [], []
    for i in range(c.num_hidden_layers):
      x, aux = self.layers[i](x, mask, segment_ids != 0, bias)
      first.append(x[:, 0])
      if aux is not None:
        auxes.append(aux)
    pooled = self.pool(x)
    chex.assert_shape(x, (b, t, c.hidden_size))
    chex.assert_shape(pooled, (b, c.hidden_size))
    return EncoderOutput(hidden=x, pooled=pooled, aux=sum_aux(auxes, c.n_routed_experts),
                         layer_first=jnp.stack(first))
