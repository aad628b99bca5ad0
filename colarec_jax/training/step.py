"""ColaRec's optimizer and its data-parallel multi-task training step.

One step, per training interaction (u, i): encoder passes over X_u and over X_i, X_i-, X_i+ (the
three indexing inputs share one pass), decoder passes X_u -> GID(i), X_i -> GID(i), X_i- -> GID(i-),
and the weighted sum of L_rec, L_index, L_bpr and L_c. On a mesh the step is a per-device program
under `jax.shard_map`: the batch is split over 'data', parameters are replicated and cast to
device-varying inside the step (the model's custom weight-gradient rule, `t5.matmul`, needs its
weight typed like its varying input), and the cast's transpose sums gradients across devices (the
loss is normalised by the global example count), i.e. a gradient `pmean` of per-device means.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from colarec_jax.config.settings import LossWeights, OptimConfig, Settings
from colarec_jax.model.colarec import ColaRec
from colarec_jax.runtime import sharding
from colarec_jax.runtime.errors import ConfigError
from colarec_jax.training import losses


def check_batch_size(settings: Settings) -> None:
  """Training splits each batch evenly over the mesh's devices (ranking pads its own batches).

  Checked once, before any stage is built: by the command line's training modes and by the
  studies runner for every arm (`train_and_evaluate` relies on it).
  """
  batch = settings.optim.batch_size
  devices = sharding.num_shards(sharding.make_mesh(settings.num_devices))
  if batch % devices:
    raise ConfigError("optim.batch_size", f"got {batch}, expected a positive multiple of the "
                      f"{devices} devices that training splits it over")


def create_optimizer(optim: OptimConfig, total_steps: int = 0) -> optax.GradientTransformation:
  """AdamW with global-norm clipping; constant learning rate (official) or warmup + cosine.

  Equal settings give the same transformation object, so train states of separate runs in one
  process have equal tree structures and share the compiled step.
  """
  optim.check_warmup(total_steps)
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


def loss_terms(model: ColaRec, weights: LossWeights, params, batch: dict, *, total=None,
               rngs: dict | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(the weighted objective, {term: value}) of one training batch: L_rec, L_index, L_bpr, L_c.

  `total` is the number of real examples the terms divide by (default: this batch's); `rngs`
  holds the dropout key, and without it the passes run deterministically (dropout off), as the
  parity test against the authors' code does. A term whose weight is 0 is not computed, nor are
  the encoder and decoder passes only it reads.
  """
  deterministic = rngs is None
  mask = batch["mask"]
  total = jnp.sum(mask) if total is None else total
  b = mask.shape[0]
  variables = {"params": params}
  encode = lambda x: model.apply(variables, x, deterministic=deterministic, rngs=rngs,
                                 method=ColaRec.encode)
  decode = lambda enc, enc_mask, codes, last_items: model.apply(
      variables, enc, enc_mask, codes, last_items, deterministic=deterministic, rngs=rngs,
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
                                     total=total, reduction=weights.generation_reduction)
  if weights.index:
    index_codes = jnp.concatenate([batch["item_codes"], batch["neg_codes"]])
    index_items = (jnp.concatenate([batch["item_last_items"], batch["neg_last_items"]])
                   if tied else None)
    logits_idx = decode(enc_idx[:2 * b], index_in["mask"][:2 * b], index_codes, index_items)
    parts["index"] = losses.generation(logits=logits_idx, codes=index_codes,
                                       mask=jnp.concatenate([mask, mask]), total=total,
                                       reduction=weights.generation_reduction)
  pair = (functools.partial(losses.pairwise, form=weights.pair_form)
          if weights.pair_negatives == "single" else losses.in_batch)
  if weights.bpr:
    h_u = ColaRec.pool(enc_u, batch["user"]["mask"])
    parts["bpr"] = pair(anchor=h_u, positive=h_i, negative=h_n, mask=mask, total=total,
                        temperature=weights.pair_temperature)
  if weights.contrastive:
    parts["contrastive"] = pair(anchor=h_i, positive=h_p[0], negative=h_n, mask=mask,
                                total=total, temperature=weights.pair_temperature)
  return losses.total_loss(parts, weights.as_dict()), parts


@functools.lru_cache(maxsize=8)
def make_train_step(model: ColaRec, weights: LossWeights, mesh=None, frozen: tuple[str, ...] = ()):
  """Returns jitted `(state, batch, key) -> (state, metrics)`; state is donated.

  The top-level parameters named in `frozen` (e.g. the ID tables started from LightGCN) keep
  their values: neither the gradient nor the weight decay moves them.

  Cached by (model, weights, mesh), so runs in one process share the compiled step; the loss is
  `loss_terms`.

  `batch` is `InputBuilder.training_batch` output (split over the mesh's 'data' axis when there
  is one); `key` is the run's dropout key, folded with the step number (and device index).
  """
  # model.shard_ids: the step is written for one device and XLA partitions it over the mesh (see
  # the end); otherwise each device runs its share under `shard_map` and sums over `data`.
  placed = mesh is not None and model.config.shard_ids
  axis = "data" if mesh is not None and not placed else None

  def local_step(state, batch, key):
    key = jax.random.fold_in(key, state.step)
    if axis is not None:
      key = jax.random.fold_in(key, jax.lax.axis_index(axis))
    mask = batch["mask"]
    total = jnp.sum(mask)
    if axis is not None:
      total = jax.lax.psum(total, axis)

    def loss_fn(params):
      if axis is not None:
        params = jax.lax.pcast(params, axis, to="varying")
      return loss_terms(model, weights, params, batch, total=total, rngs={"dropout": key})

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
  if placed:
    # The ID tables split by rows: the model looks their rows up where they live
    # (`ColaRec.id_rows`), and XLA's partitioner places the rest from the inputs' placements (the
    # batch's rows over `data`, the tables' rows over `data`, the rest replicated); the
    # constraint keeps the new state where the old one was. Same numbers as one device, to float
    # rounding.
    def placed_step(state, batch, key):
      new, metrics = local_step(state, batch, key)
      return (jax.lax.with_sharding_constraint(new, sharding.state_shardings(new, mesh, True)),
              metrics)

    jitted = jax.jit(placed_step, donate_argnums=0)

    def under_mesh(state, batch, key, method=None):
      # Traced under the mesh: the model's ID lookups split by rows. `method='lower'` lowers.
      with jax.set_mesh(mesh):
        return (jitted.lower if method == "lower" else jitted)(state, batch, key)
    under_mesh.lower = functools.partial(under_mesh, method="lower")
    return under_mesh
  rep, dat = jax.P(), jax.P("data")
  sharded = jax.shard_map(local_step, mesh=mesh, in_specs=(rep, dat, rep), out_specs=(rep, rep))
  replicated = jax.sharding.NamedSharding(mesh, rep)
  return jax.jit(sharded, donate_argnums=0, out_shardings=replicated)
