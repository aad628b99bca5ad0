"""bench/common.py's `take_turns`: real subprocesses, one side at a time, results merged."""

import json
import os
import statistics
import sys

import pytest

from conftest import REPO

sys.path.insert(0, os.path.join(REPO, "bench"))
from common import host, take_turns, write_json  # noqa: E402

# A side as the benchmarks write them: its last argument is how many calls to time; it logs each
# call as "NAME CALL" to a file both sides share, so the test sees the order they ran in, and prints
# one JSON line (after some log noise) with the calls' seconds, a summary and the JAX compilation
# cache it was given.
SIDE = """
import json, os, sys, time
name, log, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
print("log noise")
seconds = []
for i in range(count):
  with open(log, "a") as f:
    f.write(f"{name} {i}\\n")
  seconds.append(0.5 + i)
print(json.dumps({"step_seconds": seconds, "calls": count, "peak_mb": float(count),
                  "cache": os.environ["JAX_COMPILATION_CACHE_DIR"]}))
"""


def side(name, log):
  return [sys.executable, "-c", SIDE, name, str(log)]


def test_sides_take_turns_one_process_at_a_time(tmp_path):
  log = tmp_path / "log"
  results = take_turns({"a": side("a", log), "b": side("b", log)}, {"a": 5, "b": 2}, turns=3)
  # a's 5 calls split 2 + 2 + 1 and b's 2 split 1 + 1 + 0, alternating, each turn a fresh process.
  assert log.read_text().split("\n")[:-1] == ["a 0", "a 1", "b 0", "a 0", "a 1", "b 0", "a 0"]
  assert results["a"]["step_seconds"] == [0.5, 1.5, 0.5, 1.5, 0.5]  # every turn's, in order
  assert results["b"]["step_seconds"] == [0.5, 0.5]
  assert results["a"]["seconds_per_step"] == statistics.median([0.5, 1.5, 0.5, 1.5, 0.5]) == 0.5
  assert results["a"]["calls"] == 2  # the first turn's JSON stands
  assert results["a"]["peak_mb"] == 2.0 and results["b"]["peak_mb"] == 1.0  # the largest
  # Both sides got the same temporary compilation cache, removed once the turns are over.
  assert results["a"]["cache"] == results["b"]["cache"]
  assert not os.path.exists(results["a"]["cache"])


def test_a_side_that_fails_is_reported_with_its_stderr(tmp_path):
  with pytest.raises(SystemExit, match="FileNotFoundError"):
    take_turns({"a": side("a", "/nonexistent/dir/log")}, {"a": 1}, turns=1)


# Two processors' blocks as Linux writes them; the second differs, so reading past the first shows.
CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC 9B14
flags\t\t: fpu sse2 avx2 fma avx512f avx512bw avx512_bf16 sha_ni

processor\t: 1
model name\t: Something Else
flags\t\t: fpu amx_bf16
"""


def test_host_reads_the_first_processor_and_its_vector_extensions():
  info = host(CPUINFO)
  assert info["cpu"] == "AMD EPYC 9B14"
  assert info["cpu_family_model"] == "25/17"
  assert info["isa"] == ["avx2", "fma", "avx512f", "avx512_bf16"]  # ISA_FLAGS order, no amx
  assert info["cores"] == len(os.sched_getaffinity(0)) and info["python"] == sys.version.split()[0]
  # Off Linux there is no cpuinfo: the CPU fields are left out rather than guessed.
  assert set(host("")) == {"machine", "cores", "python", "date"}


def test_results_files_record_their_host(tmp_path):
  path = tmp_path / "new" / "out.json"
  write_json(str(path), {"rows": [1]})
  written = json.loads(path.read_text())
  assert written["rows"] == [1]
  recorded, now = written.pop("host"), host()
  assert recorded.pop("date") <= now.pop("date")  # ISO dates; a run may straddle midnight
  assert recorded == now
