"""Shared test fixtures.

`shared_data` finds the full datasets (`$MOE_JAX_DATA`, else `../shared/data`
beside the checkout) and skips, saying why, where a clone does not have them.
"""

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


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
