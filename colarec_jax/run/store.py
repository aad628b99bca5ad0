"""A ColaRec run's checkpoint store: `<workdir>/colarec/checkpoints/`, tied to what it was trained on.

A checkpoint's JSON part holds the run's progress, the config sections it is tied to
(`config.base.FIXED_SECTIONS`) and a fingerprint of the prepared data and GIDs; a checkpoint
of another config, data or GIDs is refused, naming what differs. Every reader of a trained model
goes through `load_params`; training resumes through `restore_latest` and `restore_partial`.
"""

from __future__ import annotations

import dataclasses
import os

from flax.training import train_state

from colarec_jax.config import stored
from colarec_jax.runtime import checkpoint
from colarec_jax.runtime.errors import UsageError
from colarec_jax.runtime.progress import Progress

BEST = checkpoint.BEST


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, "colarec", "checkpoints")


def parse_which(which: str) -> tuple[str, int | None]:
  """'best' | 'latest' | an epoch number -> (kind, epoch or None for the newest of that kind).

  Raises:
    UsageError: anything else (named as the --checkpoint flag).
  """
  if which in (checkpoint.BEST, checkpoint.LATEST):
    return which, None
  if not str(which).isdigit():
    raise UsageError("checkpoint", f"got {which!r}, expected 'best', 'latest' or an epoch number")
  return checkpoint.LATEST, int(which)


def state_arrays(state: train_state.TrainState) -> dict:
  """What a checkpoint saves of a train state."""
  return {"step": state.step, "params": state.params, "opt_state": state.opt_state}


@dataclasses.dataclass(frozen=True)
class CheckpointStore:
  """The checkpoints of one run.

  Attributes:
    directory: `<workdir>/colarec/checkpoints`.
    fixed: the config sections the checkpoints must agree with (`Settings.fixed`).
    fingerprint: {'data': checksum of the prepared arrays, 'gids': of the trained items' GIDs}.
  """

  directory: str
  fixed: dict
  fingerprint: dict

  def manager(self, kind: str, **options):
    return checkpoint.create_manager(self.directory, kind, **options)

  def meta(self, run: Progress, **extra) -> dict:
    """A checkpoint's JSON part: the run's progress, the config and the fingerprint."""
    return {"progress": dataclasses.asdict(run), "config": self.fixed,
            "fingerprint": self.fingerprint, **extra}

  def _check_meta(self, meta: dict) -> None:
    """Refuses a checkpoint of another config, or trained on other data or GIDs."""
    stored.check_trained_with(self.fixed, meta["config"], self.directory)
    saved = meta.get("fingerprint", {})
    for what, name in (("data", "prepared data (data/arrays.npz)"), ("gids", "GIDs (gid/)")):
      if saved.get(what) != self.fingerprint[what]:
        raise UsageError("workdir", f"the checkpoints in {self.directory} were trained on "
                         f"other {name} than the workdir holds now; train in a new --workdir")

  # Training: the store's one writer --------------------------------------------------------------

  def clean_unfinished(self, log) -> None:
    """Drops the temporary folders of killed saves (training only: the workdir's writer)."""
    for path in checkpoint.remove_unfinished(self.directory):
      log(f"removed {path}, left by a save that did not finish")

  def restore_latest(self, state, log):
    """(state, progress dict, epoch) of the newest good `latest` checkpoint, or None.

    A damaged newer checkpoint is removed with one warning, and the one before it is used.
    """
    manager = self.manager(checkpoint.LATEST)
    for epoch in sorted(manager.all_steps(), reverse=True):
      found = self._restore_good(manager, epoch, state, log)
      if found is not None:
        return found[0], found[1]["progress"], epoch
    return None

  def restore_partial(self, state, epochs_done: int, log):
    """(state, meta) of a mid-epoch checkpoint inside epoch `epochs_done + 1`, or None; older
    partial checkpoints are removed."""
    manager = self.manager(checkpoint.PARTIAL)
    for step in sorted(manager.all_steps(), reverse=True):
      found = self._restore_good(manager, step, state, log)
      if found is not None and found[1]["progress"]["epoch"] == epochs_done:
        return found
      checkpoint.delete(manager, step)
    return None

  def _restore_good(self, manager, step: int, state, log):
    """(state, meta) of checkpoint `step` when it is undamaged; a damaged one is removed."""
    problem = checkpoint.damage(manager, step)
    if not problem:
      meta = checkpoint.restore_meta(manager, step)
      self._check_meta(meta)
      try:
        restored, meta = checkpoint.restore(manager, step, state_arrays(state))
        return state.replace(**restored), meta
      except Exception as e:  # noqa: BLE001  (any read failure means the same: unusable)
        problem = f"Orbax could not read it: {type(e).__name__}"
    log(f"warning: checkpoint {step} in {manager.directory} is damaged ({problem}); removed it "
        "and went back to the one before")
    checkpoint.delete(manager, step)
    return None

  def reconcile_best(self, run: Progress, state, log) -> None:
    """Makes `best/` hold exactly the epoch `run` calls best: a run killed between the latest
    and the best save, or a damaged best checkpoint, is repaired from `latest/`."""
    best, latest = self.manager(checkpoint.BEST), self.manager(checkpoint.LATEST)
    steps = best.all_steps()
    if list(steps) == [run.best_epoch] and not checkpoint.damage(best, run.best_epoch):
      return
    for step in steps:
      checkpoint.delete(best, step)
    if not run.best_epoch:
      return
    if run.best_epoch in latest.all_steps() and not checkpoint.damage(latest, run.best_epoch):
      restored, meta = checkpoint.restore(latest, run.best_epoch, state_arrays(state))
      checkpoint.save(best, run.best_epoch, restored, meta, score=run.best_metric)
      log(f"the best checkpoint (epoch {run.best_epoch}) was missing or damaged; restored it "
          "from the latest checkpoints")
    else:
      log(f"warning: the best checkpoint (epoch {run.best_epoch}) is lost and no latest "
          "checkpoint holds it")

  # Readers ---------------------------------------------------------------------------------------

  def load_params(self, which: str, target) -> tuple[object, int]:
    """(params, epoch) of checkpoint `which` for ranking (the optimizer state is not read): the
    one loader of every reader of a trained model (API, evaluate, add_items, cold start, the
    test of the best checkpoint).

    Args:
      which: 'best', 'latest' or an epoch number.
      target: the parameters' abstract tree (`RunParts.abstract_params()`).

    Raises:
      UsageError: `which` is malformed, or its checkpoint does not exist or is damaged.
    """
    kind, epoch = parse_which(which)
    manager = self.manager(kind)
    epoch = epoch if epoch is not None else (
        manager.best_step() if kind == checkpoint.BEST else manager.latest_step())
    if epoch is None:
      raise UsageError("checkpoint", f"no {kind} checkpoint in {self.directory}; train first "
                       "(--mode=train)")
    if epoch not in manager.all_steps():
      raise UsageError("checkpoint", f"no {kind} checkpoint for epoch {epoch} in "
                       f"{self.directory}; there are {sorted(manager.all_steps())}")
    problem = checkpoint.damage(manager, epoch)
    if problem:
      raise UsageError("checkpoint", f"the {kind} checkpoint of epoch {epoch} in "
                       f"{self.directory} is damaged ({problem}); --mode=train repairs the "
                       "best one from the latest, or use --checkpoint=latest")
    self._check_meta(checkpoint.restore_meta(manager, epoch))
    return checkpoint.restore_params(manager, epoch, target), epoch
