"""Text classification on any model family: the "classify" task and what it reads and reports.

  datasets  the JSONL format, its reader, and four real sets that ship offline
  metrics   accuracy, macro-F1, expected calibration error, confusion matrix, plots
  task      the "classify" task (`train.py --config=configs/classify_intent.py`)
  configs   the `classify` config section

`python -m moe_jax.classify predict --workdir=DIR --input=FILE` labels texts
with a finished run. Modules are imported by name (`from moe_jax.classify
import datasets`); this file imports nothing, so `import moe_jax.classify`
stays light.
"""
