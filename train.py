"""Trains a moe_jax model from an ml_collections config.

    python train.py --config=configs/quickstart.py --workdir=/tmp/run
    python train.py --config=configs/quickstart.py --workdir=/tmp/run --config.num_train_steps=20

Kept short so the logic lives in `moe_jax.train_lib`, importable from notebooks.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from moe_jax import train_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and exports.")
config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # keep Orbax's per-save INFO lines off the console
  train_lib.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
