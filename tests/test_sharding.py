"""`sharding.use_cpu_devices` and `describe`: the host CPU split into JAX devices."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from colarec_jax.runtime import sharding
from colarec_jax.runtime.errors import ConfigError
from conftest import REPO

PROBE = ("import sys; from colarec_jax.runtime import sharding; "
         "sharding.use_cpu_devices(int(sys.argv[1])); import jax; "
         "print(jax.device_count(), sharding.describe(sharding.make_mesh()))")


@pytest.mark.parametrize("count,printed", [(0, "4 4 cpu devices"), (3, "3 3 cpu devices"),
                                           (1, "1 1 cpu device")])
def test_use_cpu_devices_sets_the_count_before_jax_starts(count, printed):
  """In a fresh process with XLA_FLAGS asking for 4 devices: 0 keeps them, N > 0 wins."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=4")
  result = subprocess.run([sys.executable, "-c", PROBE, str(count)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == printed


def test_use_cpu_devices_refuses_once_jax_started_and_negative_counts():
  jnp.zeros(1).block_until_ready()  # JAX has started in this process
  before = jax.device_count()
  with pytest.raises(ConfigError, match=r"^config\.cpu_devices: cannot split the CPU into 2 "
                                        r"devices once JAX has started"):
    sharding.use_cpu_devices(2)
  with pytest.raises(ConfigError, match=r"^config\.cpu_devices: got -1, expected 0"):
    sharding.use_cpu_devices(-1)
  sharding.use_cpu_devices(0)  # leaves JAX alone
  assert jax.device_count() == before
