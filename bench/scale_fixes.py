"""Benchmark: two per-item loops of the scale fixes, timed against the code they replaced.

The replaced functions are loaded from the commit before the fixes (`--before`, default dbc48c0)
with `git show`, so both run in this process on the same inputs:

  GidTable.from_codes   the trie of 1M random GIDs (K=32, l=4): a Python loop per item before,
                        `np.unique` per level after; the tables are checked equal
  dataset._codes        integer codes of the 1M-item synthetic log's 10M raw user ids (grouped
                        by user, numbered by a random position) and item ids (in row order):
                        `np.unique` on an object array before, one dict pass after; checked equal

  python bench/scale_fixes.py [--rounds 3]

Prints a table (median seconds of --rounds) and writes JSON (default
bench/results/scale_fixes.json).
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
import types

from common import REPO, write_json

sys.path.insert(0, REPO)

import numpy as np  # noqa: E402

from colarec_jax.data import dataset, synthetic  # noqa: E402
from colarec_jax.gid import builder  # noqa: E402
from colarec_jax.gid.table import GidTable  # noqa: E402


def module_at(commit: str, path: str, name: str) -> types.ModuleType:
  """The module at `path` as it was in `commit`."""
  source = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout
  module = types.ModuleType(name)
  sys.modules[name] = module  # dataclasses look their module up
  exec(compile(source, f"{commit}:{path}", "exec"), module.__dict__)
  return module


def median_seconds(fn, rounds: int) -> tuple[float, object]:
  times, out = [], None
  for _ in range(rounds):
    start = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times), out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--before", default="dbc48c0")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--out", default=os.path.join(REPO, "bench", "results",
                                                    "scale_fixes.json"))
  args = parser.parse_args()
  rows = []

  old_table = module_at(args.before, "colarec_jax/gid/table.py", "table_before").GidTable
  codes = builder.random_codes(1_000_000, branching=32, depth=4, seed=0)
  before, a = median_seconds(lambda: old_table.from_codes(codes, 32), args.rounds)
  after, b = median_seconds(lambda: GidTable.from_codes(codes, 32), args.rounds)
  assert all(np.array_equal(getattr(a, f), getattr(b, f))
             for f in ("children", "node_depth", "leaf_item", "item_leaf_parent"))
  rows.append({"fix": "GidTable.from_codes, 1M items, K=32, l=4", "before_seconds": before,
               "after_seconds": after})

  old_codes = module_at(args.before, "colarec_jax/data/dataset.py", "dataset_before")._codes
  data = synthetic.generate(synthetic.Shape(1_000_000), seed=0)
  users = np.array([f"u{u}" for u in data.users.tolist()], dtype=object)
  items = np.array([f"i{i}" for i in data.items.tolist()], dtype=object)
  position = np.random.default_rng(0).permutation(len(users))
  for what, ids, at in (("user ids (grouped), by a random position", users, position),
                        ("item ids (rows' order)", items, None)):
    before, a = median_seconds(lambda: old_codes(ids, at), args.rounds)
    after, b = median_seconds(lambda: dataset._codes(ids, at), args.rounds)
    assert np.array_equal(a[0], b[0]) and a[1].tolist() == b[1].tolist()
    rows.append({"fix": f"dataset._codes, {len(ids):,} {what}", "before_seconds": before,
                 "after_seconds": after})

  header = f"{'fix':<66} {'before s':>9} {'after s':>8} {'speed-up':>9}"
  print("\n".join([header, "-" * len(header)] + [
      f"{r['fix']:<66} {r['before_seconds']:>9.2f} {r['after_seconds']:>8.2f} "
      f"{r['before_seconds'] / r['after_seconds']:>8.1f}x" for r in rows]))
  write_json(args.out, {"before_commit": args.before, "rounds": args.rounds, "rows": rows})


if __name__ == "__main__":
  main()
