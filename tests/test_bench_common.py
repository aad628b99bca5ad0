"""bench/common.py's turns: real subprocesses that call `serve`, driven by `Worker`/`take_turns`."""

import os
import statistics
import sys

import pytest

from conftest import REPO

sys.path.insert(0, os.path.join(REPO, "bench"))
from common import Worker, take_turns  # noqa: E402

# A side that logs each call as "NAME CALL" to a file shared by both sides, so the test sees the
# order the calls ran in, and reports its own calls in its summary.
SIDE = """
import sys
sys.path.insert(0, "bench")
from common import serve
name, log = sys.argv[1:]
print("log noise before set-up ends")
calls = []
def call(i):
  calls.append(i)
  with open(log, "a") as f:
    f.write(f"{name} {i}\\n")
serve(call, lambda: {"calls": calls, "peak_mb": float(len(calls))})
"""


def side(name, log):
  return [sys.executable, "-c", SIDE, name, str(log)]


def test_worker_numbers_calls_on_across_runs_and_collects_their_seconds(tmp_path):
  worker = Worker(side("a", tmp_path / "log"))
  worker.run(2)
  worker.run(3)
  summary = worker.finish()
  assert summary["calls"] == [0, 1, 2, 3, 4]
  assert len(summary["step_seconds"]) == 5
  assert summary["seconds_per_step"] == statistics.median(summary["step_seconds"])


def test_sides_take_turns_one_process_at_a_time(tmp_path):
  log = tmp_path / "log"
  results = take_turns({"a": side("a", log), "b": side("b", log)}, {"a": 5, "b": 2}, turns=3)
  # a's 5 calls split 2 + 2 + 1 and b's 2 split 1 + 1 + 0, alternating, each turn a fresh process.
  assert log.read_text().split("\n")[:-1] == ["a 0", "a 1", "b 0", "a 0", "a 1", "b 0", "a 0"]
  assert len(results["a"]["step_seconds"]) == 5 and len(results["b"]["step_seconds"]) == 2
  assert results["a"]["seconds_per_step"] == statistics.median(results["a"]["step_seconds"])
  assert results["a"]["calls"] == [0, 1]  # the first turn's summary
  assert results["a"]["peak_mb"] == 2.0 and results["b"]["peak_mb"] == 1.0  # the largest


def test_a_side_that_dies_is_reported_with_its_stderr(tmp_path):
  with pytest.raises(SystemExit, match="exit 3"):
    Worker([sys.executable, "-c", "import sys; sys.exit(3)"])
  worker = Worker(side("a", tmp_path / "log")[:3] + ["a", "/nonexistent/dir/log"])
  with pytest.raises(SystemExit, match="FileNotFoundError"):
    worker.run(1)
