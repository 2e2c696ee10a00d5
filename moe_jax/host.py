"""Settings of the host process that make XLA:CPU programs faster.

XLA:CPU allocates every execution's buffers with malloc and frees them when it
ends. glibc serves blocks above its mmap threshold (32 MiB at most) with fresh
pages from the kernel and unmaps them on free, so each step of a program with
large buffers pays a page fault for every 4 KiB it touches, every time. On the
2-core CI machine that was a third of an expert layer's time and a tenth of the
quickstart demo's (benchmarks/RESULTS.md). `keep_freed_memory` has glibc keep
freed memory in the process for the next step instead.

Programs call it once, first thing: train.py, the `python -m moe_jax.*`
commands, the benchmarks and the test suite. Importing moe_jax never changes
the process. Set MOE_JAX_KEEP_FREED_MEMORY=0 to leave malloc alone (a process
then gives memory back to the system as it frees it, at the cost above).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def keep_freed_memory() -> bool:
  """Makes glibc malloc reuse freed memory rather than return it to the kernel.

  Large blocks come from the heap, not from mmap; the heap is never trimmed;
  all threads share one arena (other arenas' heaps are unmapped when they
  shrink). Resident memory then stays near its peak for the life of the
  process. Returns whether the settings were applied: False off glibc (macOS,
  musl) and when MOE_JAX_KEEP_FREED_MEMORY=0. Call it before the first JAX
  computation; later it still applies to blocks allocated after the call.
  """
  if os.environ.get("MOE_JAX_KEEP_FREED_MEMORY", "1") == "0":
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.gnu_get_libc_version  # only glibc has it; its mallopt is what we set
  except (OSError, AttributeError):
    return False
  settings = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_ARENA_MAX, 1))
  return all(libc.mallopt(param, value) == 1 for param, value in settings)
