"""The glibc malloc settings: freed large blocks stay mapped, so reusing them costs no page faults."""

import os
import subprocess
import sys

import pytest

# Allocates and frees a block of MB megabytes once, then five more times (in a new thread when
# asked, as XLA's workers do), and prints whether the settings applied and the page faults of the
# five. Reusing mapped memory faults nothing; a fresh mapping faults every page (or every huge page
# where the kernel backs it with 2 MB pages) again.
REUSE = """
import resource, sys, threading
import numpy as np
from colarec_jax.runtime import allocator
megabytes, in_thread = int(sys.argv[1]), sys.argv[2] == "thread"
applied = allocator.keep_freed_memory()
faults = []
def reuse():
  np.ones(megabytes << 17).sum()
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(5):
    np.ones(megabytes << 17).sum()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
if in_thread:
  worker = threading.Thread(target=reuse)
  worker.start()
  worker.join()
else:
  reuse()
print(applied, faults[0])
"""


def faults_when_reusing(malloc_setting: str, megabytes: int, where: str) -> tuple[bool, int]:
  env = dict(os.environ, COLAREC_MALLOC=malloc_setting)
  out = subprocess.run([sys.executable, "-c", REUSE, str(megabytes), where], env=env,
                       capture_output=True, text=True, check=True).stdout.split()
  return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
@pytest.mark.parametrize("megabytes, where", [
    (64, "main"),  # above glibc's largest default mmap threshold (32 MB)
    (128, "thread"),  # above the 64 MB heaps of a thread's own arena
    (1800, "main"),  # with the 256 MB top pad, a free top above the old 2 GiB trim threshold
])
def test_freed_memory_is_reused_without_page_faults(megabytes, where):
  applied, tuned = faults_when_reusing("", megabytes, where)
  skipped, untuned = faults_when_reusing("default", megabytes, where)
  assert applied and not skipped
  assert untuned > 0  # glibc's default unmaps each block and faults the next one in again
  assert tuned <= untuned // 10
