"""Parity with transformers' dense decoders: Llama, Qwen2 and Mistral.

A dense model is a config on the DeepSeek MHA path (`n_routed_experts=None`),
so these tests check the config reading and the few family differences: grouped-query
attention, tied and untied embeddings, RoPE theta, RMSNorm eps, Qwen2's q/k/v-only
biases and Mistral's sliding window. Each checkpoint is a tiny random model written
offline by transformers' `save_pretrained`; the tests check

  * float32 logits within 1e-5 relative error over several batch shapes;
  * greedy generation token for token against transformers' `generate`;
  * `moe_jax.save_pretrained` output that transformers loads with the same logits;
  * that a dense model's config round-trips and has no MoE layer.
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import moe_jax  # noqa: E402
from parity_util import checkpoint_cache  # noqa: E402

pytestmark = pytest.mark.usefixtures("full_precision_matmuls")

VOCAB = 101
SHAPES = ((1, 9), (2, 14))
RTOL = 1e-5

_COMMON = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
               num_attention_heads=6, num_key_value_heads=2, head_dim=8, bos_token_id=0,
               eos_token_id=1, max_position_embeddings=128)
# name -> (transformers classes, config fields beyond _COMMON)
CASES = {
    "llama_gqa_tied": ("Llama", dict(tie_word_embeddings=True, rope_theta=100000.0,
                                     rms_norm_eps=1e-5)),
    "llama_untied_mha": ("Llama", dict(tie_word_embeddings=False, num_key_value_heads=6,
                                       rms_norm_eps=1e-6)),
    "qwen2_bias": ("Qwen2", dict(tie_word_embeddings=False, rope_theta=1000000.0)),
    # A 4-key window over 14-token batches: the mask must cut most of the context.
    "mistral_window": ("Mistral", dict(tie_word_embeddings=False, sliding_window=4)),
}


def _hf_model(family: str, fields: dict, seed: int = 0):
  config_cls = getattr(transformers, f"{family}Config")
  model_cls = getattr(transformers, f"{family}ForCausalLM")
  torch.manual_seed(seed)
  config = config_cls(**{**_COMMON, **fields}, attn_implementation="eager")
  model = model_cls(config).eval()
  with torch.no_grad():  # large enough weights that every block changes the output
    for name, p in model.named_parameters():
      if "norm" in name:
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
      else:
        p.copy_(0.3 * torch.randn_like(p))
  return model


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  """name -> (torch model, saved directory, moe_jax model), built once per module."""
  return checkpoint_cache(tmp_path_factory, lambda name: _hf_model(*CASES[name]))


def _ids(shape, seed):
  return np.random.RandomState(seed).randint(0, VOCAB, shape).astype(np.int32)


def _ref_logits(ref, ids):
  with torch.no_grad():
    return ref(torch.tensor(ids, dtype=torch.long)).logits.numpy()


def _rel_err(got, want):
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_transformers(ckpt, name):
  ref, _, ours = ckpt(name)
  assert ours.config.moe_layers == [] and ours.config.model_type == CASES[name][0].lower()
  for seed, shape in enumerate(SHAPES):
    ids = _ids(shape, seed)
    want = _ref_logits(ref, ids)
    assert np.abs(want).max() > 1.0, "reference logits are trivially small"
    err = _rel_err(ours(ids), want)
    assert err <= RTOL, f"{name} {shape}: relative error {err:.2e}"


def test_family_differences_matter(ckpt):
  """Each family feature under test changes the logits when switched off."""
  ids = _ids(SHAPES[1], 1)
  _, _, mistral = ckpt("mistral_window")
  no_window = moe_jax.Model(mistral.config.replace(sliding_window=None), mistral.variables)
  assert _rel_err(no_window(ids), mistral(ids)) > 1e-2
  _, _, qwen = ckpt("qwen2_bias")
  q_bias = qwen.params["layers_0"]["self_attn"]["q_proj"]
  assert "bias" in q_bias and "bias" not in qwen.params["layers_0"]["self_attn"]["o_proj"]
  assert float(np.abs(q_bias["bias"]).max()) > 0.1


@pytest.mark.parametrize("name", ["llama_gqa_tied", "qwen2_bias", "mistral_window"])
def test_greedy_generate_matches_transformers(ckpt, name):
  ref, _, ours = ckpt(name)
  prompt = _ids((2, 5), 7)
  with torch.no_grad():
    want = ref.generate(torch.tensor(prompt, dtype=torch.long), do_sample=False,
                        attention_mask=torch.ones(prompt.shape, dtype=torch.long),
                        max_new_tokens=24, eos_token_id=None, pad_token_id=0).numpy()
  got = np.asarray(moe_jax.generate(ours, prompt, max_new_tokens=24, eos_token_id=-1))
  np.testing.assert_array_equal(got, want)
  assert len(np.unique(want[:, 5:])) > 4, "degenerate continuation proves little"


@pytest.mark.parametrize("name", ["llama_gqa_tied", "qwen2_bias", "mistral_window"])
def test_save_pretrained_loads_in_transformers(ckpt, tmp_path, name):
  ref, _, ours = ckpt(name)
  moe_jax.save_pretrained(ours, tmp_path)
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["architectures"] == [f"{CASES[name][0]}ForCausalLM"]
  assert "n_routed_experts" not in config and "kv_lora_rank" not in config
  back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager")
  ids = _ids(SHAPES[1], 3)
  assert _rel_err(_ref_logits(back, ids), _ref_logits(ref, ids)) <= RTOL
  again = moe_jax.from_pretrained(tmp_path)
  assert again.config == ours.config
