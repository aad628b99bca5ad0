"""Shared fixtures: the shared datasets (../shared/data) and the repository root."""

import os
import subprocess
import sys
import tempfile

# Several fake CPU devices for the sharding tests; must be set before JAX starts.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.pop("JAX_NUM_CPU_DEVICES", None)  # it would override the flag (config.cpu_devices)
# The CLI tests' subprocesses compile the same steps: share them through JAX's persistent cache
# (keyed by the program and the JAX/XLA versions, so a stale entry is never used).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "colarec-jax-tests-xla-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures")


@pytest.fixture(scope="session")
def shared_data():
  """`$COLAREC_SHARED_DATA`: skipped when unset, an error on CI (CI=true) when missing."""
  path = os.environ.get("COLAREC_SHARED_DATA", "")
  on_ci = os.environ.get("CI", "").lower() == "true"
  if not path or not os.path.isdir(path):
    message = (f"COLAREC_SHARED_DATA={path!r} is not a folder; point it at shared/data "
               "(the RecBole files of phones, beauty, sports, ml-100k)")
    if on_ci:
      pytest.fail(message)
    pytest.skip(message)
  return os.path.abspath(path)


# The config the session's trained tiny run was trained with (what its checkpoints are tied to),
# and the short training it had.
TINY = ("--config=configs/tiny.py", "--config.cf.epochs=2")
TINY_TRAINED = (*TINY, "--config.train.epochs=2", "--config.train.steps_per_epoch=4")


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory):
  """(workdir, CompletedProcess): ColaRec trained for 2 short epochs on the tiny config through
  the CLI, once per session; the tests that use it only read it (evaluate, recommend, export,
  serve)."""
  workdir = tmp_path_factory.mktemp("colarec")
  result = subprocess.run([sys.executable, "-m", "colarec_jax.main", *TINY_TRAINED,
                           f"--workdir={workdir}", "--mode=train"], cwd=REPO, capture_output=True,
                          text=True, timeout=600, check=False)
  return workdir, result


@pytest.fixture(scope="session")
def tiny_workdir(trained_tiny):
  """The trained tiny run's folder (its training must have succeeded)."""
  workdir, result = trained_tiny
  assert result.returncode == 0, result.stderr[-3000:]
  return str(workdir)
