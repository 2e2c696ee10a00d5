"""Fine-purifying: find the dimensions a backdoor or bias moved, reset them, fine-tune on clean data.

  curvature   the clean Hessian diagonal: empirical / true Fisher, Hutchinson
  indicators  drift against curvature (and the magnitude, log and random
              ablations), top-rho masks, whole-expert masks, the reset to
              pre-trained values
  attacks     BadWords, trigger-sentence and bias-word poisoning; the clean-set check
  defences    the defences compared (fine-tuning, Fine-mixing, Fine-pruning, the
              indicator resets, whole routed experts) as maps from the suspect's
              parameters
  detect      where the selected dimensions sit: layers, modules, experts, trigger rows
  evaluate    clean accuracy and attack success rate
  attacker    the attack's data files and the poisoned fine-tune
  task        the "purify" task (`train.py --config=configs/purify_tweets.py`)
  configs     the `purify` config section

`python -m moe_jax.purify {attack,detect,purify,evaluate}` is the command line.
No official code exists: the indicator is a reconstruction from the paper's
abstract, so it is compared as an ablation rather than taken as one formula.
Modules are imported by name; this file imports nothing.
"""
