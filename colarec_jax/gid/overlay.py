"""Items added after training: an overlay on the workdir's GID table, `<workdir>/new_items.npz`.

The trained GIDs are never rewritten. A new item takes a free leaf under an existing leaf parent
(a node at depth l-1 with fewer than K children): the caller picks the parent (ColaRec's beam
search over the parents that still have room, `colarec_jax.newitems`), and the item gets that
parent's lowest free last code. Each call adds to the overlay; the file is replaced whole (a
temporary file renamed into place), so a failed call leaves the previous overlay as it was.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from colarec_jax.data.fileio import pack_text, text_array, unpack_text
from colarec_jax.gid.table import GidTable
from colarec_jax.runtime.errors import UsageError

FILE = "new_items.npz"
# What one added item may carry: each text field is cut to this many characters (the tokenizer
# keeps only `data.max_item_tokens` tokens of the whole content string anyway), and an id longer
# than MAX_ID_CHARS is refused. Without a bound one 2 MB title made every reader allocate
# num_items x 2M characters.
MAX_FIELD_CHARS = 4096
MAX_ID_CHARS = 256


def staging_path(workdir: str) -> str:
  """Where `save` writes before renaming; one left there was killed mid-save (the writer holds
  the workdir alone, so a later writer may remove it)."""
  return os.path.join(workdir, FILE + ".tmp.npz")


@dataclasses.dataclass(frozen=True)
class NewItems:
  """Items indexed after training, in the order they were added (ids num_items + 1, ...).

  Attributes:
    item_ids: [m] raw item ids.
    item_text: [m, len(text_fields)] object array of str, their text fields (`text_array`).
    tokens: [m, max_item_tokens] int32 content tokens (padded with the tokenizer's <pad>).
    token_len: [m] int32 content length before truncation.
    codes: [m, l] int32 GIDs.
  """

  item_ids: np.ndarray
  item_text: np.ndarray
  tokens: np.ndarray
  token_len: np.ndarray
  codes: np.ndarray

  @classmethod
  def empty(cls, num_fields: int, max_tokens: int, depth: int) -> NewItems:
    return cls(np.zeros(0, str), text_array([]).reshape(0, num_fields),
               np.zeros((0, max_tokens), np.int32),
               np.zeros(0, np.int32), np.zeros((0, depth), np.int32))

  def __len__(self) -> int:
    return len(self.item_ids)

  def __add__(self, other: NewItems) -> NewItems:
    return NewItems(*(np.concatenate([getattr(self, f.name), getattr(other, f.name)])
                      for f in dataclasses.fields(self)))

  def save(self, workdir: str, fingerprint: dict) -> str:
    """Writes the overlay (replacing the file whole); `fingerprint` names the trained data and
    GIDs it extends. Returns the file's path."""
    path = os.path.join(workdir, FILE)
    staging = staging_path(workdir)
    arrays = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    arrays.update(pack_text(arrays.pop("item_text"), "text"))
    np.savez(staging, fingerprint=np.array(json.dumps(fingerprint, sort_keys=True)), **arrays)
    # Staged then renamed: a reader never sees half an overlay, even if this process is killed.
    os.replace(staging, path)
    return path

  @classmethod
  def load(cls, workdir: str, fingerprint: dict) -> NewItems | None:
    """The workdir's overlay, or None when nothing was added.

    Raises:
      UsageError: the file is unreadable, or extends other data or GIDs than `fingerprint`.
    """
    path = os.path.join(workdir, FILE)
    if not os.path.exists(path):
      return None
    try:
      with np.load(path) as z:
        saved = json.loads(str(z["fingerprint"]))
        items = cls(**{f.name: unpack_text(z, "text", legacy="item_text") if f.name == "item_text" else z[f.name]
                       for f in dataclasses.fields(cls)})
    except (OSError, ValueError, KeyError, UnicodeDecodeError) as e:
      raise UsageError("workdir", f"{path} is unreadable ({type(e).__name__}); remove it and add "
                       "the new items again (--mode=add_items)") from None
    # Added items' GIDs sit in free leaves of one trained tree: on another tree they would collide.
    if saved != fingerprint:
      raise UsageError("workdir", f"{path} holds items indexed on other prepared data or GIDs "
                       "than the workdir holds now; remove it and add the items again "
                       "(--mode=add_items)")
    return items


def extend(table: GidTable, codes: np.ndarray) -> GidTable:
  """The table with items num_items + 1, ... of GIDs `codes` [m, l] appended."""
  return GidTable.from_codes(np.concatenate([table.codes[1:], codes]), table.branching,
                             source="the new items' GIDs")


def leaf_parents(table: GidTable) -> tuple[np.ndarray, np.ndarray]:
  """Every leaf parent (distinct first l-1 codes) and its free leaves.

  Returns:
    (prefixes [P, l-1] int32, sorted; free [P] int32: K minus the items under each).
  """
  prefixes, counts = np.unique(table.codes[1:, :-1], axis=0, return_counts=True)
  return prefixes.astype(np.int32), (table.branching - counts).astype(np.int32)


def take_leaves(ranked: np.ndarray, free: np.ndarray) -> np.ndarray:
  """Each row, in order, takes one free leaf of its best-ranked parent that still has one.

  Args:
    ranked: [m, k] candidate parents per new item, best first (indices into `free`; -1 = none).
    free: [P] free leaves per parent; decremented in place as leaves are taken.

  Returns:
    [m] the parent each row took, -1 where every candidate of the row was full by its turn.
  """
  chosen = np.full(len(ranked), -1, np.int64)
  # Greedy in row order (the file's order): an earlier item wins a contested leaf, and the later
  # one falls back to its next candidate, so the result does not depend on batch boundaries.
  for n, row in enumerate(ranked):
    for parent in row[row >= 0]:
      if free[parent] > 0:
        free[parent] -= 1
        chosen[n] = parent
        break
  return chosen


def last_codes(table: GidTable, prefixes: np.ndarray) -> np.ndarray:
  """The lowest free last code under each prefix [m, l-1], in row order (a prefix listed twice
  gets two codes).

  Raises:
    ValueError: a prefix has no free leaf left (the caller's choice must leave room).
  """
  # Last codes are per prefix: the same code under two prefixes is two different leaves.
  used: dict[tuple, set] = {}
  for gid in table.codes[1:].tolist():
    used.setdefault(tuple(gid[:-1]), set()).add(gid[-1])
  out = np.zeros(len(prefixes), np.int32)
  for n, prefix in enumerate(prefixes.tolist()):
    taken = used.setdefault(tuple(prefix), set())
    code = next((c for c in range(1, table.branching + 1) if c not in taken), None)
    if code is None:
      raise ValueError(f"the GID prefix {prefix} has no free leaf")
    taken.add(code)
    out[n] = code
  return out
