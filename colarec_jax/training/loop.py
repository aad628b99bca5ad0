"""ColaRec's training loop (`train_and_evaluate`).

Epochs of (optionally capped) shuffled steps, batches built on the host one step ahead in a
thread, per-loss averages on a progress bar and in TensorBoard, validation by beam search every
`train.eval_every` epochs, early stopping on `eval.metric` with `train.patience`, a checkpoint
every epoch (latest N, and the best), and the best checkpoint tested at the end. A rerun on the
same workdir resumes from the latest checkpoint and continues exactly. The step is `step.py`'s,
the initial state `state.py`'s, the run's parts `run.parts`' and its checkpoints `run.store`'s.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import threading
import time

import jax
import numpy as np
import optax
import tqdm

from colarec_jax.config import stored
from colarec_jax.config.settings import Settings
from colarec_jax.data.dataset import TEST, TRAIN, VALID
from colarec_jax.data.prepare import Prepared
from colarec_jax.gid.table import GidTable
from colarec_jax.model.inputs import epoch_order
from colarec_jax.run import parts as parts_lib
from colarec_jax.run.parts import RunParts
from colarec_jax.run.store import CheckpointStore, state_arrays
from colarec_jax.runtime import checkpoint, interrupts, reporting, sharding
from colarec_jax.runtime.errors import ConfigError
from colarec_jax.runtime.progress import Progress
from colarec_jax.training.state import DROPOUT_STREAM, initial_state
from colarec_jax.training.step import create_optimizer, make_train_step


def prefetch(iterator, size: int = 2):
  """Runs `iterator` in a thread, `size` items ahead (host batches overlap device steps)."""
  items: queue.Queue = queue.Queue(maxsize=size)
  done = object()

  def work():
    try:
      for item in iterator:
        items.put(item)
      items.put(done)
    except BaseException as e:  # re-raised in the consumer
      items.put(e)

  threading.Thread(target=work, daemon=True).start()
  while (item := items.get()) is not done:
    if isinstance(item, BaseException):
      raise item
    yield item


def epoch_batches(parts: RunParts, seed: int, batch_size: int, epoch: int, steps: int,
                  skip: int = 0):
  """The epoch's training batches: a generator seeded by (seed, epoch), so resumes repeat it.

  `skip` leaves out the first batches (a resume from a mid-epoch checkpoint); they are still
  built, so the generator is where the uninterrupted epoch would have it.
  """
  rng = np.random.default_rng([seed, epoch])
  users, items = parts.prepared.rows(TRAIN)
  order = epoch_order(users, items, batch_size, rng)
  process_share = sharding.process_rows(parts.mesh, batch_size)
  for n, (batch_users, batch_items, real) in enumerate(itertools.islice(order, steps)):
    batch = parts.builder.training_batch(batch_users, batch_items, real, rng, process_share)
    if n >= skip:
      yield batch


def steps_per_epoch(prepared: Prepared, settings: Settings) -> int:
  """Steps of one epoch: every training interaction once, or train.steps_per_epoch if fewer."""
  full = -(-len(prepared.rows(TRAIN)[0]) // settings.optim.batch_size)
  cap = settings.train.steps_per_epoch
  return min(full, cap) if cap else full


def run_optimizer(prepared: Prepared, settings: Settings) -> optax.GradientTransformation:
  """The run's optimizer, its schedule spanning train.epochs of `steps_per_epoch` steps: what the
  loop trains with, and what an imported checkpoint's state is built with (their checkpoint holds
  no optimizer state: training an imported workdir further starts the schedule and Adam's
  moments afresh)."""
  steps = settings.train.epochs * steps_per_epoch(prepared, settings)
  return create_optimizer(settings.optim, steps)


def train_and_evaluate(settings: Settings, workdir: str, *, log=print, progress_bar: bool = True,
                       prepared: Prepared | None = None, gids: GidTable | None = None) -> dict:
  """Trains ColaRec (resuming from `<workdir>/colarec/checkpoints` if present) and tests it.

  `prepared` and `gids` may be passed when the caller has built them (see `run.parts.build`).
  The settings' batch size is checked beforehand (`step.check_batch_size`).

  Returns:
    {'valid': Report, 'test': Report} of the best checkpoint.

  Raises:
    interrupts.Interrupted: a signal stopped the run; a checkpoint of its last step was saved.
  """
  parts = parts_lib.build(settings, workdir, log=log, prepared=prepared, gids=gids)
  ckpts = parts_lib.checkpoints(parts, settings, workdir)
  train_cfg, ev = settings.train, settings.eval
  steps = steps_per_epoch(parts.prepared, settings)
  state = initial_state(parts, settings, workdir, run_optimizer(parts.prepared, settings), log)
  template = state
  run, within = Progress(), None
  # A rerun on the same workdir continues from its last good checkpoint, exactly: the latest
  # epoch's, then a mid-epoch one after it; the best checkpoint is made to agree with them.
  ckpts.clean_unfinished(log)
  resumed = ckpts.restore_latest(template, log)
  if resumed is not None:
    state, saved, _ = resumed
    run = Progress(**saved)
  partial = ckpts.restore_partial(template, run.epoch, log)
  if partial is not None:
    state, within = partial
    log(f"resuming ColaRec at step {within['epoch_step']} of epoch {run.epoch + 1} from "
        f"{ckpts.directory}")
  elif resumed is not None:
    log(f"resuming ColaRec after epoch {run.epoch} from {ckpts.directory}")
  ckpts.reconcile_best(run, template, log)
  if sharding.is_main_process():  # the workdir now holds this config's model (config.stored)
    stored.save(settings.full, workdir)
  latest = ckpts.manager(checkpoint.LATEST, max_to_keep=train_cfg.keep_checkpoints)
  best, mid_epoch = ckpts.manager(checkpoint.BEST), ckpts.manager(checkpoint.PARTIAL)
  step_fn = make_train_step(parts.model, settings.loss, parts.mesh,
                            ("item_embed", "user_embed") if settings.model.freeze_ids else ())
  dropout_key = jax.random.fold_in(jax.random.key(settings.seed), DROPOUT_STREAM)
  valid, valid_inputs = parts.eval_data(VALID)
  writer = reporting.summary_writer(os.path.join(workdir, "tensorboard", "colarec"))
  batch_size = settings.optim.batch_size
  every = train_cfg.checkpoint_every_steps

  began, first_epoch, out_of_time = time.perf_counter(), run.epoch, False
  with interrupts.deferred(), contextlib.closing(writer):
    while run.epoch < train_cfg.epochs and not run.stopped and not out_of_time:
      epoch = run.epoch
      done = within["epoch_step"] if within else 0  # steps of this epoch already trained
      sums, seen = (dict(within["sums"]), within["seen"]) if within else ({}, 0)
      start = time.perf_counter() - (within["seconds"] if within else 0.0)
      within, pending = None, []
      bar = tqdm.tqdm(total=steps, initial=done, desc=f"colarec epoch {epoch + 1}", leave=False,
                      disable=None if progress_bar else True)

      def fetch():
        """Fetches the pending steps' metrics at once (no host sync on every step) and adds
        them to the epoch's sums; a non-finite loss will not recover, so it stops the run."""
        nonlocal seen, pending
        fetched = sharding.to_host(pending)
        for m in fetched:
          seen += 1
          if not np.isfinite(m["loss"]):
            raise ConfigError("optim.learning_rate", _non_finite_message(ckpts, m, run.epoch, seen))
          for k, v in m.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        for k, v in fetched[-1].items():
          writer.add_scalar(f"train/{k}", float(v), int(epoch * steps + seen))
        bar.update(len(pending))
        bar.set_postfix(loss=f"{sums['loss'] / seen:.4f}",
                        ex_s=f"{seen * batch_size / (time.perf_counter() - start):.1f}")
        pending = []

      # Host batches are built a step ahead in a thread while the device runs the current step.
      for n, batch in enumerate(prefetch(epoch_batches(
          parts, settings.seed, batch_size, epoch, steps, skip=done)), start=done):
        state, metrics = step_fn(state, sharding.global_rows(batch, parts.mesh, batch_size),
                                 dropout_key)
        pending.append(metrics)
        stop = interrupts.requested()
        save_now = stop is not None or (every and (n + 1) % every == 0 and n + 1 < steps)
        if save_now or (n + 1) % train_cfg.log_every == 0 or n + 1 == steps:
          fetch()
        # A mid-epoch checkpoint (every N steps, or on a signal) lets a rerun resume this step.
        if save_now:
          checkpoint.save(mid_epoch, epoch * steps + n + 1, state_arrays(state), ckpts.meta(
              run, epoch_step=n + 1, sums=sums, seen=seen, seconds=time.perf_counter() - start))
        if stop is not None:
          bar.close()
          interrupts.stop_if_requested(f"at step {n + 1} of epoch {epoch + 1}; saved a checkpoint "
                                       "there")
      bar.close()
      seconds = time.perf_counter() - start
      record = {"epoch": epoch + 1, "seconds": seconds,
                "examples_per_second": seen * batch_size / seconds,
                "seconds_per_step": seconds / max(seen, 1),
                **{k: v / max(seen, 1) for k, v in sums.items()}}
      # train.max_seconds: stop when another epoch, at this invocation's pace so far, would end
      # past the budget.
      elapsed = time.perf_counter() - began
      out_of_time = bool(train_cfg.max_seconds) and epoch + 1 < train_cfg.epochs and (
          elapsed + elapsed / (epoch + 1 - first_epoch) > train_cfg.max_seconds)
      # Validate by beam search every eval_every epochs and at the last; count towards stopping.
      evaluated = ((epoch + 1) % train_cfg.eval_every == 0 or epoch + 1 == train_cfg.epochs
                   or out_of_time)
      if evaluated:
        report = parts.ranker(state.params).evaluate(valid, valid_inputs)
        value = report.overall[ev.metric]
        record.update({f"valid/{k}": v for k, v in report.overall.items()})
        for k, v in report.overall.items():
          writer.add_scalar(f"valid/{k}", v, epoch + 1)
        improved = run.validated(value, epoch + 1, train_cfg.patience)
      run.epoch = epoch + 1
      run.history.append(record)
      writer.flush()
      log(reporting.epoch_line(record, ev.metric))
      # Checkpoint every epoch (the latest few, to resume), then the best one apart (to test):
      # a run killed between the two saves has its best repaired from `latest` on resume.
      meta = ckpts.meta(run)
      checkpoint.save(latest, epoch + 1, state_arrays(state), meta)
      if evaluated and improved:
        checkpoint.save(best, epoch + 1, state_arrays(state), meta, score=value)
      for step in mid_epoch.all_steps():  # superseded by the epoch's checkpoint
        checkpoint.delete(mid_epoch, step)
      # A signal during validation stops the run here, its epoch saved.
      interrupts.stop_if_requested(f"after epoch {epoch + 1}; its checkpoint is saved")
  if run.stopped:
    log(f"early stopping: no better valid {ev.metric} for {train_cfg.patience} validations")
  elif out_of_time:
    log(f"stopping after epoch {run.epoch}: another would pass train.max_seconds="
        f"{train_cfg.max_seconds:g} ({time.perf_counter() - began:.0f} s so far)")
  return test_best(parts, ckpts, run, parts_lib.run_dir(workdir), ev.metric)


METRICS = "metrics.json"  # in the run dir: the best epoch, every epoch's record, the tested splits


def read_metrics(workdir: str) -> dict:
  """What a finished ColaRec run in `workdir` wrote (`test_best`): {'best_epoch', 'history',
  'valid', 'test'}."""
  with open(os.path.join(parts_lib.run_dir(workdir), METRICS)) as f:
    return json.load(f)


def test_best(parts: RunParts, ckpts: CheckpointStore, run: Progress, run_dir: str,
              metric: str) -> dict:
  """Tests the best checkpoint; writes metrics.json and training_curves.png into `run_dir`."""
  params, best_epoch = ckpts.load_params(checkpoint.BEST, parts.abstract_params())
  ranker = parts.ranker(params)
  reports = {name: ranker.evaluate(*parts.eval_data(part))
             for name, part in (("valid", VALID), ("test", TEST))}
  if sharding.is_main_process():
    with open(os.path.join(run_dir, METRICS), "w") as f:
      json.dump({"best_epoch": best_epoch, "history": run.history,
                 **{k: r.to_json() for k, r in reports.items()}}, f, indent=1)
    reporting.plot_curves(run.history, metric, os.path.join(run_dir, "training_curves.png"))
  return reports


def _non_finite_message(ckpts: CheckpointStore, metrics: dict, completed: int, step: int) -> str:
  """`completed` epochs are done, each ended by a checkpoint: the last one is the good state."""
  where = (f"the last good state is the checkpoint of epoch {completed} in {ckpts.directory}"
           if completed else "no checkpoint was written yet")
  parts = ", ".join(f"{k} {float(v):.4g}" for k, v in metrics.items())
  return (f"the training loss became non-finite at step {step} of epoch {completed + 1} ({parts}); "
          f"{where}; expected a finite loss, try a lower learning rate")
