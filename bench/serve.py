"""Load benchmark: the HTTP endpoint (`--mode=serve`) with request batching against without.

The server runs the trained default model (configs/default.py, as bench/export.py makes it) in a
subprocess on a local port, in each mode in turn:

  batched     requests arriving within --window-ms (or while a call runs) share one beam-search
              call of up to eval.decode_batch_size rows (the default);
  unbatched   one request per beam-search call, compiled for one row (--max_batch=1), the best
              one-at-a-time server.

  overloaded  batched, with a queue of 8 (--max_queue=8): what clients beyond a call and the
              queue get (503 at once, counted as `busy_rate`), and that memory stays bounded.

--clients threads each keep one connection and send POST /recommend {"user": <random known id>}
back to back for --seconds (after --warmup seconds not counted); the table has requests/s and the
latency percentiles of the answered (200) requests, the 503 rate, other errors, the server's
resident memory before and after the load, and the mean requests per beam-search call (the
server's /health counts).
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

MODES = {"batched": [], "unbatched": ["--max_batch=1", "--batch_window_ms=0"],
         # The batched server with a short queue: more clients than a call and the queue hold
         # get 503 at once (the rate is in the row), and memory stays where it was.
         "overloaded": ["--max_queue=8"]}


def rss_mb(pid: int) -> float:
  """The process's resident memory (VmRSS), in MB."""
  with open(f"/proc/{pid}/status") as f:
    kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
  return kb / 1024


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


def load(port: int, users: list[str], clients: int, seconds: float, warmup: float,
         pid: int) -> dict:
  """`clients` threads sending requests back to back; latencies of those sent after `warmup`."""
  start = time.perf_counter()
  begin, end = start + warmup, start + warmup + seconds
  latencies, statuses = [], {}
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
      done = time.perf_counter()
      if sent >= begin and done <= end:
        with lock:
          statuses[response.status] = statuses.get(response.status, 0) + 1
        if response.status == 200:
          mine.append(done - sent)
    conn.close()
    with lock:
      latencies.extend(mine)

  threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
  for thread in threads:
    thread.start()
  while time.perf_counter() < begin:
    time.sleep(0.05)
  before, memory_before = get(port, "/health"), rss_mb(pid)
  for thread in threads:
    thread.join()
  after, memory_after = get(port, "/health"), rss_mb(pid)
  latencies.sort()

  def pick(q):  # the q-quantile, in ms
    return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

  calls = after["batches"] - before["batches"]
  answered = sum(statuses.values())
  busy = statuses.get(503, 0)
  return {"requests": len(latencies), "statuses": {str(k): v for k, v in sorted(statuses.items())},
          "errors": answered - len(latencies) - busy, "busy_503": busy,
          "busy_rate": busy / max(answered, 1),
          "rss_mb_before": memory_before, "rss_mb_after": memory_after,
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
      rows.append({"mode": mode, **load(port, users, args.clients, args.seconds, args.warmup,
                                        process.pid)})
    finally:
      process.terminate()
      process.communicate(timeout=60)
    print(json.dumps(rows[-1]), flush=True)
  config = stored.stored(args.workdir)
  print(f"{args.clients} clients for {args.seconds:g} s each (after {args.warmup:g} s warm-up), "
        f"POST /recommend for random known users, top 10, beam {config['eval']['beam_size']}, "
        f"d_model {config['model']['d_model']}")
  header = (f"{'mode':<10} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
            f"{'req/call':>9} {'503 rate':>9} {'errors':>7} {'RSS MB':>13} {'vs unbatched':>13}")
  base = next((r["requests_per_second"] for r in rows if r["mode"] == "unbatched"), None)
  lines = [header, "-" * len(header)]
  for r in rows:
    ratio = f"{r['requests_per_second'] / base:>12.2f}x" if base else f"{'':>13}"
    lines.append(f"{r['mode']:<10} {r['requests_per_second']:>8.1f} {r['p50_ms']:>8.1f} "
                 f"{r['p90_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['requests_per_call']:>9.1f} "
                 f"{r['busy_rate']:>9.3f} {r['errors']:>7} "
                 f"{r['rss_mb_before']:>6.0f}->{r['rss_mb_after']:<6.0f} {ratio}")
  print("\n".join(lines))
  write_json(args.out, {"workdir": os.path.relpath(args.workdir, REPO), "clients": args.clients,
                        "seconds": args.seconds, "warmup": args.warmup, "rows": rows})


if __name__ == "__main__":
  main()
