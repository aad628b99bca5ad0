"""ColaRec's initial train state: fresh parameters (or a pretrained T5 body, or LightGCN's ID
tables), the optimizer's state, placed on the mesh."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax.training import train_state

from colarec_jax.config.settings import Settings
from colarec_jax.model import pretrained
from colarec_jax.model.colarec import ColaRec
from colarec_jax.run import stages
from colarec_jax.run.parts import RunParts
from colarec_jax.runtime import sharding

PARAMS_STREAM, DROPOUT_STREAM = 0, 1  # jax.random.fold_in(key(seed), stream)


def init_state(model: ColaRec, optimizer, example_batch: dict, key: jax.Array,
               mesh=None, init_from: str = "", id_tables: dict | None = None
               ) -> train_state.TrainState:
  """Parameters initialised from one example of `example_batch`, replicated on the mesh (the ID
  tables split by rows over it with model.shard_ids).

  With `init_from` (a Hugging Face T5 folder) the encoder-decoder's weights are loaded from it;
  ColaRec's own parameters keep their fresh initialisation. `id_tables` ({'item_embed': [n, d],
  'user_embed': [m, d]}, see `id_embeddings`) replace those tables' fresh values.
  """
  one = jax.tree.map(lambda x: x[:1], example_batch)
  params = jax.jit(model.init)(key, one["user"], one["item_codes"])["params"]
  if init_from:
    params = pretrained.init_from_pretrained(params, init_from, model.config.transformer)
  for name, table in (id_tables or {}).items():
    rows, width = params[name]["embedding"].shape
    if table.shape[1] != width or not 0 < table.shape[0] <= rows:
      raise ValueError(f"{name}: got a table of shape {table.shape}, expected "
                       f"{params[name]['embedding'].shape}")
    # model.shard_ids pads the table's rows; the padding rows are never read.
    table = np.pad(np.asarray(table, np.float32), ((0, rows - table.shape[0]), (0, 0)))
    params = {**params, name: {"embedding": jnp.asarray(table)}}
  # No apply_fn: the step calls the model itself, and a bound method (compared by identity) would
  # give every run's state a new tree structure, hence a new compile of the same step.
  state = train_state.TrainState.create(apply_fn=None, params=params, tx=optimizer)
  # A concrete int32 step (not a Python int) so the first step's input matches later ones.
  state = state.replace(step=jnp.zeros((), jnp.int32))
  return sharding.place_state(state, mesh, model.config.shard_ids)


def id_embeddings(embeddings: np.ndarray, d_model: int, seed: int) -> np.ndarray:
  """LightGCN's [n + 1, d_cf] embeddings (row 0 = padding) as a [n + 1, d_model] ID table: mapped
  by a fixed random orthogonal projection when d_cf != d_model, then scaled so the real rows have
  unit variance per entry, as the random normal(1) init has. Row 0 stays zero."""
  x = np.asarray(embeddings, np.float64)
  if x.shape[1] != d_model:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((max(x.shape[1], d_model),) * 2))
    x = x @ q[:x.shape[1], :d_model]
  real = x[1:] - x[1:].mean(axis=0)
  scale = real.std() or 1.0
  out = np.zeros_like(x)
  out[1:] = real / scale
  return out.astype(np.float32)


def initial_state(parts: RunParts, settings: Settings, workdir: str, optimizer,
                  log=print) -> train_state.TrainState:
  """A run's fresh parameters (from its seed) and optimizer state, placed on the mesh; the ID
  tables from LightGCN (trained or reused in `workdir`) when `model.id_init` says so."""
  key = jax.random.fold_in(jax.random.key(settings.seed), PARAMS_STREAM)
  tables = None
  if settings.model.id_init == "lightgcn":
    cf = stages.lightgcn(settings, parts.prepared, workdir, log=log)
    d, seed = settings.model.d_model, settings.seed
    tables = {"item_embed": id_embeddings(cf.item_embeddings, d, seed),
              "user_embed": id_embeddings(cf.user_embeddings, d, seed)}
  return init_state(parts.model, optimizer, parts.example(), key, parts.mesh,
                    init_from=settings.model.init_from, id_tables=tables)
