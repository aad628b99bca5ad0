"""Balanced k-means under `jit`: k-means++ seeding, Lloyd iterations in `lax.while_loop`, and an
assignment step that never puts more than `capacity` points in a cluster.

The balanced assignment works in rounds: every unassigned point proposes to its nearest cluster that
still has room, and each cluster accepts its closest proposers up to its remaining room. A round
either assigns every proposer or fills at least one cluster, so at most k + 1 rounds run. When the
capacity does not bind, the first round is plain nearest-centroid assignment.
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class _LloydState:
  centroids: jax.Array  # [k, d]
  assign: jax.Array  # [n] int32, -1 for padding points
  iteration: jax.Array  # []
  changed: jax.Array  # [] bool


@flax.struct.dataclass
class _AssignState:
  assign: jax.Array  # [n] int32, -1 while unassigned
  room: jax.Array  # [k] int32 remaining capacity


def squared_distances(x: jax.Array, centroids: jax.Array) -> jax.Array:
  """[n, d], [k, d] -> [n, k] squared Euclidean distances."""
  return (jnp.sum(x * x, 1)[:, None] - 2 * x @ centroids.T
          + jnp.sum(centroids * centroids, 1)[None, :]).clip(min=0)


def kmeans_plus_plus(key: jax.Array, x: jax.Array, mask: jax.Array, k: int) -> jax.Array:
  """k-means++ seeding among the valid points.

  Args:
    key: PRNG key.
    x: [n, d] points.
    mask: [n] bool, False for padding.
    k: number of centroids.

  Returns:
    [k, d] centroids (repeats when there are fewer distinct valid points than k).
  """
  valid_logits = jnp.where(mask, 0.0, -jnp.inf)
  keys = jax.random.split(key, k)
  first = x[jax.random.categorical(keys[0], valid_logits)]
  centroids = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(first)
  nearest = jnp.sum((x - first) ** 2, 1)

  def body(i, carry):
    centroids, nearest = carry
    weights = jnp.where(mask, nearest, 0.0)
    # D^2 sampling; when every valid point already is a centroid, fall back to uniform.
    logits = jnp.where(jnp.any(weights > 0), jnp.log(weights), valid_logits)
    chosen = x[jax.random.categorical(keys[i], logits)]
    return centroids.at[i].set(chosen), jnp.minimum(nearest, jnp.sum((x - chosen) ** 2, 1))

  centroids, _ = jax.lax.fori_loop(1, k, body, (centroids, nearest))
  return centroids


def balanced_assign(dist: jax.Array, mask: jax.Array, capacity: int) -> jax.Array:
  """Assigns each valid point to a cluster, at most `capacity` points per cluster.

  Args:
    dist: [n, k] point-to-centroid distances.
    mask: [n] bool, False for padding (left at -1).
    capacity: room per cluster; k * capacity must be >= the number of valid points.

  Returns:
    [n] int32 cluster per point, -1 for padding.
  """
  n, k = dist.shape
  positions = jnp.arange(n)

  def pending(state):
    return jnp.any(mask & (state.assign < 0))

  def round_(state):
    todo = mask & (state.assign < 0)
    open_dist = jnp.where(state.room[None, :] > 0, dist, jnp.inf)
    choice = jnp.argmin(open_dist, axis=1)
    cost = jnp.take_along_axis(open_dist, choice[:, None], 1)[:, 0]
    # Sort proposers by (cluster, distance); non-proposers go last under cluster k.
    cluster = jnp.where(todo, choice, k)
    order = jnp.lexsort((cost, cluster))
    sorted_cluster = cluster[order]
    first = jnp.searchsorted(sorted_cluster, sorted_cluster, side="left")
    rank = jnp.zeros(n, jnp.int32).at[order].set((positions - first).astype(jnp.int32))
    room = jnp.concatenate([state.room, jnp.zeros(1, jnp.int32)])
    accept = todo & (rank < room[cluster])
    assign = jnp.where(accept, choice, state.assign).astype(jnp.int32)
    taken = jnp.zeros(k, jnp.int32).at[choice].add(accept.astype(jnp.int32))
    return _AssignState(assign, state.room - taken)

  init = _AssignState(jnp.full(n, -1, jnp.int32), jnp.full(k, capacity, jnp.int32))  # traced
  return jax.lax.while_loop(pending, round_, init).assign


def _lloyd(key, x, mask, *, k, capacity, max_iters, tol=1e-4):
  """One balanced k-means run: (assign [n], within-cluster squared error []).

  Stops when no assignment changes, or (as scikit-learn and k-means-constrained do) when the
  centroids move less than `tol` times the mean per-feature variance of the points.
  """
  centroids = kmeans_plus_plus(key, x, mask, k)
  count = jnp.maximum(jnp.sum(mask), 1)
  mean = jnp.sum(jnp.where(mask[:, None], x, 0.0), 0) / count
  variance = jnp.sum(jnp.where(mask[:, None], (x - mean) ** 2, 0.0), 0) / count
  threshold = tol * jnp.mean(variance)

  def cond(state):
    return (state.iteration < max_iters) & state.changed

  def body(state):
    assign = balanced_assign(squared_distances(x, state.centroids), mask, capacity)
    onehot = jax.nn.one_hot(assign, k, dtype=x.dtype)  # padding (-1) is all zeros
    counts = onehot.sum(0)
    sums = onehot.T @ x
    # An empty cluster keeps its centroid rather than collapsing to the origin.
    centroids = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1)[:, None],
                          state.centroids)
    shift = jnp.sum((centroids - state.centroids) ** 2)
    moving = jnp.any(assign != state.assign) & (shift > threshold)
    return _LloydState(centroids, assign, state.iteration + 1, moving)

  init = _LloydState(centroids, jnp.full(x.shape[0], -1, jnp.int32), jnp.array(0), jnp.array(True))
  final = jax.lax.while_loop(cond, body, init)
  # Error against the centroids of the final assignment.
  onehot = jax.nn.one_hot(final.assign, k, dtype=x.dtype)
  centroids = (onehot.T @ x) / jnp.maximum(onehot.sum(0), 1)[:, None]
  error = jnp.sum(jnp.where(mask, jnp.sum((x - centroids[final.assign.clip(0)]) ** 2, 1), 0.0))
  return final.assign, error


def _best_of(key, x, mask, *, k, capacity, max_iters, n_init):
  assigns, errors = jax.vmap(
      lambda kk: _lloyd(kk, x, mask, k=k, capacity=capacity, max_iters=max_iters))(
          jax.random.split(key, n_init))
  best = jnp.argmin(errors)
  return assigns[best], errors[best]


@functools.partial(jax.jit, static_argnames=("k", "n_init"))
def balanced_kmeans(key: jax.Array, x: jax.Array, mask: jax.Array, *, k: int, capacity: int,
                    max_iters: int = 100, n_init: int = 1) -> tuple[jax.Array, jax.Array]:
  """Balanced k-means, best of `n_init` seeds (run in parallel with `vmap`).

  Args:
    key: PRNG key; the same key gives the same result.
    x: [n, d] points.
    mask: [n] bool, False for padding rows.
    k: clusters.
    capacity: most points per cluster (traced: changing it does not recompile).
    max_iters: Lloyd iterations at most; runs stop earlier once converged (see `_lloyd`).
    n_init: seeds tried.

  Returns:
    (assign [n] int32 in 0..k-1, -1 for padding; within-cluster squared error []).
  """
  return _best_of(key, x, mask, k=k, capacity=capacity, max_iters=max_iters, n_init=n_init)


@functools.partial(jax.jit, static_argnames=("k", "n_init"))
def grouped_balanced_kmeans(keys: jax.Array, x: jax.Array, mask: jax.Array, *, k: int,
                            capacity: int, max_iters: int = 100,
                            n_init: int = 1) -> tuple[jax.Array, jax.Array]:
  """`balanced_kmeans` on G padded groups at once (one compiled call for all sibling clusters).

  Args:
    keys: [G] PRNG keys.
    x: [G, m, d] points, padded.
    mask: [G, m] bool.

  Returns:
    (assign [G, m], error [G]).
  """
  return jax.vmap(lambda kk, xx, mm: _best_of(kk, xx, mm, k=k, capacity=capacity,
                                               max_iters=max_iters, n_init=n_init))(keys, x, mask)
