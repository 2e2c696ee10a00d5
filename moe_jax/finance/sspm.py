"""SSPM and MSSPM: news, fine-grained event roles and minute trade data fused by co-attention.

Chen et al. (ECONLP 2019), as the spec reads the paper and a third-party
replication. Letters: B rows, T news tokens, S trade steps, D the model width
(2 x `hidden`, a BiLSTM's two directions), K event-role tags.

  S_x = SelfAttn(BiLSTM(x))       x [B, T, E]: token embeddings (the engine model's
                                  word embeddings), or, with news_encoder="bert",
                                  the engine encoder's hidden states projected to D
  S_y = SelfAttn(BiLSTM(y))       y [B, S, 120]: the trade steps (`bars.trade_steps`)
  E_e = Emb(tags)                 [B, T, D]; zeros for the raw-text baseline
  H_x = sigmoid(W [S_x; E_e; S_x - E_e; S_x * E_e])
  scores = tanh(H_x M S_y^T)      [B, T, S] (`co_attention`)
  C_x = softmax_row(scores) S_y, C_y = softmax_col(scores)^T H_x
  G = z * C + (1 - z) * H, z = sigmoid(W1 H + W2 C)   for both streams (`GatedFusion`)
  p = sigmoid(W [maxpool_T G_x; maxpool_S G_y])

MSSPM adds a CRF (`moe_jax.finance.crf`) over S_x's tag emissions, trained on
the dictionary's tags; its Viterbi tags replace them when `decode=True` (test
time). Which tags mean what is the caller's business: BIO roles (SSPM, MSSPM),
one event-type id on every token (the coarse-event baseline), or none.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from moe_jax.finance import crf as crf_lib

_NEG = -1e9


def masked_softmax(scores, mask, axis: int = -1):
  """softmax of scores over `axis` where mask is true; an all-masked slice gives zeros.
  (GEA's attention in `moe_jax.finance.forex` uses it too.)"""
  s = jnp.where(mask, scores, _NEG)
  p = jax.nn.softmax(s, axis=axis)
  return jnp.where(mask, p, 0.0)


def co_attention(h_x, s_y, m, mask_x, mask_y):
  """Bilinear co-attention: (C_x [B, T, D], C_y [B, S, D]).

  h_x [B, T, D], s_y [B, S, D], m [D, D], masks [B, T] / [B, S] (1 = real).
  scores = tanh(H_x M S_y^T); C_x = softmax over S of scores, times S_y;
  C_y = (softmax over T of scores)^T H_x.
  """
  scores = jnp.tanh(jnp.einsum("btd,de,bse->bts", h_x, m, s_y))  # [B, T, S]
  both = mask_x[:, :, None].astype(bool) & mask_y[:, None, :].astype(bool)
  c_x = jnp.einsum("bts,bsd->btd", masked_softmax(scores, both, 2), s_y)
  c_y = jnp.einsum("bts,btd->bsd", masked_softmax(scores, both, 1), h_x)
  return c_x, c_y


class GatedFusion(nn.Module):
  """G = z * C + (1 - z) * H with z = sigmoid(W1 H + W2 C) (W1 with the bias)."""

  @nn.compact
  def __call__(self, h, c):
    z = nn.sigmoid(nn.Dense(h.shape[-1], name="w1")(h)
                   + nn.Dense(h.shape[-1], use_bias=False, name="w2")(c))
    return z * c + (1.0 - z) * h


def max_pool(x, mask):
  """[B, L, D] -> [B, D]: max over the real positions (zeros for an empty row)."""
  m = mask.astype(bool)[..., None]
  return jnp.where(jnp.any(m, 1), jnp.max(jnp.where(m, x, _NEG), 1), 0.0)


class SelfAttention(nn.Module):
  """One-head scaled dot-product self-attention over the real positions, with a residual."""

  @nn.compact
  def __call__(self, h, mask):
    d = h.shape[-1]
    q, k, v = (nn.Dense(d, use_bias=False, name=n)(h) for n in ("query", "key", "value"))
    scores = jnp.einsum("bqd,bkd->bqk", q, k) / jnp.sqrt(d)
    p = masked_softmax(scores, mask[:, None, :].astype(bool), 2)
    return h + jnp.einsum("bqk,bkd->bqd", p, v)


class BiLSTMAttention(nn.Module):
  """SelfAttn(BiLSTM(x)): [B, L, *] -> [B, L, 2 x hidden]."""
  hidden: int

  @nn.compact
  def __call__(self, x, mask):
    lengths = jnp.sum(mask, -1).astype(jnp.int32)
    h = nn.Bidirectional(nn.RNN(nn.OptimizedLSTMCell(self.hidden)),
                         nn.RNN(nn.OptimizedLSTMCell(self.hidden)))(x, seq_lengths=lengths)
    return SelfAttention()(h, mask)


class SSPM(nn.Module):
  """SSPM (crf=False) or MSSPM (crf=True). num_tags: the tag vocabulary; 0 = no event input."""
  hidden: int = 64
  num_tags: int = 0
  crf: bool = False
  news_encoder: str = "bilstm"  # "bilstm" over embeddings, or "bert": project encoder states

  def setup(self):
    d = 2 * self.hidden
    if self.news_encoder == "bilstm":
      self.news = BiLSTMAttention(self.hidden)
    elif self.news_encoder == "bert":
      self.news = nn.Dense(d, name="news_projection")
    else:
      raise ValueError(f"news_encoder {self.news_encoder!r} is not 'bilstm' or 'bert'")
    self.trade = BiLSTMAttention(self.hidden)
    if self.num_tags:
      self.roles = nn.Embed(self.num_tags, d)
    self.fuse = nn.Dense(d)
    self.m = self.param("m", nn.initializers.normal(1.0 / d ** 0.5), (d, d))
    self.gate_x, self.gate_y = GatedFusion(), GatedFusion()
    self.out = nn.Dense(1)
    if self.crf:
      self.emit = nn.Dense(self.num_tags)
      self.tagger = crf_lib.CRF(self.num_tags)

  def encode_news(self, x, mask):
    return self.news(x, mask) if self.news_encoder == "bilstm" else self.news(x)

  def __call__(self, x, mask_x, y, mask_y, tags=None, decode=False):
    """(logit [B], CRF NLL [B] of `tags` or None, the tags fused [B, T] or None).

    x [B, T, E] news inputs, y [B, S, 120] trade steps, masks 1 = real; tags [B, T].
    decode: fuse the CRF's Viterbi tags instead of `tags` (MSSPM at test time).
    """
    s_x = self.encode_news(x, mask_x)  # [B, T, D]
    s_y = self.trade(y, mask_y)  # [B, S, D]
    crf_nll = None
    if self.crf:
      emissions = self.emit(s_x)  # [B, T, K]
      if tags is not None:
        crf_nll = self.tagger.nll(emissions, tags, mask_x)
      if decode:
        tags = self.tagger.decode(emissions, mask_x)
    e = self.roles(tags) if self.num_tags else jnp.zeros_like(s_x)  # [B, T, D]
    h_x = nn.sigmoid(self.fuse(jnp.concatenate([s_x, e, s_x - e, s_x * e], -1)))
    c_x, c_y = co_attention(h_x, s_y, self.m, mask_x, mask_y)
    g_x, g_y = self.gate_x(h_x, c_x), self.gate_y(s_y, c_y)
    pooled = jnp.concatenate([max_pool(g_x, mask_x), max_pool(g_y, mask_y)], -1)
    return self.out(pooled)[:, 0], crf_nll, tags
