"""Parity of the label-words-as-anchors quantities (`moe_jax.icl`) with transformers.

On a tiny random float32 Llama (grouped-query attention, eager attention),
written by transformers' `save_pretrained` and read by `moe_jax.from_pretrained`,
one prompt of random token ids with three label positions is run in both and
these are compared, per layer:

  * the attention probabilities A_l [N, T, T]: moe_jax's sown "intermediates"
    (`icl.runner.forward(..., capture=True)`) against transformers'
    `output_attentions=True`;
  * the saliency I_l = |sum_h A_l * dL/dA_l| [T, T], L the cross-entropy of the
    gold label over the label-word logits at the last position:
    `icl.flows.saliency` (a ones multiplier on A under `jax.grad`) against torch
    autograd. The torch side calls `retain_grad()` on the attention tensors that
    `output_attentions=True` returns. That is valid because transformers'
    `eager_attention_forward` returns the very tensor it multiplies with V: in
    eval mode its dropout is the identity (returns its input) and `.to` a
    tensor's own dtype is a no-op, and the output-capturing hook appends
    `output[1]` without a copy; the test asserts each retained gradient exists
    and is non-zero. A second torch reference, the official code's trick (a
    ones tensor requiring grad multiplied onto the probabilities, here by
    monkeypatching `eager_attention_forward`), is checked against it;
  * the three flows (S_wp, S_pq, S_ww) of `icl.flows.flows` on both saliencies.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import moe_jax  # noqa: E402
from moe_jax.icl import flows as icl_flows  # noqa: E402
from moe_jax.icl import runner  # noqa: E402

pytestmark = pytest.mark.usefixtures("full_precision_matmuls")

VOCAB = 300
T = 24
LABEL_POS = (5, 12, 19)  # the label words' positions in the prompt; q = T - 1
LABEL_IDS = (17, 142, 255)  # the C = 3 label words' token ids
GOLD = 1
ATTN_ATOL = 1e-5
SAL_RTOL, SAL_ATOL = 1e-4, 1e-5  # atol relative to the largest saliency
FLOW_RTOL = 1e-4


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """(torch model, moe_jax model) for one tiny random Llama."""
  from transformers.models.llama import modeling_llama

  torch.manual_seed(0)
  config = transformers.LlamaConfig(
      vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
      bos_token_id=0, eos_token_id=1, tie_word_embeddings=False, rms_norm_eps=1e-5,
      attn_implementation="eager")
  ref = modeling_llama.LlamaForCausalLM(config).eval()
  assert ref.dtype == torch.float32
  with torch.no_grad():  # large enough weights that attention is far from uniform
    for name, p in ref.named_parameters():
      p.copy_(1.0 + 0.2 * torch.randn_like(p) if "norm" in name else 0.2 * torch.randn_like(p))
  path = tmp_path_factory.mktemp("llama_icl")
  ref.save_pretrained(path)
  return ref, moe_jax.from_pretrained(path)


@pytest.fixture(scope="module")
def ids():
  ids = np.random.RandomState(0).randint(2, VOCAB, T).astype(np.int32)
  ids[list(LABEL_POS)] = LABEL_IDS  # each demonstration ends with its label word
  return ids


def _torch_loss(logits):
  """The gold label's cross-entropy over the label-word logits at the last position."""
  restricted = logits[0, -1, list(LABEL_IDS)]
  return -torch.log_softmax(restricted, -1)[GOLD]


def _torch_attention_and_saliency(ref, ids):
  """([L, N, T, T] attention, [L, T, T] saliency) by retain_grad on the returned attentions."""
  out = ref(torch.tensor(ids[None], dtype=torch.long), output_attentions=True)
  attentions = out.attentions
  for a in attentions:
    a.retain_grad()
  ref.zero_grad(set_to_none=True)
  _torch_loss(out.logits).backward()
  for i, a in enumerate(attentions):
    assert a.grad is not None and float(a.grad.abs().max()) > 0, (
        f"layer {i}: the returned attention is not on the gradient path")
  att = np.stack([a[0].detach().numpy() for a in attentions])
  sal = np.stack([(a * a.grad)[0].sum(0).abs().detach().numpy() for a in attentions])
  return att, sal


def _torch_saliency_ones_trick(ref, ids, monkeypatch):
  """[L, T, T] saliency the official way: d loss / d P at P = 1, P multiplied onto A."""
  from transformers.models.llama import modeling_llama

  plain = modeling_llama.eager_attention_forward
  ones = []

  def with_ones(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    n_rep = module.num_key_value_groups
    key, value = modeling_llama.repeat_kv(key, n_rep), modeling_llama.repeat_kv(value, n_rep)
    w = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
      w = w + attention_mask
    w = torch.softmax(w, dim=-1, dtype=torch.float32).to(query.dtype)
    p = torch.ones_like(w, requires_grad=True)
    ones.append(p)
    out = torch.matmul(w * p, value).transpose(1, 2).contiguous()
    return out, w

  monkeypatch.setattr(modeling_llama, "eager_attention_forward", with_ones)
  try:
    out = ref(torch.tensor(ids[None], dtype=torch.long))
  finally:
    monkeypatch.setattr(modeling_llama, "eager_attention_forward", plain)
  assert len(ones) == ref.config.num_hidden_layers, "the patched attention was not called"
  grads = torch.autograd.grad(_torch_loss(out.logits), ones)
  return np.stack([g[0].sum(0).abs().numpy() for g in grads])


def _jax_attention(model, ids):
  x = ids[None]
  pos = np.arange(T, dtype=np.int32)[None]
  _, _, probes = runner.forward(model.config, model.variables, x, pos, np.ones_like(x),
                                None, None, capture=True)
  return np.stack([np.asarray(a)[0] for a in probes["attention"]])


@pytest.fixture(scope="module")
def reference(models, ids):
  return _torch_attention_and_saliency(models[0], ids)


def test_attention_probabilities_match(models, ids, reference):
  _, ours = models
  want, _ = reference
  got = _jax_attention(ours, ids)
  assert got.shape == want.shape == (3, 4, T, T)
  assert want.max(-1).mean() > 0.3, "near-uniform attention proves little"
  np.testing.assert_allclose(got, want, rtol=0, atol=ATTN_ATOL)


def test_saliency_matches(models, ids, reference, monkeypatch):
  ref, ours = models
  _, want = reference
  ones_trick = _torch_saliency_ones_trick(ref, ids, monkeypatch)
  np.testing.assert_allclose(ones_trick, want, rtol=SAL_RTOL, atol=SAL_ATOL * want.max())
  got = icl_flows.saliency(ours, ids, LABEL_IDS, GOLD)
  assert got.shape == want.shape == (3, T, T)
  assert np.all(np.triu(want, 1) == 0) and want.max() > 1e-3
  np.testing.assert_allclose(got, want, rtol=SAL_RTOL, atol=SAL_ATOL * want.max())


def test_flows_match(models, ids, reference):
  _, ours = models
  _, want_sal = reference
  got_sal = icl_flows.saliency(ours, ids, LABEL_IDS, GOLD)
  want = icl_flows.flows(want_sal, LABEL_POS, T - 1)
  got = icl_flows.flows(got_sal, LABEL_POS, T - 1)
  assert got.shape == (3, 3) and np.all(want[:-1] > 0)
  # In the last layer only row q reaches the loss: no text -> label flow is left.
  assert want[-1, 0] == 0 and want[-1, 1:].min() > 0
  np.testing.assert_allclose(got, want, rtol=FLOW_RTOL)
