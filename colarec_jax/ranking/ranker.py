"""Ranking items with a trained ColaRec: evaluation on a split, and recommendations for a known
user or for an ad-hoc history of items (a new user, no retraining).

Beam search returns `beam_size` items per user, best first; the user's excluded items (training
items, and validation items at test time when configured) are dropped and the first N kept.
With `eval.encoder_weight` w > 0 the beam's items are first re-sorted by log p(GID) +
w h(X_u).h(X_i) (`rescored`): the user-item score the encoder learns through L_bpr, with h(X_i)
the pooled encoding of the item's indexing input (no user slots), computed once per Ranker.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np

from colarec_jax import evaluate
from colarec_jax.data.sampling import padded_batches
from colarec_jax.evaluate import EvalConfig, EvalSplit
from colarec_jax.model.colarec import ColaRec
from colarec_jax.model.inputs import InputBuilder, stack
from colarec_jax.ranking import decode
from colarec_jax.runtime import sharding


def drop_excluded(items: np.ndarray, scores: np.ndarray, exclude: list[np.ndarray],
                  k: int) -> tuple[np.ndarray, np.ndarray]:
  """The first `k` items of each row that are real (> 0) and not excluded, 0-padded.

  Args:
    items: [n, beam] ranked items.
    scores: [n, beam] their scores.
    exclude: per row, item ids to drop.
    k: list length.

  Returns:
    ([n, k] int32 items, [n, k] float32 scores, -inf where there is no item).
  """
  out = np.zeros((len(items), k), np.int32)
  out_scores = np.full((len(items), k), -np.inf, np.float32)
  # The official protocol: the beam's list, then the user's excluded items removed (a beam of B
  # can leave fewer than k; eval.exclude_in_search blocks them inside the search instead).
  for n, (row, drop) in enumerate(zip(items, exclude)):
    kept = ((row > 0) & ~np.isin(row, drop)).nonzero()[0][:k]
    out[n, :len(kept)] = row[kept]
    out_scores[n, :len(kept)] = scores[n, kept]
  return out, out_scores


def with_candidates(items: np.ndarray, scores: np.ndarray, extra: np.ndarray,
                    extra_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The beam's lists joined by candidates scored alike (`eval.added_candidates`), best first;
  a candidate the beam already holds is kept once.

  Args:
    items, scores: [n, beam] the search's items (0: none) and log-probabilities.
    extra, extra_scores: [n, m] candidates and their log-probabilities.

  Returns:
    ([n, beam + m] items, [n, beam + m] float32 scores, -inf (item 0) where there is none).
  """
  dup = (extra[:, :, None] == items[:, None, :]).any(axis=2)
  extra = np.where(dup, 0, extra)
  joined = np.concatenate([items, extra], axis=1)
  total = np.where(joined > 0, np.concatenate([scores, extra_scores], axis=1),
                   -np.inf).astype(np.float32)
  order = np.argsort(-total, axis=1, kind="stable")
  return (np.where(np.isfinite(np.take_along_axis(total, order, axis=1)),
                   np.take_along_axis(joined, order, axis=1), 0),
          np.take_along_axis(total, order, axis=1))


def rescored(items: np.ndarray, scores: np.ndarray, users: np.ndarray, item_codes: np.ndarray,
             weight: float) -> tuple[np.ndarray, np.ndarray]:
  """Beam lists re-sorted by score + weight * h(X_u).h(X_i) (ties keep the beam's order).

  Args:
    items: [n, beam] ranked items, 0 where there is none.
    scores: [n, beam] their log-probabilities.
    users: [n, d] the users' pooled encodings h(X_u).
    item_codes: [num_items + 1, d] every item's pooled encoding h(X_i) (`Ranker.item_encodings`).
    weight: w.

  Returns:
    ([n, beam] items, [n, beam] float32 combined scores, -inf where there is no item), best first.
  """
  dots = np.einsum("nd,nbd->nb", users, item_codes[items])
  total = np.where(items > 0, scores + weight * dots, -np.inf).astype(np.float32)
  order = np.argsort(-total, axis=1, kind="stable")
  return np.take_along_axis(items, order, axis=1), np.take_along_axis(total, order, axis=1)


@functools.partial(jax.jit, static_argnames=("model",))
def _pooled(params, inputs, *, model: ColaRec):
  encoded = model.apply({"params": params}, inputs, method=ColaRec.encode)
  return ColaRec.pool(encoded, inputs["mask"]).astype(jnp.float32)


class Ranker:
  """Beam-search ranking with fixed parameters; one compile per (batch, input length)."""

  def __init__(self, model: ColaRec, params, trie: decode.Trie, builder: InputBuilder,
               eval_cfg: EvalConfig, mesh=None, batch_size: int = 0):
    """`trie` (`run.parts.make_trie`) holds the beam size, the one route it reaches the search
    by (`eval_cfg.beam_size` is not read here); `batch_size` rows per beam-search call (0:
    `eval_cfg.decode_batch_size`)."""
    self.model, self.params, self.trie, self.builder, self.eval_cfg, self.mesh = (
        model, params, trie, builder, eval_cfg, mesh)
    shards = sharding.num_shards(mesh)
    rows = batch_size or eval_cfg.decode_batch_size
    # Rounded up to whole rows per device: the mesh splits a batch evenly, and one shape for every
    # call means one compile.
    self.batch_size = -(-rows // shards) * shards
    self._item_codes = None
    self._added = None

  def encode(self, inputs: dict, batch_size: int = 0) -> np.ndarray:
    """[n, d] float32 pooled encodings h(X) of stacked encoder inputs, `batch_size` rows per call
    (0: the search's batch size)."""
    shards = sharding.num_shards(self.mesh)
    rows = -(-(batch_size or self.batch_size) // shards) * shards
    n = len(inputs["mask"])
    out = []
    for order, real in padded_batches(np.arange(n), rows):
      batch = sharding.shard_rows({k: jnp.asarray(v[order]) for k, v in inputs.items()}, self.mesh)
      with self._split_tables():
        out.append(sharding.to_host(_pooled(self.params, batch, model=self.model))[:real])
    return np.concatenate(out) if out else np.zeros((0, self.model.config.transformer.d_model),
                                                    np.float32)

  def item_encodings(self) -> np.ndarray:
    """[num_items + 1, d] float32: h(X_i) of every item's indexing input without user slots
    (items added after training read the unknown-item token); row 0 (no item) zeros. Computed on
    first use."""
    if self._item_codes is None:
      items = range(1, self.builder.num_items + 1)
      inputs = stack([self.builder.index_input(i, []) for i in items])
      encoded = self.encode(inputs, batch_size=1024)
      self._item_codes = np.concatenate([np.zeros_like(encoded[:1]), encoded])
    return self._item_codes

  @property
  def longest(self) -> int:
    """The longest list `ranked` returns: the beam size, plus eval.added_candidates when items
    were added after training."""
    added = self.builder.num_items - self.model.config.num_items
    return self.trie.beam_size + (min(self.eval_cfg.added_candidates, added) if added > 0 else 0)

  def _added_items(self) -> tuple | None:
    """With eval.added_candidates > 0 and items added after training: (their ids, GIDs and
    pooled encodings), on every device, for the search's candidates (`decode.beam_search`)."""
    trained, total = self.model.config.num_items, self.builder.num_items
    if not self.eval_cfg.added_candidates or total <= trained:
      return None
    if self._added is None:
      ids = np.arange(trained + 1, total + 1, dtype=np.int32)
      self._added = sharding.replicate(
          (ids, self.builder.gids.codes[ids].astype(np.int32), self.item_encodings()[ids]),
          self.mesh)
    return self._added

  def _split_tables(self):
    """With model.shard_ids on a mesh, the search traced under it, so the ID tables are read where
    their rows live (`ColaRec.id_rows`); else nothing."""
    if self.mesh is None or not self.model.config.shard_ids:
      return contextlib.nullcontext()
    return jax.set_mesh(self.mesh)

  def ranked(self, inputs: dict, exclude: list[np.ndarray], k: int, progress=None,
             in_search: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top items for stacked encoder inputs, excluded items dropped.

    The next batch's search is dispatched before the last one's results are fetched, so the
    host's work (exclusions, `progress`) overlaps the device's.

    Args:
      inputs: encoder inputs, a dict of [n, L] arrays (and 'task' [n]).
      exclude: per row, item ids to drop.
      k: list length (at most `longest`).
      progress: called with the count of rows after each batch is done, or None.
      in_search: block excluded items inside the search, so a list is short only when fewer
        than k items are left (None: `eval.exclude_in_search`; the official protocol drops them
        from the beam's list afterwards).

    Returns:
      ([n, k] int32 items, 0-padded; [n, k] float32 beam scores, the items' GID
      log-probabilities (plus the weighted encoder score with eval.encoder_weight), -inf where
      there is no item).
    """
    if not 1 <= k <= self.longest:
      raise ValueError(f"k={k}: a search over this trie returns at most {self.longest} items")
    n = len(inputs["mask"])
    out = np.zeros((n, k), np.int32), np.full((n, k), -np.inf, np.float32)
    in_search = self.eval_cfg.exclude_in_search if in_search is None else in_search

    weight = self.eval_cfg.encoder_weight
    added = self._added_items()
    item_codes = self.item_encodings() if weight else None

    def collect(rows, real, found):
      items, scores, _, *rest = sharding.to_host(found)
      if added:
        items, scores = with_candidates(items, scores, *rest[:2])
      if weight:
        items, scores = rescored(items, scores, rest[-1], item_codes, weight)
      kept = drop_excluded(items[:real], scores[:real], [exclude[r] for r in rows[:real]], k)
      out[0][rows[:real]], out[1][rows[:real]] = kept
      if progress is not None:
        progress(real)

    # One width of blocked-node lists for the whole call: one compiled search for its batches.
    width = decode.blocked_width(max((len(e) for e in exclude), default=0),
                                 self.builder.gids.depth) if in_search else 0
    pending = None
    for rows, real in padded_batches(np.arange(n), self.batch_size):
      batch = {name: jnp.asarray(v[rows]) for name, v in inputs.items()}
      if in_search and any(len(exclude[r]) for r in rows[:real]):
        batch["blocked"] = jnp.asarray(decode.blocked_nodes(
            self.builder.gids, [exclude[r] for r in rows[:real]] + [[]] * (len(rows) - real),
            width))
      batch = sharding.shard_rows(batch, self.mesh)
      blocked = batch.pop("blocked", None)
      with self._split_tables():
        found = decode.beam_search(
            self.model, self.params, batch, self.trie, renormalize=self.eval_cfg.renormalize,
            blocked=blocked, pooled=bool(weight), added=added,
            added_count=self.eval_cfg.added_candidates)
      if pending is not None:
        collect(*pending)
      pending = rows, real, found
    if pending is not None:
      collect(*pending)
    return out

  def evaluate(self, split: EvalSplit, inputs: dict) -> evaluate.Report:
    """Recall/NDCG of one evaluation split; `inputs` = `self.builder.eval_inputs(split.users)`."""
    exclude = [split.exclude.row(u) for u in split.users]
    ranked, _ = self.ranked(inputs, exclude, max(self.eval_cfg.ks))
    return evaluate.evaluate_ranking(ranked, split.users, split.heldout, split.train_counts,
                                     self.eval_cfg.ks, self.eval_cfg.long_tail_fraction)

  def for_histories(self, histories: list[list[int]], exclude: list[np.ndarray], k: int,
                    progress=None, in_search: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`ranked` for item histories (internal ids, most recent first; the first
    `inputs.eval_history` are read, as in evaluation)."""
    limit = self.builder.cfg.eval_history
    inputs = stack([self.builder.rec_input(list(h[:limit])) for h in histories])
    return self.ranked(inputs, exclude, k, progress, in_search)
