"""PRM loss, scoring, metrics, the Math-Shepherd annotator, and PRM training through the trainer."""

import importlib.util
import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import moe_jax
from moe_jax import config as C
from moe_jax import input_pipeline, tasks
from moe_jax.model import Transformer
from moe_jax.prm import annotate, data, reward, scoring
from moe_jax.tokenizer import ByteTokenizer

TOK = ByteTokenizer()
CONFIG = C.tiny(num_hidden_layers=2)


@pytest.fixture(scope="module")
def model():
  return moe_jax.init_model(CONFIG, seed=3)


def _examples():
  return [data.Example("What is 2+3?", ["Step 1: 2+3 = 5.", "Step 2: The answer is: 5"], [1.0, 1.0]),
          data.Example("What is 4*5?", ["Step 1: 4*5 = 21.", "Step 2: The answer is: 21"], [0.25, 0.0]),
          data.Example("Add 7 and 8?", ["Step 1: 7+8 = 15", "Step 2: Check 15", "Step 3: The answer is: 15"],
                       [1.0, 0.75, 1.0])]


def _rows(examples, seq_len=96):
  return input_pipeline.pack_fields([data.encode(e, TOK) for e in examples], seq_len, TOK.pad_id)


def test_loss_equals_float64_reference(model):
  rows = _rows(_examples())
  head = reward.RewardHead(*reward.label_ids(TOK))
  batch = {k: jnp.asarray(v) for k, v in rows.items()}
  loss, (loss_sum, n, aux) = reward.prm_loss(model.params, {}, CONFIG, batch, head)
  logits = np.asarray(Transformer(CONFIG).apply(model.variables, batch["tokens"], batch["positions"],
                                                batch["segment_ids"]).logits, np.float64)
  want, count = 0.0, 0
  for r, t in zip(*np.nonzero(rows["score_mask"])):
    z = logits[r, t, [head.good_id, head.bad_id]]
    logp = z - np.log(np.exp(z).sum())
    y = rows["targets"][r, t]
    want -= y * logp[0] + (1 - y) * logp[1]
    count += 1
  assert count == 7 == int(n)
  np.testing.assert_allclose(float(loss_sum), want, rtol=1e-5)
  np.testing.assert_allclose(float(loss), want / count + float(aux.balance_loss), rtol=1e-5)


def _pair_examples():
  right = lambda q, a: data.Example(q, [f"Step 1: {a}.", f"Step 2: The answer is: {a}"], [1.0, 1.0])
  wrong = lambda q, a: data.Example(q, [f"Step 1: {a}.", f"Step 2: The answer is: {a}"], [1.0, 0.0])
  return [right("What is 2+3?", 5), wrong("What is 2+3?", 6), wrong("What is 2+3?", 7),
          right("What is 4*5?", 20), wrong("What is 4*5?", 21), right("What is 4*5?", "20.0"),
          right("Only right?", 1)]  # no wrong solution: never paired


def test_pair_rows_hold_a_right_and_a_wrong_solution_of_one_question():
  from moe_jax.prm.training import pair_rows  # pylint: disable=import-outside-toplevel
  exs = _pair_examples()
  rows = pair_rows(exs, TOK, data.TAG, 128, per_question=3, seed=0)
  assert rows["tokens"].shape == (6, 128) and rows["rank_mask"].tolist() == [1] * 6
  tag_id = TOK.encode(data.TAG)[-1]
  for r in range(6):
    seg = rows["segment_ids"][r]
    right, wrong = rows["rank_right"][r], rows["rank_wrong"][r]
    assert seg[right] == 1 and seg[wrong] == 2 and set(seg.tolist()) == {0, 1, 2}
    for pos, label, k in ((right, 1.0, 1), (wrong, 0.0, 2)):  # the last tag of each solution
      assert rows["tokens"][r, pos] == tag_id and rows["targets"][r, pos] == label
      assert pos == np.flatnonzero(rows["score_mask"][r] & (seg == k))[-1]
    text = TOK.decode(rows["tokens"][r][seg > 0].tolist())
    assert text.count("What is 2+3?") == 2 or text.count("What is 4*5?") == 2  # one question a row
  with pytest.raises(input_pipeline.DataError, match="no question has both"):
    pair_rows(exs[-1:], TOK, data.TAG, 128, 2, 0, source="x.jsonl")


def test_ranking_term_by_hand(model):
  from moe_jax.prm.training import pair_rows  # pylint: disable=import-outside-toplevel
  rows = pair_rows(_pair_examples(), TOK, data.TAG, 128, per_question=2, seed=1)
  rows["rank_mask"][-1] = 0  # a padding row takes no part
  head = reward.RewardHead(*reward.label_ids(TOK))
  batch = {k: jnp.asarray(v) for k, v in rows.items()}
  plain, _ = reward.prm_loss(model.params, {}, CONFIG, batch, head)
  ranked, _ = reward.prm_loss(model.params, {}, CONFIG, batch, head, rank_weight=0.7)
  logits = np.asarray(Transformer(CONFIG).apply(model.variables, batch["tokens"], batch["positions"],
                                                batch["segment_ids"]).logits, np.float64)
  z = logits[..., head.good_id] - logits[..., head.bad_id]
  terms = [np.log1p(np.exp(z[r, rows["rank_wrong"][r]] - z[r, rows["rank_right"][r]]))
           for r in range(len(z) - 1)]
  np.testing.assert_allclose(float(ranked) - float(plain), 0.7 * np.mean(terms), rtol=1e-4, atol=1e-6)


def test_step_scores_read_the_tag_positions(model):
  ex = _examples()[2]
  got = scoring.step_scores(model, TOK, ex.question, [ex.steps, ex.steps[:2]])
  enc = data.encode(ex, TOK)
  logits = np.asarray(model(enc["tokens"][None]))[0].astype(np.float64)
  good, bad = reward.label_ids(TOK)
  pos = np.flatnonzero(enc["score_mask"])
  want = 1 / (1 + np.exp(-(logits[pos, good] - logits[pos, bad])))
  np.testing.assert_allclose(got[0], want, rtol=1e-4)
  np.testing.assert_allclose(got[1], want[:2], rtol=1e-4)  # causal: a prefix scores the same


def test_scores_keep_the_order_of_mixed_lengths(model, monkeypatch):
  """Solutions of many lengths (so several row widths, in chunks of 3) come back in the order given."""
  monkeypatch.setattr(scoring, "_CHUNK", 3)
  ex = _examples()[2]
  steps = [s + " " + "1 + 1 = 2 ." * r for s in ex.steps for r in (0, 3, 9)]
  sols = [steps[i:i + 1 + (i * 5) % 4] for i in range(len(steps))]
  assert len({len(data.encode(data.Example(ex.question, s, [0.0] * len(s)), TOK)["tokens"]) // 32
              for s in sols}) > 2
  got = scoring.step_scores(model, TOK, ex.question, sols)
  for s, g in zip(sols, got):
    np.testing.assert_allclose(g, scoring.step_scores(model, TOK, ex.question, [s])[0], rtol=1e-4)


def test_metrics_by_hand():
  probs = np.array([0.9, 0.8, 0.3, 0.6, 0.2])
  labels = np.array([1.0, 1.0, 1.0, 0.0, 0.0])
  m = reward.metrics(probs, labels)
  assert m["accuracy"] == pytest.approx(3 / 5)  # 0.9, 0.8 right; 0.3 wrong; 0.6 wrong; 0.2 right
  assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
  assert m["auc"] == pytest.approx(5 / 6)  # pos > neg in 5 of 6 pairs: all but 0.3 vs 0.6
  want = -np.mean(labels * np.log(probs) + (1 - labels) * np.log(1 - probs))
  assert m["log_loss"] == pytest.approx(want)
  assert reward.roc_auc(np.array([0.5, 0.5]), np.array([True, False])) == 0.5


class ScriptedCompleter:
  """Continuations fixed by the prefix: prefixes with k steps answer `answers[k]` in each rollout."""

  def __init__(self, answers):
    self.answers, self.calls = answers, []

  def __call__(self, prompts, n):
    self.calls.append(len(prompts))
    out = []
    for p in prompts:
      k = p.count("\n") - 2  # "User: q\n\nAssistant: " + k step lines
      out += [f"... The answer is: {a}" for a in self.answers[k][:n]]
    return out


def test_hard_and_soft_labels_by_hand():
  steps = ["Step 1: a", "Step 2: b", "Step 3: c", "Step 4: The answer is: 7"]
  completer = ScriptedCompleter({1: ["7", "8", "x", "7"], 2: ["8", "8", "8", "8"], 3: ["7,0", "7", "7.0", "9"]})
  labels = annotate.label_solution("q?", steps, "7", completer, n=4)
  assert labels["hard"] == [1.0, 0.0, 1.0, 1.0]
  assert labels["soft"] == [0.5, 0.0, 0.5, 1.0]  # "7,0" is 70, not 7; "7.0" == 7
  assert completer.calls == [3]  # one batched call; the answer step needs no rollouts
  wrong = annotate.label_solution("q?", steps[:3] + ["Step 4: The answer is: 6"], "7", completer, 4)
  assert wrong["hard"][-1] == 0.0 and wrong["soft"][-1] == 0.0


def test_annotation_resumes_without_duplicates(tmp_path):
  sols = [{"question": f"q{i}?", "gold": "7", "steps": ["Step 1: x", "Step 2: The answer is: 7"]}
          for i in range(5)]
  completer = ScriptedCompleter({1: ["7", "1"]})
  out = tmp_path / "labels.jsonl"

  class Boom(Exception):
    pass

  def dying(prompts, n):
    if len(completer.calls) == 3:
      raise Boom()
    return completer(prompts, n)

  with pytest.raises(Boom):
    annotate.annotate(sols, dying, 2, str(out))
  with open(out, "a") as f:
    f.write('{"index": 3, "quest')  # a row torn by a kill
  assert annotate.annotate(sols, completer, 2, str(out)) == 2
  rows = [json.loads(l) for l in out.read_text().splitlines()]
  assert [r["index"] for r in rows] == [0, 1, 2, 3, 4]
  assert all(r["hard"] == [1.0, 1.0] and r["soft"] == [0.5, 1.0] for r in rows)


def test_model_completer_samples_n_per_prompt(model):
  complete = annotate.model_completer(model, TOK, max_new_tokens=6, temperature=1.0, seed=0, batch_size=4)
  out = complete(["User: hi\n\nAssistant: ", "User: a longer prompt\n\nAssistant: Step 1: x\n"], 3)
  assert len(out) == 6 and all(isinstance(t, str) for t in out)
  again = annotate.model_completer(model, TOK, 6, 1.0, 0, 4)(
      ["User: hi\n\nAssistant: ", "User: a longer prompt\n\nAssistant: Step 1: x\n"], 3)
  assert out == again  # seeded


def test_annotate_cli(model, tmp_path, repo_root):
  moe_jax.save_pretrained(model, tmp_path / "completer")
  sols = tmp_path / "sols.jsonl"
  sols.write_text("\n".join(json.dumps({"question": f"What is {i}+1?", "gold": str(i + 1),
                                        "steps": [f"Step 1: {i}+1", f"Step 2: The answer is: {i + 1}"]})
                            for i in range(3)) + "\n")
  cmd = [sys.executable, "-m", "moe_jax.prm", "annotate", "--config=configs/prm_annotate.py",
         f"--config.completer={tmp_path / 'completer'}", f"--config.solutions={sols}",
         f"--config.out_dir={tmp_path / 'out'}", "--config.n=2", "--config.max_new_tokens=4",
         "--config.batch_size=4"]
  for _ in range(2):  # the rerun finds every row done
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=repo_root, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
  rows = [json.loads(l) for l in (tmp_path / "out" / "labels.jsonl").read_text().splitlines()]
  assert [r["index"] for r in rows] == [0, 1, 2]
  assert all(r["hard"][-1] == 1.0 for r in rows)  # each answer step states its gold answer
  trl = data.read_examples(tmp_path / "out" / "soft_trl.jsonl")
  assert [e.labels for e in trl] == [r["soft"] for r in rows]
  assert len(data.read_examples(tmp_path / "out" / "hard_math_shepherd.jsonl")) == 3


def _config(repo_root):
  spec = importlib.util.spec_from_file_location("prm_cfg", repo_root / "configs" / "prm.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.model.hidden_size, c.model.num_hidden_layers, c.model.n_routed_experts = 64, 2, 8
  c.model.num_experts_per_tok = 2
  c.pretrain.num_train_steps = 0
  c.data.seq_len, c.data.batch_size = 256, 4
  c.num_train_steps, c.log_every, c.checkpoint_every = 6, 2, 100
  c.export_hf = False
  return c


@pytest.mark.parametrize("variant", ["prm", "orm_value_head_esft"])
def test_prm_training_through_the_trainer(repo_root, tmp_path, variant):
  cfg = _config(repo_root)
  if variant != "prm":
    cfg.prm.orm, cfg.prm.value_head, cfg.train_mode = True, True, "esft"
    cfg.esft.n_score_tokens = 2048
  summary = tasks.train_and_evaluate(cfg, str(tmp_path))
  before, after = summary["metrics_before"], summary["metrics_after"]
  if variant == "prm":
    assert after["log_loss"] < before["log_loss"]
    assert after["steps"] > 2 * 90  # every step of the held-out solutions is scored
    assert summary["trainable_fraction"] == 1.0
  else:
    assert before["log_loss"] == pytest.approx(np.log(2), abs=1e-6)  # a zero-initialised head
    assert after["log_loss"] != before["log_loss"]  # ...which trained
    assert after["steps"] == 90  # one outcome label per held-out solution
    assert summary["trainable_fraction"] < 0.5  # selected experts + the value head


def test_verify_cli_scores_with_a_model(model, tmp_path, capsys):
  from moe_jax.prm.__main__ import verify
  moe_jax.save_pretrained(model, tmp_path / "prm")
  problems = [{"question": "What is 2+3?", "gold": "5", "candidates": [
      {"steps": ["Step 1: 2+3 = 5", "Step 2: The answer is: 5"]},
      {"steps": ["Step 1: 2+3 = 6", "Step 2: The answer is: 6"]}]}]
  path = tmp_path / "cands.jsonl"
  path.write_text("\n".join(json.dumps(p) for p in problems) + "\n")
  assert verify(["--candidates", str(path), "--model", str(tmp_path / "prm"), "--max-n", "2",
                      "--out", str(tmp_path / "out.json")]) == 0
  result = json.loads((tmp_path / "out.json").read_text())
  acc = result["accuracy"]
  assert acc["pass@n"]["2"] == 1.0 and acc["pass@n"]["1"] == 1.0
  # The PRM's choice matches its own scores, computed here directly.
  scores = scoring.step_scores(model, TOK, problems[0]["question"],
                               [c["steps"] for c in problems[0]["candidates"]])
  best = int(np.argmax([min(s) for s in scores]))
  assert acc["prm_min"]["2"] == (1.0 if best == 0 else 0.0)
