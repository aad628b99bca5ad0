"""What every benchmark script does the same way: run one side in a subprocess and read its JSON
line, and write the results file. Scripts run as `python bench/<name>.py`, so this module is
importable as `common`."""

import json
import os
import subprocess

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
