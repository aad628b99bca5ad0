"""Shared fixtures: the shared datasets (../shared/data) and the repository root."""

import os
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
