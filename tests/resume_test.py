"""The trainer's failure paths through `python train.py`: SIGKILL and resume, non-finite losses, bad input.

  * A run killed with SIGKILL mid-training and rerun with the same command
    resumes from its last checkpoint and logs exactly the losses of an
    uninterrupted run (FFT, and ESFT with expert scoring).
  * A non-finite step stops the run with an error naming the step, after
    checkpointing the state (and data position) from before it.
  * A checkpoint written under another model config is refused, naming the
    field, and left as it was.
  * Malformed data and expert configs fail with messages naming the file, the
    line or the field.

Every run is a subprocess on one CPU device. They share a persistent JAX
compilation cache, so repeated programs compile once.
"""

import hashlib
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import chex
import numpy as np
import pytest
from safetensors.numpy import load_file

REPO = pathlib.Path(__file__).resolve().parent.parent
TIMEOUT_S = 300
# configs/fft.py and configs/esft_token.py shrunk: the tiny preset, batches of 8 rows of 64 tokens.
SMALL = [
    "--config.log_every=1", "--config.eval_every=0", "--config.export_hf=False",
    "--config.data.max_examples=160", "--config.data.seq_len=64", "--config.data.batch_size=8",
    "--config.esft.n_score_tokens=2048", "--config.mesh.data=1",
]
LR = {"fft": "1e-3", "esft_token": "1e-2"}  # ESFT trains a fifth of the weights


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  env["XLA_FLAGS"] = " ".join(
      [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
      + ["--xla_force_host_platform_device_count=1"])
  env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("jax_cache"))
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
  return env


def _cmd(workdir, *flags, config="fft") -> list[str]:
  path = config if str(config).endswith(".py") else f"configs/{config}.py"
  lr = LR.get(str(config), LR["fft"])
  return [sys.executable, "train.py", f"--config={path}", f"--workdir={workdir}", *SMALL,
          f"--config.optimizer.learning_rate={lr}", *flags]


def _run(cmd, env, timeout=TIMEOUT_S) -> subprocess.CompletedProcess:
  try:
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    pytest.fail(f"did not finish within {timeout}s: {' '.join(map(str, cmd))}")


def _ok(p: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
  assert p.returncode == 0, f"exit {p.returncode}:\n{p.stderr[-4000:]}"
  return p


def _records(workdir) -> list[dict]:
  """metrics.jsonl's complete lines (a killed run may leave half a line)."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  text = path.read_text()
  return [json.loads(l) for l in text[:text.rfind("\n") + 1].splitlines() if l.strip()]


def _losses(workdir) -> dict[int, list[float]]:
  out: dict[int, list[float]] = {}
  for r in _records(workdir):
    if "loss" in r:
      out.setdefault(r["step"], []).append(r["loss"])
  return out


def _evals(workdir) -> dict[int, list[float]]:
  out: dict[int, list[float]] = {}
  for r in _records(workdir):
    if "eval_loss" in r:
      out.setdefault(r["step"], []).append(r["eval_loss"])
  return out


def _checkpoint_steps(workdir) -> list[int]:
  d = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def _tree_digest(directory) -> dict[str, str]:
  root = pathlib.Path(directory)
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob("*")) if p.is_file()}


# SIGKILL and resume ---------------------------------------------------------------

STEPS, CKPT_EVERY, KILL_AFTER = 40, 4, 10


def _kill_after_step(proc: subprocess.Popen, workdir, step: int, err_path, timeout=TIMEOUT_S) -> int:
  """SIGKILLs `proc` once workdir/metrics.jsonl logs a step >= `step`; returns the last step logged."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    logged = max(_losses(workdir), default=0)
    if logged >= step:
      os.kill(proc.pid, signal.SIGKILL)
      proc.wait(timeout=60)
      return max(_losses(workdir), default=0)
    if proc.poll() is not None:
      pytest.fail(f"the run exited (code {proc.returncode}) at step {logged}, before step {step} "
                  f"was logged and it could be killed:\n{pathlib.Path(err_path).read_text()[-4000:]}")
    time.sleep(0.005)
  proc.kill()
  proc.wait()
  pytest.fail(f"the run did not log step {step} within {timeout}s")


@pytest.mark.parametrize("config", ["fft", "esft_token"])
def test_sigkill_then_rerun_matches_uninterrupted_run(tmp_path, env, config):
  flags = [f"--config.num_train_steps={STEPS}", f"--config.checkpoint_every={CKPT_EVERY}",
           "--config.export_hf=True"]  # the final weights, compared at the end
  ref_dir, run_dir = tmp_path / "uninterrupted", tmp_path / "killed"
  with open(tmp_path / "ref.err", "w") as ref_err, open(tmp_path / "run.err", "w") as run_err:
    ref = subprocess.Popen(_cmd(ref_dir, *flags, config=config), cwd=REPO, env=env,
                           stdout=subprocess.DEVNULL, stderr=ref_err)
    victim = subprocess.Popen(_cmd(run_dir, *flags, config=config), cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=run_err)
    try:
      killed_at = _kill_after_step(victim, run_dir, KILL_AFTER, tmp_path / "run.err")
      assert killed_at < STEPS, f"the run finished all {STEPS} steps before it could be killed"
      assert victim.returncode == -signal.SIGKILL, victim.returncode
      assert not (run_dir / "summary.json").exists()
      ref.wait(timeout=TIMEOUT_S)
    finally:
      for p in (ref, victim):
        if p.poll() is None:
          p.kill()
          p.wait()
  assert ref.returncode == 0, (tmp_path / "ref.err").read_text()[-4000:]

  resumed = _ok(_run(_cmd(run_dir, *flags, config=config), env))
  m = re.search(r"resumed from \S+ at step (\d+)", resumed.stdout)
  assert m, f"the rerun did not resume:\n{resumed.stdout[-2000:]}"
  start = int(m.group(1))
  # The checkpoint every CKPT_EVERY steps is asynchronous, but a save waits for the one before.
  assert CKPT_EVERY <= start <= killed_at, (start, killed_at)

  want, got = _losses(ref_dir), _losses(run_dir)
  assert sorted(want) == sorted(got) == list(range(1, STEPS + 1))
  # Steps start+1..killed_at were logged twice, once before the kill and once after resuming.
  assert all(len(got[s]) == 2 for s in range(start + 1, killed_at + 1)), got
  for s in want:
    assert got[s][-1] == want[s][0], f"step {s}: loss {got[s][-1]!r} after resuming, {want[s][0]!r} uninterrupted"
    assert all(v == want[s][0] for v in got[s]), f"step {s}: losses {got[s]} vs {want[s][0]!r}"
  assert _evals(run_dir) == _evals(ref_dir), (_evals(run_dir), _evals(ref_dir))
  assert sorted(_evals(ref_dir)) == [0, STEPS]

  if config.startswith("esft"):  # the rerun selected the same experts and trained them identically
    assert ((run_dir / "expert_config.json").read_text()
            == (ref_dir / "expert_config.json").read_text())
    a = load_file(ref_dir / "adapter" / "adapter.safetensors")
    b = load_file(run_dir / "adapter" / "adapter.safetensors")
    assert sorted(a) == sorted(b) and a
    chex.assert_trees_all_equal(b, a)
  # ...and the resumed run ends with the uninterrupted run's weights, bit for bit.
  chex.assert_trees_all_close(load_file(run_dir / "hf" / "model.safetensors"),
                              load_file(ref_dir / "hf" / "model.safetensors"), rtol=0, atol=0)


# Non-finite loss ------------------------------------------------------------------

def test_non_finite_step_stops_with_checkpoint_before_it(tmp_path, env):
  import jax
  import orbax.checkpoint as ocp

  # lr 1e30 after a 3-step warmup from 0: step 2 blows the weights up, step 3's gradients overflow.
  # checkpoint_every=100, so the checkpoint before the failing step is the forced one.
  cmd = _cmd(tmp_path, "--config.num_train_steps=10", "--config.checkpoint_every=100",
             "--config.optimizer.learning_rate=1e30", "--config.optimizer.warmup_steps=3")
  first = _run(cmd, env)
  assert first.returncode != 0, "a run whose weights overflow should fail"
  m = re.search(r"FloatingPointError: \[fft\] step (\d+): non-finite (?:loss|gradients) .*", first.stderr)
  assert m, first.stderr[-4000:]
  bad = int(m.group(1))
  assert bad >= 3, f"step {bad} failed; the test wants the checkpoint before it forced, not periodic"
  ckpt_dir = tmp_path / "checkpoints"
  assert f"checkpointed at step {bad - 1} in {ckpt_dir}" in m.group(0)
  assert _checkpoint_steps(tmp_path)[-1] == bad - 1
  assert max(_losses(tmp_path)) == bad - 1  # the failing step logged nothing

  mngr = ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(read_only=True))
  saved = mngr.restore(bad - 1, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                        data=ocp.args.JsonRestore()))
  mngr.close()
  state = saved["state"]
  assert int(state["step"]) == bad - 1
  # The last good state: weights and Adam moments all finite.
  for name in ("params", "opt_state"):
    leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(state[name])]
    assert leaves and all(np.isfinite(x).all() for x in leaves), name
  # The data position goes with the state: as in every periodic checkpoint, one batch per step.
  assert saved["data"] == {"next_index": bad - 1}, saved["data"]

  # Rerunning resumes there and meets the same failure on the same batch.
  second = _run(cmd, env)
  assert second.returncode != 0
  assert f"resumed from {ckpt_dir} at step {bad - 1}" in second.stdout, second.stdout[-2000:]
  assert m.group(0) in second.stderr, second.stderr[-4000:]


# Checkpoint from another config -------------------------------------------------------

WRAPPED_CONFIG = '''"""configs/fft.py with the tiny model's sizes in config.model, so the command line can change them."""
import importlib.util


def get_config():
  spec = importlib.util.spec_from_file_location("fft", {path!r})
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.model.update(dict(hidden_size=64, num_hidden_layers=2, n_routed_experts=8))
  return c
'''


def test_checkpoint_from_other_model_config_is_refused_and_kept(tmp_path, env):
  config = tmp_path / "fft_sized.py"
  config.write_text(WRAPPED_CONFIG.format(path=str(REPO / "configs" / "fft.py")))
  workdir = tmp_path / "run"
  flags = ["--config.num_train_steps=4", "--config.checkpoint_every=2"]
  _ok(_run(_cmd(workdir, *flags, config=config), env))
  assert _checkpoint_steps(workdir)[-1] == 4
  before = _tree_digest(workdir / "checkpoints")
  metrics = (workdir / "metrics.jsonl").read_text()

  other = _run(_cmd(workdir, *flags, "--config.model.hidden_size=96", config=config), env)
  assert other.returncode != 0
  assert "CheckpointMismatchError" in other.stderr, other.stderr[-4000:]
  assert "model.hidden_size: checkpoint 64, now 96" in other.stderr, other.stderr[-4000:]
  assert "num_hidden_layers" not in other.stderr.split("CheckpointMismatchError")[-1]
  assert _tree_digest(workdir / "checkpoints") == before
  assert (workdir / "metrics.jsonl").read_text() == metrics

  # The original config still resumes from it.
  again = _ok(_run(_cmd(workdir, *flags, config=config), env))
  assert f"resumed from {workdir / 'checkpoints'} at step 4" in again.stdout


# Bad input --------------------------------------------------------------------------

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def _bad_input_cases(tmp_path) -> dict:
  """name -> (extra flags, [substrings the error must contain])."""
  lines = [json.dumps(GOOD)] * 3
  malformed = tmp_path / "malformed.jsonl"
  malformed.write_text("\n".join(lines[:1] + ['{"messages": [{"role": "user"'] + lines[1:]) + "\n")
  no_answer = tmp_path / "no_answer.jsonl"
  no_answer.write_text("\n".join(
      lines[:2] + [json.dumps({"messages": [{"role": "user", "content": "hi"}]})]) + "\n")
  empty = tmp_path / "empty.jsonl"
  empty.write_text("")
  bad_layer = tmp_path / "bad_layer.json"
  bad_layer.write_text(json.dumps({"experts": {"1": [0], "5": [1]}}))
  bad_expert = tmp_path / "bad_expert.json"
  bad_expert.write_text(json.dumps({"experts": {"1": [0, 8]}}))
  esft = ["--config.train_mode=esft"]
  return {
      "malformed_jsonl": ([f"--config.data.train_files={malformed}"],
                          ["DataError", f"{malformed}:2: malformed JSON"]),
      "no_assistant_turn": ([f"--config.data.train_files={no_answer}"],
                            ["DataError", f"{no_answer}:3: no assistant turn"]),
      "empty_file": ([f"--config.data.train_files={empty}"],
                     ["DataError", f"{empty}: no examples (empty file)"]),
      "expert_config_layer": (esft + [f"--config.esft.expert_config={bad_layer}"],
                              ["ExpertConfigError", f"{bad_layer}: layer 5 is not a MoE layer",
                               "MoE layers: [1]"]),
      "expert_config_id": (esft + [f"--config.esft.expert_config={bad_expert}"],
                           ["ExpertConfigError", f"{bad_expert}: layer 1: expert ids [8] do not exist",
                            "8 routed experts"]),
  }


@pytest.mark.parametrize("case", ["malformed_jsonl", "no_assistant_turn", "empty_file",
                                  "expert_config_layer", "expert_config_id"])
def test_bad_input_fails_with_clear_message(tmp_path, env, case):
  flags, expected = _bad_input_cases(tmp_path)[case]
  p = _run(_cmd(tmp_path / "run", "--config.num_train_steps=2", *flags), env)
  assert p.returncode != 0, f"{case}: the run should fail"
  last = p.stderr.strip().splitlines()[-1]  # the exception line
  for s in expected:
    assert s in last, f"{case}: {s!r} not in the error {last!r}\n{p.stderr[-3000:]}"
  assert not _checkpoint_steps(tmp_path / "run")
