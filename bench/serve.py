"""Load benchmark: the HTTP endpoint (`--mode=serve`) with request batching against without.

The server runs the trained default model (configs/default.py, as bench/export.py makes it) in a
subprocess on a local port, in each mode in turn:

  batched     requests arriving within --window-ms (or while a call runs) share one beam-search
              call of up to eval.decode_batch_size rows (the default);
  unbatched   one request per beam-search call, compiled for one row (--max_batch=1), the best
              one-at-a-time server.

--clients threads each keep one connection and send POST /recommend {"user": <random known id>}
back to back for --seconds (after --warmup seconds not counted); the table has requests/s and the
latency percentiles, and the mean requests per beam-search call (the server's /health counts).
Clients and server share this machine's cores: the clients' own CPU time is in both modes alike.

  python bench/serve.py [--workdir ...] [--clients 32] [--seconds 60]

Writes JSON (default bench/results/serve.json).
"""

import argparse
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time

from common import REPO, write_json
from export import DEFAULT_WORKDIR, ensure_trained

MODES = {"batched": [], "unbatched": ["--max_batch=1", "--batch_window_ms=0"]}


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def get(port: int, path: str) -> dict:
  conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
  try:
    conn.request("GET", path)
    return json.loads(conn.getresponse().read())
  finally:
    conn.close()


def start_server(workdir: str, flags: list[str]) -> tuple[subprocess.Popen, int]:
  port = free_port()
  process = subprocess.Popen([sys.executable, "-m", "colarec_jax.main", f"--workdir={workdir}",
                              "--mode=serve", f"--port={port}", *flags], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 600
  while True:
    try:
      get(port, "/health")
      return process, port
    except OSError:
      if process.poll() is not None or time.monotonic() > deadline:
        process.kill()
        raise SystemExit(f"the server did not start: {process.communicate()[1][-3000:]}")
      time.sleep(0.5)


def load(port: int, users: list[str], clients: int, seconds: float, warmup: float) -> dict:
  """`clients` threads sending requests back to back; latencies of those sent after `warmup`."""
  start = time.perf_counter()
  begin, end = start + warmup, start + warmup + seconds
  latencies, errors = [], []
  lock = threading.Lock()

  def client(n):
    rng = random.Random(n)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    mine = []
    while (sent := time.perf_counter()) < end:
      body = json.dumps({"user": rng.choice(users)}).encode()
      conn.request("POST", "/recommend", body=body, headers={"Content-Type": "application/json"})
      response = conn.getresponse()
      response.read()
      if response.status != 200:
        errors.append(response.status)
      done = time.perf_counter()
      if sent >= begin and done <= end:
        mine.append(done - sent)
    conn.close()
    with lock:
      latencies.extend(mine)

  threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
  for thread in threads:
    thread.start()
  while time.perf_counter() < begin:
    time.sleep(0.05)
  before = get(port, "/health")
  for thread in threads:
    thread.join()
  after = get(port, "/health")
  latencies.sort()

  def pick(q):  # the q-quantile, in ms
    return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

  calls = after["batches"] - before["batches"]
  return {"requests": len(latencies), "errors": len(errors),
          "requests_per_second": len(latencies) / seconds,
          "p50_ms": pick(0.50), "p90_ms": pick(0.90), "p99_ms": pick(0.99),
          "mean_ms": statistics.mean(latencies) * 1000,
          "requests_per_call": (after["requests"] - before["requests"]) / max(calls, 1),
          "max_batch": after["max_batch"], "batch_window_ms": after["batch_window_ms"]}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default=DEFAULT_WORKDIR)
  parser.add_argument("--clients", type=int, default=32)
  parser.add_argument("--seconds", type=float, default=60.0)
  parser.add_argument("--warmup", type=float, default=5.0)
  parser.add_argument("--modes", default="batched,unbatched")
  parser.add_argument("--out", default=os.path.join(REPO, "bench", "results", "serve.json"))
  args = parser.parse_args()
  ensure_trained(args.workdir)
  sys.path.insert(0, REPO)
  from colarec_jax.config import stored
  from colarec_jax.data.prepare import load_prepared
  users = [str(u) for u in load_prepared(os.path.join(args.workdir, "data")).dataset.user_ids[1:]]
  rows = []
  for mode in args.modes.split(","):
    process, port = start_server(args.workdir, MODES[mode])
    try:
      rows.append({"mode": mode, **load(port, users, args.clients, args.seconds, args.warmup)})
    finally:
      process.terminate()
      process.communicate(timeout=60)
    print(json.dumps(rows[-1]), flush=True)
  config = stored.stored(args.workdir)
  print(f"{args.clients} clients for {args.seconds:g} s each (after {args.warmup:g} s warm-up), "
        f"POST /recommend for random known users, top 10, beam {config['eval']['beam_size']}, "
        f"d_model {config['model']['d_model']}")
  header = (f"{'mode':<10} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
            f"{'req/call':>9} {'vs unbatched':>13}")
  base = next((r["requests_per_second"] for r in rows if r["mode"] == "unbatched"), None)
  lines = [header, "-" * len(header)]
  for r in rows:
    ratio = f"{r['requests_per_second'] / base:>12.2f}x" if base else f"{'':>13}"
    lines.append(f"{r['mode']:<10} {r['requests_per_second']:>8.1f} {r['p50_ms']:>8.1f} "
                 f"{r['p90_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['requests_per_call']:>9.1f} {ratio}")
  print("\n".join(lines))
  write_json(args.out, {"workdir": os.path.relpath(args.workdir, REPO), "clients": args.clients,
                        "seconds": args.seconds, "warmup": args.warmup, "rows": rows})


if __name__ == "__main__":
  main()
