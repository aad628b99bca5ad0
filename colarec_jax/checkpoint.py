"""Checkpoints through one factory around Orbax's `CheckpointManager`.

A ColaRec run keeps two managers under `<workdir>/colarec/checkpoints/`: `latest/` (the last N
epochs, for resuming) and `best/` (the epoch with the best validation metric, for testing and
serving). Each checkpoint is numbered by its epoch and holds two items: `state` (parameters,
optimizer state and step, as arrays) and `meta` (JSON: the run's `Progress`, i.e. epoch, best
metric, patience counter and history, and the config sections the checkpoint is tied to). The
host sampler needs no saved generator state: each epoch draws from
`numpy.random.default_rng([seed, epoch])`, so a resumed run sees exactly the batches it would
have seen.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

LATEST, BEST = "latest", "best"


def create_manager(directory: str, kind: str, *, max_to_keep: int = 2) -> ocp.CheckpointManager:
  """A manager for `<directory>/<kind>`.

  Args:
    directory: the run's checkpoint folder.
    kind: 'latest' keeps the `max_to_keep` newest checkpoints; 'best' keeps the one with the
      highest score passed to `save`.
    max_to_keep: for 'latest'.

  Raises:
    ValueError: an unknown kind.
  """
  if kind == LATEST:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False)
  elif kind == BEST:
    options = ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda m: m["score"],
                                           best_mode="max", create=True,
                                           enable_async_checkpointing=False)
  else:
    raise ValueError(f"unknown checkpoint kind {kind!r}; expected {LATEST!r} or {BEST!r}")
  return ocp.CheckpointManager(os.path.abspath(os.path.join(directory, kind)), options=options)


def save(manager: ocp.CheckpointManager, epoch: int, state, meta: dict,
         score: float | None = None) -> None:
  """Writes `state` (a pytree of arrays) and `meta` (JSON) as checkpoint `epoch`; a 'best'
  manager needs the `score` (higher is better)."""
  manager.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                              meta=ocp.args.JsonSave(meta)),
               metrics=None if score is None else {"score": float(score)})
  manager.wait_until_finished()


def restore(manager: ocp.CheckpointManager, epoch: int, target) -> tuple[object, dict]:
  """(state, meta) of checkpoint `epoch`, arrays placed like `target`'s (shapes, shardings)."""
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  restored = manager.restore(epoch, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
  return restored["state"], restored["meta"]


def restore_meta(manager: ocp.CheckpointManager, epoch: int) -> dict:
  """Only the JSON part of checkpoint `epoch` (what produced it, and the run's progress)."""
  return manager.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def restore_params(manager: ocp.CheckpointManager, epoch: int, target):
  """Only the parameters of checkpoint `epoch` (no optimizer state read), placed like `target`
  (a tree of arrays or `jax.ShapeDtypeStruct`s with shardings)."""
  item = {"params": jax.tree.map(ocp.utils.to_shape_dtype_struct, target)}
  restored = manager.restore(epoch, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
      partial_restore=True)))
  return restored["state"]["params"]
