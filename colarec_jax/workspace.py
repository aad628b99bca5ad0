"""A ColaRec run's parts, built from its settings and workdir before the first step, and its
checkpoints: what training, evaluation, recommendation and the decode benchmark share.

`Workspace.build` brings the cached stages (data, GIDs), the input builder, the model (K and l
from the GID table), the mesh, and, on demand, the GID trie, the evaluation splits and a
`Ranker`. `with_new_items` adds items indexed after training (`gid.overlay`) to what it ranks. Checkpoints live in `<workdir>/colarec/checkpoints/` and are tied to the config
sections in `settings.FIXED_SECTIONS`: a checkpoint trained with other values is refused.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax.training import train_state

from colarec_jax import checkpoint, decode, runconfig, sharding, stages
from colarec_jax.data.fileio import first_difference
from colarec_jax.data.prepare import Prepared
from colarec_jax.errors import ConfigError, UsageError
from colarec_jax.evaluate import EvalSplit
from colarec_jax.gid import overlay
from colarec_jax.gid.table import GidTable
from colarec_jax.inputs import InputBuilder
from colarec_jax.model import pretrained
from colarec_jax.model.colarec import ColaRec, create_model
from colarec_jax.progress import Progress
from colarec_jax.recommend import Ranker
from colarec_jax.settings import Settings

PARAMS_STREAM, DROPOUT_STREAM = 0, 1  # jax.random.fold_in(key(seed), stream)


def init_state(model: ColaRec, optimizer, example_batch: dict, key: jax.Array,
               mesh=None, init_from: str = "", id_tables: dict | None = None
               ) -> train_state.TrainState:
  """Parameters initialised from one example of `example_batch`, replicated on the mesh.

  With `init_from` (a Hugging Face T5 folder) the encoder-decoder's weights are loaded from it;
  ColaRec's own parameters keep their fresh initialisation. `id_tables` ({'item_embed': [n, d],
  'user_embed': [m, d]}, see `id_embeddings`) replace those tables' fresh values.
  """
  one = jax.tree.map(lambda x: x[:1], example_batch)
  params = jax.jit(model.init)(key, one["user"], one["item_codes"])["params"]
  if init_from:
    params = pretrained.init_from_pretrained(params, init_from, model.config.transformer)
  for name, table in (id_tables or {}).items():
    if table.shape != params[name]["embedding"].shape:
      raise ValueError(f"{name}: got a table of shape {table.shape}, expected "
                       f"{params[name]['embedding'].shape}")
    params = {**params, name: {"embedding": jnp.asarray(table, jnp.float32)}}
  # No apply_fn: the step calls the model itself, and a bound method (compared by identity) would
  # give every run's state a new tree structure, hence a new compile of the same step.
  state = train_state.TrainState.create(apply_fn=None, params=params, tx=optimizer)
  # A concrete int32 step (not a Python int) so the first step's input matches later ones.
  state = state.replace(step=jnp.zeros((), jnp.int32))
  return sharding.replicate(state, mesh)


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


def check_batch_size(settings: Settings) -> None:
  """Training splits each batch evenly over the mesh's devices (ranking pads its own batches)."""
  batch = settings.optim.batch_size
  devices = sharding.num_shards(sharding.make_mesh(settings.num_devices))
  if batch % devices:
    raise ConfigError("optim.batch_size", f"got {batch}, expected a positive multiple of the "
                      f"{devices} devices that training splits it over")


def check_compatible(settings: Settings, saved: dict, where: str) -> None:
  """Raises ConfigError on the first key where the settings differ from a checkpoint's config.

  A key the checkpoint's config lacks (added to the code after it was trained) counts as its
  default value then: a newer version keeps reading older checkpoints.
  """
  full = json.loads(runconfig.on_base(saved, where).to_json())
  found = first_difference(settings.fixed, {k: full[k] for k in settings.fixed})
  if found:
    key, now, then = found
    raise ConfigError(key, f"got {now!r}, but the checkpoints in {where} were trained with "
                      f"{then!r}; use that value or a new --workdir")


def state_arrays(state: train_state.TrainState) -> dict:
  """What a checkpoint saves of a train state."""
  return {"step": state.step, "params": state.params, "opt_state": state.opt_state}


@dataclasses.dataclass
class Workspace:
  """Everything a ColaRec run builds before its first step (shared by train/evaluate/recommend)."""

  settings: Settings
  prepared: Prepared
  gids: GidTable
  builder: InputBuilder
  model: ColaRec
  mesh: object
  run_dir: str
  _eval_data: dict = dataclasses.field(default_factory=dict, repr=False)

  @classmethod
  def build(cls, settings: Settings, workdir: str, *, log=print, prepared: Prepared | None = None,
            gids: GidTable | None = None, read_only: bool = False) -> "Workspace":
    """Prepared data, GIDs (LightGCN first when they come from it), inputs and the model.

    `prepared` and `gids`, when the caller already has them for these settings, are used as given;
    `read_only` uses the cached stages as they are (evaluate, recommend) and never builds one.
    """
    prepared, gids = stages.data_and_gids(settings, workdir, log=log, prepared=prepared,
                                          gids=gids, read_only=read_only)
    builder = InputBuilder(prepared, gids, settings.inputs,
                           last_level_items=settings.model.tie_last_level)
    ds = prepared.dataset
    model = create_model(settings.model, vocab_size=prepared.vocab_size, num_items=ds.num_items,
                         num_users=ds.num_users, branching=gids.branching, depth=gids.depth)
    mesh = sharding.make_mesh(settings.num_devices)
    return cls(settings, prepared, gids, builder, model, mesh, os.path.join(workdir, "colarec"))

  @property
  def checkpoint_dir(self) -> str:
    return os.path.join(self.run_dir, "checkpoints")

  def _example(self) -> dict:
    return {"user": self.builder.eval_inputs(np.asarray([1])), "item_codes": self.gids.codes[1:2]}

  def init_state(self, optimizer, log=print) -> train_state.TrainState:
    """Fresh parameters (from the seed) and optimizer state, placed on the mesh; the ID tables
    from LightGCN when `model.id_init` says so."""
    key = jax.random.fold_in(jax.random.key(self.settings.seed), PARAMS_STREAM)
    tables = None
    if self.settings.model.id_init == "lightgcn":
      cf = stages.lightgcn(self.settings, self.prepared, os.path.dirname(self.run_dir), log=log)
      d, seed = self.settings.model.d_model, self.settings.seed
      tables = {"item_embed": id_embeddings(cf.item_embeddings, d, seed),
                "user_embed": id_embeddings(cf.user_embeddings, d, seed)}
    return init_state(self.model, optimizer, self._example(), key, self.mesh,
                      init_from=self.settings.model.init_from, id_tables=tables)

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
    """The GID trie; with eval.new_item_score='sibling_mean', items added after training score
    their last step as their trained siblings' mean."""
    trained = self.model.config.num_items
    known = (trained if self.settings.eval.new_item_score == "sibling_mean"
             and self.gids.num_items > trained else 0)
    return decode.Trie.build(self.gids, self.settings.eval.beam_size, self.mesh, known)

  def eval_data(self, part: int) -> tuple[EvalSplit, dict]:
    """An evaluation split and its encoder inputs, built once per run and part."""
    if part not in self._eval_data:
      split = EvalSplit.build(self.prepared, part, self.settings.eval)
      self._eval_data[part] = (split, self.builder.eval_inputs(split.users))
    return self._eval_data[part]

  def ranker(self, params, batch_size: int = 0) -> Ranker:
    """A `Ranker` of `params` on this run's trie and mesh (`batch_size` rows per beam-search call;
    0: eval.decode_batch_size)."""
    return Ranker(self.model, params, self.trie, self.builder, self.settings.eval, self.mesh,
                  batch_size)

  # Checkpoints ----------------------------------------------------------------------------------

  @functools.cached_property
  def fingerprint(self) -> dict:
    """What a checkpoint was trained on beyond its config: the prepared arrays and the GIDs (of
    the items the model was built for, so items added later leave it as it is)."""
    trained = self.gids.codes[:self.model.config.num_items + 1]
    return {"data": self.prepared.manifest["files"]["arrays.npz"],
            "gids": hashlib.sha256(np.ascontiguousarray(trained)).hexdigest()}

  def new_items(self, workdir: str) -> overlay.NewItems | None:
    """The items added to this workdir after training (`--mode=add_items`), or None."""
    return overlay.NewItems.load(workdir, self.fingerprint)

  def with_new_items(self, new: overlay.NewItems | None) -> Workspace:
    """A workspace that also ranks `new` (items num_items + 1, ...): they join the dataset's
    item table, the GID table and trie, and the inputs (with the unknown-item token in their ID
    slot). The model and its checkpoints are unchanged; interactions do not involve them."""
    if not new:
      return self
    ds = self.prepared.dataset
    dataset = dataclasses.replace(ds, item_ids=np.concatenate([ds.item_ids, new.item_ids]),
                                  item_text=np.concatenate([ds.item_text, new.item_text]))
    prepared = dataclasses.replace(
        self.prepared, dataset=dataset,
        item_tokens=np.concatenate([self.prepared.item_tokens, new.tokens]),
        item_token_len=np.concatenate([self.prepared.item_token_len, new.token_len]))
    gids = overlay.extend(self.gids, new.codes)
    return dataclasses.replace(self, prepared=prepared, gids=gids, _eval_data={},
                               builder=self.builder.with_items(new.tokens, prepared.pad_id, gids))

  def meta(self, run: Progress, **extra) -> dict:
    """A checkpoint's JSON part: the run's progress, the config and the fingerprint."""
    return {"progress": dataclasses.asdict(run), "config": self.settings.fixed,
            "fingerprint": self.fingerprint, **extra}

  def manager(self, kind: str, **options):
    return checkpoint.create_manager(self.checkpoint_dir, kind, **options)

  def _check_meta(self, meta: dict) -> None:
    """Refuses a checkpoint of another config, or trained on other data or GIDs."""
    check_compatible(self.settings, meta["config"], self.checkpoint_dir)
    saved = meta.get("fingerprint", {})
    for what, name in (("data", "prepared data (data/arrays.npz)"), ("gids", "GIDs (gid/)")):
      if saved.get(what) != self.fingerprint[what]:
        raise UsageError("workdir", f"the checkpoints in {self.checkpoint_dir} were trained on "
                         f"other {name} than the workdir holds now; train in a new --workdir")

  def clean_unfinished(self, log) -> None:
    """Training only (the workdir's writer): drops the temporary folders of killed saves."""
    for path in checkpoint.remove_unfinished(self.checkpoint_dir):
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

  def restore_params(self, kind: str, epoch: int | None = None):
    """(params, epoch) of a checkpoint for ranking (the optimizer state is not read), or None.

    Raises:
      UsageError: the checkpoint asked for does not exist or is damaged.
    """
    manager = self.manager(kind)
    epoch = epoch if epoch is not None else (
        manager.best_step() if kind == checkpoint.BEST else manager.latest_step())
    if epoch is None:
      return None
    if epoch not in manager.all_steps():
      raise UsageError("checkpoint", f"no {kind} checkpoint for epoch {epoch} in "
                       f"{self.checkpoint_dir}; there are {sorted(manager.all_steps())}")
    problem = checkpoint.damage(manager, epoch)
    if problem:
      raise UsageError("checkpoint", f"the {kind} checkpoint of epoch {epoch} in "
                       f"{self.checkpoint_dir} is damaged ({problem}); --mode=train repairs the "
                       "best one from the latest, or use --checkpoint=latest")
    self._check_meta(checkpoint.restore_meta(manager, epoch))
    return checkpoint.restore_params(manager, epoch, self.abstract_params()), epoch
