"""Multi-host training: two processes on 127.0.0.1 train exactly as one process with all their devices.

Two `train.py` processes (2 simulated CPU devices each, gloo collectives) join
with --coordinator_address/--num_processes/--process_id and run the quickstart
(pretraining, then ESFT with experts scored on the data) for a few steps. A
single process on 4 devices runs the same config. Their per-step losses must
agree, only process 0 may write logs, and the multi-host checkpoint must
restore in a single process.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
TIMEOUT_S = 600
SMALL = ["--config=configs/quickstart.py", "--config.pretrain.num_train_steps=4",
         "--config.num_train_steps=4", "--config.log_every=1", "--config.checkpoint_every=2",
         "--config.sample_prompt=", "--config.model.hidden_size=64", "--config.model.num_hidden_layers=2",
         "--config.model.n_routed_experts=8", "--config.model.num_experts_per_tok=2",
         "--config.data.seq_len=128", "--config.esft.n_score_tokens=2048"]


def _env(devices: int) -> dict:
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  env["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] = "gloo"  # cross-process collectives on CPU
  env["XLA_FLAGS"] = " ".join([f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
                              + [f"--xla_force_host_platform_device_count={devices}"])
  return env


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(workdir, devices, extra, log):
  cmd = [sys.executable, "train.py", f"--workdir={workdir}", *SMALL, *extra]
  return subprocess.Popen(cmd, cwd=REPO, env=_env(devices), stdout=log, stderr=subprocess.STDOUT)


def _wait(procs):
  for p, log in procs:
    try:
      rc = p.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
      for q, _ in procs:
        q.kill()
      pytest.fail(f"a run did not finish within {TIMEOUT_S} s")
    log.seek(0)
    assert rc == 0, log.read()[-4000:]


def _losses(path: pathlib.Path) -> dict:
  out = {}
  for line in path.read_text().splitlines():
    r = json.loads(line)
    for k in ("loss", "eval_loss"):
      if k in r:
        out[(k, r["step"])] = r[k]
  return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("multihost")
  port = _free_port()
  logs = [open(root / f"{n}.log", "w+") for n in ("p0", "p1", "single")]
  procs = [(_start(root / "multi", 2, [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                                       f"--process_id={i}"], logs[i]), logs[i]) for i in range(2)]
  procs.append((_start(root / "single", 4, [], logs[2]), logs[2]))
  try:
    _wait(procs)
    texts = []
    for log in logs:
      log.seek(0)
      texts.append(log.read())
  finally:
    for log in logs:
      log.close()
  return root, texts


def test_multihost_losses_equal_a_single_process(runs):
  root, (p0, p1, single) = runs
  assert "processes" not in single
  for stage in ("pretrain", ""):
    multi = _losses(root / "multi" / stage / "metrics.jsonl")
    one = _losses(root / "single" / stage / "metrics.jsonl")
    assert sorted(multi) == sorted(one) and len(one) >= 5
    keys = sorted(one)
    np.testing.assert_allclose([multi[k] for k in keys], [one[k] for k in keys], rtol=2e-5)
  # Both processes selected the same experts as the single process did.
  assert (json.loads((root / "multi" / "expert_config.json").read_text())
          == json.loads((root / "single" / "expert_config.json").read_text()))


def test_multihost_only_process_0_writes_logs(runs):
  root, (p0, p1, _) = runs
  lines = (root / "multi" / "metrics.jsonl").read_text().splitlines()
  steps = [json.loads(l)["step"] for l in lines if "loss" in json.loads(l)]
  assert steps == sorted(set(steps))  # one writer: no duplicated steps
  assert "eval loss after training" in p0 and "eval loss after training" in p1
  assert (root / "multi" / "hf" / "config.json").exists()


def test_multihost_checkpoint_restores_in_one_process(runs, tmp_path):
  """A single process resumes the two-process run's checkpoint and trains no further."""
  root, _ = runs
  with open(tmp_path / "resume.log", "w+") as log:
    p = _start(root / "multi", 4, [], log)
    _wait([(p, log)])
    log.seek(0)
    text = log.read()
  assert "resumed from" in text and "at step 4" in text
  summary = json.loads((root / "multi" / "summary.json").read_text())
  first = _losses(root / "multi" / "metrics.jsonl")
  assert summary["eval_loss_after"] == pytest.approx(first[("eval_loss", 4)], rel=1e-5)
