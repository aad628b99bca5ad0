"""Training ColaRec: model and optimizer factories, the data-parallel multi-task step, and
`train_and_evaluate`, the loop that ties data, GIDs, steps, validation and checkpoints together.

One step, per training interaction (u, i): encoder passes over X_u and over X_i, X_i-, X_i+ (the
three indexing inputs share one pass), decoder passes X_u -> GID(i), X_i -> GID(i), X_i- -> GID(i-),
and the weighted sum of L_rec, L_index, L_bpr and L_c. On a mesh the step is a per-device program
under `jax.shard_map`: the batch is split over 'data', parameters are replicated and cast to
device-varying inside the step (the model's custom weight-gradient rule, `t5.matmul`, needs its
weight typed like its varying input), and the cast's transpose sums gradients across devices (the
loss is normalised by the global example count), i.e. a gradient `pmean` of per-device means.

The loop: epochs of (optionally capped) shuffled steps, batches built on the host one step ahead
in a thread, per-loss averages on a progress bar and in TensorBoard, validation by beam search
every `train.eval_every` epochs, early stopping on `eval.metric` with `train.patience`, a checkpoint
every epoch (latest N, and the best), and the best checkpoint tested at the end. A rerun on the
same workdir resumes from the latest checkpoint and continues exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import os
import queue
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from flax.training import train_state

from colarec_jax import checkpoint, decode, losses, sharding
from colarec_jax.cf.train import EvalConfig, EvalSplit, summary_writer
from colarec_jax.data import prepare as prepare_lib
from colarec_jax.data.dataset import TEST, TRAIN, VALID
from colarec_jax.data.prepare import Prepared
from colarec_jax.errors import ConfigError, UsageError
from colarec_jax.gid import sources as gid_sources
from colarec_jax.gid.table import GidTable
from colarec_jax.inputs import InputBuilder, InputConfig, epoch_order
from colarec_jax.model import pretrained
from colarec_jax.model.colarec import ColaRec, ColaRecConfig
from colarec_jax.model.t5 import TransformerConfig
from colarec_jax.recommend import DecodeConfig, Ranker

MODEL_SIZES = ("t5-small", "small", "tiny")
SCHEDULES = ("constant", "warmup_cosine")


def transformer_config(model, vocab_size: int) -> TransformerConfig:
  """config.model -> TransformerConfig (sizes, dropout, compute dtype)."""
  if model.dtype not in ("float32", "bfloat16"):
    raise ConfigError("model.dtype", f"got {model.dtype!r}, expected 'float32' or 'bfloat16'")
  if model.d_model % model.num_heads:
    raise ConfigError("model.num_heads", f"got {model.num_heads}, expected a divisor of "
                      f"model.d_model={model.d_model}")
  return TransformerConfig(
      vocab_size=vocab_size, d_model=int(model.d_model), d_ff=int(model.d_ff),
      num_heads=int(model.num_heads), d_kv=int(model.d_model) // int(model.num_heads),
      num_encoder_layers=int(model.num_encoder_layers),
      num_decoder_layers=int(model.num_decoder_layers), dropout_rate=float(model.dropout_rate),
      dtype=jnp.bfloat16 if model.dtype == "bfloat16" else jnp.float32)


def create_model(config, *, vocab_size: int, num_items: int, num_users: int) -> ColaRec:
  """The ColaRec module for `config.model` and `config.gid`."""
  return ColaRec(ColaRecConfig(transformer_config(config.model, vocab_size), num_items=num_items,
                               num_users=num_users, branching=int(config.gid.branching),
                               depth=int(config.gid.depth)))


def create_optimizer(optim, total_steps: int = 0) -> optax.GradientTransformation:
  """AdamW with global-norm clipping; constant learning rate (official) or warmup + cosine.

  Equal settings give the same transformation object, so train states of separate runs in one
  process have equal tree structures and share the compiled step.
  """
  if optim.schedule not in SCHEDULES:
    raise ConfigError("optim.schedule", f"got {optim.schedule!r}, expected one of "
                      f"{', '.join(map(repr, SCHEDULES))}")
  if optim.schedule == "warmup_cosine" and total_steps <= optim.warmup_steps:
    raise ConfigError("optim.warmup_steps", f"got {optim.warmup_steps}, expected fewer than "
                      f"the {total_steps} training steps")
  return _optimizer(float(optim.learning_rate), float(optim.weight_decay), optim.schedule,
                    int(optim.warmup_steps), int(total_steps), float(optim.grad_clip))


@functools.lru_cache(maxsize=16)
def _optimizer(learning_rate, weight_decay, schedule, warmup_steps, total_steps, grad_clip):
  lr = learning_rate
  if schedule == "warmup_cosine":
    lr = optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps, total_steps)
  return optax.chain(optax.clip_by_global_norm(grad_clip),
                     optax.inject_hyperparams(optax.adamw)(
                         learning_rate=lr, weight_decay=weight_decay))


@dataclasses.dataclass(frozen=True)
class LossWeights:
  lambda_gen: float = 0.08
  lambda_c: float = 0.1

  @classmethod
  def from_config(cls, loss) -> "LossWeights":
    return cls(float(loss.lambda_gen), float(loss.lambda_c))


def init_state(model: ColaRec, optimizer, example_batch: dict, key: jax.Array,
               mesh=None, init_from: str = "") -> train_state.TrainState:
  """Parameters initialised from one example of `example_batch`, replicated on the mesh.

  With `init_from` (a Hugging Face T5 folder) the encoder-decoder's weights are loaded from it;
  ColaRec's own parameters keep their fresh initialisation.
  """
  one = jax.tree.map(lambda x: x[:1], example_batch)
  params = jax.jit(model.init)(key, one["user"], one["item_codes"])["params"]
  if init_from:
    params = pretrained.init_from_pretrained(params, init_from, model.config.transformer)
  # No apply_fn: the step calls the model itself, and a bound method (compared by identity) would
  # give every run's state a new tree structure, hence a new compile of the same step.
  state = train_state.TrainState.create(apply_fn=None, params=params, tx=optimizer)
  # A concrete int32 step (not a Python int) so the first step's input matches later ones.
  state = state.replace(step=jnp.zeros((), jnp.int32))
  return sharding.replicate(state, mesh)


def _concat(*inputs: dict) -> dict:
  return {k: jnp.concatenate([x[k] for x in inputs]) for k in inputs[0]}


@functools.lru_cache(maxsize=8)
def make_train_step(model: ColaRec, weights: LossWeights, mesh=None):
  """Returns jitted `(state, batch, key) -> (state, metrics)`; state is donated.

  Cached by (model, weights, mesh), so runs in one process share the compiled step.

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
      index_in = _concat(batch["item"], batch["neg"], batch["pos"])
      enc_u = model.apply(variables, batch["user"], deterministic=False, rngs=rngs,
                          method=ColaRec.encode)
      enc_idx = model.apply(variables, index_in, deterministic=False, rngs=rngs,
                            method=ColaRec.encode)
      h_u = ColaRec.pool(enc_u, batch["user"]["mask"])
      h_i, h_n, h_p = jnp.split(ColaRec.pool(enc_idx, index_in["mask"]), 3)
      logits_u = model.apply(variables, enc_u, batch["user"]["mask"], batch["item_codes"],
                             deterministic=False, rngs=rngs, method=ColaRec.decode_codes)
      index_codes = jnp.concatenate([batch["item_codes"], batch["neg_codes"]])
      logits_idx = model.apply(variables, enc_idx[:2 * b], index_in["mask"][:2 * b], index_codes,
                               deterministic=False, rngs=rngs, method=ColaRec.decode_codes)
      double_mask = jnp.concatenate([mask, mask])
      parts = {
          "rec": losses.generation(logits=logits_u, codes=batch["item_codes"], mask=mask,
                                   total=total),
          "index": losses.generation(logits=logits_idx, codes=index_codes, mask=double_mask,
                                     total=total),
          "bpr": losses.pairwise(anchor=h_u, positive=h_i, negative=h_n, mask=mask, total=total),
          "contrastive": losses.pairwise(anchor=h_i, positive=h_p, negative=h_n, mask=mask,
                                         total=total),
      }
      loss = losses.total_loss(**parts, lambda_gen=weights.lambda_gen, lambda_c=weights.lambda_c)
      return loss, parts

    (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics = {"loss": loss, **parts}
    if axis is not None:
      metrics = jax.lax.psum(metrics, axis)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["learning_rate"] = jnp.asarray(
        state.opt_state[1].hyperparams["learning_rate"], jnp.float32)
    return state.apply_gradients(grads=grads), metrics

  if mesh is None:
    return jax.jit(local_step, donate_argnums=0)
  rep, dat = jax.P(), jax.P("data")
  sharded = jax.shard_map(local_step, mesh=mesh, in_specs=(rep, dat, rep), out_specs=(rep, rep))
  replicated = jax.sharding.NamedSharding(mesh, rep)
  return jax.jit(sharded, donate_argnums=0, out_shardings=replicated)


# The loop ---------------------------------------------------------------------------------------

PARAMS_STREAM, DROPOUT_STREAM = 0, 1  # jax.random.fold_in(key(seed), stream)
# Config sections a checkpoint must agree with to be resumed or evaluated (train/eval may change).
FIXED_SECTIONS = ("data", "model", "inputs", "gid", "cf", "optim", "loss", "seed")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """config.train, checked."""

  epochs: int
  steps_per_epoch: int  # 0 = every training interaction once
  eval_every: int
  patience: int
  log_every: int
  keep_checkpoints: int

  @classmethod
  def from_config(cls, t) -> "TrainConfig":
    out = cls(int(t.epochs), int(t.steps_per_epoch), int(t.eval_every), int(t.patience),
              int(t.log_every), int(t.keep_checkpoints))
    for name in ("epochs", "eval_every", "patience", "log_every", "keep_checkpoints"):
      if getattr(out, name) < 1:
        raise ConfigError(f"train.{name}", f"got {getattr(out, name)}, expected >= 1")
    if out.steps_per_epoch < 0:
      raise ConfigError("train.steps_per_epoch", f"got {out.steps_per_epoch}, expected >= 0")
    return out


@dataclasses.dataclass
class Progress:
  """Where a run is, saved with every checkpoint (JSON)."""

  epoch: int = 0  # epochs completed
  best_metric: float = -math.inf
  best_epoch: int = 0
  bad_evals: int = 0  # validations since the last improvement
  stopped: bool = False  # early stopping ended the run
  history: list = dataclasses.field(default_factory=list)  # one dict per epoch


@dataclasses.dataclass
class Context:
  """Everything a ColaRec run builds before its first step (shared by train/evaluate/recommend)."""

  config: object
  prepared: Prepared
  gids: GidTable
  builder: InputBuilder
  model: ColaRec
  mesh: object
  run_dir: str
  _eval_data: dict = dataclasses.field(default_factory=dict, repr=False)

  @property
  def checkpoint_dir(self) -> str:
    return os.path.join(self.run_dir, "checkpoints")

  def _example(self) -> dict:
    return {"user": self.builder.eval_inputs(np.asarray([1])), "item_codes": self.gids.codes[1:2]}

  def init_state(self, optimizer) -> train_state.TrainState:
    """Fresh parameters (from the config's seed) and optimizer state, placed on the mesh."""
    key = jax.random.fold_in(jax.random.key(int(self.config.seed)), PARAMS_STREAM)
    return init_state(self.model, optimizer, self._example(), key, self.mesh,
                      init_from=self.config.model.init_from)

  def abstract_params(self):
    """Shapes, dtypes and (replicated) shardings of the parameters, without initialising them."""
    one = self._example()
    shapes = jax.eval_shape(lambda: self.model.init(jax.random.key(0), one["user"],
                                                    one["item_codes"])["params"])
    placement = (jax.sharding.NamedSharding(self.mesh, jax.P()) if self.mesh is not None
                 else jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=placement),
                        shapes)

  @functools.cached_property
  def trie(self) -> decode.Trie:
    return decode.Trie.build(self.gids, DecodeConfig.from_config(self.config.eval).beam_size,
                             self.mesh)

  def eval_data(self, part: int) -> tuple[EvalSplit, dict]:
    """An evaluation split and its encoder inputs, built once per run and part."""
    if part not in self._eval_data:
      split = EvalSplit.build(self.prepared, part, EvalConfig.from_config(self.config.eval))
      self._eval_data[part] = (split, self.builder.eval_inputs(split.users))
    return self._eval_data[part]

  def ranker(self, params) -> Ranker:
    return Ranker(self.model, params, self.trie, self.builder,
                  DecodeConfig.from_config(self.config.eval), self.mesh)


def build_context(config, workdir: str, *, log=print, prepared: Prepared | None = None,
                  gids: GidTable | None = None) -> Context:
  """Prepared data, GIDs (LightGCN first when they come from it), inputs and the model.

  `prepared` and `gids`, when the caller already has them for this config, are used as given.
  """
  if config.model.init_from:  # a size mismatch fails now, not after LightGCN and the GIDs
    pretrained.check_transformer_config(transformer_config(config.model, vocab_size=1),
                                        pretrained.read_config(config.model.init_from))
  def cached_stages():
    data = prepared or prepare_lib.prepare(config, workdir, log=log)
    return data, gids or gid_sources.gids_for_config(config, data, workdir, log=log)
  prepared, gids = sharding.main_first("colarec-context", cached_stages)
  builder = InputBuilder(prepared, gids, InputConfig.from_config(
      config.inputs, prepared.item_tokens.shape[1]))
  ds = prepared.dataset
  model = create_model(config, vocab_size=prepared.vocab_size, num_items=ds.num_items,
                       num_users=ds.num_users)
  mesh = sharding.make_mesh(int(config.num_devices))
  return Context(config, prepared, gids, builder, model, mesh, os.path.join(workdir, "colarec"))


def check_batch_size(config) -> None:
  """Training splits each batch evenly over the mesh's devices (ranking pads its own batches)."""
  batch, devices = int(config.optim.batch_size), sharding.num_shards(
      sharding.make_mesh(int(config.num_devices)))
  if batch < 1 or batch % devices:
    raise ConfigError("optim.batch_size", f"got {batch}, expected a positive multiple of the "
                      f"{devices} devices that training splits it over")


def fixed_config(config) -> dict:
  """The part of the config a checkpoint is tied to, as JSON values."""
  full = json.loads(config.to_json())
  return {k: full[k] for k in FIXED_SECTIONS}


def check_compatible(config, saved: dict, where: str) -> None:
  """Raises ConfigError on the first key where `config` differs from a checkpoint's config."""
  def first_difference(now, then, prefix):
    if isinstance(now, dict) and isinstance(then, dict):
      for k in sorted(set(now) | set(then)):
        found = first_difference(now.get(k), then.get(k), f"{prefix}.{k}" if prefix else k)
        if found:
          return found
      return None
    return (prefix, now, then) if now != then else None

  found = first_difference(fixed_config(config), saved, "")
  if found:
    key, now, then = found
    raise ConfigError(key, f"got {now!r}, but the checkpoints in {where} were trained with "
                      f"{then!r}; use that value or a new --workdir")


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


def epoch_batches(ctx: Context, epoch: int, steps: int):
  """The epoch's training batches: a generator seeded by (seed, epoch), so resumes repeat it."""
  rng = np.random.default_rng([int(ctx.config.seed), epoch])
  users, items = ctx.prepared.rows(TRAIN)
  order = epoch_order(users, items, int(ctx.config.optim.batch_size), rng)
  rows = sharding.process_rows(ctx.mesh, int(ctx.config.optim.batch_size))
  for bu, bi, bm in itertools.islice(order, steps):
    yield ctx.builder.training_batch(bu, bi, bm, rng, rows)


def steps_per_epoch(ctx: Context, tc: TrainConfig) -> int:
  full = -(-len(ctx.prepared.rows(TRAIN)[0]) // int(ctx.config.optim.batch_size))
  return min(full, tc.steps_per_epoch) if tc.steps_per_epoch else full


def _find_checkpoint(ctx: Context, kind: str, epoch: int | None):
  """(manager, epoch) of the run's `kind` checkpoint (the newest, or `epoch`), checked against
  the config; None when there is none."""
  manager = checkpoint.create_manager(ctx.checkpoint_dir, kind)
  epoch = epoch if epoch is not None else (
      manager.best_step() if kind == checkpoint.BEST else manager.latest_step())
  if epoch is None:
    return None
  if epoch not in manager.all_steps():
    raise UsageError("checkpoint", f"no {kind} checkpoint for epoch {epoch} in "
                     f"{ctx.checkpoint_dir}; there are {sorted(manager.all_steps())}")
  check_compatible(ctx.config, checkpoint.restore_meta(manager, epoch)["config"],
                   ctx.checkpoint_dir)
  return manager, epoch


def restore_checkpoint(ctx: Context, kind: str, state, epoch: int | None = None):
  """(state, Progress, epoch) from the run's `kind` checkpoints, or None when there are none."""
  found = _find_checkpoint(ctx, kind, epoch)
  if found is None:
    return None
  manager, epoch = found
  restored, meta = checkpoint.restore(manager, epoch, _arrays(state))
  return state.replace(**restored), Progress(**meta["progress"]), epoch


def restore_params(ctx: Context, kind: str, epoch: int | None = None):
  """(params, epoch) of a checkpoint for ranking (the optimizer state is not read), or None."""
  found = _find_checkpoint(ctx, kind, epoch)
  if found is None:
    return None
  manager, epoch = found
  return checkpoint.restore_params(manager, epoch, ctx.abstract_params()), epoch


def _arrays(state: train_state.TrainState) -> dict:
  return {"step": state.step, "params": state.params, "opt_state": state.opt_state}


def train_and_evaluate(config, workdir: str, *, log=print, progress_bar: bool = True,
                       prepared: Prepared | None = None, gids: GidTable | None = None) -> dict:
  """Trains ColaRec (resuming from `<workdir>/colarec/checkpoints` if present) and tests it.

  `prepared` and `gids` may be passed when the caller has built them (see `build_context`).

  Returns:
    {'valid': Report, 'test': Report} of the best checkpoint.
  """
  check_batch_size(config)
  ctx = build_context(config, workdir, log=log, prepared=prepared, gids=gids)
  tc = TrainConfig.from_config(config.train)
  ev = EvalConfig.from_config(config.eval)
  DecodeConfig.from_config(config.eval)  # fail on a bad decoding key before training
  steps = steps_per_epoch(ctx, tc)
  optimizer = create_optimizer(config.optim, tc.epochs * steps)
  state = ctx.init_state(optimizer)
  progress = Progress()
  resumed = restore_checkpoint(ctx, checkpoint.LATEST, state)
  if resumed is not None:
    state, progress, _ = resumed
    log(f"resuming ColaRec after epoch {progress.epoch} from {ctx.checkpoint_dir}")
  latest = checkpoint.create_manager(ctx.checkpoint_dir, checkpoint.LATEST,
                                     max_to_keep=tc.keep_checkpoints)
  best = checkpoint.create_manager(ctx.checkpoint_dir, checkpoint.BEST)
  step_fn = make_train_step(ctx.model, LossWeights.from_config(config.loss), ctx.mesh)
  dropout_key = jax.random.fold_in(jax.random.key(int(config.seed)), DROPOUT_STREAM)
  valid, valid_inputs = ctx.eval_data(VALID)
  writer = (summary_writer(os.path.join(workdir, "tensorboard", "colarec"))
            if sharding.is_main_process() else NullWriter())
  batch_size = int(config.optim.batch_size)

  while progress.epoch < tc.epochs and not progress.stopped:
    epoch = progress.epoch
    sums, seen, start = {}, 0, time.perf_counter()
    pending = []
    bar = tqdm.tqdm(total=steps, desc=f"colarec epoch {epoch + 1}", leave=False,
                    disable=None if progress_bar else True)
    for n, batch in enumerate(prefetch(epoch_batches(ctx, epoch, steps))):
      state, metrics = step_fn(state, sharding.global_rows(batch, ctx.mesh, batch_size),
                               dropout_key)
      pending.append(metrics)
      if (n + 1) % tc.log_every and n + 1 < steps:
        continue
      # Fetch a window of step metrics at once: no host sync on every step.
      fetched = sharding.to_host(pending)
      for m in fetched:
        seen += 1
        if not np.isfinite(m["loss"]):
          raise ConfigError("optim.learning_rate",
                            _non_finite_message(ctx, m, progress.epoch, seen))
        for k, v in m.items():
          sums[k] = sums.get(k, 0.0) + float(v)
      global_step = int(epoch * steps + seen)
      for k, v in fetched[-1].items():
        writer.add_scalar(f"train/{k}", float(v), global_step)
      bar.update(len(pending))
      bar.set_postfix(loss=f"{sums['loss'] / seen:.4f}",
                      ex_s=f"{seen * batch_size / (time.perf_counter() - start):.1f}")
      pending = []
    bar.close()
    seconds = time.perf_counter() - start
    record = {"epoch": epoch + 1, "seconds": seconds,
              "examples_per_second": seen * batch_size / seconds,
              "seconds_per_step": seconds / max(seen, 1),
              **{k: v / max(seen, 1) for k, v in sums.items()}}
    evaluated = (epoch + 1) % tc.eval_every == 0 or epoch + 1 == tc.epochs
    if evaluated:
      report = ctx.ranker(state.params).evaluate(valid, valid_inputs, ev)
      value = report.overall[ev.metric]
      record.update({f"valid/{k}": v for k, v in report.overall.items()})
      for k, v in report.overall.items():
        writer.add_scalar(f"valid/{k}", v, epoch + 1)
      improved = value > progress.best_metric
      if improved:
        progress.best_metric, progress.best_epoch, progress.bad_evals = value, epoch + 1, 0
      else:
        progress.bad_evals += 1
        progress.stopped = progress.bad_evals >= tc.patience
    progress.epoch = epoch + 1
    progress.history.append(record)
    writer.flush()
    log(_epoch_line(record, ev.metric))
    meta = {"progress": dataclasses.asdict(progress), "config": fixed_config(config),
            "sampler_seed": [int(config.seed), epoch + 1]}
    checkpoint.save(latest, epoch + 1, _arrays(state), meta)
    if evaluated and improved:
      checkpoint.save(best, epoch + 1, _arrays(state), meta, score=value)
  writer.close()
  if progress.stopped:
    log(f"early stopping: no better valid {ev.metric} for {tc.patience} validations")
  return finish(ctx, progress, ev)


def finish(ctx: Context, progress: Progress, ev: EvalConfig) -> dict:
  """Tests the best checkpoint; writes metrics.json and training_curves.png into the run dir."""
  restored = restore_params(ctx, checkpoint.BEST)
  if restored is None:
    raise ConfigError("train.epochs", "no validation ran, so there is no best checkpoint")
  params, best_epoch = restored
  ranker = ctx.ranker(params)
  reports = {name: ranker.evaluate(*ctx.eval_data(part), ev)
             for name, part in (("valid", VALID), ("test", TEST))}
  if sharding.is_main_process():
    with open(os.path.join(ctx.run_dir, "metrics.json"), "w") as f:
      json.dump({"best_epoch": best_epoch, "history": progress.history,
                 **{k: r.to_json() for k, r in reports.items()}}, f, indent=1)
    plot_curves(progress.history, ev.metric, os.path.join(ctx.run_dir, "training_curves.png"))
  return reports


class NullWriter:
  """Stands in for the TensorBoard writer on processes other than the main one."""

  def add_scalar(self, *args):
    pass

  def flush(self):
    pass

  def close(self):
    pass


def _epoch_line(record: dict, metric: str) -> str:
  parts = " ".join(f"{k} {record[k]:.4f}" for k in ("loss", "rec", "index", "bpr", "contrastive")
                   if k in record)
  line = (f"colarec epoch {record['epoch']}: {parts} ({record['seconds']:.1f} s, "
          f"{record['examples_per_second']:.1f} ex/s)")
  if f"valid/{metric}" in record:
    line += f" valid {metric} {record[f'valid/{metric}']:.4f}"
  return line


def _non_finite_message(ctx: Context, metrics: dict, completed: int, step: int) -> str:
  """`completed` epochs are done, each ended by a checkpoint: the last one is the good state."""
  where = (f"the last good state is the checkpoint of epoch {completed} in {ctx.checkpoint_dir}"
           if completed else "no checkpoint was written yet")
  parts = ", ".join(f"{k} {float(v):.4g}" for k, v in metrics.items())
  return (f"the training loss became non-finite at step {step} of epoch {completed + 1} ({parts}); "
          f"{where}; expected a finite loss, try a lower learning rate")


def plot_curves(history: list[dict], metric: str, path: str) -> None:
  """Per-epoch losses and the validation metric, as a PNG."""
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
  epochs = [r["epoch"] for r in history]
  for k in ("loss", "rec", "index", "bpr", "contrastive"):
    if history and k in history[0]:
      left.plot(epochs, [r[k] for r in history], label=k)
  left.set(xlabel="epoch", ylabel="training loss (epoch mean)", yscale="log")
  left.legend()
  points = [(r["epoch"], r[f"valid/{metric}"]) for r in history if f"valid/{metric}" in r]
  if points:
    right.plot(*zip(*points), marker="o")
  right.set(xlabel="epoch", ylabel=f"valid {metric}")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
