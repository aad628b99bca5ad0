"""Hierarchical balanced clustering into GIDs.

Level t (1 <= t <= l-1) splits every cluster of level t-1 into at most K clusters of at most
K^(l-t) items; all sibling clusters of a level are padded to one shape and solved in one compiled
call. The last code is the item's index inside its leaf (so GIDs are unique by construction). Codes
are 1..K; 0 is reserved for the decoder start token.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from colarec_jax.gid import kmeans
from colarec_jax.runtime.errors import ConfigError


def fitting_depth(num_items: int, branching: int) -> int:
  """The smallest l >= 2 with K^l >= num_items (what `gid.depth=0` asks for)."""
  depth = 2
  while branching ** depth < num_items:
    depth += 1
  return depth


def resolve_depth(num_items: int, branching: int, depth: int) -> int:
  """`depth`, or the smallest that holds the catalogue when it is 0 (`gid.depth=0`)."""
  return fitting_depth(num_items, branching) if depth == 0 else depth


def check_capacity(num_items: int, branching: int, depth: int) -> None:
  """K^l must hold every item, and K, l >= 2."""
  if branching < 2:
    raise ConfigError("gid.branching", f"got {branching}, expected >= 2")
  if depth < 2:
    raise ConfigError("gid.depth", f"got {depth}, expected >= 2 (or 0: the smallest that fits)")
  if branching ** depth < num_items:
    raise ConfigError("gid.depth", f"K^l = {branching}^{depth} = {branching ** depth} codes "
                      f"cannot hold {num_items} items; set gid.depth="
                      f"{fitting_depth(num_items, branching)} (or 0: the smallest that fits) or "
                      "raise gid.branching")


def hierarchical_codes(embeddings: np.ndarray, *, branching: int, depth: int, key: jax.Array,
                       n_init: int = 1, max_iters: int = 100) -> np.ndarray:
  """GIDs for n items from their embeddings.

  Args:
    embeddings: [n, d] one row per item (item id - 1).
    branching: K.
    depth: l.
    key: PRNG key (same key, same GIDs).
    n_init: k-means seeds per cluster.
    max_iters: Lloyd iterations at most.

  Returns:
    codes [n, l] int32 in 1..K (`gid.sources.tree_report` describes the tree they make).
  """
  n = embeddings.shape[0]
  check_capacity(n, branching, depth)
  x = np.asarray(embeddings, np.float32)
  bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
  if len(bad):
    raise ValueError(f"GID embeddings must be finite; {len(bad)} of {n} rows are not (first: "
                     f"row {bad[0]}, item {bad[0] + 1})")
  codes = np.zeros((n, depth), np.int32)
  group = np.zeros(n, np.int64)  # cluster id of each item at the current level
  for level in range(1, depth):
    capacity = branching ** (depth - level)
    order = np.argsort(group, kind="stable")
    groups, starts, sizes = np.unique(group[order], return_index=True, return_counts=True)
    width = int(sizes.max())
    # Pad every sibling group to `width` rows: [G, width, d] plus a mask.
    slot = np.arange(n) - np.repeat(starts, sizes)
    index = np.zeros((len(groups), width), np.int64)
    mask = np.zeros((len(groups), width), bool)
    rows = np.repeat(np.arange(len(groups)), sizes)
    index[rows, slot] = order
    mask[rows, slot] = True
    keys = jax.random.split(jax.random.fold_in(key, level), len(groups))
    assign, _ = kmeans.grouped_balanced_kmeans(
        keys, jnp.asarray(x[index]), jnp.asarray(mask), k=min(branching, width),
        capacity=capacity, max_iters=max_iters, n_init=n_init)
    assign = np.asarray(assign)
    codes[order, level - 1] = assign[rows, slot] + 1
    group = group * branching + (codes[:, level - 1] - 1)
  codes[:, depth - 1] = _index_in_group(group)
  return codes


def _dense(values: np.ndarray) -> np.ndarray:
  return np.unique(values, return_inverse=True)[1]


def _index_in_group(group: np.ndarray) -> np.ndarray:
  """1-based position of each item among the items of its group, in item order."""
  order = np.argsort(group, kind="stable")
  _, starts, sizes = np.unique(group[order], return_index=True, return_counts=True)
  index = np.empty(len(group), np.int32)
  index[order] = np.arange(len(group)) - np.repeat(starts, sizes) + 1
  return index


def random_codes(num_items: int, *, branching: int, depth: int, seed: int) -> np.ndarray:
  """A balanced random tree: items shuffled, then dealt round-robin level by level.

  Returns:
    [n, l] int32 codes in 1..K, unique.
  """
  check_capacity(num_items, branching, depth)
  position = np.random.default_rng(seed).permutation(num_items)
  codes = np.zeros((num_items, depth), np.int32)
  rest = position.copy()
  for level in range(depth - 1):
    codes[:, level] = rest % branching + 1
    rest //= branching
  codes[:, depth - 1] = rest + 1
  return codes


def within_cluster_error(embeddings: np.ndarray, codes: np.ndarray, level: int) -> float:
  """Total squared distance of items to the mean of their level-`level` prefix cluster."""
  x = np.asarray(embeddings, np.float64)
  prefix = _dense(_prefix_key(codes, level))
  counts = np.bincount(prefix)
  means = np.zeros((len(counts), x.shape[1]))
  np.add.at(means, prefix, x)
  means /= counts[:, None]
  return float(((x - means[prefix]) ** 2).sum())


def _prefix_key(codes: np.ndarray, level: int) -> np.ndarray:
  key = np.zeros(len(codes), np.int64)
  for t in range(level):
    key = key * (int(codes.max()) + 1) + codes[:, t]
  return key
