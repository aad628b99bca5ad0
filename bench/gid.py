"""Benchmark: our compiled hierarchical balanced k-means against `k-means-constrained` (the library
the authors' code uses), on the same LightGCN item embeddings (default: beauty, K=32, l=3).

The peer uses --n-init seeds per clustering (authors: 10); ours runs with each of --our-n-init
(default: the same), e.g. `--our-n-init 10,3` also shows how few of our seeds reach the peer's
error. Reports wall time (ours cold, i.e. with compilation, and warm), the within-cluster squared
error per level computed by one function for both, and the largest cluster per level against its
capacity.

  python bench/gid.py --dataset beauty --n-init 10 --our-n-init 10,3 --peer-python /path/to/python

The peer needs `k-means-constrained` (bench extra; if it will not install beside JAX's numpy, give
a venv's interpreter with --peer-python). LightGCN embeddings come from our own LightGCN, trained
(or reused) in --workdir. Prints a table and writes JSON (default bench/results/gid.json).
"""

import argparse
import json
import os
import sys
import tempfile
import time

import jax
import numpy as np

from common import REPO, run_json, write_json

sys.path.insert(0, REPO)

from colarec_jax.cf import train as cf_train  # noqa: E402
from colarec_jax.data import prepare as prepare_lib  # noqa: E402
from colarec_jax.config.settings import Settings  # noqa: E402
from colarec_jax.gid import builder  # noqa: E402


def level_stats(x, codes, branching, depth):
  out = []
  for level in range(1, depth):
    sizes = np.unique(codes[:, :level], axis=0, return_counts=True)[1]
    out.append({"level": level, "squared_error": builder.within_cluster_error(x, codes, level),
                "max_size": int(sizes.max()), "capacity": branching ** (depth - level),
                "clusters": int(len(sizes))})
  unique = len({tuple(c) for c in codes.tolist()}) == len(codes)
  return out, unique


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dataset", default="beauty")
  parser.add_argument("--shared-data", default=os.environ.get("COLAREC_SHARED_DATA",
                                                             "../shared/data"))
  parser.add_argument("--workdir", default=os.path.join(REPO, "bench", "results", "work"))
  parser.add_argument("--cf-epochs", type=int, default=30)
  parser.add_argument("--branching", type=int, default=32)
  parser.add_argument("--depth", type=int, default=3)
  parser.add_argument("--n-init", type=int, default=10, help="the peer's seeds")
  parser.add_argument("--our-n-init", default="", help="ours: comma-separated seed counts")
  parser.add_argument("--peer-python", default=sys.executable)
  parser.add_argument("--out", default=os.path.join(REPO, "bench", "results", "gid.json"))
  args = parser.parse_args()

  config = __import__(f"configs.{args.dataset}", fromlist=["get_config"]).get_config()
  config.data.dir = os.path.abspath(os.path.join(args.shared_data, args.dataset))
  config.cf.epochs = args.cf_epochs
  config.cf.eval_every = 5
  workdir = os.path.join(args.workdir, args.dataset)
  settings = Settings.parse(config)
  prepared = prepare_lib.prepare(settings.data, workdir, log=lambda *_: 0)
  x = cf_train.train_lightgcn(prepared, workdir, settings.cf, settings.eval, seed=settings.seed,
                              log=print).item_embeddings[1:]

  rows = []
  for n_init in [int(v) for v in (args.our_n_init or str(args.n_init)).split(",")]:
    for label in ("cold", "warm"):
      start = time.perf_counter()
      codes = builder.hierarchical_codes(x, branching=args.branching, depth=args.depth,
                                            key=jax.random.key(0), n_init=n_init)
      seconds = time.perf_counter() - start
      levels, unique = level_stats(x, codes, args.branching, args.depth)
      rows.append({"library": f"colarec-jax n_init={n_init} ({label})", "n_init": n_init,
                   "seconds": seconds, "levels": levels, "unique": unique})
      print(json.dumps(rows[-1]), flush=True)

  with tempfile.TemporaryDirectory() as tmp:
    np.save(os.path.join(tmp, "x.npy"), x)
    seconds = run_json(
        [args.peer_python, os.path.join(REPO, "bench", "kmc_hierarchical.py"),
         os.path.join(tmp, "x.npy"), os.path.join(tmp, "codes.npy"), str(args.branching),
         str(args.depth), str(args.n_init)])["seconds"]
    levels, unique = level_stats(x, np.load(os.path.join(tmp, "codes.npy")), args.branching,
                                 args.depth)
  rows.append({"library": f"k-means-constrained n_init={args.n_init}", "n_init": args.n_init,
               "seconds": seconds, "levels": levels, "unique": unique})
  print(json.dumps(rows[-1]), flush=True)

  peer = rows[-1]
  header = (f"{'library':<34} {'seconds':>8} {'speed-up':>9} " +
            " ".join(f"{'SSE L' + str(lv['level']):>11} {'vs peer':>8}" for lv in peer["levels"])
            + f" {'caps held':>9} {'unique':>6}")
  lines = [header, "-" * len(header)]
  for row in rows:
    cells = " ".join(
        f"{lv['squared_error']:>11.2f} {lv['squared_error'] / p['squared_error'] - 1:>+7.2%}"
        for lv, p in zip(row["levels"], peer["levels"]))
    caps = all(lv["max_size"] <= lv["capacity"] for lv in row["levels"])
    lines.append(f"{row['library']:<34} {row['seconds']:>8.2f} "
                 f"{peer['seconds'] / row['seconds']:>8.1f}x {cells} {str(caps):>9} "
                 f"{str(row['unique']):>6}")
  print(f"{args.dataset}: {len(x)} items, K={args.branching}, l={args.depth}")
  print("\n".join(lines))
  write_json(args.out, {"dataset": args.dataset, "items": len(x), "branching": args.branching,
                        "depth": args.depth, "n_init": args.n_init, "rows": rows})


if __name__ == "__main__":
  main()
