"""Devices and processes: distributed start-up, the mesh with one `data` axis, and moving batches
and results between hosts and devices.

One process (CPU, one GPU, all GPUs of a host) needs nothing here but `make_mesh` (and, on a CPU,
`use_cpu_devices` to split the host into one device per core). Several processes (GPU hosts under
SLURM, TPU pod workers) first call `initialize_distributed`; the mesh then spans every process's
devices, each process builds only its rows of every global batch (`process_rows`, `global_rows`),
results come back with `to_host`, and only the main process writes logs and files other than
checkpoints (Orbax coordinates those itself).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.experimental import multihost_utils

from colarec_jax.runtime.errors import ConfigError

# Explicit cluster settings (otherwise jax.distributed.initialize detects TPU pods, SLURM, ...).
ENV_COORDINATOR = "COLAREC_COORDINATOR_ADDRESS"  # host:port of process 0
ENV_NUM_PROCESSES = "COLAREC_NUM_PROCESSES"
ENV_PROCESS_ID = "COLAREC_PROCESS_ID"


def use_cpu_devices(count: int) -> None:
  """Splits the host CPU into `count` JAX devices (0: JAX's own setting); call before any JAX op.

  XLA:CPU runs a batched matmul, such as attention's [b, h] stack of q k^T products, on one
  thread, but runs the programs of different devices at the same time. With one device per core
  and the batch on the mesh, those matmuls (and the elementwise ops) keep every core busy, which
  speeds up the t5-small beam search (README, Scaling out). The train step gained nothing
  measurable, and its dropout draws depend on the device index, so a run's numbers change with the
  device count. Only the CPU platform is affected; GPUs and TPUs stay as they are.

  Raises:
    ConfigError: a negative count, or JAX's backends already started (the count is fixed then).
  """
  if count < 0:
    raise ConfigError("cpu_devices", f"got {count}, expected 0 (JAX's own setting) or a count "
                      "of CPU devices, e.g. the number of cores")
  if count == 0:
    return
  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError as e:  # JAX's message: set it before the first JAX operation
    raise ConfigError("cpu_devices", f"cannot split the CPU into {count} devices once JAX has "
                      "started; set it before the first JAX operation") from e


def initialize_distributed() -> None:
  """Starts JAX's multi-process runtime (before any other JAX call).

  With $COLAREC_COORDINATOR_ADDRESS, $COLAREC_NUM_PROCESSES and $COLAREC_PROCESS_ID set they are
  used; without them JAX detects the cluster (Cloud TPU, SLURM, Open MPI). On CPU-only runs
  (JAX_PLATFORMS=cpu) the collectives go through gloo.
  """
  if os.environ.get("JAX_PLATFORMS", "") == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  explicit = {name: os.environ.get(name) for name in
              (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)}
  if any(explicit.values()):
    missing = [name for name, value in explicit.items() if not value]
    if missing:
      raise ConfigError("num_devices", f"a multi-process run needs {', '.join(explicit)} "
                        f"together; {', '.join(missing)} unset")
    jax.distributed.initialize(explicit[ENV_COORDINATOR],
                               num_processes=int(explicit[ENV_NUM_PROCESSES]),
                               process_id=int(explicit[ENV_PROCESS_ID]))
  else:
    jax.distributed.initialize()


def is_main_process() -> bool:
  return jax.process_index() == 0


def process_count() -> int:
  return jax.process_count()


def barrier(name: str) -> None:
  """Waits until every process reaches this point (no-op with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def make_mesh(num_devices: int = 0, *, local: bool = False) -> jax.sharding.Mesh | None:
  """A 1-D mesh over the first `num_devices` devices (0 = all); None when that is one device.

  Args:
    num_devices: devices on the 'data' axis, 0 for all.
    local: only this process's devices (for work every process repeats, e.g. LightGCN).

  Raises:
    ConfigError: more devices asked for than JAX sees, or a multi-process mesh that leaves out
      some process's devices.
  """
  devices = jax.local_devices() if local else jax.devices()
  count = num_devices or len(devices)
  if local:  # a share of a global device count: as many as this process has
    count = min(count, len(devices))
  if count > len(devices):
    raise ConfigError("num_devices", f"got {count}, but JAX sees {len(devices)} device(s)")
  if not local and jax.process_count() > 1 and count != len(devices):
    raise ConfigError("num_devices", f"got {count}; a multi-process run uses all "
                      f"{len(devices)} devices (set 0)")
  if count == 1:
    return None
  # Auto axes: plain `jit` code (evaluation) is partitioned by XLA; the train steps are explicit
  # per-device programs under `shard_map` either way.
  return jax.make_mesh((count,), ("data",), devices=devices[:count],
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicate(tree, mesh: jax.sharding.Mesh | None):
  """Every leaf copied to every device of the mesh (or left as is without a mesh)."""
  if mesh is None:
    return tree
  return jax.device_put(tree, jax.sharding.NamedSharding(mesh, jax.P()))


# Parameters `model.shard_ids` splits by rows over the mesh (the ID tables, which grow with the
# data); their optimizer state, whose tree paths end in the same names, goes alike.
ID_TABLES = ("item_embed", "user_embed")


def _is_id_table(path) -> bool:
  return any(getattr(key, "key", getattr(key, "name", None)) in ID_TABLES for key in path)


def state_shardings(tree, mesh: jax.sharding.Mesh, shard_ids: bool):
  """A NamedSharding per leaf of a parameter or train-state tree: the ID tables' [rows, d] leaves
  (parameters, gradients, Adam moments) split by rows over `data` when `shard_ids`, everything
  else replicated."""
  def spec(path, leaf):
    split = shard_ids and _is_id_table(path) and getattr(leaf, "ndim", 0) == 2
    return jax.sharding.NamedSharding(mesh, jax.P("data", None) if split else jax.P())
  return jax.tree_util.tree_map_with_path(spec, tree)


def place_state(tree, mesh: jax.sharding.Mesh | None, shard_ids: bool = False):
  """`replicate`, except the ID tables (and their optimizer state) split by rows with
  `shard_ids` (see `state_shardings`)."""
  if mesh is None:
    return tree
  return jax.device_put(tree, state_shardings(tree, mesh, shard_ids))


def shard_rows(tree, mesh: jax.sharding.Mesh | None):
  """Every leaf split by its first axis over the mesh's `data` axis (sizes must divide).

  Every process passes the same whole arrays; see `global_rows` for per-process slices.
  """
  if mesh is None:
    return tree
  return jax.device_put(tree, jax.sharding.NamedSharding(mesh, jax.P("data")))


def process_rows(mesh: jax.sharding.Mesh | None, rows: int) -> slice:
  """The rows of a `rows`-row global batch that this process feeds (all of them with one)."""
  if mesh is None or jax.process_count() == 1:
    return slice(0, rows)
  index = jax.sharding.NamedSharding(mesh, jax.P("data")).addressable_devices_indices_map((rows,))
  starts = [s[0].start or 0 for s in index.values()]
  stops = [s[0].stop if s[0].stop is not None else rows for s in index.values()]
  return slice(min(starts), max(stops))


def global_rows(tree, mesh: jax.sharding.Mesh | None, rows: int):
  """This process's rows (`process_rows`) of every leaf -> global arrays split over 'data'."""
  if mesh is None or jax.process_count() == 1:
    return shard_rows(tree, mesh)
  sharding = jax.sharding.NamedSharding(mesh, jax.P("data"))
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(
      sharding, x, (rows,) + x.shape[1:]), tree)


def to_host(tree):
  """NumPy copies of (possibly multi-process) arrays: replicated ones from the local copy,
  split ones gathered from every process."""
  def one(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return np.asarray(jax.device_get(x))
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return jax.tree.map(one, tree)


def num_shards(mesh: jax.sharding.Mesh | None) -> int:
  return 1 if mesh is None else int(np.prod(mesh.devices.shape))


def describe(mesh: jax.sharding.Mesh | None) -> str:
  """'1 cpu device', '2 cpu devices', '32 tpu devices over 4 processes': what the work runs on."""
  count = num_shards(mesh)
  device = jax.devices()[0] if mesh is None else mesh.devices.flat[0]
  out = f"{count} {device.platform} device{'s' if count > 1 else ''}"
  return out + (f" over {jax.process_count()} processes" if jax.process_count() > 1 else "")


def main_first(name: str, fn):
  """`fn()` on the main process, then on the others: caches it writes into a shared workdir
  (prepared data, LightGCN, GIDs) are then reused instead of raced for; with one process, fn()."""
  if jax.process_count() == 1:
    return fn()
  if is_main_process():
    out = fn()
    barrier(name)
    return out
  barrier(name)
  return fn()
