"""The task table, and the compute settings every task and stage honours.

`config.compute` (dispatch, capacity factor, dtype, remat) must reach every
train step a run compiles: the pretraining stage, the LM task, the PRM task
PPO and classification (on an MoE encoder). The steps are read as jaxprs while the trainer compiles them, so what
is checked is the program itself: dense dispatch has no sort (the token
dispatches sort assignments by expert), and remat="full" puts every decoder
layer under a rematerialisation primitive.
"""

import importlib.util
import re

import jax
import pytest

from moe_jax import config as model_config
from moe_jax import steps, tasks, train_config, train_lib
from jaxpr_util import primitives

REMAT = {"remat2", "checkpoint"}  # jax.checkpoint's primitive, under either of its names
SORT = "sort"


def _config(repo_root, name):
  spec = importlib.util.spec_from_file_location(name, repo_root / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.unlock()
  c.model.update(dict(hidden_size=32, num_hidden_layers=2, n_routed_experts=4, num_experts_per_tok=2,
                      moe_intermediate_size=16, intermediate_size=64, num_attention_heads=2))
  c.num_train_steps, c.log_every, c.checkpoint_every = 1, 1, 100
  c.export_hf, c.sample_prompt = False, ""
  return c


def _lm(repo_root):
  c = _config(repo_root, "quickstart")
  c.train_mode = "fft"
  c.pretrain.num_train_steps = 1
  c.data.update(dict(max_examples=40, seq_len=64, batch_size=2, eval_fraction=0.2))
  return c


def _prm(repo_root):
  c = _config(repo_root, "prm")
  c.pretrain.num_train_steps = 0
  c.data.update(dict(seq_len=256, batch_size=2))
  return c


def _ppo(repo_root):
  c = _config(repo_root, "ppo")
  c.pretrain.num_train_steps = 0
  c.ppo.update(dict(reward_mode="outcome", prompt_len=160, max_new_tokens=4, minibatch_size=2, epochs=1))
  c.data.update(dict(batch_size=2, eval_fraction=0.01))
  return c


def _classify(repo_root):
  """The intent classifier on its shipped sample, from a random MoE encoder (byte tokens)."""
  c = _config(repo_root, "classify_intent")
  c.init_from, c.data.tokenizer = "", "byte"
  c.model.update(dict(preset="all-minilm-l6-v2", vocab_size=264, max_position_embeddings=64))
  c.classify.update(dict(sample=True, max_train_examples=0, max_eval_examples=0))
  c.data.update(dict(seq_len=48, batch_size=2))
  return c


class _Traced(Exception):
  """Raised once the last step of a run is traced: what is checked has been compiled by then."""


def _programs(monkeypatch, cfg, workdir, n_steps: int) -> list:
  """The primitives of the first `n_steps` train steps `cfg`'s task compiles, read as the trainer
  traces them; the run stops there."""
  seen = []
  real = train_lib.make_train_step

  def spy(config, spec, tx, loss_fn=steps.lm_loss):
    step = real(config, spec, tx, loss_fn)

    def traced(state, batch):
      seen.append(primitives(jax.make_jaxpr(step)(state, batch).jaxpr))
      if len(seen) == n_steps:
        raise _Traced
      return step(state, batch)
    return traced

  monkeypatch.setattr(train_lib, "make_train_step", spy)
  with pytest.raises(_Traced):
    tasks.train_and_evaluate(cfg, workdir)
  return seen


@pytest.mark.parametrize("task,make,n_steps", [("lm", _lm, 2), ("prm", _prm, 1), ("ppo", _ppo, 1),
                                                 ("classify", _classify, 1)])
def test_compute_settings_reach_every_compiled_step(repo_root, tmp_path, monkeypatch, task, make,
                                                    n_steps):
  """lm compiles the pretraining stage's step, then its own; prm, ppo and classify their own."""
  default = make(repo_root)
  assert default.task == task and default.compute.dispatch == "auto" and default.compute.remat == "none"
  for prims in _programs(monkeypatch, default, str(tmp_path / "default"), n_steps):
    assert prims[SORT] > 0 and not REMAT & set(prims)  # auto is grouped on CPU: a sort by expert

  custom = make(repo_root)
  custom.compute.dispatch, custom.compute.remat = "dense", "full"
  for prims in _programs(monkeypatch, custom, str(tmp_path / "custom"), n_steps):
    assert prims[SORT] == 0 and sum(prims[r] for r in REMAT) > 0


def test_compute_section_holds_exactly_the_compute_fields():
  assert set(train_config.base_config().compute) == set(model_config.COMPUTE_FIELDS)
  assert not set(model_config.COMPUTE_FIELDS) & set(train_config.base_config().model)


def test_unknown_task_and_compute_field_are_named(repo_root, tmp_path):
  c = _lm(repo_root)
  c.task = "summarise"
  with pytest.raises(ValueError, match=re.escape(f"'summarise' is not a task; the tasks are {sorted(tasks.TASKS)}")):
    tasks.train_and_evaluate(c, str(tmp_path))
  c = _lm(repo_root)
  c.compute.dispatch = "sideways"
  with pytest.raises(model_config.ConfigError, match="dispatch"):
    train_lib.build_model_config(c)
  c.compute.dispatch = "auto"
  c.compute.capacity = 1.0
  with pytest.raises(model_config.ConfigError, match=r"config.compute: \['capacity'\]"):
    train_lib.build_model_config(c)
