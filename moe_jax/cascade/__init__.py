"""CascadeBERT: a calibrated cascade of complete encoders, and the early-exit baselines it beats.

  stages      the complete models (`PATH[@LAYERS]`: MiniLM-2L is MiniLM's first two
              layers), their tokenizers, saving and loading a trained cascade
  losses      the stages' cross-entropies and the difficulty-aware ranking loss
  exits       exit rules (threshold, entropy, patience), real early exit, costs
  early_exit  DeeBERT and PABEE internal classifiers on one encoder
  difficulty  easy/hard labels from the small model fine-tuned alone with several seeds
  evaluate    accuracy against speed-up, calibration, measured wall-clock speed-up
  task        the "cascade" task (`train.py --config=configs/cascade_tweets.py`)
  configs     the `cascade` config section

`python -m moe_jax.cascade {difficulty,evaluate}` is the command line.
Modules are imported by name; this file imports nothing.
"""
