"""What every benchmark script does the same way: run one side in a subprocess and read its JSON
line, time repeated calls, and write the results file. Scripts (ours and the peers' alike) run as
`python bench/<name>.py`, so this module is importable as `common`; it needs only the standard
library, so it also imports in a peer's own virtualenv."""

import json
import os
import statistics
import subprocess
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
