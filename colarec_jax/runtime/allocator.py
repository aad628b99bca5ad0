"""glibc malloc settings for XLA's CPU runtime.

XLA:CPU allocates a program's buffers with malloc. glibc serves large blocks with fresh mmap'd
pages and unmaps them when they are freed, so every execution faults in its big temporaries again,
and page faults can take most of a large elementwise op's time. These settings keep freed blocks
mapped, so later executions reuse pages already there:

- the mmap threshold at 2 GiB, so blocks up to that size come from the heap;
- no trimming, so the heap's free top is never handed back (a 2 GiB trim threshold was not
  enough: t5-small's ~2 GB of step temporaries grew the heap and trimmed it again every step);
- one arena for every thread. XLA runs programs on its worker threads, and glibc gives such a
  thread its own arena, whose heaps are at most 64 MB: anything larger came from mmap again,
  whatever the threshold (the default-size train step's 223 MB temporary, every step);
- a 256 MB top pad, so the heap grows in large steps.

The outcome (the train step and beam search against PyTorch with and without these settings)
is in bench/README.md. The cost: memory a step frees stays with the process; where a step's largest
temporary no longer fits in the heap's fragmented free space, the heap grows by it once more; and
threads share one malloc lock (XLA's big buffers are few). `COLAREC_MALLOC=default` leaves
glibc's settings alone.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt(3) parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -2, -3, -8
LIMIT = 2 ** 31 - 1  # mallopt takes an int
NEVER = -1  # as a trim threshold: glibc reads it as the largest size, so it never trims


def keep_freed_memory() -> bool:
  """Asks glibc to serve blocks of up to 2 GiB from one heap shared by every thread, and to keep
  freed memory there.

  Call it once, early, before JAX starts its backend (whose threads allocate the big buffers).
  Returns whether the settings were applied (False off Linux, on a libc without `mallopt`, or
  with COLAREC_MALLOC=default).
  """
  if not sys.platform.startswith("linux") or os.environ.get("COLAREC_MALLOC") == "default":
    return False
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  settings = ((M_MMAP_THRESHOLD, LIMIT), (M_TRIM_THRESHOLD, NEVER), (M_TOP_PAD, 2 ** 28),
              (M_ARENA_MAX, 1))
  return all([mallopt(option, value) == 1 for option, value in settings])
