"""Step-by-step PPO: GAE and the clipped loss against float64 loops, rewards, KL, and learning."""

import jax
import jax.numpy as jnp
import importlib.util
import pathlib
import numpy as np
import pytest

import moe_jax
from moe_jax import config as C
from moe_jax import tasks, train_lib, trainable
from moe_jax.prm import ppo, scoring
from moe_jax.tokenizer import ByteTokenizer

TOK = ByteTokenizer()
CONFIG = C.tiny(num_hidden_layers=2)


@pytest.fixture(scope="module")
def model():
  return moe_jax.init_model(CONFIG, seed=5)


def _gae_reference(rewards, values, mask, gamma, lam):
  """The textbook backward loop, per row, in float64."""
  adv = np.zeros_like(rewards, np.float64)
  for b in range(rewards.shape[0]):
    n = int(mask[b].sum())
    last = 0.0
    for t in reversed(range(n)):
      next_v = values[b, t + 1] if t + 1 < n else 0.0
      delta = rewards[b, t] + gamma * next_v - values[b, t]
      last = delta + gamma * lam * last
      adv[b, t] = last
  return adv, (adv + values) * mask


def _fixed_batch(seed=0, b=4, n=7):
  rng = np.random.default_rng(seed)
  lengths = [7, 3, 1, 5][:b]
  mask = (np.arange(n)[None] < np.asarray(lengths)[:, None]).astype(np.float64)
  return rng.normal(size=(b, n)) * mask, rng.normal(size=(b, n)) * mask, mask


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.7), (1.0, 1.0)])
def test_gae_equals_float64_loop(gamma, lam):
  rewards, values, mask = _fixed_batch()
  adv, ret = ppo.gae(jnp.asarray(rewards, jnp.float32), jnp.asarray(values, jnp.float32),
                     jnp.asarray(mask), gamma, lam)
  want_adv, want_ret = _gae_reference(rewards, values, mask, gamma, lam)
  np.testing.assert_allclose(np.asarray(adv), want_adv, atol=1e-5)
  np.testing.assert_allclose(np.asarray(ret), want_ret, atol=1e-5)
  if gamma == lam == 1.0:  # Monte Carlo: the return is the sum of the rewards still to come
    mc = np.flip(np.cumsum(np.flip(rewards, 1), 1), 1) * mask
    np.testing.assert_allclose(np.asarray(ret), mc, atol=1e-5)


def _rollout_batch(b=4, p=6, n=7, seed=1):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, 200, size=(b, p + n)).astype(np.int32)
  pmask = np.ones((b, p), np.int32)
  if b > 1:
    pmask[1, :2] = 0  # a left-padded prompt
    tokens[1, :2] = TOK.pad_id
  mask = (np.arange(n)[None] < np.asarray([7, 3, 1, 5])[:b, None]).astype(np.int32)
  r = ppo.Rollouts(np.arange(b), tokens, pmask, mask, [[] for _ in range(b)], [[] for _ in range(b)])
  return r.batch()


def test_ppo_loss_equals_float64_reference(model):
  batch = {k: jnp.asarray(v) for k, v in _rollout_batch().items()}
  hp = ppo.Hyper(clip=0.2, value_clip=0.2, vf_coef=0.5, ent_coef=0.01)
  rng = np.random.default_rng(2)
  params = {**model.params, "value_head": {"kernel": jnp.asarray(rng.normal(size=64) * 0.1, jnp.float32),
                                           "bias": jnp.float32(0.3)}}
  logp, values, entropy, _ = ppo.response_outputs(params, {}, CONFIG, batch)
  logp, values, entropy = (np.asarray(x, np.float64) for x in (logp, values, entropy))
  m = np.asarray(batch["mask"], np.float64)
  # Old policy/values chosen so some ratios fall outside the clip range on both sides.
  old_logp = logp + rng.normal(scale=0.3, size=logp.shape)
  old_values = values + rng.normal(scale=0.4, size=values.shape)
  adv = rng.normal(size=logp.shape)
  ret = rng.normal(size=logp.shape)
  full = {**batch, **{k: jnp.asarray(v * m, jnp.float32) for k, v in
                      dict(old_logp=old_logp, old_values=old_values, advantages=adv, returns=ret).items()}}
  loss, (loss_sum, n, aux, metrics) = ppo.ppo_loss(params, {}, CONFIG, full, hp)
  # The reference: per token, in float64, averaged over response tokens.
  old_logp, old_values, adv, ret = old_logp * m, old_values * m, adv * m, ret * m
  pg_terms, vf_terms = [], []
  for b, t in zip(*np.nonzero(m)):
    ratio = np.exp(logp[b, t] - old_logp[b, t])
    pg_terms.append(max(-adv[b, t] * ratio, -adv[b, t] * min(max(ratio, 0.8), 1.2)))
    vc = old_values[b, t] + min(max(values[b, t] - old_values[b, t], -0.2), 0.2)
    vf_terms.append(0.5 * max((values[b, t] - ret[b, t]) ** 2, (vc - ret[b, t]) ** 2))
  ent = (entropy * m).sum() / m.sum()
  want = np.mean(pg_terms) + 0.5 * np.mean(vf_terms) - 0.01 * ent
  assert int(n) == int(m.sum()) == 16
  clipped = np.abs(np.exp(logp - old_logp)[m > 0] - 1) > 0.2
  assert 0 < clipped.sum() < len(clipped)  # the clip is exercised
  np.testing.assert_allclose(float(metrics["policy_loss"]), np.mean(pg_terms), rtol=1e-4)
  np.testing.assert_allclose(float(metrics["value_loss"]), np.mean(vf_terms), rtol=1e-4)
  np.testing.assert_allclose(float(loss_sum) / float(n), want, rtol=1e-4)
  np.testing.assert_allclose(float(loss), want + float(aux.balance_loss), rtol=1e-4)


def test_response_log_probs_match_a_per_token_forward(model):
  """Each response token's log-prob is the one the model gives it after its own prefix."""
  raw = _rollout_batch(b=1, p=4, n=3)
  raw["mask"][:] = 1
  batch = {k: jnp.asarray(v) for k, v in raw.items()}
  logp, _, _, _ = ppo.response_outputs(model.params, {}, CONFIG, batch)
  tokens = raw["tokens"][0]
  for i in range(3):
    prefix = tokens[:4 + i]
    logits = np.asarray(model(prefix[None]), np.float64)[0, -1]
    want = logits[tokens[4 + i]] - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
    np.testing.assert_allclose(float(logp[0, i]), want, atol=2e-5)


def test_kl_is_zero_when_policy_equals_reference(model):
  batch = {k: jnp.asarray(v) for k, v in _rollout_batch().items()}
  task = jnp.asarray(np.random.default_rng(0).normal(size=batch["mask"].shape), jnp.float32)
  params = {**model.params, "value_head": {"kernel": jnp.zeros(64), "bias": jnp.float32(0)}}
  out, stats = ppo.prepare(CONFIG, params, model.params, {}, batch, task, ppo.Hyper(whiten=False))
  assert float(stats["kl"]) == 0.0
  # ...so the rewards are the task's alone: returns with zero values are the reward-to-go.
  m = np.asarray(batch["mask"], np.float64)
  want = _gae_reference(np.asarray(task) * m, np.zeros_like(m), m, 1.0, 0.95)[1]
  np.testing.assert_allclose(np.asarray(out["returns"]), want, atol=1e-5)
  other = jax.tree_util.tree_map(lambda x: x * 1.05, model.params)
  _, stats = ppo.prepare(CONFIG, params, other, {}, batch, task, ppo.Hyper())
  assert float(stats["kl"]) != 0.0


def test_steps_split_at_newlines_and_rewards_land_on_their_last_token():
  text = "Step 1: 2+3=5\n\nStep 2: The answer is: 5"
  ids = TOK.encode(text) + [TOK.eos_id, TOK.eos_id, TOK.eos_id]
  mask, steps, ends = ppo.split_steps(np.asarray(ids), TOK, TOK.encode("\n")[0])
  assert steps == ["Step 1: 2+3=5", "Step 2: The answer is: 5"]
  first_nl = text.index("\n")
  assert ends == [first_nl, len(text)]  # the newline closes step 1, EOS closes step 2
  assert mask.sum() == len(text) + 1 and mask[len(text)] == 1 and mask[len(text) + 1] == 0
  r = ppo.place_rewards([ppo.transform_step_scores([0.9, 0.2], "delta")], [ends], mask[None])
  assert r[0, first_nl] == pytest.approx(0.4) and r[0, len(text)] == pytest.approx(-0.7)
  assert r.sum() == pytest.approx(-0.3)
  # Truncated (no EOS): the last step ends at the last token.
  mask, steps, ends = ppo.split_steps(np.asarray(TOK.encode("a\nb")), TOK, TOK.encode("\n")[0])
  assert steps == ["a", "b"] and ends == [1, 2] and mask.tolist() == [1, 1, 1]


def _load_config(rel):
  path = pathlib.Path(__file__).resolve().parent.parent / rel
  spec = importlib.util.spec_from_file_location("cfg", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_step_reward_transforms():
  s = [0.8, 0.6, 0.9]
  np.testing.assert_allclose(ppo.transform_step_scores(s, "raw"), s)
  np.testing.assert_allclose(ppo.transform_step_scores(s, "centered"), [0.3, 0.1, 0.4])
  np.testing.assert_allclose(ppo.transform_step_scores(s, "delta"), [0.3, -0.2, 0.3])
  np.testing.assert_allclose(ppo.transform_step_scores(s, "min_so_far"), [0.8, 0.6, 0.6])
  with pytest.raises(ValueError, match="step_reward"):
    ppo.transform_step_scores(s, "log")


@pytest.mark.parametrize("mode", ["prm", "prm_final", "orm"])
def test_reward_model_modes_place_the_scores(model, mode):
  questions = ["What is 2+3?"]
  text = "Step 1: 2+3=5\nStep 2: The answer is: 5"
  ids = np.asarray(TOK.encode(text) + [TOK.eos_id])
  mask, steps, ends = ppo.split_steps(ids, TOK, TOK.encode("\n")[0])
  r = ppo.Rollouts(np.asarray([0, 0]), np.zeros((2, 1 + len(ids)), np.int32), np.ones((2, 1), np.int32),
                   np.stack([mask, mask]), [steps, []], [ends, []])
  fn = ppo.reward_model_fn(model, TOK, questions, mode, step_reward="raw", aggregate="min")
  got = fn(r)
  scores = scoring.step_scores(model, TOK, questions[0], [steps])[0]
  want = np.zeros(len(ids))
  if mode == "prm":
    want[ends] = scores
  else:
    want[len(ids) - 1] = min(scores) if mode == "prm_final" else scores[-1]
  np.testing.assert_allclose(got[0], want, atol=1e-6)
  assert got[1].sum() == 0  # no steps: no reward


def _ppo_cfg(**ppo_overrides):
  c = _load_config("configs/ppo.py")
  c.unlock()
  c.ppo.update(ppo_overrides)
  return c


def test_a_policy_learns_the_token_its_reward_favours(tmp_path):
  """A reward of +1 per emitted 'x' (byte tokenizer) drives a random policy towards 'x'."""
  cfg = _ppo_cfg(prompt_len=24, max_new_tokens=8, epochs=2, minibatch_size=16, kl_coef=0.0,
                 temperature=1.0)
  cfg.data.batch_size = 32
  cfg.optimizer.learning_rate = 3e-3
  cfg.optimizer.schedule = "constant"
  cfg.num_train_steps = 25
  cfg.checkpoint_every = 100
  mcfg = C.tiny(num_hidden_layers=1, hidden_size=32, moe_intermediate_size=16, intermediate_size=64,
                n_routed_experts=4, num_experts_per_tok=2, first_k_dense_replace=0, num_attention_heads=2,
                num_key_value_heads=2)
  policy = moe_jax.init_model(mcfg, seed=0)
  x = TOK.encode("x")[0]

  def favour_x(r: ppo.Rollouts) -> np.ndarray:
    return ((r.responses == x) & (r.mask > 0)).astype(np.float32)

  share = lambda m: float(np.mean(np.asarray(ppo.rollout(
      m, TOK, ["hi"], np.zeros(64, int), 24, 8, 1.0, seed=7).responses) == x))
  before = share(policy)
  trained, summary = ppo.train(cfg, str(tmp_path), policy, trainable.TrainableSpec(), TOK, ["hi", "yo"],
                               favour_x, train_lib.make_mesh(cfg))
  after = share(trained)
  rewards = [h["task_reward"] for h in summary["history"]]
  assert before < 0.05
  assert after > 0.5, (before, after, rewards)
  assert np.mean(rewards[-5:]) > 3 * max(np.mean(rewards[:5]), 0.1)
  assert "value_head" not in trained.params


def test_ppo_through_train_py_config_with_esft_and_resume(tmp_path, model):
  """configs/ppo.py with a PRM reward and ESFT runs through train_and_evaluate, then resumes."""
  moe_jax.save_pretrained(model, tmp_path / "prm")
  moe_jax.save_pretrained(model, tmp_path / "policy")
  cfg = _ppo_cfg(reward_model=str(tmp_path / "prm"), reward_mode="prm", prompt_len=256,
                 max_new_tokens=24, minibatch_size=4, epochs=1)
  cfg.init_from = str(tmp_path / "policy")
  cfg.train_mode = "esft"
  cfg.esft.n_score_tokens = 1024
  cfg.data.batch_size = 8
  cfg.data.eval_fraction = 0.02
  cfg.num_train_steps = 2
  cfg.checkpoint_every = 1
  work = tmp_path / "run"
  first = tasks.train_and_evaluate(cfg, str(work))
  assert len(first["history"]) == 2 and first["trainable_fraction"] < 0.5
  assert (work / "expert_config.json").exists() and (work / "hf" / "config.json").exists()
  assert "greedy_accuracy" in first["before"] and "greedy_accuracy" in first["after"]
  cfg.num_train_steps = 3
  second = tasks.train_and_evaluate(cfg, str(work))
  assert len(second["history"]) == 1  # only iteration 3 ran: 1 and 2 came from the checkpoint
  assert "before" not in second
