"""Checkpoints through one factory around Orbax's `CheckpointManager`.

A ColaRec run keeps its managers under `<workdir>/colarec/checkpoints/`: `latest/` (the last N
epochs, for resuming), `best/` (the epoch with the best validation metric, for testing and
serving) and `partial/` (the last mid-epoch save, numbered by global step, when
`train.checkpoint_every_steps` is set or the run was stopped by a signal). Each checkpoint is numbered by its epoch and holds two items: `state` (parameters,
optimizer state and step, as arrays) and `meta` (JSON: the run's `Progress`, i.e. epoch, best
metric, patience counter and history, and the config sections the checkpoint is tied to). The
host sampler needs no saved generator state: each epoch draws from
`numpy.random.default_rng([seed, epoch])`, so a resumed run sees exactly the batches it would
have seen.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import jax
import orbax.checkpoint as ocp

LATEST, BEST, PARTIAL = "latest", "best", "partial"
CHECKSUMS = "colarec_checksums.json"


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
  if kind in (LATEST, PARTIAL):
    options = ocp.CheckpointManagerOptions(max_to_keep=1 if kind == PARTIAL else max_to_keep,
                                           create=True, enable_async_checkpointing=False)
  elif kind == BEST:
    options = ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda m: m["score"],
                                           best_mode="max", create=True,
                                           enable_async_checkpointing=False)
  else:
    raise ValueError(f"unknown checkpoint kind {kind!r}; expected {LATEST!r}, {BEST!r} or "
                     f"{PARTIAL!r}")
  return ocp.CheckpointManager(os.path.abspath(os.path.join(directory, kind)), options=options)


def save(manager: ocp.CheckpointManager, epoch: int, state, meta: dict,
         score: float | None = None) -> None:
  """Writes `state` (a pytree of arrays) and `meta` (JSON) as checkpoint `epoch`; a 'best'
  manager needs the `score` (higher is better)."""
  manager.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                              meta=ocp.args.JsonSave(meta)),
               metrics=None if score is None else {"score": float(score)})
  manager.wait_until_finished()
  # Checksums last, through a temporary file: a checkpoint without them is one whose save was
  # killed, and `damage` says so, so a reader never trusts half-written arrays.
  if jax.process_index() == 0:
    folder = step_dir(manager, epoch)
    staged = os.path.join(folder, CHECKSUMS + ".tmp")
    with open(staged, "w") as f:
      json.dump(_hashes(folder), f, indent=0)
    os.replace(staged, os.path.join(folder, CHECKSUMS))


def step_dir(manager: ocp.CheckpointManager, step: int) -> str:
  return os.path.join(str(manager.directory), str(step))


def _hashes(folder: str) -> dict[str, str]:
  out = {}
  for root, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(root, name)
      rel = os.path.relpath(path, folder)
      if rel in (CHECKSUMS, CHECKSUMS + ".tmp"):
        continue
      digest = hashlib.sha256()
      with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
          digest.update(block)
      out[rel] = digest.hexdigest()
  return dict(sorted(out.items()))


def damage(manager: ocp.CheckpointManager, step: int) -> str:
  """'' when checkpoint `step`'s files match the checksums `save` recorded, else what is wrong."""
  folder = step_dir(manager, step)
  try:
    with open(os.path.join(folder, CHECKSUMS)) as f:
      recorded = json.load(f)
  except FileNotFoundError:
    return f"{CHECKSUMS} is missing (the save did not finish)"
  except (OSError, ValueError):
    return f"{CHECKSUMS} is unreadable"
  found = _hashes(folder)
  # Files Orbax added since (none today) are not judged; every recorded one must match.
  for rel, digest in recorded.items():
    if rel not in found:
      return f"{rel} is missing"
    if found[rel] != digest:
      return f"{rel} does not match its checksum"
  return ""


def delete(manager: ocp.CheckpointManager, step: int) -> None:
  """Removes checkpoint `step` (a damaged or superseded one)."""
  if step in manager.all_steps():
    manager.delete(step)
  # A damaged step may be one Orbax no longer lists; its folder goes all the same.
  shutil.rmtree(step_dir(manager, step), ignore_errors=True)
  manager.reload()


def remove_unfinished(directory: str) -> list[str]:
  """Removes the temporary folders of saves that a killed run left under `directory` (Orbax's
  `*.orbax-checkpoint-tmp*`); call it only while holding the workdir's exclusive lock."""
  removed = []
  for root, dirs, _ in os.walk(directory):
    for name in list(dirs):
      if ".orbax-checkpoint-tmp" in name:
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        removed.append(os.path.join(root, name))
        dirs.remove(name)
  return removed


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
