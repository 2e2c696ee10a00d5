"""GEA: group, extract and aggregate finance news for forex movement (Chen et al., ECONLP 2019).

A reconstruction from the abstract (`../shared/spec/other-seed-systems.md` section 6; no
official code exists, every dimension is ours):

  news encoder   h_j = BERT([CLS] news_j): the trainer's encoder, frozen. Because it is frozen,
                 each distinct text is encoded once (`cls_vectors`) and the vectors travel as
                 data, so the trained weights below never run the transformer.
  grouping       each item carries a group id in [0, G): its time sub-window, its topic
                 cluster or its provider category (`moe_jax.finance.forex_data`); "none" = one group.
  extraction     s_j = sigmoid(w^T h_j); each group keeps its top-k items by s_j. The top-k
                 choice has no gradient, so the scores also scale the kept items inside the
                 within-group attention (alpha_j ∝ s_j exp(h_j^T W1 t), i.e. log s_j joins the
                 logit): the scorer learns to raise the items the prediction leans on, which
                 are then the ones the top-k keeps (BertSum's scorer trained end to end instead
                 of on oracle summaries, which do not exist here).
  trade encoder  t = tanh(W_t r + b): r the window's L daily log returns (percent).
  within group   alpha_j = softmax_{j in g}(h_j^T W1 t),  g = sum_j alpha_j h_j
  across groups  beta_g = softmax_g(g^T W2 t) over non-empty groups,  u = sum_g beta_g g
  output         softmax(W [u; t] + b) over {down, up}

W1 and W2 start at zero, so training starts from mean pooling within and across
groups (a random start under the window's noisy trade query scrambles the attention).

Dimension letters: B windows, M news items per window (padded), D news-vector width,
G groups, L trade returns per window, T trade-encoding width, K items kept per group.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from moe_jax import axes as ax
from moe_jax import moe
from moe_jax.finance.sspm import masked_softmax

HEAD = "forex"  # where the trainer's model holds GEA: params["forex"], beside the frozen encoder
GROUPINGS = ("time", "topic", "category", "none")


class Attention(NamedTuple):
  """What the aggregation looked at, for the influence statistics."""

  alpha: jax.Array  # [B, G, M] within-group weights (zero outside the group, or not kept)
  beta: jax.Array  # [B, G] across-group weights (zero for empty groups)
  kept: jax.Array  # [B, M] bool: the items extraction kept (every valid item without it)
  scores: jax.Array  # [B, M] s_j (ones without extraction)

  @property
  def mass(self) -> jax.Array:
    """[B, M] each item's share of u: sum_g beta_g alpha_{g, j} (sums to 1 per window)."""
    return jnp.einsum("bg,bgm->bm", self.beta, self.alpha)


def members(group, valid, num_groups: int):
  """group [B, M] int, valid [B, M] bool -> [B, G, M] bool: item j is a valid member of group g."""
  return valid[:, None, :] & (group[:, None, :] == jnp.arange(num_groups)[None, :, None])


def extract(scores, member, k: int):
  """kept [B, M] bool: in each group of member [B, G, M], the k highest scores [B, M] (all of a
  smaller group). Ties go to the lower index (lax.top_k's order)."""
  m = scores.shape[-1]
  masked = jnp.where(member, scores[:, None, :], -jnp.inf)  # [B, G, M]
  vals, idx = jax.lax.top_k(masked, min(k, m))  # [B, G, K]
  hit = jax.nn.one_hot(idx, m, dtype=jnp.bool_) & jnp.isfinite(vals)[..., None]  # [B, G, K, M]
  return jnp.any(hit, axis=(1, 2))


class GEA(nn.Module):
  """Group, extract and aggregate: window news vectors + trade returns -> up/down logits."""

  num_groups: int  # G: time buckets, topic clusters, categories, or 1 ("none")
  top_k: int  # K items kept per group; 0 = no extraction (every item attends)
  trade_features: int = 32  # T
  num_classes: int = 2  # {down, up}

  @nn.compact
  def __call__(self, news, valid, group, returns) -> tuple[jax.Array, Attention]:
    """news [B, M, D], valid [B, M] bool, group [B, M] int in [0, G), returns [B, L] ->
    (logits [B, 2] float32, Attention)."""
    news = news.astype(jnp.float32)
    d, t_dim = news.shape[-1], self.trade_features
    t = jnp.tanh(nn.Dense(t_dim, name="trade")(returns.astype(jnp.float32)))  # [B, T]
    # Zeros: training starts from uniform attention (mean pooling within and across groups),
    # not from attention that a random W and the window's (noisy) trade query scramble.
    w1 = self.param("within", nn.initializers.zeros, (d, t_dim))  # [D, T]
    w2 = self.param("across", nn.initializers.zeros, (d, t_dim))
    member = members(group, valid, self.num_groups)  # [B, G, M]
    logits = jnp.einsum("bmd,dt,bt->bm", news, w1, t)  # h_j^T W1 t
    if self.top_k:
      scores = jax.nn.sigmoid(nn.Dense(1, name="scorer")(news)[..., 0])  # [B, M]
      kept = extract(jax.lax.stop_gradient(scores), member, self.top_k)
      member = member & kept[:, None, :]
      logits = logits + jnp.log(jnp.maximum(scores, 1e-30))  # the scorer's path to the loss
    else:
      scores, kept = jnp.ones_like(logits), valid
    alpha = masked_softmax(logits[:, None, :], member)  # [B, G, M]
    g = jnp.einsum("bgm,bmd->bgd", alpha, news)  # [B, G, D]
    present = jnp.any(member, axis=-1)  # [B, G]
    beta = masked_softmax(jnp.einsum("bgd,dt,bt->bg", g, w2, t), present)  # [B, G]
    u = jnp.einsum("bg,bgd->bd", beta, g)  # [B, D]
    out = nn.Dense(self.num_classes, name="out")(jnp.concatenate([u, t], -1))
    return out, Attention(alpha, beta, kept, scores)


def init(module: GEA, news_dim: int, trade_len: int, seed: int) -> dict:
  """GEA's parameters for D = news_dim and L = trade_len (float32)."""
  m = 2
  args = (jnp.zeros((1, m, news_dim)), jnp.ones((1, m), bool), jnp.zeros((1, m), jnp.int32),
          jnp.zeros((1, trade_len)))
  return module.init(jax.random.key(seed), *args)["params"]


def param_axes(params: dict) -> dict:
  """Logical axes like `params`: kernels that read a news vector put D on `embed`; the rest (a
  few thousand numbers) is replicated."""
  def axes(path, x):
    names = tuple(getattr(k, "key", None) for k in path)
    if names in (("within",), ("across",), ("scorer", "kernel")):
      return P(ax.EMBED, None)
    return P(*([None] * np.ndim(x)))
  return jax.tree_util.tree_map_with_path(axes, params)


def batch_inputs(batch: dict, grouping: str):
  """The GEA inputs of a row batch (`forex_data.features`): (news, valid, group, returns)."""
  if grouping not in GROUPINGS:
    raise ValueError(f"grouping {grouping!r} is not one of {GROUPINGS}")
  valid = batch["mask"] != 0
  group = jnp.zeros_like(batch["mask"]) if grouping == "none" else batch[f"group_{grouping}"]
  return batch["vectors"], valid, group, batch["trade"]


def loss_fn(module: GEA, grouping: str):
  """The trainer's loss: mean cross-entropy of the windows' up/down labels under params[HEAD].
  Runs no transformer (the news vectors are data), so its MoE aux is zero."""

  def loss(params, buffers, config, batch):
    del buffers, config
    logits, _ = module.apply({"params": params[HEAD]}, *batch_inputs(batch, grouping))
    logp = jax.nn.log_softmax(logits, -1)
    nll = -jnp.take_along_axis(logp, batch["label"][:, None], -1)[:, 0]
    n = jnp.asarray(nll.shape[0], jnp.float32)
    correct = jnp.sum(jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    return jnp.mean(nll), (jnp.sum(nll), n, moe.sum_aux([], None), {"accuracy": correct / n})

  return loss


def cls_vectors(model, rows: dict, batch_size: int = 64) -> np.ndarray:
  """[N, D] float32 final hidden state at [CLS] (position 0) of encoded rows
  (`classify.task.encode`): the frozen news encoder h_j."""
  out = []
  n = len(rows["tokens"])
  for i in range(0, n, batch_size):
    tok, seg = rows["tokens"][i:i + batch_size], rows["segment_ids"][i:i + batch_size]
    short = batch_size - len(tok)
    if short:  # one shape for every call, so it compiles once
      tok, seg = (np.concatenate([a, np.zeros((short, a.shape[1]), a.dtype)]) for a in (tok, seg))
    hidden = model.apply(jnp.asarray(tok), segment_ids=jnp.asarray(seg)).hidden
    out.append(np.asarray(hidden[:, 0], np.float32)[:batch_size - short])
  return np.concatenate(out) if out else np.zeros((0, model.config.hidden_size), np.float32)
