"""glibc malloc settings for XLA's CPU runtime.

XLA:CPU allocates a program's buffers with malloc. glibc serves large blocks with fresh mmap'd
pages and unmaps them when they are freed, so every execution faults in its big temporaries again:
on this project's 2-core CPU a 42 MB elementwise add took 25 ms, mostly page faults. These settings
(and a 256 MB top pad, so the heap grows in large steps) keep freed blocks mapped, and later
executions reuse pages that are already there:

- the mmap threshold at 2 GiB, so blocks up to that size come from the heap;
- no trimming, so the heap's free top is never handed back (a 2 GiB trim threshold was not
  enough: t5-small's ~2 GB of step temporaries grew the heap and trimmed it again every step);
- one arena for every thread. XLA runs programs on its worker threads, and glibc gives such a
  thread its own arena, whose heaps are at most 64 MB: anything larger came from mmap again,
  whatever the threshold (the default-size train step's 223 MB temporary, every step).

Against the first two settings with a 2 GiB trim threshold, on a 2-core AMD EPYC with AVX-512
(medians, alternating processes): the default-size train step 0.230 -> 0.199 s, its 57,000 page
faults per step down to about none; t5-small 4.74 -> 4.63 s, 506,000 faults (2 GB) per step down
to about none. Those two settings alone, against glibc's defaults: the same add 25 -> 4.5 ms,
t5-small beam search (20 users, beam 100) 3.9 -> 3.1 s.

The cost: memory a step frees stays with the process (its resident size does not shrink back
between steps); where a step's largest temporary no longer fits in the heap's fragmented free
space, the heap grows by it once more (t5-small train step: peak resident 3.7 GB in most
processes, 5.6 GB in some). Threads share one malloc lock (XLA's big buffers are few, so it did
not show here). `COLAREC_MALLOC=default` leaves glibc's settings alone.
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
