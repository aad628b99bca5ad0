"""What every benchmark script does the same way: run one side in a subprocess and read its JSON
line, or let the sides take turns (`take_turns`, `Worker`, `serve`), time repeated calls, and
write the results file. Scripts (ours and the peers' alike) run as
`python bench/<name>.py`, so this module is importable as `common`; it needs only the standard
library, so it also imports in a peer's own virtualenv."""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_json(cmd: list[str], cwd: str = REPO) -> dict:
  """Runs `cmd` and returns the JSON object on its last stdout line; exits with its stderr's tail
  when it fails."""
  result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
  if result.returncode:
    raise SystemExit(f"{' '.join(map(str, cmd[:4]))} failed:\n{result.stderr[-3000:]}")
  return json.loads(result.stdout.strip().splitlines()[-1])


def write_json(path: str, results: dict) -> None:
  """Writes the benchmark's results file (creating its folder)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(results, f, indent=1)


def median_seconds(call, count: int) -> tuple[float, list[float]]:
  """(median, all) wall-clock seconds of call(0), ..., call(count - 1). `call` must return only
  when its work is done. The median, because this shared 2-core machine's noise skews means."""
  times = []
  for i in range(count):
    start = time.perf_counter()
    call(i)
    times.append(time.perf_counter() - start)
  return statistics.median(times), times


def serve(call, summary) -> None:
  """The subprocess side of an interleaved run: after its set-up (compiling, warming up) a side
  prints `ready`, then for each stdin line `N` times N more calls of `call` (numbered on from the
  last) and prints {"step_seconds": [...]}; on `done` it prints `summary()` and returns."""
  print("ready", flush=True)
  done = 0
  for line in sys.stdin:
    if line.strip() == "done":
      break
    count = int(line)
    _, times = median_seconds(lambda i: call(done + i), count)
    done += count
    print(json.dumps({"step_seconds": times}), flush=True)
  print(json.dumps(summary()), flush=True)


class Worker:
  """One side of a benchmark, alive in its own subprocess (which must call `serve`)."""

  def __init__(self, cmd: list[str], cwd: str = REPO, env: dict | None = None):
    self.cmd = cmd
    self._stderr = tempfile.TemporaryFile(mode="w+")
    self._proc = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=self._stderr, text=True,
                                  env=None if env is None else {**os.environ, **env})
    self._expect("ready")
    self.step_seconds: list[float] = []

  def run(self, count: int) -> None:
    """Times `count` more calls on that side; their seconds go to `step_seconds`."""
    self._proc.stdin.write(f"{count}\n")
    self._proc.stdin.flush()
    self.step_seconds += json.loads(self._expect())["step_seconds"]

  def finish(self) -> dict:
    """Ends the side; returns its summary with every timed call's seconds and their median."""
    self._proc.stdin.write("done\n")
    self._proc.stdin.close()
    summary = json.loads(self._expect())
    self._proc.wait()
    return {**summary, "seconds_per_step": statistics.median(self.step_seconds),
            "step_seconds": self.step_seconds}

  def _expect(self, want: str | None = None) -> str:
    """The side's next stdout line that is not log noise (`want`, or a JSON object)."""
    for line in self._proc.stdout:
      line = line.strip()
      if line == want or (want is None and line.startswith("{")):
        return line
    self._proc.wait()
    self._stderr.seek(0)
    raise SystemExit(f"{' '.join(map(str, self.cmd[:4]))} failed (exit {self._proc.returncode}):"
                     f"\n{self._stderr.read()[-3000:]}")


def take_turns(sides: dict[str, list[str]], counts: dict[str, int], turns: int,
               env: dict | None = None) -> dict[str, dict]:
  """Times each side's `counts[side]` calls over `turns` turns, the sides taking turns.

  Each turn starts the side's command afresh (it must call `serve`, after its own warm-up), times
  its share of the calls and ends it, so only one side is ever alive: this shared machine drifts
  in speed over minutes (15-20% here), and turns spread that drift over both sides alike. (Kept
  alive but idle beside ours, the PyTorch peer seemed to slow it: t5-small train step, median 10.1
  s/step against 9.1 alone, one run each.) Returns per side the first turn's summary with every
  timed call's seconds, their median and the largest `peak_mb`.
  """
  results = {name: {} for name in sides}
  for turn in range(turns):
    for name, cmd in sides.items():
      share = counts[name] // turns + (turn < counts[name] % turns)
      if not share:
        continue
      worker = Worker(cmd, env=env)
      worker.run(share)
      summary = worker.finish()
      seconds = results[name].get("step_seconds", []) + summary.pop("step_seconds")
      # The first turn's summary stands (e.g. its compile time; later turns load from a cache).
      merged = {**summary, **results[name], "step_seconds": seconds}
      if "peak_mb" in summary:
        merged["peak_mb"] = max(results[name].get("peak_mb", 0.0), summary["peak_mb"])
      results[name] = merged
  for result in results.values():
    result["seconds_per_step"] = statistics.median(result["step_seconds"])
  return results
