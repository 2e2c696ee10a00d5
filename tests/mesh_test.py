"""The trainer on device meshes: data-parallel, FSDP and expert-parallel runs train exactly as one device.

Each run is `python train.py` in a subprocess, because the simulated CPU
devices (`--xla_force_host_platform_device_count`) must be set before jax is
imported. One module fixture starts every run at once (one 1-device baseline per
config, then the meshes) and the tests compare their metrics.jsonl: the
per-step training losses and the eval losses must equal the baseline's to 1e-5
(relative) over 10 steps at a learning rate high enough that the losses move.
"""

import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
STEPS = 10
RTOL = 1e-5
TIMEOUT_S = 600

# configs/fft.py and configs/esft_token.py shrunk: the tiny preset (hidden 64, 2 layers, 8 routed
# experts), batches of 8 rows of 64 tokens, 10 steps at lr 1e-3, every step logged.
SMALL = [
    f"--config.num_train_steps={STEPS}", "--config.log_every=1", "--config.eval_every=0",
    "--config.checkpoint_every=100", "--config.export_hf=False", "--config.data.max_examples=160",
    "--config.data.seq_len=64", "--config.data.batch_size=8",
    "--config.optimizer.learning_rate=1e-3",
]
# ESFT trains experts 0, 2, 5 and 7 of the MoE layer: the selected [4, ...] and frozen [4, ...]
# expert stacks both split over an expert axis of 4.
EXPERT_CONFIG = {"experts": {"1": [0, 2, 5, 7]}, "shared_experts": False,
                 "non_expert_modules": False}

# name -> (config, mesh flags, devices)
RUNS = {
    "fft_1dev": ("fft", ["--config.mesh.data=1"], 1),
    "fft_data": ("fft", ["--config.mesh.data=8"], 8),
    "fft_fsdp": ("fft", ["--config.mesh.data=1", "--config.mesh.fsdp=8"], 8),
    "fft_expert": ("fft", ["--config.mesh.data=1", "--config.mesh.expert=8"], 8),
    # The grouped dispatch sorts the whole batch, across the data-parallel devices.
    "fft_grouped": ("fft", ["--config.mesh.data=2", "--config.mesh.expert=4",
                            "--config.compute.dispatch=grouped"], 8),
    "esft_1dev": ("esft_token", ["--config.mesh.data=1"], 1),
    "esft_expert": ("esft_token", ["--config.mesh.data=2", "--config.mesh.expert=4"], 8),
    # 12 rows cannot split over data x fsdp = 2 x 4 devices.
    "bad_batch": ("fft", ["--config.mesh.data=2", "--config.mesh.fsdp=4",
                          "--config.data.batch_size=12"], 8),
}
MESHES = {  # the mesh each run must report
    "fft_data": "{'data': 8, 'fsdp': 1, 'expert': 1, 'tensor': 1}",
    "fft_fsdp": "{'data': 1, 'fsdp': 8, 'expert': 1, 'tensor': 1}",
    "fft_expert": "{'data': 1, 'fsdp': 1, 'expert': 8, 'tensor': 1}",
    "esft_expert": "{'data': 2, 'fsdp': 1, 'expert': 4, 'tensor': 1}",
    "fft_grouped": "{'data': 2, 'fsdp': 1, 'expert': 4, 'tensor': 1}",
}


def _env(devices: int) -> dict:
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  env["XLA_FLAGS"] = " ".join(
      [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
      + [f"--xla_force_host_platform_device_count={devices}"])
  return env


def _read_metrics(workdir: pathlib.Path) -> tuple[dict, dict]:
  """({step: training loss}, {step: eval loss}) from workdir/metrics.jsonl."""
  loss, evals = {}, {}
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    r = json.loads(line)
    if "loss" in r:
      loss[r["step"]] = r["loss"]
    if "eval_loss" in r:
      evals[r["step"]] = r["eval_loss"]
  return loss, evals


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Starts every run in RUNS at once; returns {name: (returncode, stdout, stderr, workdir)}."""
  root = tmp_path_factory.mktemp("mesh")
  expert_cfg = root / "expert_config.json"
  expert_cfg.write_text(json.dumps(EXPERT_CONFIG))
  procs = {}
  for name, (config, mesh, devices) in RUNS.items():
    workdir = root / name
    # ESFT trains under a fifth of the weights: a larger learning rate makes its loss move too.
    extra = ([f"--config.esft.expert_config={expert_cfg}", "--config.optimizer.learning_rate=1e-2"]
             if config.startswith("esft") else [])
    cmd = [sys.executable, "train.py", f"--config=configs/{config}.py", f"--workdir={workdir}",
           *SMALL, *mesh, *extra]
    out, err = open(root / f"{name}.out", "w+"), open(root / f"{name}.err", "w+")
    procs[name] = (subprocess.Popen(cmd, cwd=REPO, env=_env(devices), stdout=out, stderr=err),
                   out, err, workdir)
  deadline = time.time() + TIMEOUT_S
  results = {}
  try:
    for name, (p, out, err, workdir) in procs.items():
      try:
        rc = p.wait(timeout=max(deadline - time.time(), 1))
      except subprocess.TimeoutExpired:
        pytest.fail(f"run {name} did not finish within {TIMEOUT_S}s")
      out.seek(0), err.seek(0)
      results[name] = (rc, out.read(), err.read(), workdir)
  finally:
    for p, out, err, _ in procs.values():
      if p.poll() is None:
        p.kill()
        p.wait()
      out.close(), err.close()
  return results


def _finished(runs, name) -> tuple[dict, dict]:
  rc, out, err, workdir = runs[name]
  assert rc == 0, f"run {name} failed (exit {rc}):\n{err[-4000:]}"
  return _read_metrics(workdir)


def _assert_same_losses(runs, baseline: str, name: str):
  base_loss, base_eval = _finished(runs, baseline)
  loss, evals = _finished(runs, name)
  assert MESHES[name] in runs[name][1], f"{name} did not run on the mesh {MESHES[name]}"
  assert sorted(base_loss) == sorted(loss) == list(range(1, STEPS + 1))
  assert sorted(base_eval) == sorted(evals) == [0, STEPS]
  # The losses move, so equal losses mean equal updates, not an untrained model.
  assert base_loss[STEPS] < base_loss[1] - 0.1, base_loss
  steps = sorted(base_loss)
  np.testing.assert_allclose([loss[s] for s in steps], [base_loss[s] for s in steps], rtol=RTOL,
                             err_msg=f"{name}: training losses of steps {steps} differ from 1 device")
  np.testing.assert_allclose([evals[0], evals[STEPS]], [base_eval[0], base_eval[STEPS]], rtol=RTOL,
                             err_msg=f"{name}: eval losses differ from 1 device")


@pytest.mark.parametrize("name", ["fft_data", "fft_fsdp", "fft_expert", "fft_grouped"])
def test_fft_mesh_matches_one_device(runs, name):
  _assert_same_losses(runs, "fft_1dev", name)


def test_esft_expert_mesh_matches_one_device(runs):
  _assert_same_losses(runs, "esft_1dev", "esft_expert")
  # Both trained the configured experts and exported the same adapter.
  from safetensors.numpy import load_file
  a = load_file(runs["esft_1dev"][3] / "adapter" / "adapter.safetensors")
  b = load_file(runs["esft_expert"][3] / "adapter" / "adapter.safetensors")
  experts = sorted({int(k.split(".")[5]) for k in a if ".mlp.experts." in k})
  assert experts == EXPERT_CONFIG["experts"]["1"]
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_batch_not_divisible_by_mesh(runs):
  rc, _, err, workdir = runs["bad_batch"]
  assert rc != 0, "batch size 12 on a data=2 x fsdp=4 mesh should fail"
  assert "ValueError" in err and "config.data.batch_size=12" in err, err[-4000:]
  assert "data x fsdp x expert = 8" in err, err[-4000:]
  assert not (workdir / "checkpoints").exists() or not any((workdir / "checkpoints").iterdir())
