"""A ColaRec run's parts: what training, evaluation, recommendation and new-item indexing share,
built once from the cached stages before the first step.

`build` brings the prepared data and GIDs (`run.stages`; LightGCN first when the GIDs come from
it), the input builder, the model (K and l from the GID table), the mesh and the GID trie (of
`eval.beam_size`, the one place the beam size is read). `RunParts` is a frozen bundle: a function
takes the parts it uses, and items added after training give a new bundle
(`newitems.catalogue.with_new_items`), never a changed one.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os

import jax
import jax.numpy as jnp
import numpy as np

from colarec_jax.config.settings import Settings
from colarec_jax.data.dataset import TRAIN
from colarec_jax.data.prepare import Prepared
from colarec_jax.evaluate import SIBLING_SCORES, EvalConfig, EvalSplit
from colarec_jax.gid.table import GidTable
from colarec_jax.model.colarec import ColaRec, create_model
from colarec_jax.model.inputs import InputBuilder
from colarec_jax.ranking.decode import Trie, unseen_leaves
from colarec_jax.ranking.ranker import Ranker
from colarec_jax.run import stages, store
from colarec_jax.runtime import sharding
from colarec_jax.runtime.errors import ConfigError


def make_trie(gids: GidTable, model: ColaRec, eval_cfg: EvalConfig, mesh,
              prepared: Prepared | None = None) -> Trie:
  """The GID trie searched with `eval_cfg.beam_size` beams (`eval.search_width` prefixes before
  the last step); with eval.new_item_score='sibling_mean' or 'sibling_max', items past the
  model's trained ones score their last step as their trained siblings' mean or best; with
  eval.code_prior, each level's weight times the log popularity of its codes under their prefix
  (the items' training interactions in `prepared`) joins the search's step scores.

  Raises:
    ConfigError: eval.code_prior holds neither one weight nor one per GID level.
  """
  trained = model.config.num_items
  pooled = eval_cfg.new_item_score in SIBLING_SCORES and gids.num_items > trained
  # Without added items to pool for, every trie is the plain one (one compiled search).
  known, leaf = (trained, eval_cfg.new_item_score) if pooled else (0, Trie.new_leaf)
  return Trie.build(gids, eval_cfg.beam_size, mesh, known, eval_cfg.search_width, leaf,
                    code_prior(gids, eval_cfg.code_prior, prepared, known, leaf))


def code_prior(gids: GidTable, weights: tuple[float, ...], prepared: Prepared | None,
               known_items: int = 0, new_leaf: str = Trie.new_leaf) -> np.ndarray | None:
  """[num_nodes, K + 1] the weighted log popularity the search adds under each node (the weight
  of the level its codes choose: eval.code_prior holds one per level, or one for all levels),
  or None when every weight is 0. With `known_items`, a code leading to a later item (which has
  no training interactions) takes its trained siblings' best or mean, as the decoder's own score
  does (`new_leaf`): an added item is not ranked down for being new."""
  if len(weights) == 1:
    weights = tuple(weights) * gids.depth
  if weights and len(weights) != gids.depth:
    raise ConfigError("eval.code_prior", f"got {len(weights)} weights {tuple(weights)}, expected "
                      f"one for all GID levels or one per level ({gids.depth}), or () for none")
  if not any(weights):
    return None
  if prepared is None:
    raise ValueError("eval.code_prior needs the prepared data's training interactions")
  per_node = np.append(np.asarray(weights, np.float32), 0)[gids.node_depth]  # leaves choose none
  prior = gids.code_prior(prepared.item_counts(TRAIN, gids.num_items)) * per_node[:, None]
  if known_items:
    valid = gids.children >= 0
    leaf = np.where(valid, gids.leaf_item[np.maximum(gids.children, 0)], 0)
    prior = np.asarray(unseen_leaves(jnp.asarray(prior), jnp.asarray(leaf), jnp.asarray(valid),
                                     known_items, new_leaf))
  return prior


@dataclasses.dataclass(frozen=True)
class RunParts:
  """Everything a ColaRec run builds before its first step.

  Attributes:
    prepared: the prepared dataset (items added after training appended, when there are).
    gids: the GID table of those items.
    builder: the encoder inputs' builder.
    model: the ColaRec module (sized for the items it was trained on).
    mesh: the device mesh, or None for one device.
    eval: how the run ranks (`settings.eval`).
    trie: the GID trie of `gids`, with `eval.beam_size` beams.
  """

  prepared: Prepared
  gids: GidTable
  builder: InputBuilder
  model: ColaRec
  mesh: object
  eval: EvalConfig
  trie: Trie
  # Evaluation splits and their encoder inputs, built on first use (a cache, not state).
  _eval_data: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

  def example(self) -> dict:
    """One training example's shapes, for initialising parameters."""
    return {"user": self.builder.eval_inputs(np.asarray([1])), "item_codes": self.gids.codes[1:2]}

  def abstract_params(self):
    """Shapes, dtypes and shardings of the parameters (replicated; the ID tables split by rows
    with model.shard_ids), without initialising them."""
    one = self.example()
    shapes = jax.eval_shape(lambda: self.model.init(jax.random.key(0), one["user"],
                                                    one["item_codes"])["params"])
    if self.mesh is None:
      placement = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]),
                               shapes)
    else:
      placement = sharding.state_shardings(shapes, self.mesh, self.model.config.shard_ids)
    return jax.tree.map(lambda s, p: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=p),
                        shapes, placement)

  def eval_data(self, part: int) -> tuple[EvalSplit, dict]:
    """An evaluation split and its encoder inputs, built once per part."""
    if part not in self._eval_data:
      split = EvalSplit.build(self.prepared, part, self.eval)
      self._eval_data[part] = (split, self.builder.eval_inputs(split.users))
    return self._eval_data[part]

  def with_eval(self, eval_cfg: EvalConfig) -> "RunParts":
    """These parts ranking as `eval_cfg` says (its trie built again)."""
    return dataclasses.replace(self, eval=eval_cfg, trie=make_trie(
        self.gids, self.model, eval_cfg, self.mesh, self.prepared))

  def ranker(self, params, batch_size: int = 0) -> Ranker:
    """A `Ranker` of `params` on this run's trie and mesh (`batch_size` rows per beam-search call;
    0: eval.decode_batch_size)."""
    return Ranker(self.model, params, self.trie, self.builder, self.eval, self.mesh, batch_size)

  @functools.cached_property
  def fingerprint(self) -> dict:
    """What a checkpoint was trained on beyond its config: the prepared arrays and the GIDs (of
    the items the model was built for, so items added later leave it as it is)."""
    trained = self.gids.codes[:self.model.config.num_items + 1]
    return {"data": self.prepared.manifest["files"]["arrays.npz"],
            "gids": hashlib.sha256(np.ascontiguousarray(trained)).hexdigest()}


def build(settings: Settings, workdir: str, *, log=print, prepared: Prepared | None = None,
          gids: GidTable | None = None, read_only: bool = False) -> RunParts:
  """A run's parts from its settings: prepared data, GIDs, inputs, the model, mesh and trie.

  `prepared` and `gids`, when the caller already has them for these settings, are used as given;
  `read_only` uses the cached stages as they are (the readers of a trained model) and never
  builds one.
  """
  prepared, gids = stages.data_and_gids(settings, workdir, log=log, prepared=prepared,
                                        gids=gids, read_only=read_only)
  builder = InputBuilder(prepared, gids, settings.inputs,
                         last_level_items=settings.model.tie_last_level)
  ds = prepared.dataset
  model = create_model(settings.model, vocab_size=prepared.vocab_size, num_items=ds.num_items,
                       num_users=ds.num_users, branching=gids.branching, depth=gids.depth)
  mesh = sharding.make_mesh(settings.num_devices)
  return RunParts(prepared, gids, builder, model, mesh, settings.eval,
                  make_trie(gids, model, settings.eval, mesh, prepared))


def checkpoints(parts: RunParts, settings: Settings, workdir: str) -> store.CheckpointStore:
  """The checkpoint store of the run in `workdir`, tied to `settings.fixed` and the parts'
  data and GIDs."""
  return store.CheckpointStore(store.checkpoint_dir(workdir), settings.fixed, parts.fingerprint)


def run_dir(workdir: str) -> str:
  """Where ColaRec's run writes its metrics, curves and checkpoints."""
  return os.path.join(workdir, "colarec")
