"""The benchmark suite runs where the GPU machine would run it: without grain, TFDS or ml_collections."""

import json
import os
import signal
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Make those imports fail, as they do on the GPU machine, then run the script as __main__.
_BLOCKED = """
import runpy, sys
for name in ("grain", "tensorflow_datasets", "ml_collections"):
  sys.modules[name] = None
sys.argv = ["benchmarks/run.py"] + sys.argv[1:]
runpy.run_path("benchmarks/run.py", run_name="__main__")
"""

GPU_FIGURES = ("expert_layer_vs_dense_16k", "expert_layer_vs_dense_64k", "train_step_mfu",
               "esft_vs_fft_step_time_ratio", "esft_vs_fft_optimizer_bytes_ratio",
               "v2lite_esft_fits", "v2lite_fft_fits")


@pytest.mark.slow
def test_gpu_suite_smoke_runs_without_the_data_stack():
  out = subprocess.run([sys.executable, "-c", _BLOCKED, "--suite", "gpu", "--smoke"], cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  figures = json.loads(out.stdout.strip().splitlines()[-1])  # the last line is the JSON
  assert set(GPU_FIGURES) <= set(figures)
  # Every backend computed the same layer as the dense reference (bf16 rounding only).
  for backend in ("sorted", "grouped", "pallas", "ragged_dot"):
    assert figures[f"{backend}_rel_error_vs_dense"] < 2e-2, backend
  for name in GPU_FIGURES[:3]:
    assert figures[name] > 0, name
  # ESFT keeps AdamW state for 1 of 8 experts per MoE layer only, and nothing else.
  assert 0 < figures["esft_vs_fft_optimizer_bytes_ratio"] < 0.15
  assert figures["v2lite_esft_fits"] is True
  assert out.stdout.splitlines()[0].startswith("measurement")  # a table, then the JSON line


def test_cpu_section_and_bad_section():
  out = subprocess.run([sys.executable, "benchmarks/run.py", "--suite", "cpu", "--smoke",
                        "--sections", "generation"], cwd=ROOT, capture_output=True, text=True,
                       timeout=600, env={**os.environ, "PYTHONPATH": ROOT})
  assert out.returncode == 0, out.stderr[-3000:]
  figures = json.loads(out.stdout.strip().splitlines()[-1])
  assert figures["sections"] == ["generation"] and figures["kv_cache_speedup"] > 0
  assert "moe_e64_vs_e8_time_ratio" not in figures  # the other sections did not run
  bad = subprocess.run([sys.executable, "benchmarks/run.py", "--suite", "gpu", "--sections", "layers,x"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": ROOT})
  assert bad.returncode == 2 and "no ['x'] in the gpu suite" in bad.stderr


def test_a_terminated_run_still_ends_with_its_json_line():
  """`timeout` sends SIGTERM: the rows measured so far and the JSON line still come out."""
  proc = subprocess.Popen([sys.executable, "benchmarks/run.py", "--suite", "cpu", "--smoke"], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                          env={**os.environ, "PYTHONPATH": ROOT})
  lines = [proc.stdout.readline(), proc.stdout.readline()]  # the header, then a first measurement
  proc.send_signal(signal.SIGTERM)
  rest, _ = proc.communicate(timeout=300)
  lines += rest.strip().splitlines()
  assert lines[0].startswith("measurement") and "expert layer" in lines[1]
  figures = json.loads(lines[-1])
  assert figures["interrupted_in"] == "layers"
  assert "kv_cache_speedup" not in figures


def test_a_failing_section_does_not_cost_the_others(monkeypatch, capsys):
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  try:
    import run  # benchmarks/run.py
  finally:
    sys.path.pop(0)

  def broken(out, smoke):
    out.row("first row", 1.0)
    raise RuntimeError("kernel did not compile")

  def fine(out, smoke):
    out.figure("fine_ratio", 0.5)

  monkeypatch.setitem(run.SUITES, "cpu", {"broken": broken, "fine": fine})
  monkeypatch.setattr(run.signal, "signal", lambda *args: None)  # keep pytest's SIGTERM handling
  figures = run.main(["--suite", "cpu", "--malloc", "default"])
  assert figures["section_failed_broken"] == "RuntimeError: kernel did not compile"
  assert figures["fine_ratio"] == 0.5 and figures["sections"] == ["broken", "fine"]
  printed = capsys.readouterr()
  assert json.loads(printed.out.strip().splitlines()[-1]) == json.loads(json.dumps(figures))
  assert "kernel did not compile" in printed.err  # the traceback
