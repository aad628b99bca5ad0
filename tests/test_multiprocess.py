"""Two processes on localhost (2 fake CPU devices each, gloo collectives) against one process
with 4 fake devices: same parameters after the same global batches, and checkpoints that restore
across the two layouts. Runs the real CLI with --distributed."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util

from colarec_jax.runtime import checkpoint
from conftest import REPO

TRAIN = ("--config=configs/tiny.py", "--config.cf.epochs=2", "--config.train.epochs=1",
         "--config.train.steps_per_epoch=3", "--config.model.dropout_rate=0.0")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def env(devices: int, **extra) -> dict:
  out = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **extra)
  return out


def one_process(workdir, *args):
  return subprocess.run([sys.executable, "-m", "colarec_jax.main", f"--workdir={workdir}", *args],
                        cwd=REPO, env=env(4), capture_output=True, text=True, timeout=600)


def two_processes(workdir, *args):
  port = free_port()
  procs = [subprocess.Popen(
      [sys.executable, "-m", "colarec_jax.main", f"--workdir={workdir}", "--distributed", *args],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env=env(2, COLAREC_COORDINATOR_ADDRESS=f"localhost:{port}", COLAREC_NUM_PROCESSES="2",
              COLAREC_PROCESS_ID=str(pid))) for pid in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  return outs


def params_of(workdir):
  """The latest checkpoint's parameters, restored onto this process's first device, flattened
  to {path: array}."""
  manager = checkpoint.create_manager(os.path.join(workdir, "colarec", "checkpoints"),
                                      checkpoint.LATEST)
  step = manager.latest_step()
  saved = ocp.PyTreeCheckpointer().metadata(
      os.path.join(manager.directory, str(step), "state")).item_metadata.tree["params"]
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved)
  return {k: np.asarray(v) for k, v in
          traverse_util.flatten_dict(checkpoint.restore_params(manager, step, target)).items()}


def ndcg_of(workdir, key="ndcg@10"):
  """The test metric the run wrote to metrics.json."""
  with open(os.path.join(workdir, "colarec", "metrics.json")) as f:
    return json.load(f)["test"]["overall"][key]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  single, multi = (str(tmp_path_factory.mktemp(n)) for n in ("one", "two"))
  result = one_process(single, *TRAIN, "--mode=train")
  assert result.returncode == 0, result.stderr[-3000:]
  outs = two_processes(multi, *TRAIN, "--mode=train")
  return single, multi, result.stdout, outs


def test_two_processes_match_one_process_with_four_devices(runs):
  single, multi, _, outs = runs
  a, b = params_of(single), params_of(multi)
  assert a.keys() == b.keys()
  worst = max(float(np.abs(a[k] - b[k]).max()) for k in a)
  assert worst < 1e-5, worst
  assert ndcg_of(single) == pytest.approx(ndcg_of(multi), abs=1e-6)
  # One voice: only process 0 prints the epoch lines and the table.
  assert "colarec epoch 1:" in outs[0][0] and "test metrics" in outs[0][0]
  assert "colarec epoch 1:" not in outs[1][0]


def test_checkpoints_restore_across_layouts(runs):
  single, multi, _, _ = runs
  result = one_process(multi, *TRAIN, "--mode=evaluate")
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"{ndcg_of(multi):.4f}" in result.stdout
  outs = two_processes(single, *TRAIN, "--mode=evaluate")
  assert f"{ndcg_of(single):.4f}" in outs[0][0]
