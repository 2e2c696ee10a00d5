"""The causal language model (DeepSeek and Llama families) and the `Model` handle users hold.

`Transformer` is the Flax module: embedding, `num_hidden_layers` pre-norm decoder
layers (attention, then a dense SwiGLU for the first `first_k_dense_replace`
layers and a DeepSeekMoE block after), a final norm and the output head.
BERT-style encoders are `moe_jax.encoder.Encoder`; `module_for(config)` picks
the module a config describes, and everything generic (initialisation,
`Model.apply`, `logical_axes`, checkpoints) goes through it.

`Model` pairs a config with its variables ({"params"} plus, for V3, the router
bias under {"buffers"}) and is what `from_pretrained`, `save_pretrained` and
`generate` take: `model(input_ids)` returns logits (a decoder) or the final
hidden states (an encoder).

Dimension letters, used in every module's shapes and comments:
  B batch, T sequence (queries), S keys (the cache's length), D model width,
  V vocabulary, N attention heads, H head width, R latent rank (MLA),
  E routed experts, K experts per token, F an expert's hidden width.
moe.py adds G, A, C and M for the inside of a dispatch (see its docstring).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from moe_jax import axes as ax
from moe_jax.attention import Attention, Hooks, init_layer_cache
from moe_jax.config import ModelConfig
from moe_jax.encoder import Encoder, EncoderOutput
from moe_jax.layers import REMAT_POLICIES, SwiGLU, dense, layer_name, rms_norm
from moe_jax.moe import MoE, MoEAux, sum_aux


@flax.struct.dataclass
class Output:
  """What a forward pass returns."""

  logits: jax.Array  # [B, T, V]
  aux: MoEAux  # summed over MoE layers; expert_counts is [L_moe, E]
  cache: Any = None  # the updated decoding cache, when one was passed
  hidden: Any = None  # [B, T, D] final normed hidden states, when asked for


class DecoderLayer(nn.Module):
  """Pre-norm attention then pre-norm MLP (a DeepSeekMoE block where `moe`, else a dense SwiGLU)."""
  config: ModelConfig
  moe: bool
  selected: tuple[int, ...] | None = None  # ESFT's split expert storage: see moe.RoutedExperts

  @nn.compact
  def __call__(self, x, positions, q_segments, k_segments, cache=None, cache_index=0, hooks=None):
    c = self.config
    h, new_cache = Attention(c, name="self_attn")(
        rms_norm(c, "input_layernorm")(x), positions, q_segments, k_segments, cache, cache_index,
        hooks)
    x = x + h
    h = rms_norm(c, "post_attention_layernorm")(x)
    if self.moe:
      h, aux = MoE(c, self.selected, name="mlp")(h, q_segments != 0)
    else:
      h, aux = SwiGLU(c, c.intermediate_size, name="mlp")(h), None
    return x + h, aux, new_cache


class Transformer(nn.Module):
  """DeepSeekMoE / DeepSeek-V2 / DeepSeek-V3 decoder-only language model."""

  config: ModelConfig

  @nn.compact
  def __call__(self, input_ids, positions=None, segment_ids=None, cache=None,
               return_hidden: bool = False, hooks: Hooks | None = None) -> Output:
    """input_ids: int [B, T].

    positions: [B, T] rotary positions (default 0..T-1, or continuing the cache).
    segment_ids: [B, T] int, 0 for padding; tokens attend only within their
      segment (default: all ones).
    cache: from `init_cache`; the T tokens are written at cache["index"].
    hooks: interventions on attention (`moe_jax.attention.Hooks`), [L, ...] fields.
    """
    c = self.config
    chex.assert_rank(input_ids, 2)
    chex.assert_type(input_ids, int)
    chex.assert_equal_shape([input_ids] + [a for a in (positions, segment_ids) if a is not None])
    b, t = input_ids.shape
    if segment_ids is None:
      segment_ids = jnp.ones((b, t), jnp.int32)
    start = 0 if cache is None else cache["index"]
    if positions is None:
      positions = jnp.broadcast_to(start + jnp.arange(t, dtype=jnp.int32), (b, t))
    embed = nn.Embed(c.vocab_size, c.hidden_size, dtype=jnp.dtype(c.dtype),
                     param_dtype=jnp.dtype(c.param_dtype), name="embed_tokens",
                     embedding_init=nn.with_logical_partitioning(
                         nn.initializers.normal(c.initializer_range), (ax.VOCAB, ax.EMBED)))
    x = embed(input_ids)  # [B, T, D]
    if cache is None:
      k_segments = segment_ids
    else:
      k_segments = jax.lax.dynamic_update_slice(cache["segment_ids"], segment_ids, (0, start))
    split = None if c.expert_split is None else dict(c.expert_split)
    layer_cls = DecoderLayer
    if c.remat != "none" and cache is None:  # decoding has no backward pass
      layer_cls = nn.remat(DecoderLayer, policy=REMAT_POLICIES[c.remat])
    new_layers, auxes = [], []
    for i in range(c.num_hidden_layers):
      layer_cache = None if cache is None else cache["layers"][i]
      selected = None if split is None else tuple(split.get(i, ()))
      x, aux, new_cache = layer_cls(c, c.is_moe_layer(i), selected, name=layer_name(i))(
          x, positions, segment_ids, k_segments, layer_cache, start,
          None if hooks is None else hooks.layer(i))
      new_layers.append(new_cache)
      if aux is not None:
        auxes.append(aux)
    x = rms_norm(c, "norm")(x)
    if c.tie_word_embeddings:
      logits = embed.attend(x)
    else:
      logits = dense(c, c.vocab_size, (ax.EMBED, ax.VOCAB), "lm_head")(x)
    new_cache = None
    if cache is not None:
      new_cache = {"index": start + t, "segment_ids": k_segments, "layers": tuple(new_layers)}
    chex.assert_shape(logits, (b, t, c.vocab_size))
    return Output(logits=logits, aux=sum_aux(auxes, c.n_routed_experts), cache=new_cache,
                  hidden=x if return_hidden else None)


def init_cache(config: ModelConfig, batch: int, max_len: int) -> dict:
  """An empty decoding cache for `batch` sequences of up to `max_len` tokens."""
  return {"index": jnp.zeros((), jnp.int32),
          "segment_ids": jnp.zeros((batch, max_len), jnp.int32),
          "layers": tuple(init_layer_cache(config, batch, max_len)
                          for _ in range(config.num_hidden_layers))}


def module_for(config: ModelConfig) -> nn.Module:
  """The Flax module a config describes: `Encoder` for BERT-style configs, else `Transformer`."""
  return Encoder(config) if config.is_encoder else Transformer(config)


@functools.partial(jax.jit, static_argnames=("config", "return_hidden"))
def _forward(config, variables, input_ids, positions=None, segment_ids=None, cache=None,
             return_hidden=False, token_type_ids=None, hooks=None):
  if config.is_encoder:
    return Encoder(config).apply(variables, input_ids, positions, segment_ids, cache,
                                 token_type_ids=token_type_ids)
  return Transformer(config).apply(variables, input_ids, positions, segment_ids, cache,
                                   return_hidden, hooks)


@dataclasses.dataclass
class Model:
  """A config and its variables.

  `model(input_ids)` returns a decoder's logits [B, T, V], or an encoder's
  final hidden states [B, T, D] (`config.is_encoder`); `model.apply` returns the
  whole `Output` or `EncoderOutput` (with the pooled [B, D] and the MoE aux).
  """

  config: ModelConfig
  variables: dict  # {"params": ..., "buffers": ...(V3 only)}

  @property
  def params(self) -> dict:
    return self.variables["params"]

  @property
  def module(self) -> nn.Module:
    return module_for(self.config)

  def __call__(self, input_ids, **kwargs) -> jax.Array:
    out = self.apply(input_ids, **kwargs)
    return out.hidden if self.config.is_encoder else out.logits

  def apply(self, input_ids, positions=None, segment_ids=None, cache=None,
            return_hidden=False, token_type_ids=None, hooks: Hooks | None = None
            ) -> Output | EncoderOutput:
    """The full forward pass (jit-compiled).

    A decoder returns `Output` (logits, MoE aux, cache, hidden states when
    `return_hidden`) and takes attention `hooks` (`moe_jax.attention.Hooks`);
    an encoder returns `EncoderOutput` (hidden states, pooled, MoE aux) and
    takes `token_type_ids` [B, T] (segment A/B; default zeros). Each refuses the other's.
    """
    if token_type_ids is not None:
      if not self.config.is_encoder:
        raise ValueError(f"token_type_ids: a {self.config.model_type!r} decoder has no token "
                         "types (they are BERT's segment A/B embeddings)")
      token_type_ids = jnp.asarray(token_type_ids, jnp.int32)
    if hooks is not None and self.config.is_encoder:
      raise ValueError("hooks: attention hooks are for decoders; this config is an encoder")
    return _forward(self.config, self.variables, jnp.asarray(input_ids, jnp.int32), positions,
                    segment_ids, cache, return_hidden, token_type_ids, hooks)


def init_variables(config: ModelConfig, rng: jax.Array | int = 0) -> dict:
  """Random initial variables (normal(initializer_range) weights, unit norms)."""
  if isinstance(rng, int):
    rng = jax.random.key(rng)
  dummy = jnp.zeros((1, 1), jnp.int32)
  variables = jax.jit(module_for(config).init)(rng, dummy)
  variables = flax.core.unfreeze(nn.meta.unbox(variables))
  variables.pop("intermediates", None)  # the router's sown outputs, not state
  return variables


def init_model(config: ModelConfig, seed: int = 0) -> Model:
  """A randomly initialised `Model`."""
  return Model(config, init_variables(config, seed))


def logical_axes(config: ModelConfig) -> dict:
  """The logical axis names of every variable, as a tree shaped like the variables."""
  boxed = jax.eval_shape(module_for(config).init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
  return nn.get_partition_spec(boxed)
