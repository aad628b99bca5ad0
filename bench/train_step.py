"""Benchmark: ColaRec training examples/s and peak memory, ours against a PyTorch T5 step.

Both run the same multi-task step (encoder over X_u [b, 256] and over X_i, X_i-, X_i+ [3b, 34]
with item/user ID and task embeddings in their slots, three decoder passes of length 3, four
losses, AdamW with clipping over every parameter, the ID tables included) on random inputs of the
same shapes, on this machine's CPU, for the base size (the row named `default`: d_model 128, 2 + 2 layers, the model section's
defaults in colarec_jax/config/base.py) and t5-small
(512, 6 + 6). Each side runs in its own subprocess (for its peak memory), and the sides take turns
in --rounds rounds, one process alive at a time, so that the machine's slow drifts in speed fall
on all alike (ours reloads its compiled step from a persistent compilation cache each round).
Every turn runs --warmup untimed steps first (2: PyTorch's second t5-small step still ran ~20%
slower than its later ones; with glibc's malloc its first timed step of a turn stays slow). The peer
runs twice (--peer-malloc both): with glibc's malloc as PyTorch comes, and with the settings our CLI
applies (colarec_jax/runtime/allocator.py), which spared PyTorch's t5-small step page faults as well.
On a GPU (ours only) it also reports bf16 and the achieved FLOP/s as a fraction of --peak-tflops.

  python bench/train_step.py --torch-python /path/to/venv/bin/python

The peer needs torch and transformers (bench extra, or a venv given with --torch-python). Prints a
table and writes JSON (default bench/results/train_step.json).
"""

import argparse
import itertools
import json
import os
import resource
import sys

from common import (REPO, add_peer_malloc_flag, call_seconds, parse_counts, peer_mallocs,
                    speedups, take_turns, write_json)

# The capacity study's sizes (issue 38) too: the cpu budget's ('cpu') and 256 with 4 + 4.
SIZES = {"cpu": (64, 256, 4, 1), "default": (128, 512, 4, 2), "256x4": (256, 1024, 8, 4),
         "t5-small": (512, 2048, 8, 6)}
PEERS = {"default": "pytorch t5 (hf)", "ours": "pytorch t5 our malloc"}  # by the peer's malloc
VOCAB, K, DEPTH, LEN_U, LEN_I = 8000, 32, 3, 256, 34


def ours(size, batch, dtype, warmup, steps):
  """Runs in a subprocess: builds random batches, compiles our step, runs `warmup` steps and
  times `steps` steps."""
  import jax
  import numpy as np

  sys.path.insert(0, REPO)
  from colarec_jax.runtime import allocator
  from colarec_jax.training import step as step_lib
  from colarec_jax.model.colarec import ModelConfig, create_model
  from colarec_jax.config.settings import LossWeights, OptimConfig
  from colarec_jax.training.state import init_state

  tuned = allocator.keep_freed_memory()  # as the CLI does

  d_model, d_ff, heads, layers = SIZES[size]
  model_cfg = ModelConfig(d_model=d_model, d_ff=d_ff, num_heads=heads, num_encoder_layers=layers,
                          num_decoder_layers=layers, dtype=dtype)
  rng = np.random.default_rng(0)
  num_items, num_users = 12101, 22363

  def encoder_input(n, length, task):
    return {"tokens": rng.integers(3, VOCAB, (n, length)).astype(np.int32),
            "items": np.zeros((n, length), np.int32), "users": np.zeros((n, length), np.int32),
            "mask": np.ones((n, length), bool), "task": np.full(n, task, np.int32)}

  def batch_of():
    out = {"user": encoder_input(batch, LEN_U, 0)}
    out["user"]["items"][:, 1::31] = rng.integers(1, num_items, (batch, 9))
    for key in ("item", "neg", "pos"):
      out[key] = encoder_input(batch, LEN_I, 1)
      out[key]["items"][:, 1] = rng.integers(1, num_items, batch)
      out[key]["users"][:, 32] = rng.integers(1, num_users, batch)
    out["item_codes"] = rng.integers(1, K + 1, (batch, DEPTH)).astype(np.int32)
    out["neg_codes"] = rng.integers(1, K + 1, (batch, DEPTH)).astype(np.int32)
    out["mask"] = np.ones(batch, np.float32)
    return out

  model = create_model(model_cfg, vocab_size=VOCAB, num_items=num_items, num_users=num_users,
                       branching=K, depth=DEPTH)
  example = batch_of()
  state = init_state(model, step_lib.create_optimizer(OptimConfig()), example, jax.random.key(0))
  step = step_lib.make_train_step(model, LossWeights())
  compiled = step.lower(state, example, jax.random.key(1)).compile()
  flops = (compiled.cost_analysis() or {}).get("flops", float("nan"))
  batches = [batch_of() for _ in range(3)]

  def one_step(n):
    nonlocal state
    state, metrics = compiled(state, batches[n % 3], jax.random.key(1))
    jax.block_until_ready(metrics)

  for n in range(warmup):
    one_step(n)
  times = call_seconds(one_step, steps)
  device = jax.devices()[0]
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  stats = device.memory_stats() or {}
  print(json.dumps({"step_seconds": times, "flops_per_step": flops,
                    "peak_mb": stats.get("peak_bytes_in_use", peak * 2 ** 20) / 2 ** 20,
                    "device": device.platform, "device_kind": device.device_kind,
                    "malloc_tuned": tuned}))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="default,t5-small")
  parser.add_argument("--batch", default="16",
                      help="examples per step; several, comma-separated, make one row each")
  parser.add_argument("--steps", type=int, default=9,
                      help="timed steps per side; the median is reported")
  parser.add_argument("--warmup", type=int, default=2,
                      help="untimed steps each side runs first, in every round")
  parser.add_argument("--rounds", type=int, default=3,
                      help="the sides take turns, this many times, each timing steps / rounds")
  parser.add_argument("--torch-python", default=sys.executable)
  parser.add_argument("--dtypes", default="float32", help="ours: float32,bfloat16 on a GPU")
  parser.add_argument("--peak-tflops", type=float, default=0.0,
                      help="the chip's bf16 peak (e.g. 989 for an H100/H200) for utilisation")
  parser.add_argument("--no-peer", action="store_true")
  add_peer_malloc_flag(parser)
  parser.add_argument("--out", default=os.path.join(REPO, "bench", "results", "train_step.json"))
  parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    size, batch, dtype, warmup, steps = args.child
    ours(size, int(batch), dtype, int(warmup), int(steps))
    return
  batches = parse_counts(parser, "--batch", args.batch)
  rounds = max(1, min(args.rounds, args.steps))
  rows = []
  for size, batch in itertools.product(args.sizes.split(","), batches):
    sides = {f"colarec-jax {dtype}": [sys.executable, __file__, "--child", size, str(batch),
                                      dtype, str(args.warmup)]
             for dtype in args.dtypes.split(",")}
    if not args.no_peer:
      d_model, d_ff, heads, layers = SIZES[size]
      for malloc in peer_mallocs(args.peer_malloc):
        sides[PEERS[malloc]] = [
            args.torch_python, os.path.join(REPO, "bench", "torch_t5_step.py"), str(d_model),
            str(d_ff), str(heads), str(layers), str(batch), str(args.warmup), malloc]
    results = take_turns(sides, dict.fromkeys(sides, args.steps), rounds)
    for library, row in results.items():
      rows.append({"size": size, "batch": batch, "library": library,
                   "examples_per_second": batch / row["seconds_per_step"], **row})
      print(json.dumps(rows[-1]), flush=True)
  titles, ratios = speedups(rows, PEERS, "examples_per_second", digits=2)
  header = (f"{'size':<9} {'batch':>5} {'library':<22} {'ex/s':>8}{titles} {'s/step':>8} "
            f"{'peak MB':>8}")
  if args.peak_tflops:
    header += f" {'TFLOP/s':>8} {'of peak':>8}"
  lines = [header, "-" * len(header)]
  for row, ratio in zip(rows, ratios):
    line = (f"{row['size']:<9} {row['batch']:>5} {row['library']:<22} "
            f"{row['examples_per_second']:>8.2f}{ratio} {row['seconds_per_step']:>8.3f} "
            f"{row['peak_mb']:>8.0f}")
    if args.peak_tflops and "flops_per_step" in row:
      achieved = row["flops_per_step"] / row["seconds_per_step"] / 1e12
      line += f" {achieved:>8.2f} {achieved / args.peak_tflops:>7.1%}"
    lines.append(line)
  print(f"median of {args.steps} timed steps per side, the sides taking turns in {rounds} "
        f"rounds, each turn after {args.warmup} untimed steps")
  print("\n".join(lines))
  write_json(args.out, {"batch": batches[0] if len(batches) == 1 else batches,
                        "steps": args.steps, "rounds": rounds, "warmup": args.warmup,
                        "peak_tflops": args.peak_tflops or None, "rows": rows})


if __name__ == "__main__":
  main()
