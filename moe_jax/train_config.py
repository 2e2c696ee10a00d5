"""The trainer's configuration: defaults every config file starts from, one comment per field.

A config file's get_config() calls base_config() and changes what its
experiment needs (see configs/). Any field is overridable on the command line:
    python train.py --config=configs/fft.py --workdir=DIR --config.num_train_steps=100
"""

import dataclasses
import typing

import ml_collections

from moe_jax import sharding
from moe_jax.config import ModelConfig

_COMPUTE_FIELDS = ("dispatch", "capacity_factor", "remat")  # set under config.compute


def _model_fields() -> dict:
  """A typed None placeholder per scalar ModelConfig field, so `--config.model.X=...` works."""
  hints = typing.get_type_hints(ModelConfig)
  out = {}
  for f in dataclasses.fields(ModelConfig):
    kind = next((t for t in (bool, int, float, str) if t in typing.get_args(hints[f.name])
                 or hints[f.name] is t), None)
    if kind is not None and f.name not in _COMPUTE_FIELDS:
      out[f.name] = ml_collections.FieldReference(None, field_type=kind)
  return out


def base_config() -> ml_collections.ConfigDict:
  """Every training field with its default; configs/*.py start from it and override."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  # The model: a Hugging Face directory to start from, or a preset (+ any ModelConfig field).
  c.init_from = ""  # "" = random init from `model` (after `pretrain`, if set)
  # Any ModelConfig field (Hugging Face names) may be set; None keeps the preset's value.
  c.model = ml_collections.ConfigDict(dict(preset="tiny", **_model_fields()))
  c.compute = ml_collections.ConfigDict(dict(
      # Token dispatch: "auto" (grouped on CPU, sorted on GPU, ragged_dot on TPU), "sorted",
      # "grouped", "pallas", "ragged_dot" or "dense" (see moe_jax.moe).
      dispatch="auto",
      capacity_factor=0.0,  # <= 0: dropless; 1.25-2.0 trades exactness for speed at scale
      # Recompute each layer in the backward pass rather than keep its activations: "none",
      # "full" (keep the layer's input only) or "dots" (also keep the projections' outputs).
      remat="none",
  ))
  # Optional base training before the main run (used by the quickstart).
  c.pretrain = ml_collections.ConfigDict(dict(num_train_steps=0, train_files=(), learning_rate=3e-3))
  c.data = ml_collections.ConfigDict(dict(
      tokenizer="byte",  # "byte", or a tokenizer.json (or its directory)
      # ESFT chat JSONL; "assets:" = shipped. A tuple: lists cannot be overridden on the command
      # line (--config.data.train_files=a.jsonl, or "('a.jsonl', 'b.jsonl')").
      train_files=("assets:intent_train_sample.jsonl",),
      seq_len=256,  # packed row length
      batch_size=8,  # global batch, in rows
      eval_fraction=0.1,  # share of examples held out for evaluation
      max_examples=0,  # 0 = all
  ))
  c.task = "lm"  # "lm": chat SFT; "prm": a process reward model (configs/prm.py); "ppo": configs/ppo.py
  c.train_mode = "fft"  # "fft", "esft" or "lora"
  c.lora = ml_collections.ConfigDict(dict(rank=8, scale=2.0))  # the ESFT paper's LoRA baseline
  c.esft = ml_collections.ConfigDict(dict(
      expert_config="",  # an official expert config JSON; "" = score and select here
      score_function="token",  # "token" (selection ratio) or "gate" (average gate score)
      top_p=0.2,  # cumulative score share to cover per layer
      n_score_tokens=131072,  # task tokens to score on (the paper's 32 x 4096)
      train_shared_experts=False,
      train_non_expert_modules=False,
  ))
  c.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=1e-5, schedule="constant", warmup_steps=0, final_lr_fraction=0.1,
      weight_decay=0.1, b1=0.9, b2=0.95, grad_clip=1.0))  # ESFT's base.yaml
  c.num_train_steps = 100
  c.log_every = 10
  c.eval_every = 50  # 0 = only before and after
  c.checkpoint_every = 50
  c.keep_checkpoints = 2
  # Device mesh: axis sizes (one may be -1 = all remaining devices) and logical-axis rules.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, expert=1, tensor=1))
  c.sharding_rules = [list(r) if isinstance(r, tuple) else r for r in sharding.DEFAULT_RULES]
  c.export_hf = True  # write workdir/hf as Hugging Face safetensors at the end
  c.sample_prompt = ""  # if set, generate a continuation at the end
  c.sample_tokens = 48
  return c


def esft_config(score_function: str, top_p: float) -> ml_collections.ConfigDict:
  """ESFT with the paper's settings: lr 1e-5, constant schedule, weight decay 0.1, 500 steps."""
  c = base_config()
  c.train_mode = "esft"
  c.esft.score_function = score_function
  c.esft.top_p = top_p
  c.optimizer.learning_rate = 1e-5
  c.num_train_steps = 500
  c.eval_every = 100
  c.checkpoint_every = 100
  return c


def gsm8k_demo_model(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The demo base of configs/prm.py and configs/ppo.py: a small tiny-preset DeepSeekMoE,
  pretrained here on the GSM8K sample when no init_from is given (the same for both, so a PPO
  run can start from the PRM run's pretrained base)."""
  c.model.update(dict(preset="tiny", hidden_size=128, num_hidden_layers=3, n_routed_experts=16,
                      num_experts_per_tok=4, moe_intermediate_size=64, intermediate_size=256,
                      max_position_embeddings=1024))
  c.pretrain.num_train_steps = 100  # only without init_from: learn GSM8K text first
  c.pretrain.train_files = ("assets:gsm8k_chat_sample.jsonl",)
  return c


def prm_config() -> ml_collections.ConfigDict:
  """A process reward model (moe_jax.prm.training): the PRM fields and their defaults."""
  c = base_config()
  c.task = "prm"
  c.prm = ml_collections.ConfigDict(dict(
      train_file="assets:prm_gsm8k_sample.jsonl",  # step-labelled solutions
      tag=" ки", good="+", bad="-",  # Math-Shepherd's step tag and label tokens
      label="soft",  # "soft": train on the labels as given; "hard": threshold them at 0.5
      orm=False,  # True: outcome RM, only the final step's label
      value_head=False,  # True: a scalar head on the last hidden state instead of the LM head
  ))
  c.data.seq_len = 512
  c.data.batch_size = 8
  c.data.eval_fraction = 0.15
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_steps = 10
  c.num_train_steps = 150
  c.log_every = 10
  c.eval_every = 0
  c.checkpoint_every = 50
  return c


def ppo_config() -> ml_collections.ConfigDict:
  """Step-by-step PPO (moe_jax.prm.ppo): the PPO fields and their defaults (spec C4)."""
  c = base_config()
  c.task = "ppo"
  c.ppo = ml_collections.ConfigDict(dict(
      prompts_file="assets:gsm8k_train_sample.jsonl",  # GSM8K JSONL: questions and gold answers
      reward_model="",  # HF directory of the PRM/ORM (not needed for "outcome")
      reward_mode="prm",  # "prm", "prm_final", "orm" or "outcome"
      step_reward="delta",  # "prm": "raw", "centered", "delta" or "min_so_far" (see moe_jax.prm.ppo)
      aggregate="min",  # "prm_final": how step scores become one
      tag=" ки", good="+", bad="-",  # the reward model's step tag and label tokens
      kl_coef=0.04,  # the paper's per-token KL penalty against the start policy
      gamma=1.0, lam=0.95,  # GAE
      clip=0.2, value_clip=0.2, vf_coef=0.5, ent_coef=0.0, whiten=True,
      epochs=2,  # passes over each batch of rollouts
      minibatch_size=8,  # 0 = the whole batch
      temperature=1.0,  # rollout sampling
      prompt_len=256,  # prompts are left-padded to this many tokens
      max_new_tokens=192,
  ))
  c.data.tokenizer = "byte"
  c.data.batch_size = 16  # rollouts per iteration
  c.data.eval_fraction = 0.1  # held-out prompts for greedy accuracy before and after
  c.optimizer.learning_rate = 1e-5
  c.optimizer.schedule = "cosine"
  c.optimizer.final_lr_fraction = 0.01
  c.optimizer.weight_decay = 0.0
  c.num_train_steps = 20  # PPO iterations
  c.log_every = 1
  c.eval_every = 0
  c.checkpoint_every = 5
  return c
