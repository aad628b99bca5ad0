"""The README's first command, timed: `colarec-jax --config=configs/default.py` into a fresh
workdir, its test table, results and wall time written to `bench/results/default_run.json`.

    python bench/default_run.py [--compare-to OTHER.log]

With `--compare-to`, the printed table is diffed against another run's output (e.g. the same
command on an earlier commit): the renovations promise the same table bit for bit.
"""

import argparse
import difflib
import json
import os
import subprocess
import sys
import tempfile
import time

from common import REPO, write_json

COMMAND = ["--config=configs/default.py"]


def table_of(output: str) -> list[str]:
  """The test table the run printed: from 'test metrics' to the long-tail line."""
  lines = output.splitlines()
  start = lines.index("test metrics")
  end = next(n for n in range(start, len(lines)) if lines[n].startswith("long-tail:"))
  return lines[start:end + 1]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--out", default=os.path.join(REPO, "bench", "results", "default_run.json"))
  parser.add_argument("--compare-to", default="", help="another run's stdout to diff tables with")
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as workdir:
    began = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "colarec_jax.main", *COMMAND,
                          f"--workdir={workdir}"], cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if run.returncode:
      sys.exit(f"the default run failed:\n{run.stderr[-4000:]}")
    with open(os.path.join(workdir, "results.json")) as f:
      results = json.load(f)
  table = table_of(run.stdout)
  print("\n".join(table))
  print(f"wall time: {seconds:.0f} s")
  same = None
  if args.compare_to:
    with open(args.compare_to) as f:
      other = table_of(f.read())
    same = other == table
    print("same table as", args.compare_to if same else "\n".join(
        difflib.unified_diff(other, table, args.compare_to, "this run", lineterm="")))
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                          text=True).stdout.strip()
  write_json(args.out, {"command": "colarec-jax " + " ".join(COMMAND) + " --workdir=runs/default",
                        "commit": commit, "wall_seconds": round(seconds, 1),
                        **({"same_table_as_compared_run": same} if same is not None else {}),
                        "table": table, "results": results})


if __name__ == "__main__":
  main()
