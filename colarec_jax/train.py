"""Training ColaRec: the optimizer, the data-parallel multi-task step, and the loop.

One step, per training interaction (u, i): encoder passes over X_u and over X_i, X_i-, X_i+ (the
three indexing inputs share one pass), decoder passes X_u -> GID(i), X_i -> GID(i), X_i- -> GID(i-),
and the weighted sum of L_rec, L_index, L_bpr and L_c. On a mesh the step is a per-device program
under `jax.shard_map`: the batch is split over 'data', parameters are replicated and cast to
device-varying inside the step (the model's custom weight-gradient rule, `t5.matmul`, needs its
weight typed like its varying input), and the cast's transpose sums gradients across devices (the
loss is normalised by the global example count), i.e. a gradient `pmean` of per-device means.

The loop (`train_and_evaluate`): epochs of (optionally capped) shuffled steps, batches built on
the host one step ahead in a thread, per-loss averages on a progress bar and in TensorBoard,
validation by beam search every `train.eval_every` epochs, early stopping on `eval.metric` with
`train.patience`, a checkpoint every epoch (latest N, and the best), and the best checkpoint
tested at the end. A rerun on the same workdir resumes from the latest checkpoint and continues
exactly. What the loop runs on (data, GIDs, model, checkpoints) comes from `workspace.py`.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import queue
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from colarec_jax import checkpoint, interrupts, losses, reporting, runconfig, sharding
from colarec_jax.data.dataset import TEST, TRAIN, VALID
from colarec_jax.data.prepare import Prepared
from colarec_jax.errors import ConfigError
from colarec_jax.gid.table import GidTable
from colarec_jax.inputs import epoch_order
from colarec_jax.model.colarec import ColaRec
from colarec_jax.progress import Progress
from colarec_jax.settings import LossWeights, OptimConfig, Settings
from colarec_jax.workspace import DROPOUT_STREAM, Workspace, check_batch_size, state_arrays


def create_optimizer(optim: OptimConfig, total_steps: int = 0) -> optax.GradientTransformation:
  """AdamW with global-norm clipping; constant learning rate (official) or warmup + cosine.

  Equal settings give the same transformation object, so train states of separate runs in one
  process have equal tree structures and share the compiled step.
  """
  if optim.schedule == "warmup_cosine" and total_steps <= optim.warmup_steps:
    raise ConfigError("optim.warmup_steps", f"got {optim.warmup_steps}, expected fewer than "
                      f"the {total_steps} training steps")
  return _optimizer(optim.learning_rate, optim.weight_decay, optim.schedule, optim.warmup_steps,
                    int(total_steps), optim.grad_clip)


@functools.lru_cache(maxsize=16)
def _optimizer(learning_rate, weight_decay, schedule, warmup_steps, total_steps, grad_clip):
  lr = learning_rate
  if schedule == "warmup_cosine":
    lr = optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps, total_steps)
  return optax.chain(optax.clip_by_global_norm(grad_clip),
                     optax.inject_hyperparams(optax.adamw)(
                         learning_rate=lr, weight_decay=weight_decay))


def _concat(*inputs: dict) -> dict:
  return {k: jnp.concatenate([x[k] for x in inputs]) for k in inputs[0]}


@functools.lru_cache(maxsize=8)
def make_train_step(model: ColaRec, weights: LossWeights, mesh=None, frozen: tuple[str, ...] = ()):
  """Returns jitted `(state, batch, key) -> (state, metrics)`; state is donated.

  The top-level parameters named in `frozen` (e.g. the ID tables started from LightGCN) keep
  their values: neither the gradient nor the weight decay moves them.

  Cached by (model, weights, mesh), so runs in one process share the compiled step. A loss term
whose weight is 0 is not computed, nor are the encoder and decoder passes only it reads.

  `batch` is `InputBuilder.training_batch` output (split over the mesh's 'data' axis when there
  is one); `key` is the run's dropout key, folded with the step number (and device index).
  """
  axis = "data" if mesh is not None else None

  def local_step(state, batch, key):
    key = jax.random.fold_in(key, state.step)
    if axis is not None:
      key = jax.random.fold_in(key, jax.lax.axis_index(axis))
    mask = batch["mask"]
    total = jnp.sum(mask)
    if axis is not None:
      total = jax.lax.psum(total, axis)
    b = mask.shape[0]

    def loss_fn(params):
      if axis is not None:
        params = jax.lax.pcast(params, axis, to="varying")
      variables = {"params": params}
      rngs = {"dropout": key}
      encode = lambda x: model.apply(variables, x, deterministic=False, rngs=rngs,
                                     method=ColaRec.encode)
      decode = lambda enc, enc_mask, codes, last_items: model.apply(
          variables, enc, enc_mask, codes, last_items, deterministic=False, rngs=rngs,
          method=ColaRec.decode_codes)
      tied = "item_last_items" in batch  # model.tie_last_level
      parts = {}
      # Only the passes some weighted term reads run: a zero weight removes its term's work.
      if weights.rec or weights.bpr:
        enc_u = encode(batch["user"])
      if weights.index or weights.bpr or weights.contrastive:
        index_in = _concat(batch["item"], batch["neg"],
                           *([batch["pos"]] if weights.contrastive else []))
        enc_idx = encode(index_in)
        h_i, h_n, *h_p = jnp.split(ColaRec.pool(enc_idx, index_in["mask"]),
                                   3 if weights.contrastive else 2)
      if weights.rec:
        logits_u = decode(enc_u, batch["user"]["mask"], batch["item_codes"],
                          batch["item_last_items"] if tied else None)
        parts["rec"] = losses.generation(logits=logits_u, codes=batch["item_codes"], mask=mask,
                                         total=total)
      if weights.index:
        index_codes = jnp.concatenate([batch["item_codes"], batch["neg_codes"]])
        index_items = (jnp.concatenate([batch["item_last_items"], batch["neg_last_items"]])
                       if tied else None)
        logits_idx = decode(enc_idx[:2 * b], index_in["mask"][:2 * b], index_codes, index_items)
        parts["index"] = losses.generation(logits=logits_idx, codes=index_codes,
                                           mask=jnp.concatenate([mask, mask]), total=total)
      if weights.bpr:
        h_u = ColaRec.pool(enc_u, batch["user"]["mask"])
        parts["bpr"] = losses.pairwise(anchor=h_u, positive=h_i, negative=h_n, mask=mask,
                                       total=total, temperature=weights.pair_temperature)
      if weights.contrastive:
        parts["contrastive"] = losses.pairwise(anchor=h_i, positive=h_p[0], negative=h_n,
                                               mask=mask, total=total,
                                               temperature=weights.pair_temperature)
      return losses.total_loss(parts, weights.as_dict()), parts

    (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics = {"loss": loss, **parts}
    if axis is not None:
      metrics = jax.lax.psum(metrics, axis)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["learning_rate"] = jnp.asarray(
        state.opt_state[1].hyperparams["learning_rate"], jnp.float32)
    new = state.apply_gradients(grads=grads)
    if frozen:
      new = new.replace(params={**new.params, **{k: state.params[k] for k in frozen}})
    return new, metrics

  if mesh is None:
    return jax.jit(local_step, donate_argnums=0)
  rep, dat = jax.P(), jax.P("data")
  sharded = jax.shard_map(local_step, mesh=mesh, in_specs=(rep, dat, rep), out_specs=(rep, rep))
  replicated = jax.sharding.NamedSharding(mesh, rep)
  return jax.jit(sharded, donate_argnums=0, out_shardings=replicated)


# The loop ---------------------------------------------------------------------------------------


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


def epoch_batches(ws: Workspace, epoch: int, steps: int, skip: int = 0):
  """The epoch's training batches: a generator seeded by (seed, epoch), so resumes repeat it.

  `skip` leaves out the first batches (a resume from a mid-epoch checkpoint); they are still
  built, so the generator is where the uninterrupted epoch would have it.
  """
  rng = np.random.default_rng([ws.settings.seed, epoch])
  users, items = ws.prepared.rows(TRAIN)
  batch_size = ws.settings.optim.batch_size
  order = epoch_order(users, items, batch_size, rng)
  process_share = sharding.process_rows(ws.mesh, batch_size)
  for n, (batch_users, batch_items, real) in enumerate(itertools.islice(order, steps)):
    batch = ws.builder.training_batch(batch_users, batch_items, real, rng, process_share)
    if n >= skip:
      yield batch


def steps_per_epoch(ws: Workspace) -> int:
  """Steps of one epoch: every training interaction once, or train.steps_per_epoch if fewer."""
  full = -(-len(ws.prepared.rows(TRAIN)[0]) // ws.settings.optim.batch_size)
  cap = ws.settings.train.steps_per_epoch
  return min(full, cap) if cap else full


def train_and_evaluate(settings: Settings, workdir: str, *, log=print, progress_bar: bool = True,
                       prepared: Prepared | None = None, gids: GidTable | None = None) -> dict:
  """Trains ColaRec (resuming from `<workdir>/colarec/checkpoints` if present) and tests it.

  `prepared` and `gids` may be passed when the caller has built them (see `Workspace.build`).

  Returns:
    {'valid': Report, 'test': Report} of the best checkpoint.

  Raises:
    interrupts.Interrupted: a signal stopped the run; a checkpoint of its last step was saved.
  """
  check_batch_size(settings)
  ws = Workspace.build(settings, workdir, log=log, prepared=prepared, gids=gids)
  train_cfg, ev = settings.train, settings.eval
  steps = steps_per_epoch(ws)
  state = ws.init_state(create_optimizer(settings.optim, train_cfg.epochs * steps), log)
  template = state
  run, within = Progress(), None
  # A rerun on the same workdir continues from its last good checkpoint, exactly: the latest
  # epoch's, then a mid-epoch one after it; the best checkpoint is made to agree with them.
  ws.clean_unfinished(log)
  resumed = ws.restore_latest(template, log)
  if resumed is not None:
    state, saved, _ = resumed
    run = Progress(**saved)
  partial = ws.restore_partial(template, run.epoch, log)
  if partial is not None:
    state, within = partial
    log(f"resuming ColaRec at step {within['epoch_step']} of epoch {run.epoch + 1} from "
        f"{ws.checkpoint_dir}")
  elif resumed is not None:
    log(f"resuming ColaRec after epoch {run.epoch} from {ws.checkpoint_dir}")
  ws.reconcile_best(run, template, log)
  if sharding.is_main_process():  # the workdir now holds this config's model (runconfig)
    runconfig.save(settings.full, workdir)
  latest = ws.manager(checkpoint.LATEST, max_to_keep=train_cfg.keep_checkpoints)
  best, mid_epoch = ws.manager(checkpoint.BEST), ws.manager(checkpoint.PARTIAL)
  step_fn = make_train_step(ws.model, settings.loss, ws.mesh,
                            ("item_embed", "user_embed") if settings.model.freeze_ids else ())
  dropout_key = jax.random.fold_in(jax.random.key(settings.seed), DROPOUT_STREAM)
  valid, valid_inputs = ws.eval_data(VALID)
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
            raise ConfigError("optim.learning_rate", _non_finite_message(ws, m, run.epoch, seen))
          for k, v in m.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        for k, v in fetched[-1].items():
          writer.add_scalar(f"train/{k}", float(v), int(epoch * steps + seen))
        bar.update(len(pending))
        bar.set_postfix(loss=f"{sums['loss'] / seen:.4f}",
                        ex_s=f"{seen * batch_size / (time.perf_counter() - start):.1f}")
        pending = []

      # Host batches are built a step ahead in a thread while the device runs the current step.
      for n, batch in enumerate(prefetch(epoch_batches(ws, epoch, steps, skip=done)), start=done):
        state, metrics = step_fn(state, sharding.global_rows(batch, ws.mesh, batch_size),
                                 dropout_key)
        pending.append(metrics)
        stop = interrupts.requested()
        save_now = stop is not None or (every and (n + 1) % every == 0 and n + 1 < steps)
        if save_now or (n + 1) % train_cfg.log_every == 0 or n + 1 == steps:
          fetch()
        # A mid-epoch checkpoint (every N steps, or on a signal) lets a rerun resume this step.
        if save_now:
          checkpoint.save(mid_epoch, epoch * steps + n + 1, state_arrays(state), ws.meta(
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
        report = ws.ranker(state.params).evaluate(valid, valid_inputs)
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
      meta = ws.meta(run)
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
  return test_best(ws, run)


def test_best(ws: Workspace, run: Progress) -> dict:
  """Tests the best checkpoint; writes metrics.json and training_curves.png into the run dir."""
  restored = ws.restore_params(checkpoint.BEST)
  if restored is None:
    raise ConfigError("train.epochs", "no validation ran, so there is no best checkpoint")
  params, best_epoch = restored
  ranker = ws.ranker(params)
  reports = {name: ranker.evaluate(*ws.eval_data(part))
             for name, part in (("valid", VALID), ("test", TEST))}
  if sharding.is_main_process():
    with open(os.path.join(ws.run_dir, "metrics.json"), "w") as f:
      json.dump({"best_epoch": best_epoch, "history": run.history,
                 **{k: r.to_json() for k, r in reports.items()}}, f, indent=1)
    reporting.plot_curves(run.history, ws.settings.eval.metric,
                          os.path.join(ws.run_dir, "training_curves.png"))
  return reports


def _non_finite_message(ws: Workspace, metrics: dict, completed: int, step: int) -> str:
  """`completed` epochs are done, each ended by a checkpoint: the last one is the good state."""
  where = (f"the last good state is the checkpoint of epoch {completed} in {ws.checkpoint_dir}"
           if completed else "no checkpoint was written yet")
  parts = ", ".join(f"{k} {float(v):.4g}" for k, v in metrics.items())
  return (f"the training loss became non-finite at step {step} of epoch {completed + 1} ({parts}); "
          f"{where}; expected a finite loss, try a lower learning rate")
