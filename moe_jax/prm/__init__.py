"""Math-Shepherd process reward models: data, training, annotation and verification.

* `data`: Math-Shepherd (`input`/`label` with ` ки` tags) and TRL
  (`prompt`/`completions`/`labels`) formats, and encoding with tag positions.
* `gsm8k`: reference solutions as steps, answer extraction and comparison.
* `reward`: step scores at tag positions, the PRM/ORM loss, held-out metrics.
* `training`: PRM training through `train.py --config=configs/prm.py`.
* `annotate`: hard and soft step labels from completer rollouts.
* `verify`, `scoring`: best-of-N, self-consistency and SC + RM with a PRM.

CLI: `python -m moe_jax.prm {annotate,verify,convert}`.
"""

from moe_jax.prm.data import Example, PRMDataError, read_examples, write_math_shepherd, write_trl

__all__ = ["Example", "PRMDataError", "read_examples", "write_math_shepherd", "write_trl"]
