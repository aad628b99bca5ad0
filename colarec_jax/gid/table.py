"""The GID table: item <-> codes, the prefix trie used by constrained decoding, sibling sets.

The trie has one node per distinct prefix (the root is node 0, the empty prefix). `children[node, c]`
is the node reached by appending code c, or -1: so `children[node] >= 0` is the mask of valid next
codes at any depth, and decoding can carry a node id per beam. Leaves (depth l) map to items.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np

from colarec_jax.data.dataset import Csr
from colarec_jax.runtime.errors import DataError


@dataclasses.dataclass(frozen=True)
class GidTable:
  """GIDs of all items and the structures derived from them.

  Attributes:
    codes: [num_items + 1, l] int32 codes in 1..K; row 0 (padding item) is all zeros.
    branching: K.
    children: [num_nodes, K + 1] int32 trie transitions (-1 = invalid); column 0 is always -1.
    node_depth: [num_nodes] int32 depth of each node (root 0).
    leaf_item: [num_nodes] int32 item at a depth-l node, 0 elsewhere.
    item_leaf_parent: [num_items + 1] int32 node of each item's first l-1 codes.
  """

  codes: np.ndarray
  branching: int
  children: np.ndarray
  node_depth: np.ndarray
  leaf_item: np.ndarray
  item_leaf_parent: np.ndarray

  @property
  def depth(self) -> int:
    return self.codes.shape[1]

  @property
  def num_items(self) -> int:
    return self.codes.shape[0] - 1

  @classmethod
  def from_codes(cls, codes: np.ndarray, branching: int, source: str = "codes") -> "GidTable":
    """Builds the table from [num_items, l] codes (item ids 1..n in row order).

    Raises:
      DataError: codes outside 1..K or two items with the same GID (`source` names where the codes
        came from).
    """
    codes = np.asarray(codes, np.int32)
    n, depth = codes.shape
    if n and (codes.min() < 1 or codes.max() > branching):
      row = int(np.argmax((codes < 1).any(1) | (codes > branching).any(1)))
      raise DataError(source, f"item {row + 1} has GID {codes[row].tolist()}; expected codes in "
                      f"1..{branching}")
    # Nodes are numbered as inserting the items one by one, in row order, would number them: a
    # prefix's node is created by its first item, level after level. Vectorised over the items
    # (a Python loop over a million items took 6.8 s at every load).
    first, inverse = [], []
    for t in range(depth):
      _, first_t, inverse_t = np.unique(_prefix_keys(codes[:, :t + 1], branching),
                                        return_index=True, return_inverse=True)
      first.append(first_t)
      inverse.append(inverse_t.reshape(-1))
    created = np.concatenate([np.stack([f, np.full(len(f), t)], 1)
                              for t, f in enumerate(first)]) if n else np.zeros((0, 2), int)
    order = np.lexsort((created[:, 1], created[:, 0]))  # by first item, then level
    node_of = np.empty(len(created), np.int64)
    node_of[order] = np.arange(1, len(created) + 1)
    offsets = np.cumsum([0] + [len(f) for f in first])
    # [n, depth] node of each item's prefix of each length.
    path = (np.stack([node_of[offsets[t] + inverse[t]] for t in range(depth)], 1) if n
            else np.zeros((0, depth), np.int64))
    num_nodes = len(created) + 1
    if n and len(first[-1]) < n:
      leaf_first = first[-1][inverse[-1]]
      item = int(np.flatnonzero(leaf_first != np.arange(n))[0])
      raise DataError(source, f"items {leaf_first[item] + 1} and {item + 1} share the GID "
                      f"{codes[item].tolist()}; expected unique GIDs")
    children = np.full((num_nodes, branching + 1), -1, np.int32)
    node_depth = np.zeros(num_nodes, np.int32)
    leaf_item = np.zeros(num_nodes, np.int32)
    parent = np.concatenate([np.zeros((n, 1), np.int64), path[:, :-1]], 1)
    children[parent.ravel(), codes.ravel()] = path.ravel()
    node_depth[path.ravel()] = np.tile(np.arange(1, depth + 1), n)
    if n:
      leaf_item[path[:, -1]] = np.arange(1, n + 1)
    parents = np.zeros(n + 1, np.int32)
    parents[1:] = parent[:, -1]
    return cls(np.concatenate([np.zeros((1, depth), np.int32), codes]), branching, children,
               node_depth, leaf_item, parents)

  @functools.cached_property
  def item_paths(self) -> np.ndarray:
    """[num_items + 1, l] the trie node of each item's prefix of length 1..l (row 0: root)."""
    out = np.zeros(self.codes.shape, np.int32)
    node = np.zeros(len(self.codes), np.int64)
    for t in range(self.depth):
      node = np.where(np.arange(len(self.codes)) > 0, self.children[node, self.codes[:, t]], 0)
      out[:, t] = node
    return out

  @functools.cached_property
  def leaves_under(self) -> np.ndarray:
    """[num_nodes] int64: the number of items under each trie node (1 at a leaf)."""
    return np.bincount(self.item_paths[1:].ravel(), minlength=len(self.children))

  def code_prior(self, item_counts: np.ndarray) -> np.ndarray:
    """[num_nodes, K + 1] float32 log P(code | node) of the codes' popularity: each code's share
    of the interactions `item_counts` ([num_items + 1], e.g. training counts) under its node,
    each child counted once more (so an item without interactions, such as one added after
    training, has a finite score); 0 at codes that lead nowhere."""
    counts = np.zeros(self.num_items + 1)
    counts[:len(item_counts)] = np.asarray(item_counts)[:self.num_items + 1]
    under = np.bincount(self.item_paths[1:].ravel(), np.repeat(counts[1:], self.depth),
                        minlength=len(self.children))
    valid = self.children >= 0
    smoothed = np.where(valid, under[np.maximum(self.children, 0)] + 1, 0)
    total = np.maximum(smoothed.sum(axis=1, keepdims=True), 1)
    return np.where(valid, np.log(np.maximum(smoothed, 1) / total), 0).astype(np.float32)

  def last_level_items(self, items: np.ndarray) -> np.ndarray:
    """[n, K + 1] int32: under each item's leaf parent (its first l-1 codes), the item each last
    code leads to (0: no item). Row i holds i itself at column codes[i, -1]; item 0: all 0."""
    child = self.children[self.item_leaf_parent[np.asarray(items)]]
    return np.where(child >= 0, self.leaf_item[np.maximum(child, 0)], 0).astype(np.int32)

  def item_of(self, gid) -> int:
    """The item with this GID, or 0 when it is no item's GID."""
    node = 0
    for code in gid:
      if not 1 <= code <= self.branching:
        return 0
      node = self.children[node, code]
      if node < 0:
        return 0
    return int(self.leaf_item[node]) if self.node_depth[node] == self.depth else 0

  def valid_next(self, prefix) -> np.ndarray:
    """[K + 1] bool mask of codes that extend `prefix` towards some item's GID."""
    node = 0
    for code in prefix:
      node = self.children[node, code]
      if node < 0:
        return np.zeros(self.branching + 1, bool)
    return self.children[node] >= 0

  def siblings(self) -> Csr:
    """Items grouped by leaf parent (items sharing the first l-1 codes), indexed by item:
    `siblings().row(i)` lists the items (i included) that share i's first l-1 codes."""
    parent = self.item_leaf_parent[1:]
    groups = Csr.from_pairs(parent, np.arange(1, self.num_items + 1), int(parent.max()))
    rows = np.concatenate([groups.row(p) for p in parent]) if self.num_items else np.zeros(0)
    owners = np.repeat(np.arange(1, self.num_items + 1), groups.lengths()[parent])
    return Csr.from_pairs(owners, rows, self.num_items)

  def save(self, path: str) -> None:
    np.savez(path, codes=self.codes[1:], branching=self.branching)

  @classmethod
  def load(cls, path: str) -> "GidTable":
    with np.load(path) as z:
      return cls.from_codes(z["codes"], int(z["branching"]), source=os.fspath(path))


def _prefix_keys(prefixes: np.ndarray, branching: int) -> np.ndarray:
  """One int64 per row of [n, t] codes in 1..K, equal exactly when the rows are (rows of a
  structured view when K^t would not fit an int64)."""
  if prefixes.shape[1] * np.log2(branching + 1) < 62:
    return (prefixes.astype(np.int64) * (branching + 1) ** np.arange(prefixes.shape[1])[::-1]
            ).sum(1)
  rows = np.ascontiguousarray(prefixes)
  return rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()
