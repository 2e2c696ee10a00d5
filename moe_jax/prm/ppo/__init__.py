"""Step-by-step PPO: a policy trained against process (or outcome) rewards (Math-Shepherd Sec. 3.4).

One module per part:
  * `objective`: GAE, whitening, the KL penalty, the clipped policy and value
    losses, and `prepare` (old log-probs, values and advantages of a batch);
  * `rollouts`: chat prompts, sampled responses split into steps, greedy accuracy;
  * `rewards`: task rewards from a PRM's step scores ("prm"), its aggregated
    score ("prm_final"), an ORM's score ("orm") or an exact answer check ("outcome");
  * `loop`: `train`, the resumable PPO loop through the trainer's jitted step
    (FFT or ESFT), with a value head on the policy's last hidden state as the critic;
  * `task`: the "ppo" task of `train.py --config=configs/ppo.py`.

Arrays over responses are [B, N]: N = max_new_tokens, index i is the i-th
response token; `mask` is 1 up to and including the first EOS.
"""

from moe_jax.prm.ppo.loop import train
from moe_jax.prm.ppo.objective import (Hyper, gae, hyper, kl_penalty, policy_params, ppo_loss,
                                       prepare, response_outputs, whiten)
from moe_jax.prm.ppo.rewards import (REWARD_MODES, STEP_REWARDS, RewardFn, final_rewards,
                                     outcome_fn, place_rewards, reward_model_fn, transform_step_scores)
from moe_jax.prm.ppo.rollouts import (Rollouts, encode_prompts, fitting_prompts, greedy_accuracy,
                                      prompt_text, rollout, split_steps)

__all__ = [
    "Hyper", "REWARD_MODES", "RewardFn", "Rollouts", "STEP_REWARDS", "encode_prompts",
    "final_rewards", "fitting_prompts", "gae", "greedy_accuracy", "hyper", "kl_penalty",
    "outcome_fn", "place_rewards", "policy_params", "ppo_loss", "prepare", "prompt_text",
    "response_outputs", "reward_model_fn", "rollout", "split_steps", "train",
    "transform_step_scores", "whiten",
]
