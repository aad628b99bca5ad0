"""The in-memory dataset every source produces, and the one builder they share.

A source reads its files into a `RawInteractions` (raw string ids, one row per interaction, with the
file and line each row came from) plus an item-text table, and `build_dataset` turns that into a
`Dataset`: contiguous integer ids with 0 reserved for padding, interactions sorted by user and, inside
a user, in time order (timestamps when present, otherwise file order).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from colarec_jax.runtime.errors import DataError

TRAIN, VALID, TEST = 0, 1, 2
SPLIT_NAMES = ("train", "valid", "test")
PAD_TOKEN = "[PAD]"


@dataclasses.dataclass
class RawInteractions:
  """Interactions as a source read them.

  Attributes:
    users: [n] raw user ids.
    items: [n] raw item ids.
    timestamps: [n] float64 seconds, NaN where missing; None when the source has no time column.
    ratings: [n] float64 or None.
    split: [n] int8 in {TRAIN, VALID, TEST} when the source ships its own split, else None.
    files: the files rows came from.
    row_file: [n] index into `files`.
    row_line: [n] 1-based line number of each row in its file.
  """

  users: np.ndarray
  items: np.ndarray
  timestamps: np.ndarray | None
  ratings: np.ndarray | None
  split: np.ndarray | None
  files: list[str]
  row_file: np.ndarray
  row_line: np.ndarray

  @classmethod
  def from_rows(cls, path: str, users: list, items: list, timestamps: list, ratings: list,
                lines: list) -> "RawInteractions":
    """Rows read from one file with timestamps and ratings, and no shipped split."""
    return cls(
        users=np.array(users, dtype=object), items=np.array(items, dtype=object),
        timestamps=np.array(timestamps, np.float64), ratings=np.array(ratings, np.float64),
        split=None, files=[path], row_file=np.zeros(len(users), np.int64),
        row_line=np.array(lines, np.int64))

  def __len__(self):
    return len(self.users)

  def where(self, row: int) -> tuple[str, int]:
    return self.files[int(self.row_file[row])], int(self.row_line[row])

  def select(self, mask: np.ndarray) -> "RawInteractions":
    take = lambda a: None if a is None else a[mask]
    return dataclasses.replace(
        self, users=self.users[mask], items=self.items[mask], timestamps=take(self.timestamps),
        ratings=take(self.ratings), split=take(self.split), row_file=self.row_file[mask],
        row_line=self.row_line[mask])

  @staticmethod
  def concatenate(parts: Sequence["RawInteractions"]) -> "RawInteractions":
    """Joins parts read from different files (e.g. train/valid/test benchmark files)."""
    files, row_file = [], []
    for part in parts:
      row_file.append(part.row_file + len(files))
      files.extend(part.files)

    def cat(name, fill):
      arrays = [getattr(p, name) for p in parts]
      if all(a is None for a in arrays):
        return None
      return np.concatenate([np.full(len(p), fill) if a is None else a
                             for p, a in zip(parts, arrays)])

    return RawInteractions(
        users=np.concatenate([p.users for p in parts]),
        items=np.concatenate([p.items for p in parts]),
        timestamps=cat("timestamps", np.nan), ratings=cat("ratings", np.nan),
        split=cat("split", -1), files=files, row_file=np.concatenate(row_file),
        row_line=np.concatenate([p.row_line for p in parts]))


@dataclasses.dataclass
class ItemTable:
  """Item text as a source read it: raw item id -> one string per text field.

  Attributes:
    path: the file it came from (for messages), or None when the source has no item file.
    fields: the text-field labels, in content-string order (e.g. ("title", "brand")).
    text: raw item id -> tuple of len(fields) strings ('' = missing).
    order: raw item ids in file order (the order internal ids follow).
  """

  path: str | None
  fields: tuple[str, ...]
  text: dict[str, tuple[str, ...]]
  order: list[str]


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Interactions and item text with contiguous ids; id 0 is padding for users and items.

  Attributes:
    name: dataset name.
    user_ids: [num_users + 1] raw user ids; entry 0 is PAD_TOKEN.
    item_ids: [num_items + 1] raw item ids; entry 0 is PAD_TOKEN.
    users: [n] int32 in 1..num_users, sorted; each user's rows in time order.
    items: [n] int32 in 1..num_items.
    timestamps: [n] float64 (NaN where missing) or None.
    split: [n] int8 split shipped by the source, or None.
    text_fields: text-field labels in content order.
    item_text: [num_items + 1, len(text_fields)] str; row 0 empty.
    report: counts of what building dropped (duplicates, k-core, cold entities, low ratings).
  """

  name: str
  user_ids: np.ndarray
  item_ids: np.ndarray
  users: np.ndarray
  items: np.ndarray
  timestamps: np.ndarray | None
  split: np.ndarray | None
  text_fields: tuple[str, ...]
  item_text: np.ndarray
  report: Mapping[str, int] = dataclasses.field(default_factory=dict)

  @property
  def num_users(self) -> int:
    return len(self.user_ids) - 1

  @property
  def num_items(self) -> int:
    return len(self.item_ids) - 1

  @property
  def num_interactions(self) -> int:
    return len(self.users)

  def content(self, item: int) -> str:
    """The item's content string: `label value` for each non-empty field (official format; the
    value alone for a field with an empty label)."""
    return content_string(self.text_fields, self.item_text[item])


def content_string(labels: Sequence[str], values: Sequence[str]) -> str:
  return " ".join(f"{label} {value}" if label else value
                  for label, value in zip(labels, values) if value)


def kcore_mask(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
  """Rows kept by k-core filtering, repeated until every user and item has >= k rows.

  Args:
    users: [n] integer user codes.
    items: [n] integer item codes.
    k: the core size; k <= 1 keeps everything.

  Returns:
    [n] bool mask.
  """
  keep = np.ones(len(users), bool)
  if k <= 1:
    return keep
  while True:
    user_count = np.bincount(users[keep], minlength=users.max() + 1 if len(users) else 0)
    item_count = np.bincount(items[keep], minlength=items.max() + 1 if len(items) else 0)
    new_keep = keep & (user_count[users] >= k) & (item_count[items] >= k)
    if new_keep.sum() == keep.sum():
      return new_keep
    keep = new_keep


def _codes(values: np.ndarray, position: np.ndarray | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
  """Integer codes for raw ids in order of first appearance: (codes [n], uniques).

  Appearance is by `position` (e.g. the row's place in the file) when given, else by index.
  One dict pass over the ids in their array order (sequential reads of the strings), then the
  numbering is reordered by each id's first position: `np.unique` on an object array sorts with
  Python comparisons, and grew as n^1.25 on ids in random order (bench/results/scale_fixes.json).
  """
  index: dict = {}
  codes = np.fromiter((index.setdefault(v, len(index)) for v in values.tolist()), np.int64,
                      len(values))
  uniques = np.empty(len(index), object)
  uniques[:] = list(index)
  if position is not None:
    first = np.full(len(uniques), np.iinfo(np.int64).max)
    np.minimum.at(first, codes, position)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    codes, uniques = rank[codes], uniques[order]
  return codes, uniques if values.dtype == object else uniques.astype(values.dtype)


def build_dataset(name: str, raw: RawInteractions, items: ItemTable | None, *, kcore: int = 0,
                  min_rating: float = 0.0, cold_users: str = "error",
                  cold_items: str = "keep", time_ties: str = "file") -> Dataset:
  """Filters raw interactions and assigns contiguous ids.

  Steps, in order: drop ratings below `min_rating`; drop repeated (user, item) pairs (keeping the
  earliest); check every item has an item-table row; k-core filter; for a shipped split, handle
  valid/test rows whose user or item never occurs in train (`cold_users`: 'error' | 'drop';
  `cold_items`: 'keep' | 'drop' | 'error'); number users by first appearance and items by item-file
  order (first appearance when there is no item file); sort each user's rows by time. Rows of
  equal time keep their file order (`time_ties='file'`), or take the order the authors' pandas
  sort gives them ('quicksort': NumPy's unstable quicksort of the time column over each user's
  rows of a split part in file order, what their `get_user_interlist` does; for runs longer than
  NumPy's insertion-sort cutoff the order depends on NumPy's build, as it does for theirs).

  Raises:
    DataError: naming file and line of the first offending row, or the dataset when nothing is left.
  """
  report = {"rows_read": len(raw)}
  if raw.ratings is not None and min_rating > 0:
    keep = ~(raw.ratings < min_rating)
    report["dropped_low_rating"] = int((~keep).sum())
    raw = raw.select(keep)

  # Time order inside a user: shipped split first (train < valid < test), then time, then file order.
  split_key = raw.split if raw.split is not None else np.zeros(len(raw), np.int8)
  time_key = raw.timestamps if raw.timestamps is not None else np.zeros(len(raw))
  time_key = np.where(np.isnan(time_key), np.inf, time_key)
  file_position = np.arange(len(raw))
  chrono = (_quicksort_ties(raw.users, split_key, time_key) if time_ties == "quicksort"
            else np.lexsort((file_position, time_key, split_key)))
  raw = raw.select(chrono)
  file_position = file_position[chrono]

  user_code, _ = _codes(raw.users)
  item_code, _ = _codes(raw.items)
  pair = user_code * (item_code.max() + 1 if len(raw) else 1) + item_code
  _, first = np.unique(pair, return_index=True)
  keep = np.zeros(len(raw), bool)
  keep[first] = True
  report["dropped_duplicates"] = int((~keep).sum())
  raw = raw.select(keep)
  file_position = file_position[keep]

  if items is not None:
    missing = np.array([item not in items.text for item in raw.items], bool)
    if missing.any():
      row = int(np.argmax(missing))
      path, line = raw.where(row)
      raise DataError(path, f"item {raw.items[row]!r} has no row in the item file {items.path} "
                      f"({int(missing.sum())} rows have such items)", line)

  if kcore > 1:
    keep = kcore_mask(_codes(raw.users)[0], _codes(raw.items)[0], kcore)
    report["dropped_kcore"] = int((~keep).sum())
    raw = raw.select(keep)
    file_position = file_position[keep]

  if raw.split is not None:
    keep = _cold_mask(raw, report, cold_users=cold_users, cold_items=cold_items)
    raw = raw.select(keep)
    file_position = file_position[keep]

  if len(raw) == 0:
    raise DataError(name, "no interactions left after filtering "
                    f"(min_rating={min_rating}, kcore={kcore}); relax the filters")

  user_code, user_ids = _codes(raw.users, file_position)
  if items is not None:
    present = set(raw.items.tolist())
    item_ids = np.array([i for i in items.order if i in present], dtype=raw.items.dtype)
    index = {item: n for n, item in enumerate(item_ids.tolist())}
    item_code = np.array([index[i] for i in raw.items.tolist()], np.int64)
  else:
    item_code, item_ids = _codes(raw.items, file_position)

  order = np.argsort(user_code, kind="stable")  # rows are already chronological inside a user
  fields = items.fields if items is not None else ()
  text = np.full((len(item_ids) + 1, len(fields)), "", dtype=object)
  if items is not None:
    for n, item in enumerate(item_ids.tolist()):
      text[n + 1] = items.text[item]
  report["rows_kept"] = len(raw)
  return Dataset(
      name=name,
      user_ids=np.concatenate([[PAD_TOKEN], user_ids]).astype(str),
      item_ids=np.concatenate([[PAD_TOKEN], item_ids]).astype(str),
      users=(user_code[order] + 1).astype(np.int32),
      items=(item_code[order] + 1).astype(np.int32),
      timestamps=None if raw.timestamps is None else raw.timestamps[order],
      split=None if raw.split is None else raw.split[order].astype(np.int8),
      text_fields=tuple(fields), item_text=text, report=report)


def _quicksort_ties(users: np.ndarray, split_key: np.ndarray,
                    time_key: np.ndarray) -> np.ndarray:
  """A row order, by split part and user, with each user's rows of a part ordered as NumPy's
  quicksort of their times orders them from file order (later steps only need the order inside
  a user; a loop over the groups: only this switch takes it)."""
  codes, _ = _codes(users)
  grouped = np.lexsort((np.arange(len(users)), codes, split_key))  # file order inside groups
  key = codes[grouped] * 4 + split_key[grouped]
  bounds = np.flatnonzero(np.r_[True, key[1:] != key[:-1], True]) if len(users) else [0]
  out = grouped.copy()
  for a, b in zip(bounds[:-1], bounds[1:]):
    rows = grouped[a:b]
    out[a:b] = rows[np.argsort(time_key[rows], kind="quicksort")]
  return out


def _cold_mask(raw: RawInteractions, report: dict, *, cold_users: str,
               cold_items: str) -> np.ndarray:
  """Rows kept by the cold-entity policy: valid/test rows whose user or item has no train row
  raise (error), are dropped and counted (drop), or stay (keep, items only)."""
  keep = np.ones(len(raw), bool)
  for kind, policy in (("user", cold_users), ("item", cold_items)):
    values = raw.users if kind == "user" else raw.items
    train = keep & (raw.split == TRAIN)
    seen = set(values[train].tolist())  # a set: np.isin on object arrays is quadratic
    cold = keep & (raw.split != TRAIN) & np.array([v not in seen for v in values.tolist()])
    report[f"cold_{kind}_rows"] = int(cold.sum())
    if not cold.any() or policy == "keep":
      continue
    if policy == "error":
      row = int(np.argmax(cold))
      path, line = raw.where(row)
      raise DataError(path, f"{SPLIT_NAMES[raw.split[row]]} row has {kind} {values[row]!r} that "
                      f"never occurs in training ({int(cold.sum())} such rows); set "
                      f"config.data.cold_{kind}s='drop' to drop them", line)
    report[f"dropped_cold_{kind}_rows"] = int(cold.sum())
    keep &= ~cold
  return keep


@dataclasses.dataclass(frozen=True)
class Csr:
  """Per-user item lists: items of user u are `items[indptr[u]:indptr[u + 1]]`.

  Attributes:
    indptr: [num_users + 2] int64 (row 0 is the padding user).
    items: [nnz] int32 item ids.
  """

  indptr: np.ndarray
  items: np.ndarray

  @classmethod
  def from_pairs(cls, users: np.ndarray, items: np.ndarray, num_users: int) -> "Csr":
    order = np.argsort(users, kind="stable")
    counts = np.bincount(users, minlength=num_users + 1)
    return cls(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
               items[order].astype(np.int32))

  def row(self, user: int) -> np.ndarray:
    return self.items[self.indptr[user]:self.indptr[user + 1]]

  def lengths(self) -> np.ndarray:
    return np.diff(self.indptr)

  def dense_mask(self, users: np.ndarray, num_items: int) -> np.ndarray:
    """[len(users), num_items + 1] bool, True at each listed item (and at padding item 0)."""
    mask = np.zeros((len(users), num_items + 1), bool)
    mask[:, 0] = True
    lengths = self.lengths()[users]
    rows = np.repeat(np.arange(len(users)), lengths)
    cols = np.concatenate([self.row(u) for u in users]) if len(users) else np.zeros(0, int)
    mask[rows, cols] = True
    return mask
