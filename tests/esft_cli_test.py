"""`python -m moe_jax.esft report`: per-task heatmaps, expert configs and their overlap."""

import json
import subprocess
import sys

import moe_jax
from moe_jax import config as C
from moe_jax.trainable import read_expert_config


def test_report_cli(tmp_path, repo_root):
  model = moe_jax.init_model(C.tiny(vocab_size=264), seed=1)
  moe_jax.save_pretrained(model, tmp_path / "model")
  assets = repo_root / "moe_jax" / "assets"
  out = tmp_path / "report"
  proc = subprocess.run(
      [sys.executable, "-m", "moe_jax.esft", "report", "--model", str(tmp_path / "model"),
       "--task", f"intent={assets / 'intent_train_sample.jsonl'}",
       "--task", f"law={assets / 'law_train_sample.jsonl'}", "--out", str(out),
       "--n-tokens", "2048", "--seq-len", "128"],
      capture_output=True, text=True, cwd=repo_root, timeout=300)
  assert proc.returncode == 0, proc.stderr
  result = json.loads((out / "overlap.json").read_text())
  configs = {t: read_expert_config(out / f"expert_config_{t}.json", model.config.moe_layers,
                                   model.config.n_routed_experts)["experts"] for t in ("intent", "law")}
  for t in ("intent", "law"):
    assert (out / f"heatmap_{t}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["experts"][t] == sum(len(v) for v in configs[t].values())
  o = result["overlap"]["intent|law"]
  for layer, row in o["layers"].items():
    a, b = set(configs["intent"][layer]), set(configs["law"][layer])
    assert row["shared"] == len(a & b)
    assert row["chance"] == len(a) * len(b) / model.config.n_routed_experts
  assert "expected by chance" in proc.stdout


def test_cli_errors_are_one_line(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "moe_jax.esft", "select", "--routing-logs",
                         str(tmp_path), "--top-p", "0.2", "--out", str(tmp_path / "x.json")],
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 2
  assert "no expert_weights_<layer>.txt" in proc.stderr
