"""Device mesh with one `data` axis, and placing arrays on it (replicated or split by rows)."""

from __future__ import annotations

import jax
import numpy as np

from colarec_jax.errors import ConfigError


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh | None:
  """A 1-D mesh over the first `num_devices` devices (0 = all); None when that is one device.

  Raises:
    ConfigError: more devices asked for than JAX sees.
  """
  available = jax.device_count()
  count = num_devices or available
  if count > available:
    raise ConfigError("num_devices", f"got {count}, but JAX sees {available} device(s)")
  if count == 1:
    return None
  # Auto axes: plain `jit` code (evaluation) is partitioned by XLA; the train steps are explicit
  # per-device programs under `shard_map` either way.
  return jax.make_mesh((count,), ("data",), devices=jax.devices()[:count],
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicate(tree, mesh: jax.sharding.Mesh | None):
  """Every leaf copied to every device of the mesh (or left as is without a mesh)."""
  if mesh is None:
    return tree
  return jax.device_put(tree, jax.sharding.NamedSharding(mesh, jax.P()))


def shard_rows(tree, mesh: jax.sharding.Mesh | None):
  """Every leaf split by its first axis over the mesh's `data` axis (sizes must divide)."""
  if mesh is None:
    return tree
  return jax.device_put(tree, jax.sharding.NamedSharding(mesh, jax.P("data")))


def num_shards(mesh: jax.sharding.Mesh | None) -> int:
  return 1 if mesh is None else int(np.prod(mesh.devices.shape))
