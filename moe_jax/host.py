"""Settings of the host process that can make XLA:CPU programs faster.

XLA:CPU allocates every execution's buffers with malloc and frees them when it
ends. glibc serves blocks above its mmap threshold (32 MiB at most) with fresh
pages from the kernel and unmaps them on free, so each step of a program with
large buffers pays a page fault for every 4 KiB it touches, every time.
`keep_freed_memory` has glibc keep freed memory in the process instead.

It is a trade-off, so nothing calls it by default (importing moe_jax never
changes the process). Measured on the 2-core CI machine (benchmarks/RESULTS.md):
the CPU benchmark suite, whose expert layers move 40 MB buffers, ran in half
the time, and the quickstart demo 11% faster; but the quick ESFT study, many
small models with data-loading threads, ran 25% slower, because all threads
then share one malloc arena and its lock. The same settings from the shell:
`MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647`.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def keep_freed_memory() -> bool:
  """Makes glibc malloc reuse freed memory rather than return it to the kernel.

  Large blocks come from the heap, not from mmap; the heap is never trimmed;
  all threads share one arena (other arenas' heaps are unmapped once empty).
  Resident memory then stays near its peak for the life of the process, and
  threads that allocate a lot contend for the arena's lock. Returns whether
  the settings were applied: False off glibc (macOS, musl). Call it before the
  first JAX computation; later it still applies to blocks allocated after it.
  """
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.gnu_get_libc_version  # only glibc has it; its mallopt is what we set
  except (OSError, AttributeError):
    return False
  settings = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_ARENA_MAX, 1))
  return all(libc.mallopt(param, value) == 1 for param, value in settings)
