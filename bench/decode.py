"""Benchmark: users/s of our constrained beam search against the authors' approach.

The peer is Hugging Face `generate` (beam search, `prefix_allowed_tokens_fn` over a Python trie of
the GIDs) on a PyTorch T5 of the same size, as the authors' code decodes. Both sides decode the same
random inputs ([batch, 256] real tokens) against the same random balanced GIDs (12,101 items,
K=32, l=3, beam 100, 100 sequences returned per user), on this machine's CPU, for the base size
(d_model 128, 2 + 2 layers) and t5-small (512, 6 + 6). Each side runs in its own subprocess, and
the sides take turns (--turns), one process alive at a time, so that the machine's slow drifts in
speed fall on all alike (ours reloads its compiled search from a persistent compilation cache).
Ours runs once per --cpu-devices count (default: JAX's one CPU device, and one device per core,
`config.cpu_devices`), the batch split over the devices; the peer uses every core (torch threads).
The peer runs twice (--peer-malloc both): with glibc's malloc as PyTorch comes, and with the
settings our CLI applies (colarec_jax/runtime/allocator.py); under glibc's, most of its time at t5-small
went to page faults.

  python bench/decode.py [--torch-python /path/to/venv/bin/python]

The peer needs torch and transformers (bench extra). Prints a table and writes JSON (default
bench/results/decode.json).
"""

import argparse
import itertools
import json
import os
import sys
import time

import numpy as np
from common import (REPO, add_peer_malloc_flag, call_seconds, parse_counts, peer_mallocs,
                    speedups, take_turns, use_malloc, write_json)

SIZES = {"default": (128, 512, 4, 2), "t5-small": (512, 2048, 8, 6)}
VOCAB, NUM_ITEMS, K, DEPTH, LENGTH = 8000, 12101, 32, 3, 256
PEERS = {"default": "hf generate + trie", "ours": "hf generate, our malloc"}  # by the malloc


def ours_name(cpu_devices: int) -> str:
  return "colarec-jax" if cpu_devices == 1 else f"colarec-jax {cpu_devices} devices"


def per_core(batch: int) -> int:
  """One CPU device per core, or the most cores that divide the batch."""
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return max(n for n in range(1, (cores or 1) + 1) if batch % n == 0)


def random_gids() -> np.ndarray:
  """[NUM_ITEMS, DEPTH] balanced random GIDs, the same on both sides."""
  sys.path.insert(0, REPO)
  from colarec_jax.gid.builder import random_codes
  return random_codes(NUM_ITEMS, branching=K, depth=DEPTH, seed=0)


def random_tokens(batch: int, seed: int) -> np.ndarray:
  return np.random.default_rng(seed).integers(3, VOCAB, (batch, LENGTH)).astype(np.int32)


def ours(size: str, batch: int, beam: int, cpu_devices: int, count: int,
         dtype: str = "float32") -> dict:
  """Runs in a subprocess: compiles our beam search and times `count` batches (seeds 1..), the
  batch split over `cpu_devices` CPU devices (on an accelerator: its devices), computing in
  `dtype`."""
  import jax
  import jax.numpy as jnp

  sys.path.insert(0, REPO)  # the checkout, installed or not (as on a device machine)
  from colarec_jax.ranking import decode
  from colarec_jax.runtime import allocator, sharding
  from colarec_jax.gid.table import GidTable
  from colarec_jax.model.colarec import ModelConfig, create_model

  tuned = allocator.keep_freed_memory()  # as the CLI does
  sharding.use_cpu_devices(cpu_devices)  # as the CLI does, before JAX starts
  mesh = sharding.make_mesh()

  d_model, d_ff, heads, layers = SIZES[size]
  model_cfg = ModelConfig(d_model=d_model, d_ff=d_ff, num_heads=heads, num_encoder_layers=layers,
                          num_decoder_layers=layers, dropout_rate=0.0, dtype=dtype)
  gids = GidTable.from_codes(random_gids(), K)
  model = create_model(model_cfg, vocab_size=VOCAB, num_items=NUM_ITEMS, num_users=100,
                       branching=gids.branching, depth=gids.depth)

  def inputs_of(seed):
    tokens = random_tokens(batch, seed)
    zeros = np.zeros_like(tokens)
    return {"tokens": jnp.asarray(tokens), "items": jnp.asarray(zeros),
            "users": jnp.asarray(zeros), "mask": jnp.ones(tokens.shape, bool),
            "task": jnp.zeros(batch, jnp.int32)}

  params = sharding.replicate(jax.jit(model.init)(jax.random.key(0), inputs_of(0), jnp.asarray(
      gids.codes[1:batch + 1]))["params"], mesh)
  trie = decode.Trie.build(gids, beam, mesh)
  start = time.perf_counter()
  jax.block_until_ready(decode.beam_search(model, params, sharding.shard_rows(inputs_of(0), mesh),
                                           trie))
  compile_s = time.perf_counter() - start
  batches = [sharding.shard_rows(inputs_of(r + 1), mesh) for r in range(count)]
  items = []

  times = call_seconds(lambda r: items.append(jax.block_until_ready(
      decode.beam_search(model, params, batches[r], trie)[0])), count)
  assert all(np.all(np.asarray(i) > 0) for i in items)  # every beam is a real item
  stats = jax.devices()[0].memory_stats() or {}
  return {"step_seconds": times, "compile_seconds": compile_s, "widths": list(trie.widths),
          "malloc_tuned": tuned, "devices": sharding.describe(mesh), "dtype": dtype,
          "device_kind": jax.devices()[0].device_kind,
          **({"peak_mb": stats["peak_bytes_in_use"] / 2 ** 20}
             if "peak_bytes_in_use" in stats else {})}


def peer(size: str, batch: int, beam: int, count: int, *, malloc: str) -> dict:
  """Runs in a subprocess: builds HF's T5 and trie and times `count` `generate` batches, with
  `malloc`: 'default' (glibc's) or 'ours' (`common.use_malloc`)."""
  tuned = use_malloc(malloc)
  import torch  # after malloc's settings, so that its threads' first allocations follow them
  from transformers import T5Config, T5ForConditionalGeneration

  d_model, d_ff, heads, layers = SIZES[size]
  torch.manual_seed(0)
  model = T5ForConditionalGeneration(T5Config(
      vocab_size=VOCAB, d_model=d_model, d_ff=d_ff, num_heads=heads, d_kv=d_model // heads,
      num_layers=layers, num_decoder_layers=layers, dropout_rate=0.0, feed_forward_proj="relu",
      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)).eval()
  # The authors' trie: GID codes are tokens (code c -> token 3 + c), prefixes -> allowed next.
  trie = {}
  for gid in random_gids().tolist():
    for t in range(DEPTH):
      trie.setdefault(tuple(gid[:t]), set()).add(3 + gid[t])
  trie = {prefix: sorted(codes) for prefix, codes in trie.items()}

  def allowed(_, prefix):
    return trie.get(tuple(c - 3 for c in prefix.tolist()[1:]), [1])

  def run(seed, users=batch):
    tokens = torch.from_numpy(random_tokens(batch, seed)[:users].astype(np.int64))
    with torch.no_grad():
      return model.generate(input_ids=tokens, attention_mask=torch.ones_like(tokens),
                            num_beams=beam, num_return_sequences=beam, max_new_tokens=DEPTH,
                            min_new_tokens=DEPTH, prefix_allowed_tokens_fn=allowed,
                            early_stopping=False, do_sample=False)

  run(0, users=2)  # warm-up (two users: the full batch takes ~90 s at t5-small)
  outs = []
  times = call_seconds(lambda r: outs.append(run(r + 1)), count)
  assert all(out.shape == (batch * beam, DEPTH + 1) for out in outs)
  return {"step_seconds": times, "torch": torch.__version__, "threads": torch.get_num_threads(),
          "malloc_tuned": tuned}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="default,t5-small")
  parser.add_argument("--batch", default="20",
                      help="users per call; several, comma-separated, make one row each")
  parser.add_argument("--dtype", default="float32", help="ours: float32 or bfloat16 compute")
  parser.add_argument("--no-peer", action="store_true")
  parser.add_argument("--beam", type=int, default=100)
  parser.add_argument("--rounds", type=int, default=5,
                      help="timed batches (ours); the median batch time is reported")
  parser.add_argument("--peer-rounds", type=int, default=3, help="timed batches (the peer)")
  parser.add_argument("--turns", type=int, default=3,
                      help="the sides take turns, this many times, each timing its share")
  parser.add_argument("--cpu-devices", default="",
                      help="ours: comma-separated CPU device counts to run (config.cpu_devices); "
                      "default 1 and one per core (the most cores that divide the batch)")
  parser.add_argument("--torch-python", default=sys.executable)
  add_peer_malloc_flag(parser)
  parser.add_argument("--out", default=os.path.join(REPO, "bench", "results", "decode.json"))
  parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    side, size, *numbers = args.child
    if side == "ours":  # ... cpu_devices, dtype, count (take_turns appends the count)
      batch, beam, cpu_devices, dtype, count = numbers
      print(json.dumps(ours(size, int(batch), int(beam), int(cpu_devices), int(count), dtype)))
    else:  # a peer's side is "peer-<malloc>"
      print(json.dumps(peer(size, *[int(n) for n in numbers],
                            malloc=side.removeprefix("peer-"))))
    return
  batches = parse_counts(parser, "--batch", args.batch)
  asked = {}  # batch -> CPU device counts
  for batch in batches:
    try:
      asked[batch] = ([int(n) for n in args.cpu_devices.split(",")] if args.cpu_devices else
                      sorted({1, per_core(batch)}))
    except ValueError:
      parser.error(f"--cpu-devices: got {args.cpu_devices!r}, expected counts like 1,2")
    for n in asked[batch]:
      if n < 1 or batch % n:
        parser.error(f"--cpu-devices: got {n}, expected a count >= 1 that divides --batch "
                     f"{batch}")
  rows = []
  for size, batch in itertools.product(args.sizes.split(","), batches):
    ours_sides = {ours_name(n): n for n in asked[batch]}
    shape = [size, str(batch), str(args.beam)]  # take_turns appends the count of calls
    sides = {name: [sys.executable, __file__, "--child", "ours", *shape, str(n), args.dtype]
             for name, n in ours_sides.items()}
    for malloc in () if args.no_peer else peer_mallocs(args.peer_malloc):
      sides[PEERS[malloc]] = [args.torch_python, __file__, "--child", f"peer-{malloc}", *shape]
    counts = {name: args.rounds if name in ours_sides else args.peer_rounds for name in sides}
    for library, row in take_turns(sides, counts, args.turns).items():
      rows.append({"size": size, "batch": batch, "library": library,
                   "users_per_second": batch / row.pop("seconds_per_step"),
                   "batch_seconds": row.pop("step_seconds"), **row})
      print(json.dumps(rows[-1]), flush=True)
  titles, ratios = speedups(rows, PEERS, "users_per_second", digits=1)
  header = f"{'size':<9} {'batch':>6} {'library':<24} {'users/s':>9}{titles}"
  lines = [header, "-" * len(header)]
  lines += [f"{row['size']:<9} {row['batch']:>6} {row['library']:<24} "
            f"{row['users_per_second']:>9.2f}{ratio}" for row, ratio in zip(rows, ratios)]
  print(f"beam {args.beam}, {LENGTH} input tokens, {NUM_ITEMS} items, K={K}, l={DEPTH}, ours in "
        f"{args.dtype}; median of {args.rounds} (ours, each) and {args.peer_rounds} (peer) timed "
        f"batches, the sides taking turns {args.turns} times")
  print("\n".join(lines))
  write_json(args.out, {"batch": batches[0] if len(batches) == 1 else batches,
                        "beam": args.beam, "dtype": args.dtype, "turns": args.turns,
                        "rows": rows})


if __name__ == "__main__":
  main()
