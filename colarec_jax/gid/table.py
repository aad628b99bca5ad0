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
    children = [np.full(branching + 1, -1, np.int32)]
    node_depth, leaf_item = [0], [0]
    parents = np.zeros(n + 1, np.int32)
    for item, gid in enumerate(codes.tolist(), start=1):
      node = 0
      for t, code in enumerate(gid):
        if t == depth - 1:
          parents[item] = node
        nxt = children[node][code]
        if nxt < 0:
          nxt = len(children)
          children[node][code] = nxt
          children.append(np.full(branching + 1, -1, np.int32))
          node_depth.append(t + 1)
          leaf_item.append(0)
        node = nxt
      if leaf_item[node]:
        raise DataError(source, f"items {leaf_item[node]} and {item} share the GID {gid}; "
                        "expected unique GIDs")
      leaf_item[node] = item
    return cls(np.concatenate([np.zeros((1, depth), np.int32), codes]), branching,
               np.stack(children), np.asarray(node_depth, np.int32),
               np.asarray(leaf_item, np.int32), parents)

  @functools.cached_property
  def item_paths(self) -> np.ndarray:
    """[num_items + 1, l] the trie node of each item's prefix of length 1..l (row 0: root)."""
    out = np.zeros(self.codes.shape, np.int32)
    node = np.zeros(len(self.codes), np.int64)
    for t in range(self.depth):
      node = np.where(np.arange(len(self.codes)) > 0, self.children[node, self.codes[:, t]], 0)
      out[:, t] = node
    return out

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
