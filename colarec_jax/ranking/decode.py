"""Constrained beam search over GIDs: every returned code sequence is an item's GID.

One compiled call per batch of users: the encoder runs once per user, the decoder's cross-attention
keys/values are computed once per user and shared by all of its beams, and the decoder then takes
exactly l cached steps. At each step the codes that extend no real item's GID get -inf after the
log-softmax (official; `renormalize=True` masks before the softmax instead). Beams carry their node
in the GID trie (`GidTable.children`), so the validity mask of a step is one dense row gather.

Items added after training (`gid.overlay`) hold a last code the decoder never learned for them.
With `new_item_score='sibling_mean'` (the trie's `known_items` > 0, `new_leaf`), the last step
scores such an item by the mean probability of its trained siblings' codes (an average item of its
leaf parent) instead of the decoder's probability of its own code; 'sibling_max' by its best
trained sibling's (an unseen leaf is not penalised; the encoder's term, `eval.encoder_weight`,
then orders it against that sibling); 'model' keeps the decoder's own.
With `added_candidates` each input's best m added items by h(X_u).h(X_i) are also scored beside
the beam, by the search's own cached steps forced along their codes (`_added_candidates`).
A trie with a `prior` (`eval.code_prior`) adds to every step's log-probabilities its node's row,
the weighted log popularity of each code under the beam's prefix (`GidTable.code_prior`).

Beam widths grow with the tree: step t can only hold as many distinct prefixes as the trie has
nodes at depth t, at most K^t, so widths are 1, min(beam, K), ... and the first steps are cheap.
A `search_width` wider than the beam keeps that many prefixes at the steps before the last (the
last still returns `beam_size` items): at least the trie's nodes at depth l-1 (K^(l-1) at most,
1,024 at K=32, l=3) makes the search exact, the best `beam_size` of every valid GID.
Steps of equal width run in a `lax.fori_loop` over a `BeamState`; a step that widens the beam
changes the state's shape and is traced on its own.

On CPU the encoder runs over the batch in sequential chunks (`encoder_chunks`) whose [tokens,
d_ff] feed-forward activation is at most `CPU_CHUNK_BYTES`, so that it stays in the last-level
cache between the two feed-forward matmuls.
Accelerators encode the batch whole.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from colarec_jax.gid.table import GidTable
from colarec_jax.model.colarec import ColaRec
from colarec_jax.runtime import sharding as sharding_lib

SELF_CACHE = ("cached_key", "cached_value")  # self-attention cache leaves: one row per beam
CPU_CHUNK_BYTES = 8 << 20  # an encoder chunk's feed-forward activation on CPU: 1024 x 2048 f32


@flax.struct.dataclass
class BeamState:
  """The search after some steps.

  Attributes:
    scores: [b, w] summed log-probabilities of each beam's prefix (-inf: no beam).
    nodes: [b, w] trie node of each prefix (the extra 'dead' node for -inf beams).
    codes: [b, w, l] codes so far (0 beyond the current step).
    cache: the decoder cache; self-attention rows are [b * w, ...], cross-attention rows [b, ...].
  """

  scores: jax.Array
  nodes: jax.Array
  codes: jax.Array
  cache: Any


@dataclasses.dataclass(frozen=True)
class Trie:
  """The GID trie as device arrays (from `GidTable`), with a dead node appended.

  Attributes:
    children: [num_nodes + 1, K + 1] next node per code, -1 where the code is invalid; the last
      row (the dead node) is all -1.
    leaf_item: [num_nodes + 1] item at a leaf, else 0.
    widths: beam width before each step and after the last, (1, ..., w_l), given the beam size
      (and `build`'s search width).
    beam_size: beams kept per input (official 100): the searches over this trie return as many.
    known_items: 0, or the items the model was trained on: leaves of later items then score as
      their trained siblings' mean or best (`new_leaf`; see the module docstring).
    new_leaf: 'sibling_mean' or 'sibling_max', how those leaves score.
    prior: None, or [num_nodes + 1, K + 1] float32 added to the log-probabilities of the codes
      under each node (0 for the dead node).
  """

  children: jax.Array
  leaf_item: jax.Array
  widths: tuple[int, ...]
  beam_size: int
  known_items: int = 0
  new_leaf: str = "sibling_mean"
  prior: jax.Array | None = None

  @classmethod
  def build(cls, gids: GidTable, beam_size: int, mesh: jax.sharding.Mesh | None = None,
            known_items: int = 0, search_width: int = 0,
            new_leaf: str = "sibling_mean", prior: np.ndarray | None = None) -> "Trie":
    """The arrays go on every device of `mesh` once, not to the devices on every search.
    `known_items` > 0 scores the leaves of items after them as their siblings' best or mean
    (`new_leaf`);
    `search_width` > `beam_size` keeps that many prefixes before the last step;
    `prior` ([num_nodes, K + 1]) is added to each step's log-probabilities under each node."""
    dead = np.full((1, gids.branching + 1), -1, np.int32)
    per_depth = np.bincount(gids.node_depth, minlength=gids.depth + 1)
    widths = [1]
    for t in range(1, gids.depth + 1):
      kept = beam_size if t == gids.depth else max(beam_size, search_width)
      widths.append(int(min(kept, widths[-1] * gids.branching, per_depth[t])))
    arrays = (np.concatenate([gids.children, dead]), np.append(gids.leaf_item, 0).astype(np.int32))
    if prior is not None:
      arrays += (np.concatenate([prior, np.zeros_like(dead, np.float32)]).astype(np.float32),)
    arrays = tuple(map(jnp.asarray, sharding_lib.replicate(arrays, mesh)))
    return cls(*arrays[:2], tuple(widths), int(beam_size), int(known_items), new_leaf,
               arrays[2] if prior is not None else None)

  @property
  def dead(self) -> int:
    return self.children.shape[0] - 1


# Pads `blocked_nodes` rows: larger than any node id, so no child ever matches it.
NO_NODE = np.iinfo(np.int32).max
# The narrowest `blocked_nodes` width: every batch of users with up to ~60 excluded items each
# (4 nodes per item at l=4) has this one shape, so the search compiles once for them.
MIN_BLOCKED = 256


def blocked_width(most_items: int, depth: int) -> int:
  """The `blocked_nodes` width that holds any row of at most `most_items` excluded items (each
  blocks at most its `depth` path nodes): a power of two, at least `MIN_BLOCKED`."""
  return max(MIN_BLOCKED, 1 << max(0, most_items * depth - 1).bit_length())


def blocked_nodes(gids: GidTable, exclude: list[np.ndarray], width: int = 0) -> np.ndarray:
  """[len(exclude), m] int32: per row, the sorted trie nodes all of whose items are in the row's
  `exclude` (leaves of excluded items and the subtrees they fill), padded with `NO_NODE` to m: `width`,
  or when 0 the smallest power of two that holds the longest row and at least `MIN_BLOCKED` (few
  shapes, few compiles; a caller ranking many batches passes one `blocked_width` for all).

  The cost is in the excluded items (their paths), not the catalogue: a dense row per user over
  every trie node made each request's work and transfer grow with the catalogue
  (bench/results/scale.json).
  """
  paths = gids.item_paths
  leaves_under = gids.leaves_under
  rows = []
  for items in exclude:
    items = np.asarray(items, np.int64)
    items = items[(items > 0) & (items <= gids.num_items)]
    nodes, counts = np.unique(paths[items].ravel(), return_counts=True)
    rows.append(nodes[counts == leaves_under[nodes]])
  longest = max((len(r) for r in rows), default=0)
  width = width or blocked_width(longest, 1)
  if longest > width:
    raise ValueError(f"width {width} cannot hold a row of {longest} blocked nodes")
  out = np.full((len(rows), width), NO_NODE, np.int32)
  for n, row in enumerate(rows):
    out[n, :len(row)] = row
  return out


def _is_blocked(blocked: jax.Array, nodes: jax.Array) -> jax.Array:
  """[b, n] bool: whether each of `nodes` [b, n] is in its row of `blocked` [b, m] (sorted)."""
  at = jax.vmap(jnp.searchsorted)(blocked, nodes)
  return jnp.take_along_axis(blocked, jnp.minimum(at, blocked.shape[1] - 1), axis=1) == nodes


def _reorder_cache(cache, parent: jax.Array):
  """Self-attention cache rows follow their beams: [b * w, ...] -> [b * w', ...] by `parent`.

  Args:
    cache: the decoder cache collection.
    parent: [b, w'] index of each new beam's parent among the w old beams.
  """
  b, new_width = parent.shape

  def gather(path, leaf):
    if getattr(path[-1], "key", None) not in SELF_CACHE:
      return leaf  # cross keys/values are per user; the step index is shared
    rows = leaf.reshape((b, -1) + leaf.shape[1:])
    picked = jnp.take_along_axis(rows, parent.reshape((b, new_width) + (1,) * (leaf.ndim - 1)),
                                 axis=1)
    return picked.reshape((b * new_width,) + leaf.shape[1:])

  return jax.tree_util.tree_map_with_path(gather, cache)


def encoder_chunks(rows: int, length: int, token_bytes: int, *, shards: int = 1,
                   platform: str = "cpu") -> int:
  """How many sequential chunks `_encode` splits a [rows, length] batch into.

  Args:
    rows, length: the batch's shape.
    token_bytes: bytes of feed-forward activation per token (d_ff x the compute dtype's size).
    shards: devices the rows are split over (contiguous blocks).
    platform: 'cpu', 'gpu', 'tpu'.

  Returns:
    One on accelerators. On CPU, the fewest chunks that divide each device's rows and whose
    per-device activation is at most `CPU_CHUNK_BYTES` (or one row per chunk, if a row is more).
  """
  local = rows // shards
  tokens = CPU_CHUNK_BYTES // token_bytes
  if platform != "cpu" or local * length <= tokens:
    return 1
  most_rows = max(1, tokens // length)
  return next(c for c in range(1, local + 1) if local % c == 0 and local // c <= most_rows)


def _encode(model: ColaRec, params, inputs: dict, chunks: int) -> jax.Array:
  """Encoder states [b, L, d], computed in `chunks` sequential pieces of b / chunks rows.

  Chunk j holds rows j, j + chunks, ...: when the rows are sharded over devices in contiguous
  blocks (and each block divides into `chunks`), every chunk keeps each device's rows local.
  """
  encode = lambda x: model.apply({"params": params}, x, method=ColaRec.encode)
  if chunks == 1:
    return encode(inputs)
  b = inputs["mask"].shape[0]
  split = lambda a: jnp.swapaxes(a.reshape((b // chunks, chunks) + a.shape[1:]), 0, 1)
  encoded = jax.lax.map(encode, jax.tree.map(split, inputs))
  return jnp.swapaxes(encoded, 0, 1).reshape((b,) + encoded.shape[2:])


def _extensions(model: ColaRec, params, trie: Trie, encoded, mask, state: BeamState, position,
                renormalize: bool, blocked=None):
  """One cached decoder step for every beam: (log-probabilities [b, w, K + 1] of each extension
  as the search scores them, the stepped cache). Invalid codes get -inf (after the log-softmax,
  official; before it with `renormalize`), as do codes leading to a `blocked` node ([b, m] sorted
  node ids, `blocked_nodes`, or None); codes leading to added items take their trained siblings'
  best or mean with `trie.known_items` (`trie.new_leaf`); then the trie's `prior` row of each
  beam's node is added."""
  b, width = state.scores.shape
  k1 = trie.children.shape[1]
  previous = jnp.where(position > 0,
                       jnp.take(state.codes, jnp.maximum(position - 1, 0), axis=2), 0)
  child = trie.children[state.nodes]  # [b, w, K + 1]
  # model.tie_last_level: the item each code leads to (the dead node's 0 where none, and before
  # the last level, where codes lead to inner nodes).
  next_items = (trie.leaf_item[child].reshape(b * width, k1)
                if model.config.tie_last_level else None)
  codes = state.codes.reshape(b * width, -1) if model.config.prefix_embed else None
  logits, mutated = model.apply({"params": params, "cache": state.cache}, encoded, mask,
                                previous.reshape(-1), position, next_items, codes,
                                method=ColaRec.decode_step, mutable=["cache"])
  logits = logits.reshape(b, width, k1)
  valid = child >= 0
  if blocked is not None:
    closed = _is_blocked(blocked, jnp.maximum(child, 0).reshape(b, width * k1))
    valid &= ~closed.reshape(b, width, k1)
  if renormalize:
    logp = jax.nn.log_softmax(jnp.where(valid, logits, -jnp.inf), axis=-1)
  else:
    logp = jnp.where(valid, jax.nn.log_softmax(logits, axis=-1), -jnp.inf)
  if trie.known_items:
    logp = unseen_leaves(logp, trie.leaf_item[child], valid, trie.known_items, trie.new_leaf)
  if trie.prior is not None:
    logp = logp + trie.prior[state.nodes]
  return logp, mutated["cache"]


def _advance(trie: Trie, state: BeamState, scores, parent, code, cache, position) -> BeamState:
  """The beams [b, w'] that extend beam `parent` by `code`, with summed `scores`."""
  nodes = trie.children[jnp.take_along_axis(state.nodes, parent, axis=1), code]
  nodes = jnp.where(jnp.isfinite(scores) & (nodes >= 0), nodes, trie.dead)
  codes = jnp.take_along_axis(state.codes, parent[..., None], axis=1)
  codes = codes.at[:, :, position].set(jnp.where(nodes == trie.dead, 0, code))
  return BeamState(scores, nodes, codes, _reorder_cache(cache, parent))


def _step(model: ColaRec, params, trie: Trie, encoded, mask, state: BeamState, position,
          new_width: int, renormalize: bool, blocked=None) -> BeamState:
  """Extends every beam by one code and keeps the best `new_width` of all extensions."""
  b, width = state.scores.shape
  k1 = trie.children.shape[1]
  logp, cache = _extensions(model, params, trie, encoded, mask, state, position, renormalize,
                            blocked)
  candidates = (state.scores[..., None] + logp).reshape(b, width * k1)
  scores, flat = jax.lax.top_k(candidates, new_width)
  return _advance(trie, state, scores, flat // k1, flat % k1, cache, position)


def unseen_leaves(logp: jax.Array, leaf: jax.Array, valid: jax.Array, known_items: int,
                  how: str) -> jax.Array:
  """Log-probabilities [b, w, K + 1] where each code leading to an item after `known_items` takes
  the best log-probability of the codes leading to trained items of the same node
  (`how='sibling_max'`), or the log of their mean probability ('sibling_mean').

  Args:
    logp: the step's masked log-probabilities.
    leaf: [b, w, K + 1] item at the node each code leads to (0: none, or not a leaf).
    valid: [b, w, K + 1] codes that lead somewhere.
    known_items: items with trained last codes.
    how: 'sibling_max' or 'sibling_mean'.
  """
  new = valid & (leaf > known_items)
  trained = valid & ~new
  count = jnp.sum(trained, axis=-1, keepdims=True)
  siblings = jnp.where(trained, logp, -jnp.inf)
  if how == "sibling_max":
    score = jnp.max(siblings, axis=-1, keepdims=True)
  else:
    score = jax.nn.logsumexp(siblings, axis=-1, keepdims=True) - jnp.log(jnp.maximum(count, 1))
  return jnp.where(new & (count > 0), score, logp)


@functools.partial(jax.jit, static_argnames=("model", "widths", "beam_size", "renormalize",
                                             "chunks", "steps", "known_items", "new_leaf", "pooled",
                                             "added_count"))
def _search(params, inputs, children, leaf_item, blocked=None, added=None, prior=None, *,
            model: ColaRec, widths: tuple[int, ...], beam_size: int, renormalize: bool,
            chunks: int, steps: int, known_items: int = 0, new_leaf: str = "sibling_mean",
            pooled: bool = False, added_count: int = 0):
  trie = Trie(children, leaf_item, widths, beam_size, known_items, new_leaf, prior)
  depth = steps
  encoded = _encode(model, params, inputs, chunks)
  mask = inputs["mask"]
  decoder = model.clone(decode=True)
  _, init = decoder.apply({"params": params}, encoded, mask, method=ColaRec.init_cache,
                          mutable=["cache"])
  b = encoded.shape[0]
  state = BeamState(scores=jnp.zeros((b, 1)), nodes=jnp.zeros((b, 1), jnp.int32),
                    codes=jnp.zeros((b, 1, depth), jnp.int32), cache=init["cache"])
  start = state
  step = functools.partial(_step, decoder, params, trie, encoded, mask,
                           renormalize=renormalize, blocked=blocked)
  t = 0
  while t < depth:
    if widths[t + 1] != widths[t]:
      state = step(state, jnp.int32(t), new_width=widths[t + 1])
      t += 1
      continue
    end = t
    while end < depth and widths[end + 1] == widths[t]:
      end += 1
    state = jax.lax.fori_loop(t, end, lambda i, s: step(s, i, new_width=widths[t]), state)
    t = end
  items = jnp.where(jnp.isfinite(state.scores), trie.leaf_item[state.nodes], 0)
  pad = beam_size - items.shape[1]
  items = jnp.pad(items, ((0, 0), (0, pad)))
  scores = jnp.pad(state.scores, ((0, 0), (0, pad)), constant_values=-jnp.inf)
  codes = jnp.pad(state.codes, ((0, 0), (0, pad), (0, 0)))
  out = (items, scores, codes)
  if added_count:
    out += _added_candidates(decoder, params, trie, encoded, mask, start, added, added_count,
                             renormalize)
  if pooled:
    out += (ColaRec.pool(encoded, mask).astype(jnp.float32),)
  return out


def _added_candidates(model: ColaRec, params, trie: Trie, encoded, mask, start: BeamState,
                      added, count: int, renormalize: bool):
  """Each input's best `m` added items by h(X_u).h(X_i), and their GID log-probabilities: the
  search's own cached steps (`_extensions`, the cross keys/values shared with the beams), each
  beam forced along one candidate's codes, so an item scores here as when the search returns it.

  Args:
    model: the decoding copy of the module.
    start: the search's state before its first step.
    added: ([A] int32 added item ids, [A, l] their codes, [A, d] their pooled encodings h(X_i)).
    count: m (at most A are taken).

  Returns:
    ([b, m] items, [b, m] log-probabilities, -inf where a GID is not valid).
  """
  ids, item_codes, encodings = added
  m = min(count, ids.shape[0])
  b, k1 = encoded.shape[0], trie.children.shape[1]
  users = ColaRec.pool(encoded, mask).astype(jnp.float32)
  _, best = jax.lax.top_k(users @ encodings.T, m)  # [b, m]
  codes, state = item_codes[best], start
  for t in range(codes.shape[2]):
    logp, cache = _extensions(model, params, trie, encoded, mask, state, jnp.int32(t),
                              renormalize)
    parent = jnp.broadcast_to(jnp.arange(m) if t else jnp.zeros(m, jnp.int32), (b, m))
    scores = (jnp.take_along_axis(state.scores, parent, axis=1)
              + jnp.take_along_axis(logp.reshape(b, -1), parent * k1 + codes[:, :, t], axis=1))
    state = _advance(trie, state, scores, parent, codes[:, :, t], cache, t)
  return ids[best], state.scores


def beam_search(model: ColaRec, params, inputs: dict, trie: Trie, *, renormalize: bool = False,
                steps: int | None = None, blocked: jax.Array | None = None,
                pooled: bool = False, added: tuple | None = None, added_count: int = 0):
  """Top `trie.beam_size` items for each input by constrained beam search.

  Args:
    model: the ColaRec module (decode=False; a decoding copy is made inside).
    params: its parameters.
    inputs: encoder inputs, a dict of [b, L] arrays (and 'task' [b]).
    trie: `Trie.build(gids, beam_size, mesh)`, on the mesh `inputs` are sharded over.
    renormalize: mask invalid codes before the log-softmax instead of after it.
    steps: stop after this many of the l steps (default: all): the beams are then GID
      prefixes (codes beyond `steps` are 0, items 0), exactly the beams the full search holds
      after that step (the diagnostics of bench/quality.py).
    blocked: [b, m] int32 sorted trie nodes every item under which must not be returned
      (`blocked_nodes` of each user's excluded items, padded with `NO_NODE`): codes leading to them are invalid, so
      no beam is spent on an item that would be dropped afterwards.
    pooled: also return the pooled encodings h(X_u) [b, d] float32 (the search computes them).
    added: items added after training as candidates beside the beam: ([A] item ids, [A, l]
      their GIDs, [A, d] their pooled encodings h(X_i)); with `added_count` = m > 0 each input's
      best m of them by h(X_u).h(X_i) are scored by teacher forcing, as the search would.

  Returns:
    (items [b, beam] int32, best first, 0 where fewer items exist; scores [b, beam]
    log-probabilities, -inf for those; codes [b, beam, l] the items' GIDs), beam = trie.beam_size;
    with `added_count`, the added candidates [b, m] and their log-probabilities [b, m] after
    them; with `pooled`, h(X_u) last.
  """
  mask = inputs["mask"]
  sharding = getattr(mask, "sharding", None)
  shards = mask.shape[0] // sharding.shard_shape(mask.shape)[0] if sharding else 1
  platform = next(iter(sharding.device_set)).platform if sharding else jax.default_backend()
  cfg = model.config.transformer
  chunks = encoder_chunks(*mask.shape, cfg.d_ff * jnp.dtype(cfg.dtype).itemsize, shards=shards,
                          platform=platform)
  return _search(params, inputs, trie.children, trie.leaf_item, blocked, added, trie.prior,
                 model=model, widths=trie.widths, beam_size=trie.beam_size, renormalize=renormalize,
                 chunks=chunks, steps=len(trie.widths) - 1 if steps is None else int(steps),
                 known_items=trie.known_items, new_leaf=trie.new_leaf, pooled=pooled,
                 added_count=int(added_count) if added is not None else 0)
