"""RecBole atomic files: `<name>.inter`, `<name>.item`, and `<name>.{train,valid,test}.inter`.

Format: UTF-8, tab-separated, one record per line, line 1 a header of `name:type` with type one of
token, token_seq, float, float_seq; every row has as many fields as the header; an empty field is
missing. Every problem is reported as one `DataError` naming the file and line.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from colarec_jax.data.dataset import TEST, TRAIN, VALID, ItemTable, RawInteractions
from colarec_jax.data.fileio import read_bytes
from colarec_jax.runtime.errors import DataError

TYPES = ("token", "token_seq", "float", "float_seq")


@dataclasses.dataclass
class AtomicTable:
  """One atomic file, parsed but untyped.

  Attributes:
    path: the file.
    names: column names.
    types: column types (one of TYPES).
    rows: the records, each a list of len(names) strings.
    lines: [len(rows)] 1-based line number of each record.
  """

  path: str
  names: list[str]
  types: list[str]
  rows: list[list[str]]
  lines: list[int]

  def has(self, name: str) -> bool:
    return name in self.names

  def index(self, name: str, what: str) -> int:
    if name not in self.names:
      raise DataError(self.path, f"no column {name!r} for the {what} (header has "
                      f"{', '.join(self.names)}); set config.data.{what}_field", 1)
    return self.names.index(name)

  def strings(self, name: str, what: str) -> np.ndarray:
    col = self.index(name, what)
    return np.array([row[col] for row in self.rows], dtype=object)

  def floats(self, name: str, what: str) -> np.ndarray:
    """A numeric column as float64 (NaN where empty); a non-number names its line."""
    col = self.index(name, what)
    if self.types[col] != "float":
      raise DataError(self.path, f"column {name!r} ({what}) has type {self.types[col]!r}, "
                      "expected 'float'", 1)
    out = np.empty(len(self.rows))
    for n, row in enumerate(self.rows):
      value = row[col]
      try:
        out[n] = float(value) if value else np.nan
      except ValueError:
        raise DataError(self.path, f"column {name!r} ({what}) holds {value!r}, expected a "
                        "number", self.lines[n]) from None
    return out


def read_atomic(path: str) -> AtomicTable:
  """Reads and checks one atomic file.

  Raises:
    DataError: the file is missing, not UTF-8, has a bad header or a row of the wrong width.
  """
  path = os.fspath(path)
  raw_lines = read_bytes(path).split(b"\n")
  if raw_lines and raw_lines[-1] == b"":
    raw_lines.pop()
  if not raw_lines:
    raise DataError(path, "empty file, expected a `name:type` header", 1)

  def decode(n: int, line: bytes) -> str:
    try:
      return line.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError as e:
      raise DataError(path, f"invalid UTF-8 (byte {e.start + 1} of the line)", n) from None

  if raw_lines[0].startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark is not part of a name
    raw_lines[0] = raw_lines[0][3:]
  names, types = [], []
  for field in decode(1, raw_lines[0]).split("\t"):
    name, sep, kind = field.partition(":")
    if not sep or not name:
      raise DataError(path, f"header field {field!r} is not `name:type`", 1)
    if kind not in TYPES:
      raise DataError(path, f"header field {field!r} has unknown type {kind!r}; expected one of "
                      f"{', '.join(TYPES)}", 1)
    if name in names:
      raise DataError(path, f"header names column {name!r} twice; expected each column once", 1)
    names.append(name)
    types.append(kind)

  rows, lines = [], []
  for n, raw in enumerate(raw_lines[1:], start=2):
    fields = decode(n, raw).split("\t")
    if len(fields) != len(names):
      raise DataError(path, f"row has {len(fields)} fields, header has {len(names)}", n)
    rows.append(fields)
    lines.append(n)
  return AtomicTable(path, names, types, rows, lines)


def interactions_from_table(table: AtomicTable, *, user_field: str, item_field: str,
                            time_field: str, rating_field: str, split: int | None = None,
                            required: bool = True) -> RawInteractions:
  """The interaction columns of an atomic `.inter` table.

  `time_field` / `rating_field` may be '' (none). When set, the column must be in the file unless
  `required` is False (phones' valid and test files carry no timestamp), and must be numeric.
  """
  n = len(table.rows)

  def optional(name, what):
    if not name or (not required and not table.has(name)):
      return None
    return table.floats(name, what)

  for name, what in ((user_field, "user"), (item_field, "item")):
    table.index(name, what)
    col = table.names.index(name)
    empty = [k for k, row in enumerate(table.rows) if not row[col]]
    if empty:
      raise DataError(table.path, f"empty {what} id in column {name!r}", table.lines[empty[0]])
  return RawInteractions(
      users=table.strings(user_field, "user"), items=table.strings(item_field, "item"),
      timestamps=optional(time_field, "time"), ratings=optional(rating_field, "rating"),
      split=None if split is None else np.full(n, split, np.int8), files=[table.path],
      row_file=np.zeros(n, np.int64), row_line=np.asarray(table.lines, np.int64))


def item_table_from_atomic(table: AtomicTable, *, item_field: str,
                           text_fields: list[tuple[str, str]]) -> ItemTable:
  """The text of an atomic `.item` table.

  Args:
    table: the parsed `.item` file.
    item_field: the id column.
    text_fields: (column, label) pairs, in content-string order.
  """
  id_col = table.index(item_field, "item")
  cols = []
  for column, _ in text_fields:
    if column not in table.names:
      raise DataError(table.path, f"no text column {column!r} (header has "
                      f"{', '.join(table.names)}); check config.data.text_fields", 1)
    cols.append(table.names.index(column))
  text, order = {}, []
  for row, line in zip(table.rows, table.lines):
    item = row[id_col]
    if not item:
      raise DataError(table.path, f"empty item id in column {item_field!r}", line)
    if item in text:
      raise DataError(table.path, f"item {item!r} has a second row", line)
    text[item] = tuple(row[c] for c in cols)
    order.append(item)
  return ItemTable(table.path, tuple(label for _, label in text_fields), text, order)


def atomic_paths(directory: str, name: str) -> dict[str, str]:
  """The atomic files of dataset `name` in `directory`: keys inter | train/valid/test, item."""
  base = os.path.join(directory, name)
  paths = {"item": f"{base}.item"}
  split_paths = {s: f"{base}.{s}.inter" for s in ("train", "valid", "test")}
  if any(os.path.exists(p) for p in split_paths.values()):
    paths.update(split_paths)
  else:
    paths["inter"] = f"{base}.inter"
  return paths


def load_atomic(directory: str, name: str, *, user_field: str, item_field: str, time_field: str,
                rating_field: str, text_fields: list[tuple[str, str]],
                use_given_split: bool = True) -> tuple[RawInteractions, ItemTable | None]:
  """Reads `<directory>/<name>.inter` (or the three benchmark files) and `<name>.item`.

  With benchmark files present and `use_given_split`, rows carry the shipped split; otherwise the
  three files are pooled and split later. The item file is optional when `text_fields` is empty.
  """
  paths = atomic_paths(directory, name)
  kw = dict(user_field=user_field, item_field=item_field, time_field=time_field,
            rating_field=rating_field)
  if "inter" in paths:
    raw = interactions_from_table(read_atomic(paths["inter"]), **kw)
  else:
    for key in ("train", "valid", "test"):
      if not os.path.exists(paths[key]):
        raise DataError(paths[key], "file not found (the other benchmark files of "
                        f"{name!r} exist, so all three are needed)")
    parts = [interactions_from_table(read_atomic(paths[key]), split=code if use_given_split
                                     else None, required=key == "train", **kw)
             for key, code in (("train", TRAIN), ("valid", VALID), ("test", TEST))]
    raw = RawInteractions.concatenate(parts)
  items = None
  if text_fields or os.path.exists(paths["item"]):
    items = item_table_from_atomic(read_atomic(paths["item"]), item_field=item_field,
                                   text_fields=text_fields)
  return raw, items
