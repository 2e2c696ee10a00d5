"""Fine-purifying a BadWords-poisoned MiniLM on the 3-class tweets (task "purify").

    python -m moe_jax.purify attack --config=configs/purify_tweets.py --workdir=/tmp/attack
    python train.py --config=configs/purify_tweets.py --workdir=/tmp/purify \
        --config.purify.suspect=/tmp/attack

Other defences: --config.purify.defence=finetune (or mixing, magnitude, logratio,
pruning, none); another attack: --config.purify.attack=sentence (or bias).
"""

from moe_jax.purify.configs import purify_config


def get_config():
  return purify_config()
