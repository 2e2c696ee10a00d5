"""Label words are anchors (`moe_jax.icl`) and the attention hooks it rests on.

Each analysis is checked against an independent reference:

  * hooks: off, the traced program is the plain one (jaxpr strings); neutral hooks
    (multiplier 1, bias 0) leave the logits bitwise unchanged;
  * saliency: |sum_h A * dL/dA| against `jax.vjp` through a pure-jnp Llama forward
    written here, whose attention probabilities of one layer are an input;
  * flows: explicit loops over the paper's sets C_wp, C_pq, C_ww on a hand-made matrix;
  * context compression: keeping every slot reproduces the whole prompt; a partial keep
    equals the whole prompt with the query rows' attention to the dropped columns
    masked by a pre-softmax bias (positions continuing from the last kept slot);
  * anchor re-weighting: beta = 0 is vanilla ICL bitwise; the one-token training pass
    equals the whole prompt with exp(beta) on A(q, p_i) (a multiplier built by loops);
    training moves beta only;
  * isolation: the captured attention of a label row is all on itself;
  * trigram, AUC, OvO AUC, R_l, confusion, loyalty: brute-force loops, hand values and
    a covariance eigendecomposition in float64;
  * prompts: byte-level spans decode to their fields; bad inputs raise `PromptError`
    naming the cause.
"""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpr_util import eqns
from moe_jax import config as model_config
from moe_jax import steps, trainable
from moe_jax.attention import Hooks
from moe_jax.icl import deep, diagnose, flows, isolation, prompts, reweight, runner, tasks
from moe_jax.model import Model, Transformer, module_for
from moe_jax.tokenizer import ByteTokenizer

pytestmark = pytest.mark.usefixtures("full_precision_matmuls")

VOCAB = 300
N_CTX, N_QUERY = 20, 6  # one context and query length for every model test: few compiles


def _dense_config():
  return model_config.ModelConfig(
      model_type="llama", vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, n_routed_experts=None,
      n_shared_experts=None, kv_lora_rank=None, bos_token_id=None, eos_token_id=None,
      tie_word_embeddings=True, max_position_embeddings=256)


# Routed experts by the "dense" dispatch: every token through every expert, gated (exact and
# per token, like every dropless dispatch, and the quickest to compile on CPU).
CONFIGS = {
    "mha": lambda: model_config.tiny(vocab_size=VOCAB, kv_lora_rank=None, dispatch="dense"),
    "mla": lambda: model_config.tiny(vocab_size=VOCAB, dispatch="dense"),
    "dense": _dense_config,
}


def _model(name: str) -> Model:
  """A random model: normal(0.1) weights, norm scales 1 + normal(0.2) (so a reference must
  apply them). The tree is the one `init_model` makes, filled without its ~10 s compile."""
  c = CONFIGS[name]()
  shapes = nn.meta.unbox(jax.eval_shape(module_for(c).init, jax.random.key(0),
                                        jnp.zeros((1, 1), jnp.int32)))
  rng = np.random.default_rng(1)

  def fill(path, x):
    noise = rng.standard_normal(x.shape).astype(np.float32)
    return 1.0 + 0.2 * noise if path[-1].key == "scale" else 0.1 * noise
  return Model(c, {"params": jax.tree_util.tree_map_with_path(fill, shapes["params"])})


@pytest.fixture(scope="module")
def models():
  cache = {}

  def get(name):
    if name not in cache:
      cache[name] = _model(name)
    return cache[name]
  return get


def _ids(n, seed, low=3):
  return np.random.default_rng(seed).integers(low, VOCAB, n).astype(np.int32)


# Hooks -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mha", "mla"])
def test_hooks_off_trace_the_plain_program(models, name):
  model = models(name)
  c = model.config
  ids = jnp.asarray(_ids((1, 7), 0))
  plain = jax.make_jaxpr(lambda v, x: Transformer(c).apply(v, x))(model.variables, ids)
  none = jax.make_jaxpr(lambda v, x: Transformer(c).apply(v, x, hooks=None))(model.variables, ids)
  empty = jax.make_jaxpr(lambda v, x: Transformer(c).apply(v, x, hooks=Hooks()))(
      model.variables, ids)
  assert str(none) == str(plain)
  assert str(empty) == str(plain)  # a Hooks with both fields None is off too
  ones = jnp.ones((c.num_hidden_layers, 1, c.num_attention_heads, 7, 7))
  hooked = jax.make_jaxpr(lambda v, x, m: Transformer(c).apply(v, x, hooks=Hooks(mult=m)))(
      model.variables, ids, ones)
  n_plain, n_hooked = len(list(eqns(plain.jaxpr))), len(list(eqns(hooked.jaxpr)))
  assert n_hooked > n_plain, (n_hooked, n_plain)


def test_neutral_hooks_leave_logits_bitwise_equal(models):
  model = models("dense")
  c = model.config
  ids = _ids((2, 9), 1)
  shape = (c.num_hidden_layers, 1, c.num_attention_heads, 9, 9)
  want = np.asarray(model.apply(ids).logits)
  neutral = Hooks(bias=jnp.zeros(shape), mult=jnp.ones(shape))
  got = np.asarray(model.apply(ids, hooks=neutral).logits)
  np.testing.assert_array_equal(got, want)
  # The hooks are live: a multiplier of 2 in one layer changes the logits.
  mult = np.ones(shape, np.float32)
  mult[1] = 2.0
  assert np.abs(np.asarray(model.apply(ids, hooks=Hooks(mult=mult)).logits) - want).max() > 1e-3


# Anchor re-weighting -----------------------------------------------------------------

def test_zero_beta_is_vanilla_icl_bitwise(models):
  model = models("dense")
  c = model.config
  ctx = runner.prefill(model, _ids(N_CTX, 2))
  queries = [list(_ids(N_QUERY, 3)), list(_ids(N_QUERY - 2, 4))]
  label_slots = np.asarray([4, 11, 17])
  want = runner.run_queries(model, ctx, queries)
  zeros = np.zeros((c.num_hidden_layers, c.num_attention_heads, len(label_slots)), np.float32)
  got = reweight.reweighted_queries(model, ctx, queries, zeros, label_slots)
  np.testing.assert_array_equal(got.logits, want.logits)
  np.testing.assert_array_equal(got.q_index, [N_QUERY - 1, N_QUERY - 3])
  beta = np.full_like(zeros, 2.0)
  moved = reweight.reweighted_queries(model, ctx, queries, beta, label_slots).logits
  assert np.abs(moved - want.logits).max() > 1e-3


def _anchor_mult_loops(beta, q, t, label_slots):
  """[L, 1, N, T, T]: ones, exp(beta[l, h, i]) at (q, label_slots[i])."""
  n_layers, n_heads, _ = beta.shape
  mult = np.ones((n_layers, 1, n_heads, t, t), np.float32)
  for l in range(n_layers):
    for h in range(n_heads):
      for i, p in enumerate(label_slots):
        mult[l, 0, h, q, p] = np.exp(beta[l, h, i])
  return mult


def test_one_token_training_pass_equals_the_whole_prompt(models):
  model = models("mha")
  c = model.config
  context, query = _ids(N_CTX, 5), _ids(N_QUERY, 6)
  label_slots, label_ids, label = np.asarray([3, 9, 16]), np.asarray([40, 41, 42]), 2
  beta = np.random.default_rng(7).normal(size=(c.num_hidden_layers, c.num_attention_heads, 3))
  beta = beta.astype(np.float32)
  batch = reweight._batch(model, context, query, label, label_ids, label_slots, 128)
  loss_fn = jax.jit(reweight._loss, static_argnums=2)
  got, _ = loss_fn({**model.params, reweight.HEAD: beta}, model.variables.get("buffers", {}), c,
                   batch)
  # Reference: the whole prompt in one pass, exp(beta) on A(q, p_i) placed by loops.
  full = np.concatenate([context, query])
  t = len(full)
  mult = _anchor_mult_loops(beta, t - 1, t, label_slots)
  np.testing.assert_allclose(  # 1 + (exp(beta) - 1): a rounding off exp(beta)
      np.asarray(reweight.anchor_mult(jnp.asarray(beta), [t - 1], t, t, label_slots)), mult,
      rtol=1e-6)
  logits = np.asarray(model.apply(full[None], hooks=Hooks(mult=mult)).logits[0, -1], np.float64)
  restricted = logits[label_ids]
  want = np.log(np.exp(restricted - restricted.max()).sum()) + restricted.max() - restricted[label]
  np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-5)
  plain, _ = loss_fn({**model.params, reweight.HEAD: np.zeros_like(beta)},
                     model.variables.get("buffers", {}), c, batch)
  assert abs(float(plain) - want) > 1e-3  # beta matters


def test_train_beta_lowers_the_loss_and_trains_beta_only(models):
  model = models("mha")
  c = model.config
  context = _ids(N_CTX, 8)
  label_slots, label_ids = np.asarray([3, 9, 16]), np.asarray([40, 41, 42])
  queries = [list(_ids(N_QUERY, 10 + i)) for i in range(4)]
  labels = [0, 1, 2, 1]
  cfg = reweight.ReweightConfig(learning_rate=reweight.CODE_LR, epochs=3)
  before = jax.tree_util.tree_map(np.array, model.params)
  beta, history = reweight.train_beta(model, context, label_slots, queries, labels, label_ids, cfg)
  assert beta.shape == (c.num_hidden_layers, c.num_attention_heads, 3)
  assert np.abs(beta).max() > 0.0
  assert len(history) == 3 and history[-1] < history[0], history
  jax.tree_util.tree_map(np.testing.assert_array_equal, model.params, before)
  # One step of the same engine step: the frozen transformer gets no update and no state.
  spec, tx, step = reweight._step(c, cfg)
  params = {**model.params, reweight.HEAD: jnp.zeros_like(beta)}
  opt_state = tx.init(params)
  shaped = [x.shape for x in jax.tree_util.tree_leaves(opt_state) if np.ndim(x) > 0]
  assert shaped == [beta.shape] * 2, shaped  # Adam's mu and nu, for beta alone
  state = steps.TrainState(step=jnp.int32(0), params=params, buffers={}, opt_state=opt_state)
  batch = reweight._batch(model, context, queries[0], labels[0], label_ids, label_slots, 128)
  new, metrics = step(state, batch)
  assert bool(metrics["finite"])
  body = {k: v for k, v in new.params.items() if k != reweight.HEAD}
  jax.tree_util.tree_map(np.testing.assert_array_equal, body, before)
  assert np.abs(np.asarray(new.params[reweight.HEAD])).min() > 0.0  # every beta moved


def test_heads_mode_freezes_the_model_and_trains_the_heads(models):
  model = models("mha")
  spec = trainable.TrainableSpec("heads").with_heads({"probe": jax.sharding.PartitionSpec()})
  params = {**model.params, "probe": {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}}
  labels = trainable.labels(params, spec)
  flat = jax.tree_util.tree_flatten_with_path(labels)[0]
  assert len(flat) == len(jax.tree_util.tree_leaves(params))
  for path, label in flat:
    want = trainable.TRAIN if path[0].key == "probe" else trainable.FROZEN
    assert label == want, (path, label)
  # The plain tree, as it is: nothing split, nothing merged, the config unchanged.
  for tree in (trainable.split(params, spec, model.config),
               trainable.merge(params, spec, model.config),
               trainable.for_forward(params, spec, model.config)[0]):
    assert jax.tree_util.tree_structure(tree) == jax.tree_util.tree_structure(params)
    assert all(a is b for a, b in zip(jax.tree_util.tree_leaves(tree),
                                      jax.tree_util.tree_leaves(params)))
  assert trainable.for_forward(params, spec, model.config)[1] == model.config
  plain = trainable.labels(model.params, trainable.TrainableSpec("heads"))
  assert set(jax.tree_util.tree_leaves(plain)) == {trainable.FROZEN}


# Context compression -----------------------------------------------------------------

@pytest.mark.parametrize("name", ["mha", "mla", "dense"])
def test_compressed_context_equals_masked_whole_prompt(models, name):
  """Keep-all and a partial keep with the last slot on every attention; without the last
  slot (positions restarting from the last kept one + 1) on MLA, whose rope key is cached."""
  model = models(name)
  c = model.config
  context, query = _ids(N_CTX, 20), _ids(N_QUERY, 21)
  full = np.concatenate([context, query])
  t = len(full)
  ctx = runner.prefill(model, context)

  def reference(kept, positions):
    """The whole prompt in one pass, the query rows kept off the dropped context columns."""
    dropped = np.setdiff1d(np.arange(N_CTX), kept)
    bias = np.zeros((c.num_hidden_layers, 1, 1, t, t), np.float32)
    bias[:, :, :, N_CTX:, dropped] = -1e9  # every layer, the query rows only
    return np.asarray(runner.full_logits(model, full, Hooks(bias=bias)) if positions is None else
                      runner.forward(c, model.variables, full[None], positions[None],
                                     np.ones((1, t), np.int32), None, Hooks(bias=bias))[0][0, -1])

  # Keeping every slot is the whole prompt (a zero bias: nothing masked).
  got = runner.run_queries(model, ctx.keep(range(ctx.n)), [list(query)]).logits[0]
  want = reference(np.arange(N_CTX), None)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # A partial keep with the last slot: the query's positions are the whole prompt's.
  kept = np.asarray([0, 2, 3, 7, 8, 12, 15, N_CTX - 1])
  small = ctx.keep(kept[::-1])  # any order: kept sorted
  np.testing.assert_array_equal(small.positions, kept)
  got = runner.run_queries(model, small, [list(query)]).logits[0]
  np.testing.assert_allclose(got, reference(kept, None), rtol=1e-5, atol=1e-5)
  assert np.abs(got - want).max() > 1e-3  # dropping slots matters
  if name != "mla":
    return
  # Without the last slot the query continues from the last kept position + 1.
  kept = np.asarray([1, 2, 5, 9, 10, 13])
  positions = np.concatenate([np.arange(N_CTX), 14 + np.arange(N_QUERY)]).astype(np.int32)
  got = runner.run_queries(model, ctx.keep(kept), [list(query)]).logits[0]
  np.testing.assert_allclose(got, reference(kept, positions), rtol=1e-5, atol=1e-5)


# Saliency ----------------------------------------------------------------------------

def _rms(x, scale, eps):
  return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + eps) * scale


def _rope(x, positions, theta):
  """Llama's rotate-half rotary embedding. x: [T, N, H]."""
  h = x.shape[-1]
  inv_freq = 1.0 / theta ** (np.arange(0, h, 2) / h)
  angle = positions[:, None, None] * inv_freq  # [T, 1, H/2]
  cos, sin = jnp.asarray(np.cos(angle), jnp.float32), jnp.asarray(np.sin(angle), jnp.float32)
  x1, x2 = x[..., :h // 2], x[..., h // 2:]
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


def _llama_forward(c, params, ids, replace=None):
  """Logits [T, V] and each layer's probabilities [N, T, T] of a dense Llama, written out.

  replace: (layer, probabilities [N, T, T]) used in place of that layer's softmax.
  """
  t, n, n_kv = len(ids), c.num_attention_heads, c.num_key_value_heads
  head = np.arange(n) // (n // n_kv)  # the key/value head each query head reads
  positions = np.arange(t, dtype=np.float64)
  causal = np.tril(np.ones((t, t), bool))
  x = params["embed_tokens"]["embedding"][ids]  # [T, D]
  probs_out = []
  for l in range(c.num_hidden_layers):
    p = params[f"layers_{l}"]
    a = p["self_attn"]
    h = _rms(x, p["input_layernorm"]["scale"], c.rms_norm_eps)
    q = _rope(jnp.einsum("td,dnh->tnh", h, a["q_proj"]["kernel"]), positions, c.rope_theta)
    k = _rope(jnp.einsum("td,dnh->tnh", h, a["k_proj"]["kernel"]), positions, c.rope_theta)
    v = jnp.einsum("td,dnh->tnh", h, a["v_proj"]["kernel"])
    k, v = k[:, head], v[:, head]
    scores = jnp.einsum("tnh,snh->nts", q, k) / np.sqrt(q.shape[-1])
    probs = jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), -1)
    probs_out.append(probs)
    if replace is not None and replace[0] == l:
      probs = replace[1]
    out = jnp.einsum("nts,snh->tnh", probs, v)
    x = x + jnp.einsum("tnh,nhd->td", out, a["o_proj"]["kernel"])
    h = _rms(x, p["post_attention_layernorm"]["scale"], c.rms_norm_eps)
    m = p["mlp"]
    x = x + (jax.nn.silu(h @ m["gate_proj"]["kernel"]) * (h @ m["up_proj"]["kernel"])
             ) @ m["down_proj"]["kernel"]
  x = _rms(x, params["norm"]["scale"], c.rms_norm_eps)
  head_w = (params["embed_tokens"]["embedding"].T if c.tie_word_embeddings
            else params["lm_head"]["kernel"])
  return x @ head_w, probs_out


def test_saliency_is_attention_times_its_gradient(models):
  model = models("dense")
  c = model.config
  ids = _ids(12, 30)
  label_ids, label = np.asarray([50, 60, 70]), 1

  def loss(logits):
    restricted = logits[-1, label_ids]
    return jax.nn.logsumexp(restricted) - restricted[label]

  @jax.jit
  def reference(params):
    """The logits, each layer's A and dL/dA by jax.vjp through A as an input."""
    logits, probs = _llama_forward(c, params, ids)
    grads = []
    for l in range(c.num_hidden_layers):
      _, vjp = jax.vjp(lambda a: loss(_llama_forward(c, params, ids, (l, a))[0]), probs[l])
      grads.append(vjp(jnp.ones(()))[0])
    return logits, probs, grads

  logits, probs, grads = reference(model.params)
  np.testing.assert_allclose(np.asarray(logits), np.asarray(model(ids[None]))[0],
                             rtol=1e-5, atol=1e-5)
  got = flows.saliency(model, ids, label_ids, label)
  assert got.shape == (c.num_hidden_layers, 12, 12)
  for l in range(c.num_hidden_layers):
    product = np.asarray(probs[l], np.float64) * np.asarray(grads[l], np.float64)  # [N, T, T]
    want = np.abs(product.sum(0))  # heads summed, then the absolute value
    assert want.max() > 1e-3
    assert not np.allclose(np.abs(product).sum(0), want, rtol=1e-2)  # heads do cancel here
    np.testing.assert_allclose(got[l], want, rtol=1e-4, atol=1e-6 * want.max())
    assert np.all(np.triu(got[l], 1) == 0)  # causal: nothing above the diagonal


# Flows -------------------------------------------------------------------------------

def _flows_by_sets(s, label_pos, q):
  c_wp = {(p, j) for p in label_pos for j in range(p)}
  c_pq = {(q, p) for p in label_pos}
  c_ww = {(i, j) for i in range(q + 1) for j in range(i)} - c_wp - c_pq
  total = lambda pairs: sum(s[i, j] for i, j in pairs)
  return ([total(c_wp) / len(c_wp), total(c_pq) / len(c_pq), total(c_ww) / len(c_ww)],
          [len(c_wp), len(c_pq), len(c_ww)])


def test_flows_by_hand():
  rng = np.random.default_rng(40)
  s = rng.uniform(0.0, 1.0, (2, 6, 6))  # with a diagonal and an upper triangle to ignore
  label_pos = [1, 3]
  got = flows.flows(s, label_pos, 5)
  assert got.shape == (2, 3)
  for l in range(2):
    want, sizes = _flows_by_sets(s[l], label_pos, 5)
    np.testing.assert_allclose(got[l], want, rtol=1e-12)
  assert sizes == [1 + 3, 2, 15 - 4 - 2]
  # The denominators are the set sizes: an all-ones saliency gives flows of exactly 1.
  np.testing.assert_allclose(flows.flows(np.ones((6, 6)), label_pos, 5), [1.0, 1.0, 1.0])
  # A target before the end: rows and columns past q are ignored.
  want, _ = _flows_by_sets(s[0], label_pos, 4)
  np.testing.assert_allclose(flows.flows(s[0], label_pos, 4), want, rtol=1e-12)
  norm = flows.normalised(got)
  np.testing.assert_allclose(norm.sum(-1), 1.0)


# Prompts -----------------------------------------------------------------------------

def test_find_label_positions_matches_brute_force():
  rng = np.random.default_rng(50)
  for _ in range(20):
    ids = rng.integers(0, 5, rng.integers(0, 40))
    label_ids = [3, 4]
    want = [k for k in range(2, len(ids))
            if ids[k - 2] == 1 and ids[k - 1] == 2 and ids[k] in label_ids]
    got = prompts.find_label_positions(ids, 1, 2, label_ids)
    np.testing.assert_array_equal(got, want)
  assert sum(len(prompts.find_label_positions(rng.integers(0, 5, 40), 1, 2, [3, 4]))
             for _ in range(10)) > 0


TEMPLATE = prompts.Template("Review:", "Sentiment:", ("A", "B", "C"))


def test_build_prompt_spans_with_bytes():
  tok = ByteTokenizer()
  label_ids = prompts.label_token_ids(tok, TEMPLATE)
  np.testing.assert_array_equal(label_ids, [ord("A") + 3, ord("B") + 3, ord("C") + 3])
  texts = ["good  film\tindeed", "bad one", "so so"]
  labels = [1, 0, 2]
  one_line = ["good film indeed", "bad one", "so so"]  # whitespace runs become one space
  p = prompts.build_prompt(tok, TEMPLATE, texts, labels, label_ids)
  whole = "".join(f"Review: {t}\nSentiment:{'ABC'[y]}\n" for t, y in zip(one_line, labels))
  assert tok.decode(p.ids) == whole
  np.testing.assert_array_equal(p.demo_labels, labels)
  for d, y, text, pos in zip(p.demos, labels, one_line, p.label_pos):
    field = lambda name: tok.decode(p.ids[d[name][0]:d[name][1]])
    assert field("input_prefix") == "Review:"
    assert field("text") == " " + text
    assert field("label_prefix") == "\nSentiment:"
    assert field("label") == "ABC"[y]
    assert field("end") == "\n"
    assert d["label"] == (pos, pos + 1) and p.ids[pos] == label_ids[y]
    assert tok.decode(p.ids[pos - 2:pos]) == "t:"
  assert [d["input_prefix"][0] for d in p.demos] == [0, p.demos[0]["end"][1], p.demos[1]["end"][1]]
  assert p.demos[-1]["end"][1] == len(p.ids)
  q = prompts.encode_query(tok, TEMPLATE, "x  y")
  assert tok.decode(q) == "Review: x y\nSentiment:"


class _WordTokenizer:
  """Whole strings as single tokens: "\\nSentiment:" is one token, too short for the trigram."""

  def __init__(self):
    self.vocab = {}

  def encode(self, text):
    return [self.vocab.setdefault(text, len(self.vocab) + 3)]


def test_bad_prompts_raise_naming_the_cause():
  tok = ByteTokenizer()
  with pytest.raises(prompts.PromptError, match=r"label word ' Negative' is 9 tokens"):
    prompts.label_token_ids(tok, prompts.PAPER_TEMPLATES["sst2"])
  with pytest.raises(prompts.PromptError, match="share a first token"):
    prompts.label_token_ids(tok, prompts.PAPER_TEMPLATES["sst2"], first_subtoken=True)
  label_ids = prompts.label_token_ids(tok, TEMPLATE)
  # "Sentiment:B" inside a text: the trigram matches there too, at the "B".
  text = "I say Sentiment:B loudly"
  clash = len("Review: fine\nSentiment:A\n") + len("Review: I say Sentiment:")
  with pytest.raises(prompts.PromptError,
                     match=rf"demonstration 1: .* also matches inside its text, at token \[{clash}\]"):
    prompts.build_prompt(tok, TEMPLATE, ["fine", text], [0, 1], label_ids)
  prompts.build_prompt(tok, TEMPLATE, ["fine", "I say Sentiment: B"], [0, 1], label_ids)
  words = _WordTokenizer()
  with pytest.raises(prompts.PromptError, match="needs a token before the colon"):
    prompts.build_prompt(words, TEMPLATE, ["fine"], [0], prompts.label_token_ids(words, TEMPLATE))


def test_make_episode_names_the_example_over_max_len():
  tok = ByteTokenizer()
  train = tasks.Split([f"train text {i}" for i in range(15)], [i % 3 for i in range(15)])
  test = tasks.Split(["short", "a much longer test text " * 4, "mid"], [0, 1, 2])
  ep = tasks.make_episode(tok, TEMPLATE, train, test, seed=0, n_test=3)
  assert len(ep.queries) == 3 and len(ep.train_queries) == 12
  assert sorted(ep.labels.tolist()) == [0, 1, 2]
  demo_texts = {tok.decode(ep.prompt.ids[d["text"][0] + 1:d["text"][1]]) for d in ep.prompt.demos}
  train_texts = {tok.decode(q[len("Review: "):-len("\nSentiment:")]) for q in ep.train_queries}
  assert len(demo_texts) == 3 and not demo_texts & train_texts  # disjoint, as the paper draws
  n_demo = len(ep.prompt.ids)
  long_q = len(f"Review: {test.texts[1].strip()}\nSentiment:")
  with pytest.raises(prompts.PromptError,
                     match=rf"test example 1 \('a much longer.*{n_demo} \+ {long_q} tokens, over "
                           rf"the context of {n_demo + long_q - 1}"):
    tasks.make_episode(tok, TEMPLATE, train, test, seed=0, n_test=3, max_len=n_demo + long_q - 1)
  tasks.make_episode(tok, TEMPLATE, train, test, seed=0, n_test=3, max_len=n_demo + long_q)


# Deep layers: AUC --------------------------------------------------------------------

def _auc_pairs(scores, positive):
  pos = [s for s, y in zip(scores, positive) if y]
  neg = [s for s, y in zip(scores, positive) if not y]
  wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
  return wins / (len(pos) * len(neg))


def _ovo_pairs(scores, labels):
  scores = scores / scores.sum(1, keepdims=True)
  present = sorted(set(labels.tolist()))
  out = []
  for a, b in itertools.combinations(present, 2):
    m = (labels == a) | (labels == b)
    out.append((_auc_pairs(scores[m, a], labels[m] == a)
                + _auc_pairs(scores[m, b], labels[m] == b)) / 2)
  return np.mean(out)


def test_auc_and_ovo_auc_match_pairwise_counts():
  rng = np.random.default_rng(60)
  for _ in range(5):
    scores = rng.integers(0, 6, 40).astype(float)  # many ties
    positive = rng.random(40) < 0.4
    assert deep.auc(scores, positive) == pytest.approx(_auc_pairs(scores, positive), abs=1e-12)
  assert deep.auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
  assert np.isnan(deep.auc([1.0, 2.0], [1, 1]))
  for _ in range(3):
    scores = rng.integers(1, 5, (50, 4)).astype(float)
    labels = rng.integers(0, 3, 50)  # class 3 absent
    assert deep.ovo_auc(scores, labels) == pytest.approx(_ovo_pairs(scores, labels), abs=1e-12)
  # AUCROC_l: the class-1 column for two classes, OvO otherwise; against the model's predictions.
  att = rng.random((30, 3, 2))
  pred = rng.integers(0, 2, 30)
  np.testing.assert_allclose(deep.auroc_per_layer(att, pred),
                             [_auc_pairs(att[:, l, 1], pred == 1) for l in range(3)])
  att3 = rng.random((30, 2, 3))
  pred3 = rng.integers(0, 3, 30)
  np.testing.assert_allclose(deep.auroc_per_layer(att3, pred3),
                             [_ovo_pairs(att3[:, l], pred3) for l in range(2)])


def test_ovo_auc_matches_sklearn():
  metrics = pytest.importorskip("sklearn.metrics")
  rng = np.random.default_rng(61)
  scores = rng.random((60, 4))
  labels = rng.integers(0, 4, 60)
  want = metrics.roc_auc_score(labels, scores / scores.sum(1, keepdims=True), multi_class="ovo")
  assert deep.ovo_auc(scores, labels) == pytest.approx(want, abs=1e-12)


def test_cumulative_r_by_hand():
  np.testing.assert_allclose(deep.cumulative_r([0.5, 0.7, 0.6, 0.9]), [0.0, 2 / 7, 3 / 7, 1.0])


def test_anchor_attention_matches_loop():
  rng = np.random.default_rng(62)
  n, heads, t, s, layers = 3, 2, 5, 9, 2
  attention = [rng.random((n, heads, t, s)) for _ in range(layers)]
  q_index = np.asarray([4, 2, 0])
  label_pos, demo_labels = [1, 3, 5, 7], [0, 1, 1, 0]  # two demonstrations per class
  got = deep.anchor_attention(attention, q_index, label_pos, demo_labels, 2)
  want = np.zeros((n, layers, 2))
  for i in range(n):
    for l in range(layers):
      for h in range(heads):
        for p, c in zip(label_pos, demo_labels):
          want[i, l, c] += attention[l][i, h, q_index[i], p]
  np.testing.assert_allclose(got, want, rtol=1e-12)


# Diagnosis ---------------------------------------------------------------------------

def test_predicted_confusion_matches_covariance_eigenvectors():
  rng = np.random.default_rng(70)
  d, m = 8, 5
  queries = rng.normal(size=(50, d)) * np.linspace(3.0, 0.5, d) + 2.0
  keys = rng.normal(size=(4, d))
  cov = np.cov(queries, rowvar=False)  # ddof 1
  values, vectors = np.linalg.eigh(cov)
  top = np.argsort(values)[::-1][:m]
  khat = np.sqrt(values[top]) * (keys @ vectors[:, top])  # eigenvector signs cancel in distances
  dist = np.asarray([[np.linalg.norm(khat[i] - khat[j]) for j in range(4)] for i in range(4)])
  want = dist / max(dist[i, j] for i in range(4) for j in range(4) if i != j)
  got = diagnose.predicted_confusion(keys, queries, m)
  assert np.all(np.isnan(np.diag(got)))
  off = ~np.eye(4, dtype=bool)
  np.testing.assert_allclose(got[off], want[off], rtol=1e-9)
  assert np.nanmax(got) == 1.0


def test_real_confusion_matches_pairwise_counts():
  rng = np.random.default_rng(71)
  probs = rng.dirichlet(np.ones(3), 40)
  labels = rng.integers(0, 3, 40)
  got = diagnose.real_confusion(probs, labels)
  for i in range(3):
    for j in range(3):
      if i == j:
        assert np.isnan(got[i, j])
        continue
      m = (labels == i) | (labels == j)
      score = probs[m, i] / (probs[m, i] + probs[m, j])
      assert got[i, j] == pytest.approx(_auc_pairs(score, labels[m] == i), abs=1e-12)


# Isolation ---------------------------------------------------------------------------

def test_isolated_label_rows_attend_only_to_themselves(models):
  model = models("dense")
  c = model.config
  ids = _ids(N_CTX, 80)
  label_pos = [4, 11, 17]
  layers = range(c.num_hidden_layers)
  hooks = isolation.isolation_bias(c.num_hidden_layers, N_CTX, label_pos, layers)
  iso = runner.prefill(model, ids, hooks, capture=True).probes["attention"]
  plain = runner.prefill(model, ids, capture=True).probes["attention"]
  for l in range(c.num_hidden_layers):
    a = iso[l][0][:, :N_CTX, :N_CTX]  # [N, T, T]
    for p in label_pos:
      assert plain[l][0][:, p, :p].sum(-1).min() > 0.5  # without the bias they look back
      assert a[:, p, :p].max() < 1e-4
      assert a[:, p, p].min() > 1 - 1e-4
  others = np.setdiff1d(np.arange(N_CTX), label_pos)
  np.testing.assert_array_equal(iso[0][0][:, others, :N_CTX], plain[0][0][:, others, :N_CTX])
  assert np.abs(iso[1][0] - plain[1][0])[:, others].max() > 1e-4  # later layers see the change
  # The bias itself: rows p..p+window, columns < p, only in the layers asked for.
  bias = isolation.isolation_bias(3, 8, [2, 5], [1], window=1).bias
  want = np.zeros((3, 1, 1, 8, 8), np.float32)
  for p in (2, 5):
    for i in range(p, p + 2):
      for j in range(p):
        want[1, 0, 0, i, j] = isolation.OFFICIAL_BIAS
  np.testing.assert_array_equal(bias, want)
  assert list(isolation.layer_range(6, 2, "last")) == [4, 5]
  with pytest.raises(ValueError, match="k must be in 1..6"):
    isolation.layer_range(6, 7, "first")


def test_word_loyalty_is_top_k_jaccard():
  rng = np.random.default_rng(90)
  a = rng.normal(size=(6, 30))
  b = a + rng.normal(scale=0.5, size=a.shape)
  got = isolation.word_loyalty(a, b, k=5)
  for i in range(6):
    top_a = set(sorted(range(30), key=lambda v: -a[i, v])[:5])
    top_b = set(sorted(range(30), key=lambda v: -b[i, v])[:5])
    assert got[i] == pytest.approx(len(top_a & top_b) / len(top_a | top_b))
  assert 0 < got.mean() < 1
  np.testing.assert_array_equal(isolation.label_loyalty([0, 1, 2], [0, 2, 2]), [1.0, 0.0, 1.0])
