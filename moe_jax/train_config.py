"""The trainer's configuration: defaults every config file starts from, one comment per field.

A config file's get_config() calls base_config() (or a task's builder on top
of it, such as `moe_jax.prm.configs.prm_config()`) and changes what its
experiment needs (see configs/). Any field is overridable on the command line:
    python train.py --config=configs/fft.py --workdir=DIR --config.num_train_steps=100
"""

import dataclasses
import typing

import ml_collections

from moe_jax import sharding
from moe_jax.config import COMPUTE_FIELDS, ModelConfig



def _model_fields() -> dict:
  """A typed None placeholder per scalar ModelConfig field, so `--config.model.X=...` works
  (the compute fields are set under `config.compute` instead)."""
  hints = typing.get_type_hints(ModelConfig)
  out = {}
  for f in dataclasses.fields(ModelConfig):
    kind = next((t for t in (bool, int, float, str) if t in typing.get_args(hints[f.name])
                 or hints[f.name] is t), None)
    if kind is not None and f.name not in COMPUTE_FIELDS:
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
  # How the model computes, not what (moe_jax.config.COMPUTE_FIELDS): applied to every model a
  # run builds or loads, in every task and stage, and free to change when a run resumes.
  c.compute = ml_collections.ConfigDict(dict(
      # Token dispatch: "auto" (grouped on CPU, sorted on GPU, ragged_dot on TPU), "sorted",
      # "grouped", "pallas", "ragged_dot" or "dense" (see moe_jax.moe).
      dispatch="auto",
      capacity_factor=0.0,  # <= 0: dropless; 1.25-2.0 trades exactness for speed at scale
      # Recompute each layer in the backward pass rather than keep its activations: "none",
      # "full" (keep the layer's input only) or "dots" (also keep the projections' outputs).
      remat="none",
      dtype="float32",  # activation dtype ("bfloat16" for speed); weights keep model.param_dtype
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
  # What runs (moe_jax.tasks.TASKS): "lm" chat SFT; "prm" a process reward model (configs/prm.py);
  # "ppo" step-by-step PPO (configs/ppo.py).
  c.task = "lm"
  c.train_mode = "fft"  # "fft", "esft", "lora", or "heads" (the task heads only)
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
