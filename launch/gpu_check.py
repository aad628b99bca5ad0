"""The device check: everything we measure on a GPU, as one prepared run inside a time budget.

  python launch/gpu_check.py --out OUT [--budget 540]     # on the device machine
  python launch/gpu_check.py --out OUT --smoke            # the same pieces, tiny, on a CPU

Stages (each a subprocess with its own log under OUT, cut off at its share of the budget):

1. `tests`: the device-sensitive tests (model, cached decoding, beam search, the sharded train
   step, the training loop), beside `phones_gid`: phones' data, LightGCN and GIDs
   (`--mode=gid`, LightGCN capped at `cf_epochs`), which the phones run below reuses.
2. `train_step`: bench/train_step.py at t5-small, float32 and bfloat16, at each batch size:
   examples/s, step time, peak device memory and achieved TFLOP/s against `--peak-tflops`.
3. `decode`: bench/decode.py at t5-small in bfloat16, beam 100, K=32, l=3: users/s per batch size.
4. `phones`: configs/phones.py (t5-small, the paper's hyper-parameters) in bfloat16, `--mode=all`,
   ColaRec trained for as many full epochs as `train.max_seconds` (the budget left, less the
   test's reserve) allows, validated every epoch, then ColaRec, LightGCN and MostPop tested on
   the same split, overall and on long-tail users.

Stages 2-4 run alone (they are timed). Writes OUT/gpu_check.json (the device, every stage's exit
code and seconds, the benchmarks' rows, phones' per-epoch curve and test table) and one log per
stage: six files, within the device tool's eight. Needs $COLAREC_SHARED_DATA with phones (or
configs/tiny.py's embedded data with --smoke); launch/device_bundle.sh prepares what travels.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICE_TESTS = ["tests/test_model.py", "tests/test_decode.py", "tests/test_train_step.py",
                "tests/test_train_loop.py"]

# What each stage runs: on the device, and (--smoke) the same code paths at toy sizes on a CPU.
PLANS = {
    "device": {
        "tests": ["-k", "not four_devices", *DEVICE_TESTS],
        "config": "configs/phones.py", "cf_epochs": 60, "decode_batch": 1024,
        "train_step": ["--sizes", "t5-small", "--batch", "512", "--dtypes",
                       "float32,bfloat16", "--steps", "10", "--warmup", "2", "--rounds", "1"],
        "decode": ["--sizes", "t5-small", "--batch", "256,1024,4096", "--beam", "100",
                   "--dtype", "bfloat16", "--rounds", "3", "--turns", "1"],
        "shares": {"tests": 110, "train_step": 120, "decode": 90}, "test_reserve": 100,
    },
    "smoke": {
        "tests": ["tests/test_losses.py"],
        "config": "configs/tiny.py", "cf_epochs": 2, "decode_batch": 4,
        "train_step": ["--sizes", "default", "--batch", "2", "--dtypes", "float32,bfloat16",
                       "--steps", "1", "--warmup", "0", "--rounds", "1"],
        "decode": ["--sizes", "default", "--batch", "2,4", "--beam", "5", "--dtype", "bfloat16",
                   "--rounds", "1", "--turns", "1"],
        "shares": {"tests": 120, "train_step": 120, "decode": 120}, "test_reserve": 60,
        "train": ["--config.train.epochs=3", "--config.train.steps_per_epoch=2"],
    },
}


class Clock:
  """The run's budget: seconds left, and each stage's seconds and exit code."""

  def __init__(self, budget: float):
    self.end = time.monotonic() + budget
    self.stages: dict[str, dict] = {}

  def left(self) -> float:
    return self.end - time.monotonic()


def start(name: str, cmd: list[str], out: str, env: dict) -> tuple:
  log = open(os.path.join(out, f"{name}.log"), "w")
  log.write(" ".join(cmd) + "\n")
  log.flush()
  return name, subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True), log, time.monotonic()


def wait(clock: Clock, job: tuple, limit: float) -> int:
  """Waits for a started stage at most `limit` seconds (then kills it: exit code 124)."""
  name, proc, log, began = job
  try:
    code = proc.wait(timeout=max(limit, 1.0))
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, 9)
    proc.wait()
    code = 124
  log.close()
  clock.stages[name] = {"exit_code": code, "seconds": round(time.monotonic() - began, 1)}
  return code


def read_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def last_line(path: str) -> str:
  try:
    with open(path) as f:
      lines = [line.strip() for line in f if line.strip()]
  except OSError:
    return ""
  return lines[-1] if lines else ""


def device_info() -> dict:
  import jax
  device = jax.devices()[0]
  return {"backend": jax.default_backend(), "device_kind": device.device_kind,
          "device_count": jax.device_count(), "jax": jax.__version__,
          "python": sys.version.split()[0]}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="folder for gpu_check.json and the logs")
  parser.add_argument("--budget", type=float, default=540.0, help="seconds for everything")
  parser.add_argument("--peak-tflops", type=float, default=790.0,
                      help="the chip's bf16 matrix peak (H200 here: about 790 measured)")
  parser.add_argument("--smoke", action="store_true",
                      help="toy sizes and configs/tiny.py on whatever JAX finds (a CPU test)")
  args = parser.parse_args(argv)
  plan = PLANS["smoke" if args.smoke else "device"]
  out = os.path.abspath(args.out)
  os.makedirs(out, exist_ok=True)
  clock = Clock(args.budget)
  info = device_info()
  if not args.smoke and info["backend"] != "gpu":
    parser.error(f"expected a GPU, JAX found {info['backend']} ({info['device_kind']}); "
                 "use --smoke for a CPU check of the pieces")
  env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false", "PYTHONUNBUFFERED": "1",
         "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}
  py = sys.executable
  scratch = tempfile.mkdtemp(prefix="gpu-check-")
  workdir = os.path.join(scratch, "phones")
  common = [f"--config={plan['config']}", f"--workdir={workdir}",
            "--config.model.dtype=bfloat16", f"--config.cf.epochs={plan['cf_epochs']}",
            f"--config.eval.decode_batch_size={plan['decode_batch']}", *plan.get("train", [])]

  # 1. Tests, and beside them phones' stages (data, LightGCN, GIDs) for stage 4.
  tests = start("tests", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plan["tests"]],
                out, env)
  gid = start("phones_gid", [py, "-m", "colarec_jax.main", "--mode=gid", *common], out, env)
  wait(clock, tests, plan["shares"]["tests"])
  wait(clock, gid, clock.left() - plan["shares"]["train_step"] - plan["shares"]["decode"]
       - 2 * plan["test_reserve"])

  # 2-3. The benchmarks, alone on the device.
  benches = {}
  for name, script, flags in (("train_step", "bench/train_step.py",
                               [*plan["train_step"], "--peak-tflops", str(args.peak_tflops)]),
                              ("decode", "bench/decode.py",
                               [*plan["decode"], "--cpu-devices", "1"])):
    result = os.path.join(scratch, f"{name}.json")
    wait(clock, start(name, [py, script, "--no-peer", *flags, "--out", result], out, env),
         min(plan["shares"][name], clock.left() - 2 * plan["test_reserve"]))
    benches[name] = read_json(result)

  # 4. Phones at paper size, ColaRec trained in the time left.
  train_seconds = max(clock.left() - plan["test_reserve"], 1.0)
  wait(clock, start("phones", [py, "-m", "colarec_jax.main", "--mode=all", *common,
                               f"--config.train.max_seconds={train_seconds:.0f}"], out, env),
       clock.left())
  metrics = read_json(os.path.join(workdir, "colarec", "metrics.json")) or {}
  result = {
      "device": info, "budget_seconds": args.budget, "smoke": args.smoke,
      "peak_tflops": args.peak_tflops, "stages": clock.stages,
      "tests_summary": last_line(os.path.join(out, "tests.log")),
      "train_step": benches["train_step"], "decode": benches["decode"],
      "phones": {"config": plan["config"], "overrides": common[2:],
                 "train_max_seconds": round(train_seconds),
                 "epochs": metrics.get("history"),
                 "results": read_json(os.path.join(workdir, "results.json"))},
  }
  with open(os.path.join(out, "gpu_check.json"), "w") as f:
    json.dump(result, f, indent=1)
  print(json.dumps({"stages": clock.stages, "tests": result["tests_summary"]}, indent=1))
  return max(stage["exit_code"] for stage in clock.stages.values())


if __name__ == "__main__":
  sys.exit(main())
