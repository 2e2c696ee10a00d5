"""The documentation site builds with `mkdocs build --strict`, warning-free, with its generated pages.

The configs reference is generated from configs/*.py and the API pages from
the docstrings, so this also catches a config file that no longer imports and
docstrings or cross-references mkdocstrings cannot render.
"""

import glob
import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None,
    reason="mkdocs is not installed (pip install -e '.[test]' installs the docs toolchain)")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
  out = tmp_path_factory.mktemp("site")
  env = dict(os.environ, NO_MKDOCS_2_WARNING="1")  # Material's upgrade notice, not a build warning
  proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
  log = proc.stdout + proc.stderr
  assert proc.returncode == 0, f"mkdocs build --strict failed:\n{log}"
  assert "WARNING" not in log, f"mkdocs build printed warnings:\n{log}"
  return out


def test_configs_page_lists_every_config_file_and_field(site):
  page = (site / "configs" / "index.html").read_text(encoding="utf-8")
  files = sorted(glob.glob(str(REPO / "configs" / "*.py")))
  assert files
  for path in files:
    assert f"configs/{os.path.basename(path)}" in page, path
  for field in ("num_train_steps", "ppo.kl_coef", "esft.top_p", "optimizer.learning_rate"):
    assert f"<code>{field}</code>" in page, field
  # A comment carried over from the builder a config calls (moe_jax/prm/configs.py).
  assert "the paper&#39;s per-token KL penalty" in page or "the paper's per-token KL penalty" in page


def test_api_pages_render_docstrings(site):
  hf = (site / "api" / "hf" / "index.html").read_text(encoding="utf-8")
  assert "from_pretrained" in hf and "save_pretrained" in hf
  assert "Loads a Hugging Face directory (config.json + safetensors) or a GGUF file" in hf  # the function's docstring
  top = (site / "api" / "index.html").read_text(encoding="utf-8")
  assert "from_pretrained" in top


def test_included_pages_stay_in_sync(site):
  bench = (site / "benchmarks" / "index.html").read_text(encoding="utf-8")
  first = next(line for line in (REPO / "benchmarks" / "RESULTS.md").read_text().splitlines()
               if line.startswith("## "))
  heading = first[3:].strip().replace("`", "")  # inline code renders as <code>, so compare plain text
  assert heading in re.sub(r"<[^>]+>", "", bench)  # benchmarks/RESULTS.md is included, not copied
  docs = REPO / "docs"
  for results in glob.glob(str(docs / "*" / "RESULTS.md")) + glob.glob(str(docs / "*" / "*" / "RESULTS.md")):
    study = pathlib.Path(results).parent.relative_to(docs)
    assert (site / study / "RESULTS" / "index.html").exists(), study
