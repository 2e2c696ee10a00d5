"""ESFT end to end against independent references.

* The shipped intent expert config is reproduced exactly from DeepSeek's raw
  routing logs (library and CLI), and the token scores agree with a float64
  numpy re-implementation that parses the log text itself and with the
  published summary.json.
* The selection rule, expert-config validation and the selected/rest parameter
  split on hand-made inputs, with parameter counts computed by hand.
* The real jitted train step: frozen leaves (and unselected expert rows) are
  bitwise unchanged under weight decay, Adam state is proportional to the
  trainable count, ESFT with everything selected equals FFT.
* Scoring a tiny model against a float64 loop over its own routing; adapters
  (exact tensor names, exact round trip, errors); overlap and heatmap reports.
"""

import collections
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxpr_util import dot_shapes
from safetensors.numpy import load_file, save_file

from moe_jax import config as model_config
from moe_jax import esft, hf, input_pipeline, train_config, trainable
from moe_jax.esft.selection import ScoreAccumulator, select_layer
from moe_jax.model import Model, Transformer, init_variables
from moe_jax.steps import TrainState, make_optimizer, make_train_step
from moe_jax.tokenizer import ByteTokenizer
from moe_jax.trainable import ExpertConfigError

PROJ = ("gate_proj", "up_proj", "down_proj")

# A tiny V2 model with three MoE layers (1, 2, 3) after one dense layer.
V, D, I, F, E, K, L = 264, 64, 128, 32, 8, 2, 4
H, KV_LORA, ROPE, NOPE, V_HEAD, N_SHARED = 4, 16, 8, 8, 16, 1
CONFIG = model_config.tiny(
    vocab_size=V, hidden_size=D, intermediate_size=I, moe_intermediate_size=F, n_routed_experts=E,
    num_experts_per_tok=K, num_hidden_layers=L, num_attention_heads=H, kv_lora_rank=KV_LORA,
    q_lora_rank=None, qk_rope_head_dim=ROPE, qk_nope_head_dim=NOPE, v_head_dim=V_HEAD,
    n_shared_experts=N_SHARED, first_k_dense_replace=1)
MOE_LAYERS = [1, 2, 3]

# Hand-computed parameter counts of CONFIG.
PER_EXPERT = 3 * D * F  # gate and up [D, F], down [F, D]
SHARED_PER_LAYER = 3 * D * F * N_SHARED
ATTENTION = (D * H * (NOPE + ROPE)  # q_proj
             + D * (KV_LORA + ROPE) + KV_LORA  # kv_a_proj_with_mqa, kv_a_layernorm
             + KV_LORA * H * (NOPE + V_HEAD)  # kv_b_proj
             + H * V_HEAD * D)  # o_proj
LAYER_COMMON = ATTENTION + 2 * D  # attention and the two RMSNorms
TOTAL = (V * D + D + D * V  # embedding, final norm, lm_head
         + LAYER_COMMON + 3 * D * I  # dense layer 0
         + len(MOE_LAYERS) * (LAYER_COMMON + D * E + SHARED_PER_LAYER + E * PER_EXPERT))
ALL_ROUTED = len(MOE_LAYERS) * E * PER_EXPERT
ALL_SHARED = len(MOE_LAYERS) * SHARED_PER_LAYER

# Layer 2 is deliberately absent: it trains no routed experts.
SPEC_CFG = {"experts": {"1": [5, 0, 3], "3": [6]}, "shared_experts": False,
            "non_expert_modules": False}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def leaves_with_paths(tree):
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {tuple(getattr(k, "key", str(k)) for k in path): x for path, x in flat}


def trained_paths(spec, params):
  label_tree = leaves_with_paths(trainable.labels(trainable.split(params, spec, CONFIG), spec))
  assert set(label_tree.values()) <= {"train", "frozen"}
  return {p for p, l in label_tree.items() if l == "train"}, set(label_tree)


def opt_bytes(opt_state):
  """Bytes of every array leaf (arrays or ShapeDtypeStructs)."""
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
             for x in jax.tree_util.tree_leaves(opt_state))


@pytest.fixture(scope="module")
def params0():
  return jax.device_get(init_variables(CONFIG, 0)["params"])


@pytest.fixture(scope="module")
def batches(repo_root):
  sample = repo_root / "moe_jax" / "assets" / "intent_train_sample.jsonl"
  rows = input_pipeline.load_packed([sample], ByteTokenizer(), 128, max_examples=40)
  assert len(rows["tokens"]) >= 20 and rows["tokens"].max() < V
  return [{k: v[4 * i:4 * i + 4] for k, v in rows.items()} for i in range(5)]


def optimizer_cfg():
  oc = train_config.base_config().optimizer
  oc.learning_rate = 1e-2  # large, so three steps move every trained weight visibly
  oc.weight_decay = 0.1
  return oc


def run_training(spec, params0, batches, steps):
  """Like train_lib.train on one device, without checkpoints: (final state, losses, tx)."""
  tx = make_optimizer(optimizer_cfg(), steps, spec)
  params = trainable.split(params0, spec, CONFIG)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, buffers={},
                               opt_state=tx.init(params))
  step = jax.jit(make_train_step(CONFIG, spec, tx))
  losses = []
  for batch in batches[:steps]:
    state, m = step(state, batch)
    assert bool(m["finite"])
    losses.append(float(m["loss_sum"]) / float(m["tokens"]))
  assert int(state.step) == steps
  return jax.device_get(state), losses


@pytest.fixture(scope="module")
def esft_run(params0, batches):
  spec = trainable.TrainableSpec.from_expert_config(SPEC_CFG, CONFIG)
  state, losses = run_training(spec, params0, batches, 3)
  return spec, state, losses


# 1. The official configs from the official routing logs --------------------------

def parse_logs_reference(directory, top_k=6, n_experts=64):
  """Per layer: (token score, gate score / token, tokens) in float64 straight from the log text."""
  out = {}
  for name in os.listdir(directory):
    if not (name.startswith("expert_weights_") and name.endswith(".txt")):
      continue
    layer = int(name[len("expert_weights_"):-len(".txt")])
    counts, gates, n = np.zeros(n_experts, np.int64), np.zeros(n_experts, np.float64), 0
    with open(directory / name, encoding="utf-8") as f:
      for line in f:
        line = line.rstrip("\n")
        if not line:
          continue
        left, right = line.split("\t\t")
        ids = [int(s) for s in left.split("\t")]
        weights = [float(s) for s in right.split("\t")]
        assert len(ids) == len(weights) and len(ids) % top_k == 0
        for i, w in zip(ids, weights):
          counts[i] += 1
          gates[i] += w
        n += len(ids) // top_k
    out[layer] = (counts / top_k / n, gates / n, n)
  return out


def test_official_intent_expert_config_reproduced(shared_data, repo_root, tmp_path):
  logs = shared_data / "esft" / "routing_logs" / "intent"
  shipped = logs / "expert_config_token_p0.2.json"
  ref = json.loads(shipped.read_text())
  scores = esft.read_routing_logs(logs)
  cfg = esft.select_experts(scores.token, 0.2, decimals=4)
  assert cfg == ref
  assert list(cfg["experts"]) == list(ref["experts"])  # the files' string key order
  assert sum(len(v) for v in cfg["experts"].values()) == 124  # spec C.1 table
  trainable.write_expert_config(cfg, tmp_path / "lib.json")
  assert (tmp_path / "lib.json").read_bytes() == shipped.read_bytes()

  out = tmp_path / "cli.json"
  proc = subprocess.run([sys.executable, "-m", "moe_jax.esft", "select", "--routing-logs",
                         str(logs), "--score", "token", "--top-p", "0.2", "--out", str(out)],
                        capture_output=True, text=True, cwd=repo_root, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert out.read_bytes() == shipped.read_bytes()


def test_official_scores_match_numpy_reference_and_summary(shared_data):
  logs = shared_data / "esft" / "routing_logs" / "intent"
  scores = esft.read_routing_logs(logs)
  ref = parse_logs_reference(logs)
  summary = json.loads((logs / "summary.json").read_text())
  assert sorted(scores.token) == sorted(ref) == list(range(1, 27))
  assert ref[1][2] == 8222  # spec C.5: layer 1 holds 8222 tokens
  for layer, (token, gate_per_token, n) in ref.items():
    assert scores.tokens[layer] == n
    assert abs(scores.token[layer].sum() - 1.0) < 1e-12
    assert abs(scores.gate[layer].sum() - 1.0) < 1e-12
    np.testing.assert_allclose(scores.token[layer], token, rtol=1e-12, atol=0)
    # Our gate score is the per-layer share of the gate mass.
    np.testing.assert_allclose(scores.gate[layer], gate_per_token / gate_per_token.sum(),
                               rtol=1e-12, atol=0)
    # The reference agrees with DeepSeek's published 4-decimal summary (token and raw gate).
    published_token = np.array([summary["token_scores"][str(layer)][str(e)] for e in range(64)])
    published_gate = np.array([summary["gate_scores"][str(layer)][str(e)] for e in range(64)])
    np.testing.assert_array_equal(np.round(token, 4), published_token)
    np.testing.assert_allclose(gate_per_token, published_gate, atol=5e-5 + 1e-12, rtol=0)


def test_official_selection_without_rounding_differs_in_layer_17(shared_data):
  logs = shared_data / "esft" / "routing_logs" / "intent"
  ref = json.loads((logs / "expert_config_token_p0.2.json").read_text())
  scores = esft.read_routing_logs(logs)
  exact = esft.select_experts(scores.token, 0.2)
  differ = {l for l in ref["experts"] if exact["experts"][l] != ref["experts"][l]}
  assert differ == {"17"}
  assert ref["experts"]["17"] == [25, 61, 57, 36, 2]
  assert exact["experts"]["17"] == [25, 61, 57, 36, 45]
  s = parse_logs_reference(logs)[17][0]
  assert s[45] > s[2] and np.round(s[45], 4) == np.round(s[2], 4)  # tied at 4 decimals


# 2. The selection rule ----------------------------------------------------------

def test_selection_includes_the_crossing_expert():
  s = np.array([0.125, 0.5, 0.25, 0.125])
  assert select_layer(s, 0.5) == [1]  # reaches p exactly: stop
  assert select_layer(s, 0.51) == [1, 2]  # 0.5 < p, 0.75 crosses: included
  assert select_layer(s, 0.75) == [1, 2]
  assert select_layer(s, 0.8) == [1, 2, 0]
  assert select_layer(s, 1.0) == [1, 2, 0, 3]
  assert select_layer(np.array([0.5, 0.25, 0.25, 0.0]), 1.0) == [0, 1, 2]  # zeros not needed


def test_selection_takes_at_least_one_expert():
  assert select_layer(np.array([0.25, 0.25, 0.5]), 1e-9) == [2]
  cfg = esft.select_experts({1: np.full(4, 0.25), 2: np.array([0.0, 0.0, 0.0, 1.0])}, 1e-6)
  assert cfg["experts"] == {"1": [0], "2": [3]}


def test_selection_ties_keep_expert_id_order():
  assert select_layer(np.full(4, 0.25), 0.5) == [0, 1]
  assert select_layer(np.array([0.1, 0.3, 0.3, 0.3]), 0.7) == [1, 2, 3]
  assert select_layer(np.array([0.2, 0.3, 0.2, 0.3]), 0.65) == [1, 3, 0]
  # Rounding makes near-ties exact ties, which then go by id.
  assert select_layer(np.array([0.30001, 0.30004, 0.39995]), 0.5, decimals=4) == [2, 0]
  assert select_layer(np.array([0.30001, 0.30004, 0.39995]), 0.5) == [2, 1]


@pytest.mark.parametrize("top_p", [0.0, -0.1, 1.5])
def test_selection_validates_top_p(top_p):
  with pytest.raises(ValueError, match="top_p"):
    esft.select_experts({1: np.full(4, 0.25)}, top_p)


def test_select_experts_layout_and_flags():
  cfg = esft.select_experts({10: np.array([0.0, 1.0]), 9: np.array([1.0, 0.0])}, 0.5,
                            shared_experts=True)
  assert list(cfg["experts"]) == ["10", "9"]  # string order, like the official files
  assert cfg == {"experts": {"10": [1], "9": [0]}, "shared_experts": True,
                 "non_expert_modules": False}


def test_gate_and_token_scores_by_hand():
  acc = ScoreAccumulator(n_experts=4, top_k=2)
  idx = np.array([[0, 1], [1, 2], [3, 2]])
  w = np.array([[0.6, 0.2], [0.5, 0.3], [0.9, 0.9]])
  acc.add(1, idx, w, mask=np.array([True, True, False]))  # the third token is padding
  acc.add(2, idx[:1], w[:1])
  scores = acc.result()
  # Layer 1 gate sums [0.6, 0.7, 0.3, 0] / 1.6; token counts [1, 2, 1, 0] / 4.
  np.testing.assert_allclose(scores.gate[1], [0.375, 0.4375, 0.1875, 0.0], rtol=1e-15)
  np.testing.assert_allclose(scores.token[1], [0.25, 0.5, 0.25, 0.0], rtol=1e-15)
  np.testing.assert_allclose(scores.gate[2], [0.75, 0.25, 0.0, 0.0], rtol=1e-15)
  np.testing.assert_allclose(scores.token[2], [0.5, 0.5, 0.0, 0.0], rtol=1e-15)
  assert scores.tokens == {1: 2, 2: 1}
  for table in (scores.gate, scores.token):
    for s in table.values():
      assert abs(s.sum() - 1.0) < 1e-15  # normalised within each layer
  assert scores.get("gate") is scores.gate and scores.get("token") is scores.token
  with pytest.raises(ValueError, match="score function"):
    scores.get("weights")
  # The functions select differently at p = 0.5.
  assert esft.select_experts(scores.get("token"), 0.5)["experts"]["1"] == [1]
  assert esft.select_experts(scores.get("gate"), 0.5)["experts"]["1"] == [1, 0]


def test_read_routing_logs_by_hand(tmp_path):
  (tmp_path / "expert_weights_3.txt").write_text(
      "0\t1\t1\t2\t\t0.6\t0.2\t0.5\t0.3\n\n2\t3\t\t0.1\t0.1\n")
  (tmp_path / "notes.txt").write_text("ignored")
  scores = esft.read_routing_logs(tmp_path, top_k=2, n_experts=5)
  assert scores.tokens == {3: 3}
  np.testing.assert_allclose(scores.token[3], np.array([1, 2, 2, 1, 0]) / 6, rtol=1e-15)
  np.testing.assert_allclose(scores.gate[3], np.array([0.6, 0.7, 0.4, 0.1, 0]) / 1.8, rtol=1e-14)
  (tmp_path / "expert_weights_4.txt").write_text("0\t1\t0.5\t0.5\n")
  with pytest.raises(ExpertConfigError, match=r"expert_weights_4\.txt:1"):
    esft.read_routing_logs(tmp_path, top_k=2)


# 3. Expert-config validation ----------------------------------------------------

def write(tmp_path, name, text):
  path = tmp_path / name
  path.write_text(text)
  return path


def test_read_expert_config_accepts_a_valid_file(tmp_path):
  path = write(tmp_path, "ok.json", json.dumps({"experts": {"1": [7, 0], "3": []}}))
  cfg = trainable.read_expert_config(path, MOE_LAYERS, E)
  assert cfg == {"experts": {"1": [7, 0], "3": []}, "shared_experts": False,
                 "non_expert_modules": False}


@pytest.mark.parametrize("body,pattern", [
    ({"experts": {"0": [1]}}, r"layer 0 is not a MoE layer"),
    ({"experts": {"4": [1]}}, r"layer 4 is not a MoE layer"),
    ({"experts": {"1": [8]}}, r"layer 1: expert ids \[8\] do not exist"),
    ({"experts": {"1": [-1]}}, r"layer 1: expert ids \[-1\] do not exist"),
    ({"experts": {"2": [3, 1, 3]}}, r"layer 2: repeated expert ids"),
    ({"experts": {"1": [1.0]}}, r"layer 1: expected a list of expert ids"),
    ({"experts": {"1": [True]}}, r"layer 1: expected a list of expert ids"),
    ({"experts": {"1": [1], "01": [2]}}, r"layer 1 is listed twice"),
    ({"experts": {"1": 1}}, r"layer 1: expected a list of expert ids"),
    ({"experts": {"x": [1]}}, r"layer key 'x'"),
    ({"experts": [1, 2]}, r"'experts' mapping"),
    ({"experts": {"1": [1]}, "shared_experts": 1}, r"field 'shared_experts' must be true or false"),
    ({"experts": {"1": [1]}, "non_expert_modules": "true"},
     r"field 'non_expert_modules' must be true or false"),
])
def test_read_expert_config_errors_name_file_and_field(tmp_path, body, pattern):
  path = write(tmp_path, "bad_cfg.json", json.dumps(body))
  with pytest.raises(ExpertConfigError, match=pattern) as e:
    trainable.read_expert_config(path, MOE_LAYERS, E)
  assert str(path) in str(e.value)


def test_read_expert_config_malformed_json_and_missing_file(tmp_path):
  path = write(tmp_path, "broken.json", '{\n  "experts": {\n    "1": [1,]\n  }\n}\n')
  with pytest.raises(ExpertConfigError, match=r"broken\.json: malformed JSON at line 3"):
    trainable.read_expert_config(path, MOE_LAYERS, E)
  with pytest.raises(ExpertConfigError, match="no such file"):
    trainable.read_expert_config(tmp_path / "absent.json")


def test_trainable_spec_from_expert_config():
  spec = trainable.TrainableSpec.from_expert_config({"experts": {"3": [6], "1": [5, 0, 3]}}, CONFIG)
  assert spec.mode == "esft" and spec.selected == {1: (5, 0, 3), 3: (6,)}
  assert not spec.shared_experts and not spec.non_expert_modules
  assert spec.to_expert_config() == {"experts": {"1": [5, 0, 3], "3": [6]},
                                     "shared_experts": False, "non_expert_modules": False}
  flags = trainable.TrainableSpec.from_expert_config({**SPEC_CFG, "shared_experts": True}, CONFIG,
                                                non_expert_modules=True)
  assert flags.shared_experts and flags.non_expert_modules
  assert not trainable.TrainableSpec.from_expert_config(
      {**SPEC_CFG, "shared_experts": True}, CONFIG, shared_experts=False).shared_experts
  for bad, pattern in (({"experts": {"0": [1]}}, "layer 0 is not a MoE layer"),
                       ({"experts": {"1": [E]}}, rf"expert ids \[{E}\] do not exist"),
                       ({"experts": {"1": [2, 2]}}, "repeated expert ids"),
                       ({"experts": {"1": [2]}, "shared_experts": "no"}, "'shared_experts'")):
    with pytest.raises(ExpertConfigError, match=pattern):
      trainable.TrainableSpec.from_expert_config(bad, CONFIG)
  with pytest.raises(ValueError, match="train mode"):
    trainable.TrainableSpec("qlora")
  with pytest.raises(ExpertConfigError, match="layer 9"):
    trainable.check_selection(trainable.TrainableSpec("esft", ((9, (0,)),)), CONFIG)
  with pytest.raises(ExpertConfigError, match="outside"):
    trainable.check_selection(trainable.TrainableSpec("esft", ((1, (8,)),)), CONFIG)


# 4. The selected/rest split and its labels --------------------------------------

def test_hand_counted_total(params0):
  assert sum(x.size for x in jax.tree_util.tree_leaves(params0)) == TOTAL


def _split_vs_stacked(params0, dispatch, trained_only):
  """The ESFT forward on the split tree, and the stacked model's, as losses of (trained, frozen)."""
  spec = trainable.TrainableSpec.from_expert_config(SPEC_CFG, CONFIG)
  split = trainable.split(params0, spec, CONFIG)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, V, (2, 16)), jnp.int32)
  ct = jnp.asarray(np.random.default_rng(1).normal(size=(2, 16, V)), jnp.float32)
  cfg = CONFIG.replace(dispatch=dispatch)

  def split_loss(params):
    params, fwd_cfg = trainable.for_forward(params, spec, cfg)
    assert fwd_cfg.expert_split == spec.experts
    return jnp.sum(Transformer(fwd_cfg).apply({"params": params}, tokens).logits * ct)

  def stacked_loss(params):
    return jnp.sum(Transformer(cfg).apply({"params": trainable.merge(params, spec, cfg)}, tokens).logits * ct)

  if not trained_only:
    return split, split_loss, stacked_loss
  trained, frozen = trainable.partition(split, trainable.labels(split, spec))
  return (trained, lambda t: split_loss(trainable.combine(t, frozen)),
          lambda t: stacked_loss(trainable.combine(t, frozen)))


@pytest.mark.parametrize("dispatch", ["sorted", "pallas", "grouped"])
def test_split_model_matches_stacked_model(params0, dispatch):
  """Reading selected/rest stacks (expert_split) gives the stacked model's loss and gradients.

  `sorted` and `pallas` take the stacks apart; every other dispatch takes their
  concatenation, as `grouped` does here.
  """
  split, split_loss, stacked_loss = _split_vs_stacked(params0, dispatch, trained_only=False)
  (got_loss, got), (want_loss, want) = (jax.jit(jax.value_and_grad(f))(split)
                                        for f in (split_loss, stacked_loss))
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
  got, want = leaves_with_paths(got), leaves_with_paths(want)
  assert got.keys() == want.keys()
  for path in got:  # float32 sums in another order: tolerance relative to the leaf's scale
    np.testing.assert_allclose(got[path], want[path], rtol=1e-4,
                               atol=1e-5 * np.abs(want[path]).max(), err_msg=str(path))


def _expert_weight_grads(fn, *args) -> collections.Counter:
  """How many [n, D, F] / [n, F, D] matmul results fn computes (either layout: autodiff may
  transpose afterwards), by n."""
  found = collections.Counter()
  for shape, count in dot_shapes(jax.make_jaxpr(fn)(*args).jaxpr).items():
    if len(shape) == 3 and shape[1:] in ((D, F), (F, D)):
      found[shape[0]] += count
  return found


def test_frozen_experts_get_no_weight_gradient(params0, batches):
  """With `sorted`, the ESFT train step's weight-gradient matmuls are the trained experts' alone.

  Differentiating the stacked [E, ...] tensors instead computes every expert's
  weight gradient and then discards the frozen rows.
  """
  spec = trainable.TrainableSpec.from_expert_config(SPEC_CFG, CONFIG)
  cfg = CONFIG.replace(dispatch="sorted")
  tx = make_optimizer(optimizer_cfg(), 3, spec)
  params = trainable.split(params0, spec, cfg)
  state = TrainState(jnp.zeros((), jnp.int32), params, {}, tx.init(params))
  # layer 1 trains 3 experts and layer 3 one: gate, up and down weight gradients each
  assert _expert_weight_grads(make_train_step(cfg, spec, tx), state, batches[0]) == {3: 3, 1: 3}
  trained, _, stacked_loss = _split_vs_stacked(params0, "sorted", trained_only=True)
  assert _expert_weight_grads(jax.grad(stacked_loss), trained) == {E: 6}


def test_split_merge_round_trip_is_bit_identical(params0):
  spec = trainable.TrainableSpec.from_expert_config(SPEC_CFG, CONFIG)
  split = trainable.split(params0, spec, CONFIG)
  for layer, ids in ((1, [5, 0, 3]), (2, []), (3, [6])):
    experts = split[f"layers_{layer}"]["mlp"]["experts"]
    rest = [e for e in range(E) if e not in ids]
    assert ("selected" in experts) == bool(ids)  # an empty group has no (zero-size) leaf
    for p in PROJ:
      original = params0[f"layers_{layer}"]["mlp"]["experts"][p]
      if ids:
        np.testing.assert_array_equal(experts["selected"][p], original[ids])  # in listed order
      np.testing.assert_array_equal(experts["rest"][p], original[rest])
  merged = leaves_with_paths(jax.device_get(trainable.merge(split, spec, CONFIG)))
  original = leaves_with_paths(params0)
  assert merged.keys() == original.keys()
  for path, x in original.items():
    assert merged[path].dtype == x.dtype and np.array_equal(merged[path], x), path
  fft = trainable.TrainableSpec()
  assert trainable.split(params0, fft, CONFIG) is params0 and trainable.merge(params0, fft, CONFIG) is params0


def expert_paths(layers_ids, part="selected"):
  return {(f"layers_{l}", "mlp", "experts", part, p) for l in layers_ids for p in PROJ}


def shared_paths():
  return {(f"layers_{l}", "mlp", "shared_experts", p, "kernel") for l in MOE_LAYERS for p in PROJ}


def test_labels(params0):
  spec = trainable.TrainableSpec.from_expert_config(SPEC_CFG, CONFIG)
  train, every = trained_paths(spec, params0)
  assert train == expert_paths([1, 3])  # layer 2 selects nothing: no "selected" leaf

  shared = trainable.TrainableSpec.from_expert_config(SPEC_CFG, CONFIG, shared_experts=True)
  assert trained_paths(shared, params0)[0] == expert_paths([1, 3]) | shared_paths()

  non_expert = trainable.TrainableSpec.from_expert_config(SPEC_CFG, CONFIG, non_expert_modules=True)
  frozen = expert_paths(MOE_LAYERS, "rest") | shared_paths()
  assert trained_paths(non_expert, params0)[0] == every - frozen
  assert any(p[0] == "embed_tokens" for p in every - shared_paths())

  fft = trainable.TrainableSpec()
  train, every = trained_paths(fft, params0)
  assert train == every == set(leaves_with_paths(params0))


@pytest.mark.parametrize("shared,non_expert", [(False, False), (True, False), (False, True),
                                               (True, True)])
def test_parameter_counts_by_hand(params0, shared, non_expert):
  spec = trainable.TrainableSpec.from_expert_config(SPEC_CFG, CONFIG, shared, non_expert)
  split = trainable.split(params0, spec, CONFIG)
  n = trainable.count(split, trainable.labels(split, spec))
  selected = 4 * PER_EXPERT  # experts 5, 0, 3 of layer 1 and 6 of layer 3
  want = selected + (ALL_SHARED if shared else 0)
  if non_expert:
    want += TOTAL - ALL_ROUTED - ALL_SHARED
  assert n == {"train": want, "frozen": TOTAL - want}
  fft = trainable.TrainableSpec()
  assert trainable.count(params0, trainable.labels(params0, fft)) == {"train": TOTAL, "frozen": 0}


# 5. Training with the real step -------------------------------------------------

def test_frozen_weights_are_bitwise_unchanged(esft_run, params0):
  spec, state, losses = esft_run
  assert all(np.isfinite(losses))
  before = leaves_with_paths(trainable.split(params0, spec, CONFIG))
  after = leaves_with_paths(state.params)
  labels = leaves_with_paths(trainable.labels(state.params, spec))
  n_changed = 0
  for path, label in labels.items():
    if label == "frozen":
      assert np.array_equal(after[path], before[path]), path
    elif after[path].size:
      assert not np.array_equal(after[path], before[path]), path
      n_changed += 1
  assert n_changed == 6  # selected gate/up/down of layers 1 and 3

  merged = jax.device_get(trainable.merge(state.params, spec, CONFIG))
  for layer, ids in ((1, [5, 0, 3]), (2, []), (3, [6])):
    for p in PROJ:
      new = merged[f"layers_{layer}"]["mlp"]["experts"][p]
      old = params0[f"layers_{layer}"]["mlp"]["experts"][p]
      for e in range(E):
        if e in ids:
          assert not np.array_equal(new[e], old[e]), (layer, p, e)
        else:
          assert np.array_equal(new[e], old[e]), (layer, p, e)


def test_missing_moe_layer_trains_no_routed_experts(esft_run, params0):
  spec, state, _ = esft_run
  assert 2 not in spec.selected
  experts = state.params["layers_2"]["mlp"]["experts"]
  assert "selected" not in experts
  for p in PROJ:
    np.testing.assert_array_equal(experts["rest"][p], params0["layers_2"]["mlp"]["experts"][p])


def test_optimizer_state_is_proportional_to_trainable_params(params0):
  def state_bytes(spec):
    params = trainable.split(params0, spec, CONFIG)
    tx = make_optimizer(optimizer_cfg(), 3, spec)
    n = trainable.count(params, trainable.labels(params, spec))["train"]
    return opt_bytes(jax.eval_shape(tx.init, params)), opt_bytes(tx.init(params)), n

  small = trainable.TrainableSpec.from_expert_config(SPEC_CFG, CONFIG)
  large = trainable.TrainableSpec.from_expert_config({"experts": {"1": [0, 1, 2, 3, 4, 5], "2": [7],
                                                             "3": [1, 2]}}, CONFIG)
  shared = trainable.TrainableSpec.from_expert_config(SPEC_CFG, CONFIG, shared_experts=True)
  results = {}
  for name, spec, n_hand in (("small", small, 4 * PER_EXPERT), ("large", large, 9 * PER_EXPERT),
                             ("shared", shared, 4 * PER_EXPERT + ALL_SHARED),
                             ("fft", trainable.TrainableSpec(), TOTAL)):
    abstract_bytes, nbytes, n = state_bytes(spec)
    assert n == n_hand
    assert abstract_bytes == nbytes
    extra = nbytes - 2 * 4 * n  # Adam mu and nu in float32, plus step counters
    assert 0 <= extra < 64, (name, extra)
    results[name] = nbytes
  assert results["large"] - results["small"] == 2 * 4 * 5 * PER_EXPERT
  assert results["shared"] - results["small"] == 2 * 4 * ALL_SHARED


def test_esft_with_everything_selected_equals_fft(params0, batches):
  every = trainable.TrainableSpec.from_expert_config(
      {"experts": {"1": list(range(E))[::-1], "2": [3, 1, 7, 0, 6, 2, 5, 4], "3": list(range(E))},
       "shared_experts": True, "non_expert_modules": True}, CONFIG)
  esft_state, esft_losses = run_training(every, params0, batches, 5)
  fft_state, fft_losses = run_training(trainable.TrainableSpec(), params0, batches, 5)
  np.testing.assert_allclose(esft_losses, fft_losses, rtol=1e-5)
  assert fft_losses[-1] < fft_losses[0]
  merged = leaves_with_paths(jax.device_get(trainable.merge(esft_state.params, every, CONFIG)))
  fft_params = leaves_with_paths(fft_state.params)
  assert merged.keys() == fft_params.keys()
  for path, x in fft_params.items():
    np.testing.assert_allclose(merged[path], x, atol=1e-6, rtol=0, err_msg=str(path))


# 6. Scoring a model -------------------------------------------------------------

def test_score_experts_matches_float64_reference(params0):
  model = Model(CONFIG, {"params": params0})
  rng = np.random.default_rng(0)
  examples = [(rng.integers(3, V, n).astype(np.int32), np.ones(n, bool))
              for n in rng.integers(5, 21, 40)]
  rows = input_pipeline.pack(examples, 32, 0)
  assert len(rows["tokens"]) >= 12 and (rows["segment_ids"] == 0).any()  # there is padding
  batches = [{k: v[4 * i:4 * i + 4] for k, v in rows.items()} for i in range(3)]
  real = [int((b["segment_ids"] != 0).sum()) for b in batches]

  apply = jax.jit(lambda v, t, p, s: Transformer(CONFIG).apply(v, t, p, s,
                                                                mutable=["intermediates"])[1])
  routing = []
  for b in batches:
    inter = apply(model.variables, b["tokens"], b["positions"], b["segment_ids"])["intermediates"]
    routing.append({l: jax.device_get(inter[f"layers_{l}"]["mlp"]["routing"][0])
                    for l in MOE_LAYERS})

  def reference(n_tokens, first_only=False):
    gate = {l: np.zeros(E) for l in MOE_LAYERS}
    count = {l: np.zeros(E) for l in MOE_LAYERS}
    seen = 0
    for b, r in zip(batches, routing):
      seg = b["segment_ids"]
      for row in range(seg.shape[0]):
        for t in range(seg.shape[1]):
          if seg[row, t] == 0 or seen >= n_tokens or (first_only and t > 0):
            continue
          seen += 1
          for l in MOE_LAYERS:
            for k in range(K):
              e = int(r[l]["topk_idx"][row, t, k])
              gate[l][e] += float(r[l]["topk_weights"][row, t, k])
              count[l][e] += 1.0 / K
    return ({l: g / g.sum() for l, g in gate.items()},
            {l: c / c.sum() for l, c in count.items()}, seen)

  for n_tokens in (real[0] + real[1] // 2, sum(real) + 1000):
    scores = esft.score_experts(model, iter(batches), n_tokens)
    gate, token, seen = reference(n_tokens)
    assert seen == min(n_tokens, sum(real))
    assert scores.tokens == {l: seen for l in MOE_LAYERS}
    for l in MOE_LAYERS:
      np.testing.assert_allclose(scores.gate[l], gate[l], rtol=1e-6, atol=1e-12)
      np.testing.assert_allclose(scores.token[l], token[l], rtol=1e-12, atol=1e-15)
  # Counting padding too would have changed the scores.
  assert sum(real) < sum(b["segment_ids"].size for b in batches)
  # score_mask counts only the tokens it marks: here each row's first (an encoder's [CLS]).
  first = [{**b, "score_mask": (np.arange(b["tokens"].shape[1]) == 0) & (b["segment_ids"] != 0)}
           for b in batches]
  scores = esft.score_experts(model, iter(first), 10**6)
  gate, token, seen = reference(10**6, first_only=True)
  assert scores.tokens == {l: seen for l in MOE_LAYERS} and seen == sum(len(b["tokens"]) for b in batches)
  for l in MOE_LAYERS:
    np.testing.assert_allclose(scores.token[l], token[l], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(scores.gate[l], gate[l], rtol=1e-6, atol=1e-12)


# 7. Adapters --------------------------------------------------------------------

def expert_keys(selected):
  return {f"model.layers.{l}.mlp.experts.{e}.{p}.weight" for l, ids in selected.items()
          for e in ids for p in PROJ}


def test_adapter_holds_only_trained_experts_and_round_trips(esft_run, params0, tmp_path):
  spec, state, _ = esft_run
  trained = Model(CONFIG, {"params": jax.device_get(trainable.merge(state.params, spec, CONFIG))})
  base = Model(CONFIG, {"params": params0})
  path = tmp_path / "adapter"
  nbytes = esft.save_adapter(trained, spec, str(path))
  assert sorted(os.listdir(path)) == ["adapter.safetensors", "expert_cfg.json"]
  assert nbytes == os.path.getsize(path / "adapter.safetensors")
  tensors = load_file(path / "adapter.safetensors")
  assert set(tensors) == expert_keys({1: [5, 0, 3], 3: [6]})
  for name, w in tensors.items():
    l, e, p = name.split(".")[2], int(name.split(".")[5]), name.split(".")[6]
    want = trained.params[f"layers_{l}"]["mlp"]["experts"][p][e].T  # HF [out, in]
    np.testing.assert_array_equal(w, want)
  assert json.loads((path / "expert_cfg.json").read_text()) == SPEC_CFG

  loaded = esft.load_adapter(base, str(path))
  got, want = leaves_with_paths(loaded.params), leaves_with_paths(trained.params)
  assert got.keys() == want.keys()
  for k, x in want.items():
    assert np.array_equal(np.asarray(got[k]), x), k
  tokens = np.random.default_rng(1).integers(3, V, (2, 24))
  assert np.array_equal(np.asarray(loaded(tokens)), np.asarray(trained(tokens)))
  assert not np.array_equal(np.asarray(base(tokens)), np.asarray(trained(tokens)))


def test_adapter_with_shared_experts(params0, tmp_path):
  spec = trainable.TrainableSpec.from_expert_config({"experts": {"2": [4], "3": [0, 7]}}, CONFIG,
                                               shared_experts=True)
  # A "fine-tuned" model in which every tensor moved; only the spec's ones may travel.
  rng = np.random.default_rng(2)
  tuned = Model(CONFIG, {"params": jax.tree_util.tree_map(
      lambda x: (x + rng.normal(0, 0.01, x.shape)).astype(x.dtype), params0)})
  base = Model(CONFIG, {"params": params0})
  path = tmp_path / "adapter"
  esft.save_adapter(tuned, spec, str(path))
  want_keys = expert_keys({2: [4], 3: [0, 7]}) | {
      f"model.layers.{l}.mlp.shared_experts.{p}.weight" for l in MOE_LAYERS for p in PROJ}
  assert set(load_file(path / "adapter.safetensors")) == want_keys
  loaded = dict(hf.state_dict(esft.load_adapter(base, str(path))))
  tuned_sd, base_sd = dict(hf.state_dict(tuned)), dict(hf.state_dict(base))
  assert loaded.keys() == base_sd.keys()
  for name, w in loaded.items():
    np.testing.assert_array_equal(w, tuned_sd[name] if name in want_keys else base_sd[name],
                                  err_msg=name)
  with pytest.raises(ValueError, match="FFT"):
    esft.save_adapter(tuned, trainable.TrainableSpec(), str(tmp_path / "fft"))


def test_adapter_errors(params0, tmp_path):
  base = Model(CONFIG, {"params": params0})
  spec = trainable.TrainableSpec.from_expert_config(SPEC_CFG, CONFIG)
  path = tmp_path / "adapter"
  esft.save_adapter(base, spec, str(path))
  cfg_path = path / "expert_cfg.json"

  cfg_path.write_text(json.dumps({"experts": {"1": [5, 0, 3, E], "3": [6]}}))
  with pytest.raises(ExpertConfigError, match=rf"expert_cfg\.json: layer 1: expert ids \[{E}\]"):
    esft.load_adapter(base, str(path))
  cfg_path.write_text(json.dumps({"experts": {"0": [1], "1": [5, 0, 3], "3": [6]}}))
  with pytest.raises(ExpertConfigError, match="layer 0 is not a MoE layer"):
    esft.load_adapter(base, str(path))

  cfg_path.write_text(json.dumps({"experts": {"1": [5, 3], "3": [6]}}))  # expert 0 not listed
  with pytest.raises(hf.CheckpointError,
                     match=r"model\.layers\.1\.mlp\.experts\.0\.\w+_proj\.weight.*not trained"):
    esft.load_adapter(base, str(path))

  # A tensor the expert config trains but the adapter lacks.
  cfg_path.write_text(json.dumps(SPEC_CFG))
  tensors = load_file(path / "adapter.safetensors")
  del tensors["model.layers.1.mlp.experts.3.up_proj.weight"]
  save_file(tensors, path / "adapter.safetensors", metadata={"format": "pt"})
  with pytest.raises(hf.CheckpointError, match=r"experts\.3\.up_proj\.weight.*adapter lacks"):
    esft.load_adapter(base, str(path))

  # Non-expert modules trained: a tensor the model does not have is still an error.
  spec_ne = trainable.TrainableSpec.from_expert_config({**SPEC_CFG, "non_expert_modules": True}, CONFIG)
  path2 = tmp_path / "adapter_ne"
  esft.save_adapter(base, spec_ne, str(path2))
  tensors = load_file(path2 / "adapter.safetensors")
  tensors["model.layers.9.self_attn.q_proj.weight"] = np.zeros((2, 2), np.float32)
  save_file(tensors, path2 / "adapter.safetensors", metadata={"format": "pt"})
  with pytest.raises(hf.CheckpointError, match=r"layers\.9\.self_attn.*not part of this model"):
    esft.load_adapter(base, str(path2))


# 8. Reports ---------------------------------------------------------------------

def test_overlap_by_hand():
  a = {"1": [0, 1, 2], "2": [5], "3": [1, 2], "10": [1]}
  b = {"1": [2, 3], "2": [5, 6, 7], "4": [0], "10": [1]}
  result = esft.overlap(a, b, 8)
  assert list(result["layers"]) == ["1", "2", "10"]  # common layers, numeric order
  assert result["layers"]["1"] == {"shared": 1, "size_a": 3, "size_b": 2, "chance": 0.75}
  assert result["layers"]["2"] == {"shared": 1, "size_a": 1, "size_b": 3, "chance": 0.375}
  assert result["layers"]["10"] == {"shared": 1, "size_a": 1, "size_b": 1, "chance": 0.125}
  assert result["shared"] == 3 and result["chance"] == 1.25
  same = esft.overlap(a, a, 8)
  assert same["shared"] == 7


def test_heatmap_writes_a_png(tmp_path):
  rng = np.random.default_rng(0)
  scores = {l: (s := rng.random(E)) / s.sum() for l in MOE_LAYERS}
  selected = esft.select_experts(scores, 0.2)["experts"]
  path = tmp_path / "nested" / "heat.png"
  assert esft.heatmap(scores, str(path), "token scores", selected) == str(path)
  data = path.read_bytes()
  assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR" and len(data) > 1000
