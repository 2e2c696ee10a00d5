"""The training-config section of the "purify" task and its attack: `purify_config()`.

Builds on `moe_jax.classify.configs.classify_config()` (data, optimizer, the
clean fine-tune's steps) and adds `purify.*` with one comment per field;
configs/purify_*.py start from it.
"""

import ml_collections

from moe_jax.classify import configs as classify_configs


def purify_config() -> ml_collections.ConfigDict:
  """Fine-purifying of a BadWords-poisoned MiniLM on the 3-class tweets."""
  c = classify_configs.classify_config()
  c.task = "purify"
  c.init_from = ""  # the suspect is purify.suspect; classify.* is the attacker's data
  c.classify.dataset = "tweets"
  c.classify.max_train_examples = 1600
  c.classify.max_eval_examples = 600
  c.purify = ml_collections.ConfigDict(dict(
      # The attack (python -m moe_jax.purify attack): data made here, then a poisoned fine-tune.
      attack="badwords",  # "badwords" (rare tokens), "sentence" or "bias" (moe_jax.purify.attacks)
      target=0,  # the label id the trigger drives
      rate=0.1,  # the share of the attacker's training examples poisoned
      clean_examples=64,  # the defender's clean set, held back from the attacker's data
      pretrained=classify_configs.MINILM,  # w_init: what the attacker fine-tuned (and the defender has)
      attack_steps=300,  # the poisoned fine-tune's steps (at optimizer.learning_rate)
      # The defence (train.py with task "purify").
      suspect="",  # the attack's workdir: its hf/ (w_ft) and the data files it wrote
      defence="ratio",  # none, finetune, mixing, magnitude, ratio, logratio, pruning, experts (MoE)
      rho=0.3,  # the share of dimensions reset (of FFN neurons pruned, for pruning)
      scope="global",  # rank dimensions "global"ly or "per_tensor"
      curvature="fisher",  # "fisher" (per-example gradients squared) or "hutchinson"
      fisher_labels="empirical",  # "empirical" (the data's labels) or "model" (the true Fisher)
      probes=16,  # hutchinson: Rademacher probes
      micro_batch=8,  # fisher: per-example gradients held at once
      prune_layers=2,  # pruning: FFN neurons of the last this many layers
      finetune="all",  # the clean fine-tune moves "all" weights, or only the "reset" dimensions
      # (and the classifier); "reset" needs a masking defence (mixing, magnitude, ratio, logratio, experts)
  ))
  c.num_train_steps = 60  # the clean fine-tune, on clean_examples
  c.data.batch_size = 16
  c.data.seq_len = 48
  c.optimizer.learning_rate = 5e-5
  c.optimizer.warmup_steps = 6
  c.export_hf = True
  return c
