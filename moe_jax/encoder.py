"""BERT-style bidirectional encoders on the decoders' stack; any layer may be a DeepSeekMoE block.

`Encoder` is the Flax module for `model_type="bert"`: word, learned-position
and token-type embeddings, summed and LayerNormed; `num_hidden_layers` post-LN
layers, x = LN(x + attn(x)) then x = LN(x + ffn(x)), every projection with a
bias; and the pooler, tanh(dense(hidden state of each row's first token)).

Attention is the decoders' segment masking without the causal part: a token
sees every token of its own segment and no other, and segment 0 is padding, so
padded rows and packed rows share one mechanism (`attention.attention_mask`).
Padding never changes what the other tokens compute.

An MoE encoder is a config away: a layer that `config.is_moe_layer(i)` runs
`moe.MoE` (DeepSeekMoE's routed and shared SwiGLU experts) instead of the dense
`hidden_act` MLP. Layers are named as the decoder names them (`layers_{i}`,
whose FFN is `mlp`), so the routed experts sit at `layers.experts_path(i)`,
where ESFT, the trainers and sharding look for them.

Dimension letters are those of layers.py (B, T, D, N, H, F, E, ...).
"""

from __future__ import annotations

import functools

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from moe_jax import axes as ax
from moe_jax.attention import attend, attention_mask
from moe_jax.config import ModelConfig
from moe_jax.layers import REMAT_POLICIES, dense, layer_name
from moe_jax.moe import MoE, MoEAux, sum_aux


@flax.struct.dataclass
class EncoderOutput:
  """What an encoder's forward pass returns."""

  hidden: jax.Array  # [B, T, D] the last layer's output (after its LayerNorm)
  pooled: jax.Array  # [B, D] tanh(dense(hidden[:, 0])): BERT's pooler on each row's first token
  aux: MoEAux  # summed over MoE layers; expert_counts is [L_moe, E] (zero rows when dense)


# transformers' names: "gelu" is the exact (erf) GELU, "gelu_new" and "gelu_pytorch_tanh" the tanh
# approximation; every activation here is a plain MLP's, never gated.
_ACTIVATIONS = {"gelu": functools.partial(jax.nn.gelu, approximate=False),
                "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
                "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
                "relu": jax.nn.relu, "silu": jax.nn.silu}


def _layer_norm(c: ModelConfig, name: str) -> nn.LayerNorm:
  # Two-pass variance: BERT's activations have large means, where E[x^2] - E[x]^2 loses digits.
  return nn.LayerNorm(
      epsilon=c.layer_norm_eps, dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype),
      use_fast_variance=False, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, (ax.NORM,)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (ax.NORM,)))


def _embed(c: ModelConfig, rows: int, axes: tuple, name: str) -> nn.Embed:
  return nn.Embed(rows, c.hidden_size, dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype),
                  name=name, embedding_init=nn.with_logical_partitioning(
                      nn.initializers.normal(c.initializer_range), axes))


class EncoderAttention(nn.Module):
  """Bidirectional multi-head self-attention with q, k, v and output biases (BERT's)."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x, mask):
    """x: [B, T, D], mask: [B, 1, T, T] bool -> [B, T, D]."""
    c = self.config
    n, h = c.num_attention_heads, c.mha_head_dim
    q, k, v = (dense(c, (n, h), (ax.EMBED, ax.HEADS, ax.KV), name, use_bias=True)(x)
               for name in ("q_proj", "k_proj", "v_proj"))  # each [B, T, N, H]
    out = attend(q, k, v, mask, h ** -0.5, q.dtype)  # [B, T, N, H], softmax in float32
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
  def __call__(self, x, mask, token_mask):
    """x: [B, T, D], mask: [B, 1, T, T], token_mask: [B, T] (False = padding)."""
    c = self.config
    x = _layer_norm(c, "post_attention_layernorm")(x + EncoderAttention(c, name="self_attn")(x, mask))
    if self.moe:
      h, aux = MoE(c, self.selected, name="mlp")(x, token_mask)
    else:
      h, aux = EncoderMLP(c, name="mlp")(x), None
    return _layer_norm(c, "post_mlp_layernorm")(x + h), aux


class Encoder(nn.Module):
  """A BERT-style encoder (`config.is_encoder`), dense or with DeepSeekMoE layers."""

  config: ModelConfig

  @nn.compact
  def __call__(self, input_ids, positions=None, segment_ids=None, cache=None,
               return_hidden: bool = False, token_type_ids=None) -> EncoderOutput:
    """input_ids: int [B, T].

    positions: [B, T] rows of the learned position table (default 0..T-1).
    segment_ids: [B, T] int, 0 for padding; a token attends to every token of
      its own segment (default: all ones).
    cache: must be None (an encoder reads the whole sequence at once).
    return_hidden: accepted for the decoder's signature; the hidden states are always returned.
    token_type_ids: [B, T] segment A/B ids (default zeros).
    """
    c = self.config
    if cache is not None:
      raise ValueError("Encoder: no KV cache; a bidirectional encoder reads the whole sequence "
                       "at once and cannot decode token by token")
    chex.assert_rank(input_ids, 2)
    chex.assert_type(input_ids, int)
    chex.assert_equal_shape([input_ids] + [a for a in (positions, segment_ids, token_type_ids)
                                           if a is not None])
    b, t = input_ids.shape
    if segment_ids is None:
      segment_ids = jnp.ones((b, t), jnp.int32)
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    if token_type_ids is None:
      token_type_ids = jnp.zeros((b, t), jnp.int32)
    x = (_embed(c, c.vocab_size, (ax.VOCAB, ax.EMBED), "embed_tokens")(input_ids)
         + _embed(c, c.type_vocab_size, (ax.TABLE, ax.EMBED), "embed_types")(token_type_ids)
         + _embed(c, c.max_position_embeddings, (ax.TABLE, ax.EMBED), "embed_positions")(positions))
    x = _layer_norm(c, "embed_norm")(x)  # [B, T, D]
    mask = attention_mask(segment_ids, segment_ids, 0, causal=False)  # [B, 1, T, T]
    split = None if c.expert_split is None else dict(c.expert_split)
    layer_cls = EncoderLayer
    if c.remat != "none":
      layer_cls = nn.remat(EncoderLayer, policy=REMAT_POLICIES[c.remat])
    auxes = []
    for i in range(c.num_hidden_layers):
      selected = None if split is None else tuple(split.get(i, ()))
      x, aux = layer_cls(c, c.is_moe_layer(i), selected, name=layer_name(i))(
          x, mask, segment_ids != 0)
      if aux is not None:
        auxes.append(aux)
    # A D x D kernel: its output is named `mlp` so its two dims never share a mesh axis.
    pooler = dense(c, c.hidden_size, (ax.EMBED, ax.MLP), "pooler", use_bias=True)
    pooled = jnp.tanh(pooler(x[:, 0]))  # [B, D]
    chex.assert_shape(x, (b, t, c.hidden_size))
    chex.assert_shape(pooled, (b, c.hidden_size))
    return EncoderOutput(hidden=x, pooled=pooled, aux=sum_aux(auxes, c.n_routed_experts))
