"""keep_freed_memory: glibc stops returning large freed blocks to the kernel."""

import ctypes
import resource
import subprocess
import sys

import pytest

# Allocates and frees a 64 MiB block 20 times, touching every page, and prints the minor
# page faults that took. Run in a fresh process: the setting lasts for the process.
_PROBE = r"""
import ctypes, resource, sys
from moe_jax import host
applied = host.keep_freed_memory() if sys.argv[1] == "keep" else False
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
n = 64 << 20
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
  p = libc.malloc(n)
  ctypes.memset(p, 1, n)
  libc.free(ctypes.c_void_p(p))
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
  out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True,
                       check=True).stdout.split()
  return out[0], int(out[1])


def _is_glibc() -> bool:
  try:
    ctypes.CDLL("libc.so.6").gnu_get_libc_version
    return True
  except (OSError, AttributeError):
    return False


@pytest.mark.skipif(not _is_glibc(), reason="mallopt settings are glibc's")
def test_keep_freed_memory_stops_refaulting_large_blocks():
  pages = 20 * (64 << 20) // resource.getpagesize()
  applied, default = _faults("default")
  assert default > 0.9 * pages  # glibc unmaps a 64 MiB block on free: every reuse faults again
  applied, kept = _faults("keep")
  assert applied == "True"
  assert kept < 0.1 * pages  # only the first allocation faults its pages in
