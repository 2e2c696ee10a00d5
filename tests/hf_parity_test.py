"""Parity with transformers' DeepseekV2ForCausalLM and DeepseekV3ForCausalLM.

Every checkpoint here is a tiny random model built offline with transformers
(config constructed in code, `torch.manual_seed`, weights re-drawn large enough
that routing decides the output), written with `save_pretrained` and read with
`moe_jax.from_pretrained`. The tests check:

  * float32 logits within 1e-5 relative error (max|ours - ref| / max|ref|) over
    batches of several shapes, for V2 greedy and group-limited routing, with and
    without query compression, default RoPE and YaRN, and V3 bias-corrected
    sigmoid routing (non-zero `e_score_correction_bias`) with interleaved and
    half-split rotary layouts;
  * greedy generation token for token against transformers' `generate`, and a
    left-padded batch against each prompt decoded alone;
  * `moe_jax.save_pretrained` output that transformers and moe_jax load back
    exactly, single-file and sharded;
  * transformers 5's fused expert tensors (`experts.gate_up_proj`/`down_proj`);
  * bfloat16 loading close to float32;
  * clear ConfigError / CheckpointError messages for broken directories.

Shapes are shared across tests so jit compiles each (config, shape) once.
"""

import json
import os
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import (AutoModelForCausalLM, DeepseekV2Config,  # noqa: E402
                          DeepseekV2ForCausalLM, DeepseekV3Config, DeepseekV3ForCausalLM)

import moe_jax  # noqa: E402
from parity_util import checkpoint_cache  # noqa: E402

pytestmark = pytest.mark.usefixtures("full_precision_matmuls")

VOCAB = 96
E = 8  # routed experts in every case
SHAPES = ((1, 7), (2, 12), (3, 5))  # (batch, seq) of the logits batches
RTOL = 1e-5  # float32 parity: max|ours - ref| / max|ref|

_YARN_V2 = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
            "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707}
# mscale != mscale_all_dim makes the cos/sin attention factor differ from 1 too.
_YARN_V3 = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
            "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 0.5}

# name -> (kind, config fields beyond the kind's defaults). With top-k <= topk_group,
# V2's group-limited greedy (a group scores its best expert) would always pick
# what plain greedy picks, so that case routes top-3 out of 2 kept groups.
CASES = {
    "v2_greedy": ("v2", dict(topk_method="greedy", q_lora_rank=None, rope=None)),
    "v2_group_limited_qlora_yarn": ("v2", dict(
        topk_method="group_limited_greedy", n_group=4, topk_group=2, num_experts_per_tok=3,
        q_lora_rank=12, routed_scaling_factor=2.0, rope=_YARN_V2)),
    "v3_interleave_qlora_yarn": ("v3", dict(rope_interleave=True, q_lora_rank=12, rope=_YARN_V3)),
    "v3_half_split": ("v3", dict(rope_interleave=False, q_lora_rank=None, rope=None)),
}
_DEFAULTS = {
    "v2": dict(num_experts_per_tok=2),
    "v3": dict(num_experts_per_tok=3, n_group=4, topk_group=2, norm_topk_prob=True,
               routed_scaling_factor=2.5),
}


def _hf_model(kind: str, fields: dict, seed: int = 0):
  """A tiny random transformers model, weights scaled so every block matters."""
  fields = {**_DEFAULTS[kind], **fields}
  rope = fields.pop("rope")
  # Two layers: a dense one (first_k_dense_replace=1), then a MoE one.
  common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=16,
                qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, n_routed_experts=E,
                n_shared_experts=1, moe_intermediate_size=16, first_k_dense_replace=1,
                bos_token_id=0, eos_token_id=1, tie_word_embeddings=False)
  if rope is None:
    common.update(max_position_embeddings=128,
                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
  else:  # max_position_embeddings = factor * original, as transformers expects
    common.update(max_position_embeddings=int(rope["factor"] * rope["original_max_position_embeddings"]),
                  rope_parameters={**rope, "rope_theta": 10000.0})
  cls, config_cls = {"v2": (DeepseekV2ForCausalLM, DeepseekV2Config),
                     "v3": (DeepseekV3ForCausalLM, DeepseekV3Config)}[kind]
  config = config_cls(**common, **fields)
  torch.manual_seed(seed)
  model = cls(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim == 1:  # RMSNorm scales
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
      else:  # [out, in] and the fused experts [E, out, in]: unit-variance activations
        p.normal_(0.0, p.shape[-1] ** -0.5)
    if kind == "v3":
      # Sigmoid scores live in (0, 1); a bias of this size re-ranks many experts.
      for layer in model.model.layers:
        if hasattr(layer.mlp, "gate"):
          layer.mlp.gate.e_score_correction_bias.copy_(0.5 * torch.randn(E))
  return model


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  """name -> (torch model, saved directory, moe_jax model), built once per module."""
  return checkpoint_cache(tmp_path_factory, lambda name: _hf_model(*CASES[name]))


def _ids(shape, seed):
  return np.random.RandomState(seed).randint(0, VOCAB, shape).astype(np.int32)


def _ref_logits(ref, ids, routing=None):
  """transformers' logits; appends each MoE gate's (router logits, chosen experts) to `routing`."""
  hooks = []
  if routing is not None:
    for layer in ref.model.layers:
      if hasattr(layer.mlp, "gate"):
        hooks.append(layer.mlp.gate.register_forward_hook(
            lambda mod, args, out: routing.append((out[0].numpy(), out[2].numpy()))))
  try:
    with torch.no_grad():
      return ref(torch.tensor(ids, dtype=torch.long)).logits.numpy()
  finally:
    for h in hooks:
      h.remove()


def _rel_err(got, want):
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  return float(np.abs(got - want).max() / np.abs(want).max())


def _replace_leaf(model, path, fn):
  """A Model sharing model's variables except `fn` applied at `path`."""
  variables = jax.tree_util.tree_map(lambda x: x, model.variables)  # fresh containers
  node = variables
  for p in path[:-1]:
    node = node[p]
  node[path[-1]] = fn(node[path[-1]])
  return moe_jax.Model(model.config, variables)


def _assert_trees_equal(a, b):
  chex.assert_trees_all_equal_structs(a, b)
  chex.assert_trees_all_equal_shapes_and_dtypes(a, b)
  chex.assert_trees_all_equal(a, b)


# 1. Logits ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_transformers(ckpt, name):
  ref, _, ours = ckpt(name)
  c = ours.config
  routing = []
  for seed, shape in enumerate(SHAPES):
    ids = _ids(shape, seed)
    want = _ref_logits(ref, ids, routing)
    assert np.abs(want).max() > 1.0, "reference logits are trivially small"
    err = _rel_err(ours(ids), want)
    assert err <= RTOL, f"{name} {shape}: relative error {err:.2e}"

  # The routing rule under test must be doing something: group limits (and V3's
  # bias) must make the reference choose other experts than plain top-k does for
  # some tokens.
  if c.topk_method != "greedy":
    changed = 0
    for logits, chosen in routing:
      logits = torch.tensor(logits)
      scores = logits.softmax(-1) if c.scoring_func == "softmax" else logits.sigmoid()
      plain = torch.topk(scores, c.num_experts_per_tok, dim=-1).indices.numpy()
      changed += sum(set(a) != set(b) for a, b in zip(plain, chosen))
    assert changed > 0, f"{c.topk_method} picked the plain top-k for every token"

  # Routing must matter: shuffling the router's expert columns (so tokens go to
  # other experts with the same weights) moves the logits well past tolerance.
  ids = _ids(SHAPES[1], 1)
  base = np.asarray(ours(ids))
  layer = f"layers_{c.moe_layers[0]}"
  perm = np.random.RandomState(0).permutation(E)
  shuffled = _replace_leaf(ours, ("params", layer, "mlp", "gate", "kernel"), lambda k: k[:, perm])
  assert _rel_err(shuffled(ids), base) > 1e-2


def test_v3_correction_bias_changes_routing(ckpt):
  """The random e_score_correction_bias is loaded and large enough to change choices."""
  ref, _, ours = ckpt("v3_interleave_qlora_yarn")
  for i in ours.config.moe_layers:
    np.testing.assert_array_equal(
        np.asarray(ours.variables["buffers"][f"layers_{i}"]["mlp"]["e_score_correction_bias"]),
        ref.model.layers[i].mlp.gate.e_score_correction_bias.numpy())
  ids = _ids(SHAPES[1], 1)
  variables = jax.tree_util.tree_map(lambda x: x, ours.variables)
  variables["buffers"] = jax.tree_util.tree_map(jnp.zeros_like, variables["buffers"])
  # The bias never changes the weights of the chosen experts, only the choice.
  unbiased = moe_jax.Model(ours.config, variables)
  assert _rel_err(unbiased(ids), ours(ids)) > 1e-2


# 2. Generation -----------------------------------------------------------------------

def _hf_generate(ref, prompt, mask=None, eos=None):
  """transformers' greedy decoding; with `eos`, finished rows are padded with eos (as ours)."""
  mask = np.ones_like(prompt) if mask is None else mask
  with torch.no_grad():
    return ref.generate(torch.tensor(prompt, dtype=torch.long),
                        attention_mask=torch.tensor(mask, dtype=torch.long), do_sample=False,
                        max_new_tokens=32, eos_token_id=eos,
                        pad_token_id=0 if eos is None else eos).numpy()


@pytest.mark.parametrize("name", ["v2_greedy", "v3_interleave_qlora_yarn"])
def test_greedy_generate_matches_transformers(ckpt, name):
  ref, _, ours = ckpt(name)
  prompt = _ids((2, 5), 7)
  want = _hf_generate(ref, prompt)
  assert want.shape == (2, 5 + 32), "transformers stopped early"
  got = np.asarray(moe_jax.generate(ours, prompt, max_new_tokens=32, eos_token_id=-1))
  np.testing.assert_array_equal(got, want)
  assert len(np.unique(want[:, 5:])) > 4, "degenerate continuation proves little"

  # Stopping: make the 9th new token of row 0 the EOS. Row 0 then repeats it,
  # row 1 stops there only if it produces that token too. The eos id is traced,
  # so this reuses the compiled decoder.
  eos = int(want[0, 5 + 8])
  want = _hf_generate(ref, prompt, eos=eos)
  got = np.asarray(moe_jax.generate(ours, prompt, max_new_tokens=32, eos_token_id=eos))
  assert (got[0, 5 + 9:] == eos).all()
  n = want.shape[1]  # transformers ends once every row has finished
  np.testing.assert_array_equal(got[:, :n], want)
  assert (got[:, n:] == eos).all()


def test_left_padded_batch_matches_each_prompt_alone(ckpt):
  ref, _, ours = ckpt("v3_interleave_qlora_yarn")
  short, long = _ids((1, 3), 11)[0], _ids((1, 5), 12)[0]
  pad = 0
  batch = np.array([[pad, pad, *short], long], np.int32)
  mask = np.array([[0, 0, 1, 1, 1], [1] * 5], np.int32)
  got = np.asarray(moe_jax.generate(ours, batch, max_new_tokens=32, prompt_mask=mask,
                                    eos_token_id=-1))
  np.testing.assert_array_equal(got[:, :5], batch)
  for row, prompt in enumerate((short, long)):
    alone = np.asarray(moe_jax.generate(ours, prompt[None], max_new_tokens=32, eos_token_id=-1))
    np.testing.assert_array_equal(alone[0, :len(prompt)], prompt)
    np.testing.assert_array_equal(got[row, -32:], alone[0, -32:], err_msg=f"row {row}")
  # transformers, given the same left-padded batch and mask, agrees.
  np.testing.assert_array_equal(got, _hf_generate(ref, batch, mask))


# 3. Round trip and 5. sharding -----------------------------------------------------

@pytest.mark.parametrize("name,max_shard_bytes", [
    ("v2_group_limited_qlora_yarn", None),
    ("v3_interleave_qlora_yarn", None),
    ("v3_interleave_qlora_yarn", 4096),  # sharded
])
def test_save_pretrained_round_trip(ckpt, tmp_path, name, max_shard_bytes):
  ref, _, ours = ckpt(name)
  out = tmp_path / "out"
  if max_shard_bytes is None:
    moe_jax.save_pretrained(ours, out)
    assert (out / "model.safetensors").exists()
  else:
    moe_jax.save_pretrained(ours, out, max_shard_bytes=max_shard_bytes)
    assert not (out / "model.safetensors").exists()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2
    assert sorted(p.name for p in out.glob("*.safetensors")) == shards

  for cls in (type(ref), AutoModelForCausalLM):
    back, info = cls.from_pretrained(out, output_loading_info=True)
    assert type(back) is type(ref)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info["mismatched_keys"], info
    back.eval()
    for seed, shape in enumerate(SHAPES[:2]):
      ids = _ids(shape, seed)
      err = _rel_err(_ref_logits(back, ids), _ref_logits(ref, ids))
      assert err <= RTOL, f"{cls.__name__} {shape}: relative error {err:.2e}"

  again = moe_jax.from_pretrained(out)
  # transformers writes head_dim = qk_rope_head_dim, an MHA-only field for us that
  # save_pretrained leaves out for MLA; compare the configs as written.
  assert again.config.to_hf_dict() == ours.config.to_hf_dict()
  _assert_trees_equal(again.variables, ours.variables)


# 4. transformers 5's fused expert layout -------------------------------------------

def test_fused_expert_layout(ckpt, tmp_path):
  ref, path, ours = ckpt("v3_half_split")
  state = {k: v.detach().contiguous() for k, v in ref.state_dict().items()}
  fused = [k for k in state if k.endswith("experts.gate_up_proj")]
  assert len(fused) == len(ours.config.moe_layers)
  for k in fused:
    e, two_f, d = state[k].shape
    assert (e, two_f, d) == (E, 2 * ours.config.moe_intermediate_size, ours.config.hidden_size)
    assert state[k.replace("gate_up_proj", "down_proj")].shape == (E, d, two_f // 2)
  save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
  shutil.copy(path / "config.json", tmp_path / "config.json")
  loaded = moe_jax.from_pretrained(tmp_path)
  _assert_trees_equal(loaded.variables, ours.variables)
  ids = _ids(SHAPES[0], 0)
  err = _rel_err(loaded(ids), _ref_logits(ref, ids))
  assert err <= RTOL, f"relative error {err:.2e}"


# 6. bfloat16 -------------------------------------------------------------------------

def test_bfloat16_close_to_float32(ckpt):
  # bf16 keeps 8 significant bits (relative rounding up to 2**-9 ~ 2e-3 per op,
  # and the logits themselves are stored in bf16); through two layers of norms,
  # attention and SwiGLU these compound to about 2e-2 of the largest logit here
  # (measured 1.7e-2 to 2.3e-2 on these batches). 5e-2 leaves a 2x margin and
  # still catches a wrong cast or layout, whose errors are of order 1.
  _, path, ours = ckpt("v3_interleave_qlora_yarn")
  bf16 = moe_jax.from_pretrained(path, dtype=jnp.bfloat16)
  for key_path, x in jax.tree_util.tree_flatten_with_path(bf16.variables)[0]:
    key = jax.tree_util.keystr(key_path)
    # The router (gate kernel, V3 correction bias) stays float32, as in transformers.
    router = "['gate']['kernel']" in key or "e_score_correction_bias" in key
    assert x.dtype == (jnp.float32 if router else jnp.bfloat16), key
  ids = _ids(SHAPES[1], 1)
  got = bf16(ids)
  assert got.dtype == jnp.bfloat16
  assert np.isfinite(np.asarray(got, np.float32)).all()
  err = _rel_err(got, ours(ids))
  assert err <= 5e-2, f"bf16 relative error {err:.2e}"


# 7. Bad input ------------------------------------------------------------------------

@pytest.fixture
def bad_dir(ckpt, tmp_path):
  """A writable copy of the V2 checkpoint to break."""
  _, path, _ = ckpt("v2_greedy")
  out = tmp_path / "ckpt"
  shutil.copytree(path, out)
  return out


def _edit_config(path, **changes):
  d = json.loads((path / "config.json").read_text())
  d.update(changes)
  (path / "config.json").write_text(json.dumps(d, indent=2))


def _edit_tensors(path, fn):
  state = load_file(str(path / "model.safetensors"))
  fn(state)
  save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})


def test_missing_config(bad_dir):
  os.remove(bad_dir / "config.json")
  with pytest.raises(moe_jax.ConfigError, match="config.json"):
    moe_jax.from_pretrained(bad_dir)


def test_malformed_config(bad_dir):
  (bad_dir / "config.json").write_text('{\n  "model_type": "deepseek_v2",\n  oops\n}\n')
  with pytest.raises(moe_jax.ConfigError) as e:
    moe_jax.from_pretrained(bad_dir)
  assert "config.json" in str(e.value) and "line 3" in str(e.value)


@pytest.mark.parametrize("field,value,words", [
    ("model_type", "gpt_neox", ["model_type", "gpt_neox"]),
    ("topk_method", "top_p", ["topk_method", "top_p"]),
    ("scoring_func", "tanh", ["scoring_func", "tanh"]),
    ("num_experts_per_tok", E + 1, ["num_experts_per_tok", f"n_routed_experts={E}"]),
])
def test_bad_config_field(bad_dir, field, value, words):
  _edit_config(bad_dir, **{field: value})
  with pytest.raises(moe_jax.ConfigError) as e:
    moe_jax.from_pretrained(bad_dir)
  for word in words:
    assert word in str(e.value)


@pytest.mark.parametrize("name", ["model.layers.0.self_attn.kv_b_proj.weight",
                                  "model.layers.1.mlp.experts.3.up_proj.weight"])
def test_missing_tensor(bad_dir, name):
  _edit_tensors(bad_dir, lambda s: s.pop(name))
  with pytest.raises(moe_jax.CheckpointError, match=name.replace(".", r"\.")):
    moe_jax.from_pretrained(bad_dir)


@pytest.mark.parametrize("name", ["model.layers.1.self_attn.o_proj.weight",
                                  "model.layers.1.mlp.experts.5.down_proj.weight"])
def test_wrong_shape(bad_dir, name):
  shapes = {}

  def shrink(state):
    shapes["want"] = tuple(state[name].shape)
    state[name] = state[name][:, :-1].contiguous()
    shapes["got"] = tuple(state[name].shape)

  _edit_tensors(bad_dir, shrink)
  with pytest.raises(moe_jax.CheckpointError) as e:
    moe_jax.from_pretrained(bad_dir)
  msg = str(e.value)
  assert name in msg and str(shapes["got"]) in msg and str(shapes["want"]) in msg


def test_unknown_tensor(bad_dir):
  name = "model.layers.0.mlp.extra_proj.weight"
  _edit_tensors(bad_dir, lambda s: s.update({name: torch.zeros(4, 4)}))
  with pytest.raises(moe_jax.CheckpointError, match=name.replace(".", r"\.")):
    moe_jax.from_pretrained(bad_dir)


def test_errors_are_value_errors():
  assert issubclass(moe_jax.ConfigError, ValueError)
  assert issubclass(moe_jax.CheckpointError, ValueError)
