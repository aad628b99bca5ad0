"""ColaRec's multi-task train step: model and optimizer factories, and the data-parallel step.

One step, per training interaction (u, i): encoder passes over X_u and over X_i, X_i-, X_i+ (the
three indexing inputs share one pass), decoder passes X_u -> GID(i), X_i -> GID(i), X_i- -> GID(i-),
and the weighted sum of L_rec, L_index, L_bpr and L_c. On a mesh the step is a per-device program
under `jax.shard_map`: the batch is split over 'data', parameters are replicated, and gradients are
summed across devices by the replicated-parameter transpose (the loss is normalised by the global
example count), i.e. a gradient `pmean` of per-device means.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from colarec_jax import losses, sharding
from colarec_jax.errors import ConfigError
from colarec_jax.model.colarec import ColaRec, ColaRecConfig
from colarec_jax.model.t5 import TransformerConfig

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
  """AdamW with global-norm clipping; constant learning rate (official) or warmup + cosine."""
  if optim.schedule == "constant":
    lr = optim.learning_rate
  elif optim.schedule == "warmup_cosine":
    if total_steps <= optim.warmup_steps:
      raise ConfigError("optim.warmup_steps", f"got {optim.warmup_steps}, expected fewer than "
                        f"the {total_steps} training steps")
    lr = optax.warmup_cosine_decay_schedule(0.0, optim.learning_rate, optim.warmup_steps,
                                            total_steps)
  else:
    raise ConfigError("optim.schedule", f"got {optim.schedule!r}, expected one of "
                      f"{', '.join(map(repr, SCHEDULES))}")
  return optax.chain(optax.clip_by_global_norm(optim.grad_clip),
                     optax.inject_hyperparams(optax.adamw)(
                         learning_rate=lr, weight_decay=optim.weight_decay))


@dataclasses.dataclass(frozen=True)
class LossWeights:
  lambda_gen: float = 0.08
  lambda_c: float = 0.1


def init_state(model: ColaRec, optimizer, example_batch: dict, key: jax.Array,
               mesh=None) -> train_state.TrainState:
  """Parameters initialised from one example of `example_batch`, replicated on the mesh."""
  one = jax.tree.map(lambda x: x[:1], example_batch)
  params = jax.jit(model.init)(key, one["user"], one["item_codes"])["params"]
  state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optimizer)
  # A concrete int32 step (not a Python int) so the first step's input matches later ones.
  state = state.replace(step=jnp.zeros((), jnp.int32))
  return sharding.replicate(state, mesh)


def _concat(*inputs: dict) -> dict:
  return {k: jnp.concatenate([x[k] for x in inputs]) for k in inputs[0]}


def make_train_step(model: ColaRec, weights: LossWeights, mesh=None):
  """Returns jitted `(state, batch, key) -> (state, metrics)`; state is donated.

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
