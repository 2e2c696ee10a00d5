"""Trains a moe_jax model from an ml_collections config.

    python train.py --config=configs/quickstart.py --workdir=/tmp/run
    python train.py --config=configs/quickstart.py --workdir=/tmp/run --config.num_train_steps=20

On several hosts, run the same command on every host with `--distributed`
(Cloud TPU pods and other clusters JAX auto-detects), or with
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I`. Each host
loads its own share of every batch; only process 0 writes logs and exports;
Orbax coordinates the checkpoints.

Kept short so the logic lives in `moe_jax.tasks` and the engine below it, importable from notebooks.
"""

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and exports.")
config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=True)
flags.DEFINE_bool("distributed", False, "Multi-host: jax.distributed.initialize() with the "
                  "cluster auto-detected (Cloud TPU pods, SLURM, ...).")
flags.DEFINE_string("coordinator_address", None, "Multi-host: HOST:PORT of process 0.")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax  # pylint: disable=import-outside-toplevel

  explicit = [FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id]
  if any(x is not None for x in explicit):
    if any(x is None for x in explicit):
      raise app.UsageError("--coordinator_address, --num_processes and --process_id go together")
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  elif FLAGS.distributed:
    jax.distributed.initialize()
  from moe_jax import tasks  # pylint: disable=import-outside-toplevel

  logging.set_verbosity(logging.WARNING)  # keep Orbax's per-save INFO lines off the console
  tasks.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
