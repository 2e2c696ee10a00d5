"""The "classify" task end to end: every family and train mode learns a keyword task; predict CLI.

The data is made here so that a tiny model can learn it in a few dozen steps:
the label is decided by one keyword among filler words, so held-out accuracy
after training must be near 1 while the untrained model is near chance.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from moe_jax import heads, hf, train_lib
from moe_jax.layers import experts_path
from moe_jax.model import init_model
from moe_jax.classify import configs, datasets, task
from moe_jax.tokenizer import ByteTokenizer

_KEYWORDS = {"positive": "great", "negative": "awful", "neutral": "okay"}
_FILLER = ("the", "food", "was", "and", "service", "today", "very", "place", "we", "it")


def _write_task(path, n, seed):
  rng = np.random.default_rng(seed)
  with open(path, "w", encoding="utf-8") as f:
    for _ in range(n):
      label = str(rng.choice(list(_KEYWORDS)))
      words = list(rng.choice(_FILLER, 5))
      words.insert(int(rng.integers(0, 6)), _KEYWORDS[label])
      f.write(json.dumps({"text": " ".join(words), "label": label}) + "\n")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("keywords")
  _write_task(d / "train.jsonl", 240, 0)
  _write_task(d / "eval.jsonl", 48, 1)
  return d


def _config(files, family: str, mode: str):
  c = configs.classify_config()
  c.init_from = ""
  c.data.tokenizer = "byte"
  c.data.update(dict(seq_len=48, batch_size=16))
  c.classify.update(dict(train_file=str(files / "train.jsonl"), eval_file=str(files / "eval.jsonl")))
  small = dict(vocab_size=264, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=64, max_position_embeddings=64)
  if family == "bert":
    c.model.update(dict(preset="all-minilm-l6-v2", **small))
  else:  # a tiny DeepSeekMoE decoder: 8 routed experts in its second layer
    c.model.update(dict(preset="tiny", **small))
  c.train_mode = mode
  c.esft.update(dict(top_p=0.5, n_score_tokens=2048))
  c.optimizer.update(dict(learning_rate=3e-3, warmup_steps=5))
  c.num_train_steps = 100
  c.checkpoint_every = 100
  return c


@pytest.fixture(scope="module")
def bert_run(files, tmp_path_factory):
  """A tiny BERT fine-tuned (FFT) on the keyword task: (workdir, summary), shared by two tests."""
  workdir = tmp_path_factory.mktemp("bert_fft")
  c = _config(files, "bert", "fft")
  c.optimizer.learning_rate = 1e-3
  return workdir, task.run(c, str(workdir))


@pytest.mark.parametrize("family", ["bert", "tiny"])
def test_fft_learns_the_keyword_task(files, tmp_path, bert_run, family):
  if family == "bert":
    workdir, summary = bert_run
  else:
    workdir, summary = tmp_path, task.run(_config(files, family, "fft"), str(tmp_path))
  before, after = summary["metrics_before"], summary["metrics_after"]
  assert before["accuracy"] < 0.6, before
  assert after["accuracy"] >= 0.9, after
  assert after["examples"] == 48 and sorted(after["labels"]) == sorted(_KEYWORDS)
  written = json.loads((workdir / "metrics.json").read_text())
  assert written["after"]["confusion"] == after["confusion"]
  assert datasets.read_label_file(workdir / task.LABELS_FILE) == tuple(sorted(_KEYWORDS))
  assert (workdir / "eval_predictions.png").stat().st_size > 10_000


def test_esft_trains_only_the_selected_experts_and_the_head(files, tmp_path):
  """On a random base, ESFT cannot learn the task well; what it must do is lower the loss while
  every frozen weight stays bitwise what it was."""
  c = _config(files, "tiny", "esft")
  summary = task.run(c, str(tmp_path))
  assert summary["eval_loss_after"] < summary["eval_loss_before"] - 0.01, summary
  assert 0 < summary["trainable_fraction"] < 0.5
  selected = json.loads((tmp_path / "expert_config.json").read_text())["experts"]
  base = init_model(train_lib.build_model_config(c), c.seed)
  done = hf.from_pretrained(tmp_path / "hf")
  for layer, ids in selected.items():
    path = experts_path(int(layer))
    for proj in ("gate_proj", "up_proj", "down_proj"):
      old = np.asarray(_at(base.params, path)[proj])
      new = np.asarray(_at(done.params, path)[proj])
      frozen = [e for e in range(old.shape[0]) if e not in ids]
      np.testing.assert_array_equal(new[frozen], old[frozen])
      assert not np.array_equal(new[ids], old[ids])
  np.testing.assert_array_equal(np.asarray(done.params["layers_0"]["self_attn"]["q_proj"]["kernel"]),
                                np.asarray(base.params["layers_0"]["self_attn"]["q_proj"]["kernel"]))


def _at(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def test_lora_lowers_the_loss(files, tmp_path):
  summary = task.run(_config(files, "bert", "lora"), str(tmp_path))
  assert summary["eval_loss_after"] < summary["eval_loss_before"] - 0.01, summary
  assert summary["trainable_fraction"] < 0.5


def test_predict_cli_labels_like_the_model(files, tmp_path, repo_root, bert_run):
  workdir = bert_run[0]
  texts = tmp_path / "texts.txt"
  texts.write_text("great food and service\nawful place today\nit was okay\n", encoding="utf-8")
  proc = subprocess.run([sys.executable, "-m", "moe_jax.classify", "predict", f"--workdir={workdir}",
                         f"--input={texts}"], capture_output=True, text=True, cwd=repo_root,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = [json.loads(l) for l in proc.stdout.splitlines()]
  assert [l["label"] for l in lines] == ["positive", "negative", "neutral"]
  # The CLI's probabilities are the exported model's, head and all.
  model = heads.load_classifier(hf.from_pretrained(workdir / "hf"), str(workdir / "hf" / "classifier.npz"))
  rows = task.encode([l["text"] for l in lines], ByteTokenizer(), model.config, 48)
  probs = task.predict_probs(model, rows)
  names = sorted(_KEYWORDS)
  for line, p in zip(lines, probs):
    assert [line["probs"][n] for n in names] == pytest.approx(p.tolist(), abs=1e-4)
  # Labelled JSONL input is scored too.
  proc = subprocess.run([sys.executable, "-m", "moe_jax.classify", "predict", f"--workdir={workdir}",
                         f"--input={files / 'eval.jsonl'}", f"--output={tmp_path / 'out.jsonl'}"],
                        capture_output=True, text=True, cwd=repo_root, timeout=300)
  assert proc.returncode == 0 and "accuracy" in proc.stderr, proc.stderr[-2000:]
  assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 48


def test_encode_rows_by_hand():
  from moe_jax import config as model_config

  tok = ByteTokenizer()
  enc = model_config.PRESETS["all-minilm-l6-v2"]()
  rows = task.encode(["ab", "abcdef"], tok, enc, 5)
  # An encoder's row is BOS text EOS; a long text keeps its first tokens and its closing EOS.
  assert rows["tokens"].tolist() == [[1, 100, 101, 2, 0], [1, 100, 101, 102, 2]]
  assert rows["segment_ids"].tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
  dec = model_config.tiny()
  rows = task.encode(["abcdef"], tok, dec, 4)
  assert rows["tokens"].tolist() == [[1, 100, 101, 102]]
  assert rows["positions"].tolist() == [[0, 1, 2, 3]]


def test_bad_eval_label_names_the_line(files, tmp_path):
  bad = tmp_path / "eval.jsonl"
  bad.write_text('{"text": "fine", "label": "positive"}\n{"text": "hm", "label": "mixed"}\n',
                 encoding="utf-8")
  c = _config(files, "bert", "fft")
  c.classify.eval_file = str(bad)
  with pytest.raises(datasets.DataError, match=r"eval.jsonl:2.*mixed"):
    task.read_data(c, str(tmp_path))
