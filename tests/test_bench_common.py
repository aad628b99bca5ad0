"""bench/common.py: `take_turns` (real subprocesses, one side at a time, results merged), the host
record, the peers' malloc choice and the speed-up columns."""

import json
import os
import statistics
import subprocess
import sys

import pytest

from conftest import REPO

sys.path.insert(0, os.path.join(REPO, "bench"))
from common import (host, parse_priors, peer_mallocs, prior_label, speedups,  # noqa: E402
                    take_turns, use_malloc, write_json)

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


def test_speedup_columns_divide_by_each_peer_that_ran_at_the_same_size():
  rows = [{"size": "a", "library": "ours", "rate": 6.0},
          {"size": "a", "library": "peer", "rate": 2.0},
          {"size": "a", "library": "peer+m", "rate": 3.0},
          {"size": "b", "library": "ours", "rate": 10.0},
          {"size": "b", "library": "peer", "rate": 4.0},
          {"size": "b", "library": "peer+m", "rate": 8.0}]
  titles, cells = speedups(rows, {"default": "peer", "ours": "peer+m"}, "rate", digits=2)
  assert titles.split() == ["vs", "peer", "vs", "peer+malloc"]
  assert [cell.split() for cell in cells] == [
      ["3.00x", "2.00x"], ["1.00x", "0.67x"], ["1.50x", "1.00x"],
      ["2.50x", "1.25x"], ["1.00x", "0.50x"], ["2.00x", "1.00x"]]
  assert len(titles) == len(cells[0])  # header and cells line up
  # Only the peers that ran get a column; none (--no-peer) leaves the table without one.
  titles, cells = speedups(rows[:2], {"default": "peer", "ours": "peer+m"}, "rate", digits=1)
  assert titles.split() == ["vs", "peer"] and cells[0].split() == ["3.0x"]
  assert speedups(rows[:1], {"default": "peer"}, "rate", digits=1) == ("", [""])


def test_peer_malloc_choices():
  assert peer_mallocs("both") == ("default", "ours")
  assert peer_mallocs("ours") == ("ours",)
  assert use_malloc("default") is False  # glibc's settings left alone, nothing loaded
  with pytest.raises(SystemExit, match="malloc: got 'tuned', expected one of default, ours"):
    use_malloc("tuned")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_a_peer_gets_our_malloc_by_path(tmp_path):
  """In a fresh process (so this one keeps glibc's settings) run from bench/, as the peers are:
  `use_malloc` finds colarec_jax/runtime/allocator.py by its path and applies it."""
  probe = "import sys; from common import use_malloc; print(use_malloc(sys.argv[1]))"
  env = {k: v for k, v in os.environ.items() if k != "COLAREC_MALLOC"}
  out = subprocess.run([sys.executable, "-c", probe, "ours"], cwd=os.path.join(REPO, "bench"),
                       env=env, capture_output=True, text=True, check=True)
  assert out.stdout.split() == ["True"]


def test_priors_flag_parses_to_code_prior_values_and_labels_back():
  import argparse
  parser = argparse.ArgumentParser()
  assert parse_priors(parser, "--priors", "none;0:1:1;2") == [(), (0.0, 1.0, 1.0), (2.0,)]
  assert [prior_label(p) for p in [(0.0, 1.0, 1.5), (2.0,)]] == ["0:1:1.5", "2"]
  with pytest.raises(SystemExit):
    parse_priors(parser, "--priors", "0:x")
