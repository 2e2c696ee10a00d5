"""The PPO objective, as pure functions: GAE, whitening, the KL penalty, the clipped losses.

Arrays over responses are [B, N]: N = max_new_tokens, index i is the i-th
response token; `mask` is 1 up to and including the first EOS. The critic is
a value head (`moe_jax.prm.reward`) on the policy's last hidden state, kept
under params["value_head"] beside the policy's own parameters.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from moe_jax.model import Transformer
from moe_jax.prm.reward import VALUE_HEAD


@dataclasses.dataclass(frozen=True)
class Hyper:
  """PPO hyperparameters (static under jit). Defaults: spec C4's common choices."""

  kl_coef: float = 0.04  # the paper's KL coefficient
  gamma: float = 1.0
  lam: float = 0.95
  clip: float = 0.2
  value_clip: float = 0.2
  vf_coef: float = 0.5
  ent_coef: float = 0.0
  whiten: bool = True  # normalise advantages over the batch


def gae(rewards, values, mask, gamma: float, lam: float):
  """Generalised advantage estimation over response tokens.

  rewards, values, mask: [B, N]. A response ends at its last masked token; the
  value after it is 0. Returns (advantages, returns) [B, N], zero off the mask.
  """
  mask = mask.astype(jnp.float32)
  next_values = jnp.concatenate([values[:, 1:] * mask[:, 1:], jnp.zeros_like(values[:, :1])], 1)
  deltas = (rewards + gamma * next_values - values) * mask
  next_mask = jnp.concatenate([mask[:, 1:], jnp.zeros_like(mask[:, :1])], 1)

  def back(carry, x):
    delta, m = x
    adv = delta + gamma * lam * m * carry
    return adv, adv

  _, adv = jax.lax.scan(back, jnp.zeros(values.shape[0], jnp.float32),
                        (deltas.T, next_mask.T), reverse=True)
  adv = adv.T * mask
  return adv, (adv + values) * mask


def whiten(x, mask):
  """(x - mean) / std over the masked entries."""
  m = mask.astype(jnp.float32)
  n = jnp.maximum(m.sum(), 1.0)
  mean = (x * m).sum() / n
  var = (((x - mean) * m) ** 2).sum() / n
  return (x - mean) * jax.lax.rsqrt(var + 1e-8) * m


def kl_penalty(logp, ref_logp, mask):
  """Per-token KL estimate log pi(y_t) - log pi_ref(y_t) on sampled tokens: [B, N], zero off the mask."""
  return (logp - ref_logp) * mask


def policy_params(params: dict) -> dict:
  """The policy's parameters: `params` without the critic's value head."""
  return {k: v for k, v in params.items() if k != VALUE_HEAD}


def response_outputs(params, buffers, config, batch):
  """(log-probs [B, N], values [B, N], entropy [B, N], MoEAux) of the response tokens.

  batch: "tokens", "positions", "segment_ids" [B, P + N] (the left-padded
  prompt, then the response) and "mask" [B, N]. The output at position t
  predicts token t + 1, so the response's are at P - 1 ... P + N - 2.
  """
  tokens = batch["tokens"]
  n = batch["mask"].shape[1]
  p = tokens.shape[1] - n
  out = Transformer(config).apply({"params": policy_params(params), "buffers": buffers},
                                  tokens[:, :-1], batch["positions"][:, :-1],
                                  batch["segment_ids"][:, :-1], return_hidden=True)
  logits = out.logits[:, p - 1:].astype(jnp.float32)
  logp_all = jax.nn.log_softmax(logits, -1)
  logp = jnp.take_along_axis(logp_all, tokens[:, p:, None], -1)[..., 0]
  entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, -1)
  if VALUE_HEAD in params:
    vh = params[VALUE_HEAD]
    values = out.hidden[:, p - 1:].astype(jnp.float32) @ vh["kernel"] + vh["bias"]
  else:
    values = jnp.zeros_like(logp)
  return logp, values, entropy, out.aux


def ppo_loss(params, buffers, config, batch, hp: Hyper):
  """Clipped policy loss + vf_coef * clipped value loss - ent_coef * entropy, token-averaged.

  batch adds to `response_outputs`'s: "old_logp", "old_values", "advantages",
  "returns" [B, N]. Returns (loss, (loss_sum, n_tokens, MoEAux, metrics)),
  the trainer's loss signature.
  """
  logp, values, entropy, aux = response_outputs(params, buffers, config, batch)
  m = batch["mask"].astype(jnp.float32)
  n = jnp.maximum(m.sum(), 1.0)
  mean = lambda x: (x * m).sum() / n
  adv = batch["advantages"]
  ratio = jnp.exp(logp - batch["old_logp"])
  pg = jnp.maximum(-adv * ratio, -adv * jnp.clip(ratio, 1 - hp.clip, 1 + hp.clip))
  old_v, ret = batch["old_values"], batch["returns"]
  v_clipped = old_v + jnp.clip(values - old_v, -hp.value_clip, hp.value_clip)
  vf = 0.5 * jnp.maximum((values - ret) ** 2, (v_clipped - ret) ** 2)
  loss = mean(pg) + hp.vf_coef * mean(vf) - hp.ent_coef * mean(entropy)
  metrics = {"policy_loss": mean(pg), "value_loss": mean(vf), "entropy": mean(entropy),
             "clip_fraction": mean((jnp.abs(ratio - 1) > hp.clip).astype(jnp.float32)),
             "approx_kl": mean(0.5 * (logp - batch["old_logp"]) ** 2)}
  total = loss + aux.balance_loss + aux.device_balance_loss
  return total, (loss * n, n, aux, metrics)


@functools.partial(jax.jit, static_argnames=("config", "hp", "ref_config"))
def prepare(config, params, ref_params, buffers, batch, task_rewards, hp: Hyper, ref_config=None):
  """Old log-probs and values, reference log-probs, KL-penalised rewards, advantages and returns.

  `params` are read with `config` (for ESFT, the split tree with its `expert_split` config),
  the frozen reference's `ref_params` with `ref_config` (default: `config`).
  """
  logp, values, _, _ = response_outputs(params, buffers, config, batch)
  ref_logp, _, _, _ = response_outputs(ref_params, buffers, ref_config or config, batch)
  m = batch["mask"].astype(jnp.float32)
  kl = kl_penalty(logp, ref_logp, m)
  rewards = task_rewards * m - hp.kl_coef * kl
  adv, ret = gae(rewards, values * m, m, hp.gamma, hp.lam)
  if hp.whiten:
    adv = whiten(adv, m)
  stats = {"kl": kl.sum(1).mean(), "task_reward": (task_rewards * m).sum(1).mean(),
           "value_mean": (values * m).sum() / jnp.maximum(m.sum(), 1.0)}
  return {**batch, "old_logp": logp, "old_values": values * m, "advantages": adv,
          "returns": ret}, stats


def hyper(p) -> Hyper:
  """The PPO hyperparameters of a config's `ppo` section."""
  return Hyper(p.kl_coef, p.gamma, p.lam, p.clip, p.value_clip, p.vf_coef, p.ent_coef, p.whiten)
