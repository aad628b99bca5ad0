"""The glibc malloc settings: freed large blocks stay mapped, so reusing them costs no page faults."""

import os
import subprocess
import sys

import pytest

REUSE = """
import resource, sys
import numpy as np
from colarec_jax import allocator
applied = allocator.keep_freed_memory()
np.ones(1 << 23).sum()  # 64 MB, above glibc's largest default mmap threshold (32 MB)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
  np.ones(1 << 23).sum()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults_when_reusing(malloc_setting: str) -> tuple[bool, int]:
  env = dict(os.environ, COLAREC_MALLOC=malloc_setting)
  out = subprocess.run([sys.executable, "-c", REUSE], env=env, capture_output=True, text=True,
                       check=True).stdout.split()
  return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_freed_memory_is_reused_without_page_faults():
  applied, tuned = faults_when_reusing("")
  skipped, untuned = faults_when_reusing("default")
  assert applied and not skipped
  assert untuned > 0  # glibc's default unmaps each 64 MB block and faults the next one in again
  assert tuned <= untuned // 10
