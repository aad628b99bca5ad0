"""Benchmark: users/s of batch export (`--mode=export`) against the beam search it is built on.

On one trained model of configs/default.py (MovieLens-100k, 943 users), in one process, the sides
rank every user, taking turns round by round (this shared machine drifts in speed):

  beam search        the peer: `decode.beam_search` alone over every user's encoder input, in
                     batches of eval.decode_batch_size, waiting for each batch (what
                     bench/decode.py times, here at this model's size and data);
  evaluation         `Ranker.evaluate` on the test split (the ranking evaluation and model
                     selection do), per test user;
  export .jsonl      `export.export` end to end: inputs, beam search, dropping what each user
  export .parquet    has, writing the file through a temporary one.

  python bench/export.py [--workdir runs/default] [--rounds 5]

The workdir must hold a trained default model (the README's first command makes one; without
one, this script trains it with that command first, about 5 minutes on 2 cores). Prints a table
and writes JSON (default bench/results/export.json), with bench/results/decode.json's
default-size rate for reference (a larger model: d_model 128, 2 + 2 layers, 256 tokens).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from common import REPO, write_json

DEFAULT_WORKDIR = os.path.join(REPO, "bench", "results", "work", "default")


def ensure_trained(workdir: str) -> None:
  """Trains configs/default.py in `workdir` unless it holds a stored config (a trained run)."""
  if os.path.isfile(os.path.join(workdir, "config.json")):
    return
  print(f"training configs/default.py in {workdir} first", flush=True)
  subprocess.run([sys.executable, "-m", "colarec_jax.main", "--config=configs/default.py",
                  f"--workdir={workdir}", "--mode=train"], cwd=REPO, check=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default=DEFAULT_WORKDIR)
  parser.add_argument("--rounds", type=int, default=5, help="timed runs of each side (median)")
  parser.add_argument("--top-n", type=int, default=10)
  parser.add_argument("--out", default=os.path.join(REPO, "bench", "results", "export.json"))
  args = parser.parse_args()
  ensure_trained(args.workdir)
  sys.path.insert(0, REPO)
  import jax
  import numpy as np

  from colarec_jax.ranking import decode
  from colarec_jax.runtime import allocator, sharding
  from colarec_jax.serving import export
  from colarec_jax.data.dataset import TEST
  from colarec_jax.data.sampling import padded_batches
  from colarec_jax.config import stored
  from colarec_jax.config.settings import Settings
  from colarec_jax.serving.recommender import Recommender

  allocator.keep_freed_memory()  # as the CLI does
  rec = Recommender.load(args.workdir)
  ranker, ws = rec.ranker, rec.parts
  cfg = Settings.parse(stored.load(args.workdir))
  users = np.arange(1, ws.prepared.dataset.num_users + 1)
  inputs = ws.builder.eval_inputs(users)
  split, split_inputs = ws.eval_data(TEST)
  folder = tempfile.mkdtemp(prefix="colarec-export-bench-")

  def beam_search():
    for rows, _ in padded_batches(np.arange(len(users)), ranker.batch_size):
      batch = sharding.shard_rows({k: v[rows] for k, v in inputs.items()}, ws.mesh)
      jax.block_until_ready(decode.beam_search(ws.model, ranker.params, batch, ranker.trie,
                                               renormalize=ranker.eval_cfg.renormalize))
    return len(users)

  def evaluation():
    ranker.evaluate(split, split_inputs)
    return len(split.users)

  def exporter(suffix):
    def run():
      path = os.path.join(folder, f"top{suffix}")
      return export.export(rec, path, top_n=args.top_n, progress_bar=False,
                           log=lambda *_: None)["users"]
    return run

  sides = {"beam search": beam_search, "evaluation": evaluation,
           "export .jsonl": exporter(".jsonl"), "export .parquet": exporter(".parquet")}
  for side in sides.values():  # compile, and warm the caches
    side()
  seconds = {name: [] for name in sides}
  counts = {}
  for _ in range(args.rounds):
    for name, side in sides.items():
      start = time.perf_counter()
      counts[name] = side()
      seconds[name].append(time.perf_counter() - start)
  rows = [{"side": name, "users": counts[name], "seconds": seconds[name],
           "users_per_second": counts[name] / statistics.median(seconds[name])}
          for name in sides]
  peer = rows[0]["users_per_second"]
  stored = None
  decode_json = os.path.join(REPO, "bench", "results", "decode.json")
  if os.path.isfile(decode_json):
    with open(decode_json) as f:
      stored = next((r["users_per_second"] for r in json.load(f)["rows"]
                     if r["size"] == "default" and r["library"] == "colarec-jax"), None)
  print(f"{ws.prepared.dataset.name}: {len(users)} users, {ws.prepared.dataset.num_items} items, "
        f"d_model {cfg.model.d_model}, {cfg.inputs.max_length} tokens, beam "
        f"{ranker.trie.beam_size}, batches of {ranker.batch_size}, {sharding.describe(ws.mesh)}; "
        f"median of {args.rounds} runs, the sides taking turns")
  header = f"{'side':<18} {'users/s':>9} {'vs beam search':>15}"
  print("\n".join([header, "-" * len(header)] + [
      f"{r['side']:<18} {r['users_per_second']:>9.1f} {r['users_per_second'] / peer:>14.2f}x"
      for r in rows]))
  if stored:
    print(f"(bench/results/decode.json, default size d_model 128, 2 + 2 layers, 256 tokens, "
          f"12,101 items: {stored:.1f} users/s)")
  write_json(args.out, {"workdir": os.path.relpath(args.workdir, REPO), "rounds": args.rounds,
                        "top_n": args.top_n, "batch_size": ranker.batch_size,
                        "devices": sharding.describe(ws.mesh), "rows": rows,
                        "decode_json_default_users_per_second": stored})


if __name__ == "__main__":
  main()
