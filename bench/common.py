"""What every benchmark script does the same way: run one side in a subprocess and read its JSON
line, let the sides (ours and the peers) take turns doing that (`take_turns`), time repeated
calls, and write the results file. Scripts (ours and the peers' alike) run as
`python bench/<name>.py`, so this module is importable as `common`; it needs only the standard
library, so it also imports in a peer's own virtualenv."""

import datetime
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_json(cmd: list[str], cwd: str = REPO, env: dict | None = None) -> dict:
  """Runs `cmd` (with `env` added to the environment) and returns the JSON object on its last
  stdout line; exits with its stderr's tail when it fails."""
  result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True,
                          env=None if env is None else {**os.environ, **env})
  if result.returncode:
    raise SystemExit(f"{' '.join(map(str, cmd[:4]))} failed:\n{result.stderr[-3000:]}")
  return json.loads(result.stdout.strip().splitlines()[-1])


# The vector extensions that decide which matmul kernels XLA and PyTorch pick on x86.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16")


def host(cpuinfo: str | None = None) -> dict:
  """What the numbers were measured on: CPU model, cores and vector extensions, Python, date.

  The same 2-core budget ran on different CPUs across sessions here (AVX2 only, then AVX-512), and
  the speed-ups moved with them, so every results file says which. `cpuinfo` is the text of
  /proc/cpuinfo (read when None; fields missing off Linux are left out).
  """
  if cpuinfo is None:
    try:
      with open("/proc/cpuinfo") as f:
        cpuinfo = f.read()
    except OSError:
      cpuinfo = ""
  first = {}
  for line in cpuinfo.splitlines():  # the first processor's block is enough
    key, sep, value = line.partition(":")
    if not sep:
      if first:
        break
      continue
    first.setdefault(key.strip(), value.strip())
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  out = {"machine": platform.machine(), "cores": cores,
         "python": platform.python_version(), "date": datetime.date.today().isoformat()}
  if "model name" in first:
    out["cpu"] = first["model name"]
  if "cpu family" in first and "model" in first:
    out["cpu_family_model"] = f"{first['cpu family']}/{first['model']}"
  if "flags" in first:
    flags = set(first["flags"].split())
    out["isa"] = [flag for flag in ISA_FLAGS if flag in flags]
  return out


# A PyTorch peer runs with glibc's malloc as PyTorch comes ('default'), or with the settings our
# CLI applies ('ours', colarec_jax/runtime/allocator.py), which spare PyTorch page faults as well; each has
# its speed-up column in the tables.
MALLOCS = {"default": "vs peer", "ours": "vs peer+malloc"}


def add_peer_malloc_flag(parser) -> None:
  parser.add_argument("--peer-malloc", choices=(*MALLOCS, "both"), default="both",
                      help="the peer with glibc's malloc as it comes, with ours (allocator.py), "
                           "or one row each")


def peer_mallocs(flag: str) -> tuple[str, ...]:
  """The mallocs a --peer-malloc value asks for, in table order."""
  return tuple(MALLOCS) if flag == "both" else (flag,)


def use_malloc(malloc: str) -> bool:
  """In a peer's process, before it imports torch: 'ours' applies colarec_jax/runtime/allocator.py's
  settings (loaded by path, as a peer's own venv lacks our package), 'default' leaves glibc's.
  Returns whether ours were applied."""
  if malloc not in MALLOCS:
    raise SystemExit(f"malloc: got {malloc!r}, expected one of {', '.join(MALLOCS)}")
  if malloc == "default":
    return False
  spec = importlib.util.spec_from_file_location(
      "colarec_allocator", os.path.join(REPO, "colarec_jax", "runtime", "allocator.py"))
  allocator = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(allocator)
  return allocator.keep_freed_memory()


def speedups(rows: list[dict], peers: dict[str, str], rate: str, digits: int) -> tuple[str, list]:
  """A results table's speed-up columns, one per peer that ran (`peers`: malloc -> its library
  name): the header's part, and each row's part, its `rate` over that peer's at the same size
  (and batch, where rows have one)."""
  present = [(MALLOCS[malloc], name) for malloc, name in peers.items()
             if any(row["library"] == name for row in rows)]
  cells = []
  for row in rows:
    peer_rates = [next(r[rate] for r in rows if r["size"] == row["size"] and r["library"] == name
                       and r.get("batch") == row.get("batch")) for _, name in present]
    cells.append("".join(f" {row[rate] / peer:>13.{digits}f}x" for peer in peer_rates))
  return "".join(f" {title:>14}" for title, _ in present), cells


def parse_counts(parser, flag: str, text: str) -> list[int]:
  """'16' or '256,1024' (a flag's comma-separated positive counts) -> [16] or [256, 1024]; anything
  else is the parser's error naming `flag`."""
  try:
    counts = [int(part) for part in text.split(",")]
  except ValueError:
    counts = []
  if not counts or min(counts) < 1:
    parser.error(f"{flag}: got {text!r}, expected positive counts like 256,1024")
  return counts


def parse_priors(parser, flag: str, text: str) -> list[tuple[float, ...]]:
  """'none;0:1:1' (a flag's ';'-separated eval.code_prior values, each 'none' or weights joined by
  ':') -> [(), (0.0, 1.0, 1.0)]; anything else is the parser's error naming `flag`."""
  try:
    return [() if part == "none" else tuple(float(w) for w in part.split(":"))
            for part in text.split(";")]
  except ValueError:
    parser.error(f"{flag}: got {text!r}, expected 'none' or weights like 0:1:1, ';'-separated")


def prior_label(prior: tuple[float, ...]) -> str:
  """An eval.code_prior value as the flags spell it: (0.0, 1.0, 1.0) -> '0:1:1'."""
  return ":".join(f"{w:g}" for w in prior)


def write_json(path: str, results: dict) -> None:
  """Writes the benchmark's results file (creating its folder), with the `host` it ran on."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump({**results, "host": host()}, f, indent=1)


def call_seconds(call, count: int) -> list[float]:
  """Wall-clock seconds of call(0), ..., call(count - 1); `call` must return only when its work is
  done. (`take_turns` reports their median: this shared 2-core machine's noise skews means.)"""
  times = []
  for i in range(count):
    start = time.perf_counter()
    call(i)
    times.append(time.perf_counter() - start)
  return times


def take_turns(sides: dict[str, list[str]], counts: dict[str, int],
               turns: int) -> dict[str, dict]:
  """Times each side's `counts[side]` calls over `turns` turns, the sides taking turns.

  Each turn runs the side's command with its share of the calls appended as the last argument
  (`run_json`: the side warms up, times that many calls and prints a JSON line with their
  `step_seconds`), so only one side is ever alive: this shared machine drifts in speed over
  minutes (15-20% here), and turns spread that drift over every side alike. (Kept alive but idle
  beside ours, the PyTorch peer seemed to slow it: t5-small train step, median 10.1 s/step
  against 9.1 alone, one run each.) Every turn shares one temporary JAX compilation cache, so a
  JAX side compiles in its first turn and reloads the program after. Returns per side the first
  turn's JSON (e.g. its compile time) with every turn's `step_seconds`, their median
  (`seconds_per_step`) and the largest `peak_mb`.
  """
  results = {name: {} for name in sides}
  with tempfile.TemporaryDirectory(prefix="colarec-bench-xla-") as cache:
    env = {"JAX_COMPILATION_CACHE_DIR": cache, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    for turn in range(turns):
      for name, cmd in sides.items():
        share = counts[name] // turns + (turn < counts[name] % turns)
        if not share:
          continue
        row = run_json(cmd + [str(share)], env=env)
        merged = {**row, **results[name],
                  "step_seconds": results[name].get("step_seconds", []) + row["step_seconds"]}
        if "peak_mb" in row:
          merged["peak_mb"] = max(results[name].get("peak_mb", 0.0), row["peak_mb"])
        results[name] = merged
  for result in results.values():
    result["seconds_per_step"] = statistics.median(result["step_seconds"])
  return results
