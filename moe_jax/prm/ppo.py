"""Step-by-step PPO: a policy trained against process (or outcome) rewards (Math-Shepherd Sec. 3.4).

One iteration:
  1. rollout: sample a response per prompt with the KV cache (`generate`, temperature 1);
  2. reward: split each response into steps at newlines and score it: the PRM's
     p(good) of each step on the step's last token ("prm"), the PRM's aggregated
     solution score ("prm_final") or an ORM's score ("orm") on the last token, or
     an exact answer check ("outcome");
  3. score: one forward pass each of the policy (log-probs, values from a value
     head on the policy's last hidden state) and the frozen reference policy;
     the per-token reward adds -kl_coef * (log pi - log pi_ref);
  4. GAE advantages (gamma, lambda), whitened over the batch;
  5. `epochs` passes of minibatch updates of the clipped PPO objective plus the
     clipped value loss, through the trainer's jitted step (FFT or ESFT).

Step rewards can be transformed (spec C4): "raw" (s_k), "centered" (s_k - 0.5),
"delta" (s_k - s_{k-1}, s_0 = 0.5) or "min_so_far" (min_{j<=k} s_j). With "raw"
every step earns a positive reward, which can pay the policy for writing more
steps (a length-hacking risk the paper does not discuss); "delta" and
"centered" do not.

Arrays over responses are [B, N]: N = max_new_tokens, index i is the i-th
response token; `mask` is 1 up to and including the first EOS.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from moe_jax import esft, train_lib
from moe_jax.generate import generate
from moe_jax.metric_writers import MetricWriter, progress
from moe_jax.model import Model, Transformer
from moe_jax.prm import gsm8k, reward, scoring, verify
from moe_jax.steps import make_train_step

REWARD_MODES = ("prm", "prm_final", "orm", "outcome")
STEP_REWARDS = ("raw", "centered", "delta", "min_so_far")


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


# -- the pieces, as pure functions ---------------------------------------------------

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


def _policy_params(params):
  return {k: v for k, v in params.items() if k != "value_head"}


def response_outputs(params, buffers, config, batch):
  """(log-probs [B, N], values [B, N], entropy [B, N], MoEAux) of the response tokens.

  batch: "tokens", "positions", "segment_ids" [B, P + N] (the left-padded
  prompt, then the response) and "mask" [B, N]. The output at position t
  predicts token t + 1, so the response's are at P - 1 ... P + N - 2.
  """
  tokens = batch["tokens"]
  n = batch["mask"].shape[1]
  p = tokens.shape[1] - n
  out = Transformer(config).apply({"params": _policy_params(params), "buffers": buffers},
                                  tokens[:, :-1], batch["positions"][:, :-1],
                                  batch["segment_ids"][:, :-1], return_hidden=True)
  logits = out.logits[:, p - 1:].astype(jnp.float32)
  logp_all = jax.nn.log_softmax(logits, -1)
  logp = jnp.take_along_axis(logp_all, tokens[:, p:, None], -1)[..., 0]
  entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, -1)
  if "value_head" in params:
    vh = params["value_head"]
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


@functools.partial(jax.jit, static_argnames=("config", "hp"))
def _prepare(config, params, ref_params, buffers, batch, task_rewards, hp: Hyper):
  """Old log-probs and values, reference log-probs, KL-penalised rewards, advantages and returns."""
  logp, values, _, _ = response_outputs(params, buffers, config, batch)
  ref_logp, _, _, _ = response_outputs(ref_params, buffers, config, batch)
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


# -- rollouts and rewards ------------------------------------------------------------

@dataclasses.dataclass
class Rollouts:
  """A batch of sampled responses."""

  prompt_index: np.ndarray  # [B] index into the prompt list
  tokens: np.ndarray  # [B, P + N] left-padded prompt, then the response
  prompt_mask: np.ndarray  # [B, P] 1 on real prompt tokens
  mask: np.ndarray  # [B, N] 1 up to and including the first EOS
  steps: list[list[str]]  # each response's steps (split at newlines, blank ones dropped)
  step_ends: list[list[int]]  # the response index of each step's last token

  @property
  def responses(self) -> np.ndarray:
    return self.tokens[:, self.prompt_mask.shape[1]:]

  def batch(self) -> dict:
    """The model inputs: tokens, positions and segment ids over prompt + response, and the mask."""
    seg = np.concatenate([self.prompt_mask, np.ones_like(self.responses)], 1).astype(np.int32)
    pos = np.maximum(np.cumsum(seg, 1) - 1, 0).astype(np.int32)
    return {"tokens": self.tokens.astype(np.int32), "positions": pos, "segment_ids": seg,
            "mask": self.mask.astype(np.int32)}


def prompt_text(question: str) -> str:
  """The chat prompt a policy continues (the ESFT/SFT chat format)."""
  return f"User: {question}\n\nAssistant:"


def encode_prompts(questions: Sequence[str], tokenizer, width: int) -> tuple[np.ndarray, np.ndarray]:
  """Left-padded prompt tokens and mask [B, width]; raises if one is longer than `width`."""
  tokens = np.full((len(questions), width), tokenizer.pad_id, np.int32)
  mask = np.zeros((len(questions), width), np.int32)
  for i, q in enumerate(questions):
    ids = ([] if tokenizer.bos_id is None else [tokenizer.bos_id]) + tokenizer.encode(prompt_text(q))
    if len(ids) > width:
      raise ValueError(f"prompt {i} is {len(ids)} tokens, longer than ppo.prompt_len={width}: "
                       f"{q[:60]!r}...")
    tokens[i, width - len(ids):], mask[i, width - len(ids):] = ids, 1
  return tokens, mask


def split_steps(response: np.ndarray, tokenizer, newline_id: int) -> tuple[np.ndarray, list, list]:
  """(mask [N], steps, step ends) of one response: steps end at a newline token or at EOS/the end."""
  eos = np.flatnonzero(response == tokenizer.eos_id)
  length = int(eos[0]) + 1 if len(eos) else len(response)
  mask = np.zeros(len(response), np.int32)
  mask[:length] = 1
  body = length - 1 if len(eos) else length
  steps, ends, start = [], [], 0
  for i in range(body + 1):
    if i == body or response[i] == newline_id:
      text = tokenizer.decode(response[start:i]).strip()
      if text:
        steps.append(text)
        ends.append(min(i, length - 1))  # the newline (or EOS) closes the step
      start = i + 1
  return mask, steps, ends


def rollout(policy: Model, tokenizer, questions: Sequence[str], prompt_index: np.ndarray,
            prompt_len: int, max_new_tokens: int, temperature: float, seed: int) -> Rollouts:
  """Samples one response per prompt_index with the KV cache; splits each into steps."""
  prompts, pmask = encode_prompts([questions[i] for i in prompt_index], tokenizer, prompt_len)
  tokens = np.asarray(generate(policy, prompts, max_new_tokens, temperature=temperature, seed=seed,
                               prompt_mask=pmask, eos_token_id=tokenizer.eos_id))
  newline = _single_token(tokenizer, "\n")
  masks, steps, ends = [], [], []
  for r in tokens[:, prompt_len:]:
    m, s, e = split_steps(r, tokenizer, newline)
    masks.append(m), steps.append(s), ends.append(e)
  return Rollouts(np.asarray(prompt_index), tokens, pmask, np.stack(masks), steps, ends)


def fitting_prompts(problems: Sequence[dict], tokenizer, prompt_len: int, source: str) -> list[dict]:
  """The problems whose prompt fits `prompt_len` tokens; says how many were left out."""
  bos = tokenizer.bos_id is not None
  keep = [x for x in problems if len(tokenizer.encode(prompt_text(x["question"]))) + bos <= prompt_len]
  if not keep:
    raise ValueError(f"{source}: no prompt fits config.ppo.prompt_len={prompt_len} tokens")
  if len(keep) < len(problems):
    print(f"[ppo] {source}: left out {len(problems) - len(keep)} of {len(problems)} prompts longer "
          f"than config.ppo.prompt_len={prompt_len} tokens")
  return keep


def _single_token(tokenizer, text: str) -> int:
  ids = tokenizer.encode(text)
  if len(ids) != 1:
    raise ValueError(f"step-by-step PPO finds steps at {text!r}, which this tokenizer encodes as "
                     f"{len(ids)} tokens; it must be one")
  return ids[0]


def transform_step_scores(scores: Sequence[float], how: str) -> list[float]:
  """Per-step rewards from PRM step scores s_1..s_K (spec C4)."""
  s = np.asarray(scores, np.float64)
  if how == "raw":
    r = s
  elif how == "centered":
    r = s - 0.5
  elif how == "delta":
    r = np.diff(np.concatenate([[0.5], s]))
  elif how == "min_so_far":
    r = np.minimum.accumulate(s) if len(s) else s
  else:
    raise ValueError(f"ppo.step_reward: {how!r} is not one of {STEP_REWARDS}")
  return [float(x) for x in r]


def place_rewards(per_step: Sequence[Sequence[float]], step_ends: Sequence[Sequence[int]],
                  mask: np.ndarray) -> np.ndarray:
  """[B, N] rewards: each step's reward on that step's last token."""
  out = np.zeros(mask.shape, np.float32)
  for b, (rs, es) in enumerate(zip(per_step, step_ends)):
    for r, e in zip(rs, es):
      out[b, e] += r
  return out


def final_rewards(values: Sequence[float], mask: np.ndarray) -> np.ndarray:
  """[B, N] rewards: values[b] on response b's last token."""
  out = np.zeros(mask.shape, np.float32)
  last = mask.sum(1) - 1
  out[np.arange(len(values)), last] = values
  return out


RewardFn = Callable[[Rollouts], np.ndarray]  # rollouts -> task rewards [B, N] (before the KL term)


def reward_model_fn(rm: Model, tokenizer, questions: Sequence[str], mode: str,
                    step_reward: str = "raw", aggregate: str = "min", value_head: bool = False,
                    tag: str = " ки", good: str = "+", bad: str = "-", no_steps: float = 0.0,
                    batch_size: int = 64) -> RewardFn:
  """Rewards from a frozen PRM or ORM (modes "prm", "prm_final", "orm").

  "prm": transformed step scores on each step's last token; "prm_final": the
  `aggregate` ("min", "prod", ...) of the step scores on the last token; "orm":
  the score of the final step tag (an ORM trained on final labels only). A
  response with no steps gets `no_steps`. The tag's text inside a step is
  dropped before scoring.
  """
  if mode not in ("prm", "prm_final", "orm"):
    raise ValueError(f"ppo.reward_mode: {mode!r} needs no reward model or is unknown; "
                     f"reward models serve {('prm', 'prm_final', 'orm')}")

  core = tag.strip()

  def fn(r: Rollouts) -> np.ndarray:
    # A policy can emit the tag's text itself; the PRM would read it as a step boundary.
    kept = [[(c, e) for c, e in ((s.replace(core, "").strip(), e) for s, e in zip(steps, ends)) if c]
            for steps, ends in zip(r.steps, r.step_ends)]
    items = [(questions[i], [c for c, _ in k]) for i, k in zip(r.prompt_index, kept) if k]
    scores = iter(scoring.score_solutions(rm, tokenizer, items, tag, good, bad, value_head,
                                          batch_size=batch_size))
    per = [next(scores) if k else [] for k in kept]
    if mode == "prm":
      return place_rewards([transform_step_scores(s, step_reward) for s in per],
                           [[e for _, e in k] for k in kept], r.mask)
    if mode == "prm_final":
      vals = [verify.aggregate(s, aggregate) if s else no_steps for s in per]
    else:
      vals = [s[-1] if s else no_steps for s in per]
    return final_rewards(vals, r.mask)

  return fn


def outcome_fn(golds: Sequence[str], extract=gsm8k.extract_answer, equal=gsm8k.answers_equal) -> RewardFn:
  """1 on the last token when the response's final answer equals the gold answer, else 0."""

  def fn(r: Rollouts) -> np.ndarray:
    return final_rewards([float(equal(extract(s[-1]) if s else None, golds[i]))
                          for i, s in zip(r.prompt_index, r.steps)], r.mask)

  return fn


def greedy_accuracy(policy: Model, tokenizer, questions: Sequence[str], golds: Sequence[str],
                    prompt_len: int, max_new_tokens: int, batch_size: int = 64,
                    extract=gsm8k.extract_answer, equal=gsm8k.answers_equal) -> float:
  """Share of questions whose greedy response ends in the gold answer."""
  right = 0
  for i in range(0, len(questions), batch_size):
    idx = np.arange(i, min(i + batch_size, len(questions)))
    idx = np.concatenate([idx, np.full(batch_size - len(idx), idx[-1])])  # one shape per call
    r = rollout(policy, tokenizer, questions, idx, prompt_len, max_new_tokens, 0.0, 0)
    for j, steps in enumerate(r.steps[:min(batch_size, len(questions) - i)]):
      right += bool(steps) and equal(extract(steps[-1]), golds[idx[j]])
  return right / max(len(questions), 1)


# -- the loop -------------------------------------------------------------------------

def hyper(p: ml_collections.ConfigDict) -> Hyper:
  """The PPO hyperparameters of a config's `ppo` section."""
  return Hyper(p.kl_coef, p.gamma, p.lam, p.clip, p.value_clip, p.vf_coef, p.ent_coef, p.whiten)


def train(cfg: ml_collections.ConfigDict, workdir: str, policy: Model, spec: esft.TrainableSpec,
          tokenizer, questions: Sequence[str], reward_fn: RewardFn, mesh, name: str = "ppo",
          eval_fn: Callable[[Model], dict] | None = None) -> tuple[Model, dict]:
  """cfg.num_train_steps PPO iterations of cfg.data.batch_size rollouts each; resumable.

  `policy` is the start and the frozen reference. A value head (zeros) is
  added if it has none. `eval_fn(model) -> dict` runs before and after.
  Returns the trained policy (without the value head) and a summary.
  """
  p = cfg.ppo
  hp = hyper(p)
  bs, mb = cfg.data.batch_size, p.minibatch_size or cfg.data.batch_size
  if bs % mb:
    raise ValueError(f"config.ppo.minibatch_size={mb} does not divide config.data.batch_size={bs}")
  ref = policy.params  # the frozen reference (start_run copies what it trains)
  params = {**policy.params, "value_head": policy.params.get(
      "value_head", reward.init_value_head(policy.config.hidden_size))}
  model = Model(policy.config, {**policy.variables, "params": params})
  iterations = cfg.num_train_steps
  updates = iterations * p.epochs * (bs // mb)
  run = train_lib.start_run(cfg, workdir, model, spec, mesh, updates, {"ppo": dict(p)})
  state, ckpt, mcfg = run.state, run.checkpointer, model.config
  has_buffers = bool(model.variables.get("buffers"))
  batch_sh = run.batch_sharding
  step_fn = jax.jit(make_train_step(mcfg, spec, run.tx, functools.partial(ppo_loss, hp=hp)),
                    in_shardings=(run.state_sharding, batch_sh), out_shardings=(run.state_sharding, None),
                    donate_argnums=0)
  start = (run.data_state or {}).get("iteration", 0)
  if start:
    print(f"[{name}] resumed from {ckpt.directory} at iteration {start}")
  summary = dict(run.summary)
  current = lambda: Model(mcfg, {"params": _policy_params(esft.merge(train_lib.to_host(state.params),
                                                                     spec, mcfg)),
                                 **({"buffers": train_lib.to_host(state.buffers)} if has_buffers else {})})
  if eval_fn is not None and start == 0:
    summary["before"] = eval_fn(current())
    print(f"[{name}] before: {summary['before']}")
  print(f"[{name}] trainable parameters: {summary['trainable_params']:,} of "
        f"{summary['total_params']:,}; {iterations} iterations x {bs} rollouts")
  writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
  bar = progress(iterations, start, name, enabled=jax.process_index() == 0)
  history = []
  try:
    for it in range(start, iterations):
      t0 = time.time()
      rng = np.random.default_rng([cfg.seed, it])
      idx = rng.choice(len(questions), bs, replace=len(questions) < bs)
      r = rollout(current(), tokenizer, questions, idx, p.prompt_len, p.max_new_tokens,
                  p.temperature, seed=cfg.seed * 1_000_003 + it)
      task = reward_fn(r)
      batch = {k: jnp.asarray(v) for k, v in r.batch().items()}
      batch, stats = _prepare(mcfg, esft.merge(state.params, spec, mcfg), ref, state.buffers, batch,
                              jnp.asarray(task), hp)
      metrics = []
      for _ in range(p.epochs):
        order = rng.permutation(bs)
        for j in range(0, bs, mb):
          sel = order[j:j + mb]
          mini = {k: jax.device_put(np.asarray(v)[sel], batch_sh) for k, v in batch.items()}
          state, m = step_fn(state, mini)
          metrics.append(jax.device_get(m))
      if not all(m["finite"] for m in metrics):
        raise FloatingPointError(f"[{name}] iteration {it + 1}: a non-finite PPO update; stopped "
                                 f"(the last checkpoint in {ckpt.directory} is intact)")
      row = {k: float(np.mean([m[k] for m in metrics])) for k in
             ("policy_loss", "value_loss", "entropy", "clip_fraction", "approx_kl", "grad_norm")}
      row.update({k: float(v) for k, v in jax.device_get(stats).items()})
      row["response_tokens"] = float(r.mask.sum(1).mean())
      row["steps"] = float(np.mean([len(s) for s in r.steps]))
      row["seconds"] = time.time() - t0
      history.append(row)
      writer.write(it + 1, row)
      bar.update(1)
      bar.set_postfix(reward=f"{row['task_reward']:.3f}", kl=f"{row['kl']:.3f}")
      ckpt.save(it + 1, state, {"iteration": it + 1}, run.meta)
    if ckpt.latest_step() != iterations:
      ckpt.save(iterations, state, {"iteration": iterations}, run.meta, force=True)
  finally:
    bar.close()
    ckpt.wait()
    ckpt.close()
    writer.close()
  summary["history"] = history
  out = current()
  if eval_fn is not None:
    summary["after"] = eval_fn(out)
    print(f"[{name}] after: {summary['after']}")
  return out, summary


# -- train.py entry --------------------------------------------------------------------

def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
  """`train.py --config=configs/ppo.py`: PPO of `init_from` (or a pretrained tiny model) on GSM8K-style prompts."""
  from moe_jax.hf import from_pretrained, save_pretrained
  from moe_jax.tokenizer import load_tokenizer

  os.makedirs(workdir, exist_ok=True)
  p = cfg.ppo
  if p.reward_mode not in REWARD_MODES:
    raise ValueError(f"config.ppo.reward_mode: {p.reward_mode!r} is not one of {REWARD_MODES}")
  mesh = train_lib.make_mesh(cfg)
  tokenizer = load_tokenizer(train_lib.resolve_data_path(cfg.data.tokenizer))
  policy = train_lib.base_model(cfg, workdir, tokenizer, mesh)
  path = train_lib.resolve_data_path(p.prompts_file)
  problems = fitting_prompts(gsm8k.load(path), tokenizer, p.prompt_len, path)
  split = max(1, int(len(problems) * cfg.data.eval_fraction))
  train_probs, eval_probs = problems[split:], problems[:split]
  questions, golds = [x["question"] for x in train_probs], [x["answer"] for x in train_probs]
  if p.reward_mode == "outcome":
    reward_fn = outcome_fn(golds)
  else:
    if not p.reward_model:
      raise ValueError(f"config.ppo.reward_model: reward_mode={p.reward_mode!r} needs a reward model "
                       "directory (e.g. the hf/ export of `train.py --config=configs/prm.py`)")
    rm = from_pretrained(train_lib.resolve_data_path(p.reward_model))
    reward_fn = reward_model_fn(rm, tokenizer, questions, p.reward_mode, p.step_reward, p.aggregate,
                                tag=p.tag, good=p.good, bad=p.bad)
  if cfg.train_mode == "esft":
    spec = _esft_spec(cfg, workdir, policy, tokenizer, questions)
  elif cfg.train_mode == "fft":
    spec = esft.TrainableSpec()
  else:
    raise ValueError(f"config.train_mode: {cfg.train_mode!r}; PPO trains 'fft' or 'esft'")
  eq, eg = [x["question"] for x in eval_probs], [x["answer"] for x in eval_probs]
  evaluate = lambda m: {"greedy_accuracy": greedy_accuracy(m, tokenizer, eq, eg, p.prompt_len,
                                                            p.max_new_tokens, cfg.data.batch_size)}
  print(f"[ppo] {len(questions)} training prompts, {len(eq)} held out; reward: {p.reward_mode}"
        + (f" ({p.step_reward} step rewards)" if p.reward_mode == "prm" else ""))
  policy, summary = train(cfg, workdir, policy, spec, tokenizer, questions, reward_fn, mesh,
                          eval_fn=evaluate)
  if jax.process_index() == 0:
    if cfg.export_hf:
      save_pretrained(policy, os.path.join(workdir, "hf"))
      summary["hf_dir"] = os.path.join(workdir, "hf")
    with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
      json.dump(summary, f, indent=2)
  return summary


def _esft_spec(cfg, workdir: str, policy: Model, tokenizer, questions) -> esft.TrainableSpec:
  """ESFT for PPO: experts scored on the start policy's own rollouts over the training prompts."""
  p, e = cfg.ppo, cfg.esft

  def batches():
    for k in range(0, max(len(questions), 1) * 100, cfg.data.batch_size):
      idx = np.arange(k, k + cfg.data.batch_size) % len(questions)
      r = rollout(policy, tokenizer, questions, idx, p.prompt_len, p.max_new_tokens, p.temperature,
                  seed=k)
      b = r.batch()
      b["segment_ids"] = b["segment_ids"] * np.concatenate([r.prompt_mask, r.mask], 1)
      yield b

  scores = esft.score_experts(policy, batches(), e.n_score_tokens)
  expert_cfg = esft.select_experts(scores.get(e.score_function), e.top_p,
                                   shared_experts=e.train_shared_experts,
                                   non_expert_modules=e.train_non_expert_modules)
  if jax.process_index() == 0:
    esft.write_expert_config(expert_cfg, os.path.join(workdir, "expert_config.json"))
  n = sum(len(v) for v in expert_cfg["experts"].values())
  print(f"[esft] selected {n} of {len(policy.config.moe_layers) * policy.config.n_routed_experts} "
        f"routed experts on the policy's rollouts")
  return esft.TrainableSpec.from_expert_config(expert_cfg, policy.config)
