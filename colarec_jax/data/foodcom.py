"""Food.com recipes and reviews (Kaggle, Majumder et al. 2019): `RAW_interactions.csv` and
`RAW_recipes.csv`.

Both are UTF-8 CSV with a header line; quoted fields may hold commas, doubled quotes and newlines,
so a record can span several physical lines and is reported by the line it starts on. List columns
(`tags`, `steps`, `ingredients`) are Python list literals, parsed with `ast.literal_eval`, never
evaluated. Every problem is reported as one `DataError` naming the file and line.
"""

from __future__ import annotations

import ast
import csv
import datetime
import io
import os
from typing import Iterator

from colarec_jax.data.amazon import clean_text
from colarec_jax.data.dataset import ItemTable, RawInteractions
from colarec_jax.data.fileio import read_bytes
from colarec_jax.runtime.errors import DataError

INTERACTIONS_FILE = "RAW_interactions.csv"
RECIPES_FILE = "RAW_recipes.csv"
TEXT_FIELDS = ("name", "description", "tags")
_EPOCH = datetime.date(1970, 1, 1)


def _records(path: str, needed: tuple[str, ...]) -> Iterator[tuple[int, dict[str, int], list[str]]]:
  """Yields (start line, column index, fields) for each record of a CSV file with a header.

  Raises:
    DataError: missing file, invalid UTF-8, a header without a needed column, a CSV syntax error or
      a record of the wrong width.
  """
  data = read_bytes(path)
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    line_start = data.rfind(b"\n", 0, e.start) + 1
    raise DataError(path, f"invalid UTF-8 (byte {e.start - line_start + 1} of the line), expected "
                    "UTF-8 text", data.count(b"\n", 0, e.start) + 1) from None
  del data
  reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""), strict=True)
  try:
    header = next(reader, None)
  except csv.Error as e:
    raise DataError(path, f"bad CSV header ({e})", 1) from None
  if not header:
    raise DataError(path, f"empty file, expected a header with {', '.join(needed)}", 1)
  column = {name.strip(): n for n, name in enumerate(header)}
  for name in needed:
    if name not in column:
      raise DataError(path, f"no column {name!r} (header has {', '.join(header)}); expected a "
                      f"header with {', '.join(needed)}", 1)
  while True:
    start = reader.line_num + 1
    try:
      row = next(reader)
    except StopIteration:
      return
    except csv.Error as e:
      raise DataError(path, f"malformed CSV record ({e}), expected comma-separated fields with "
                      "\"double-quoted\" text", start) from None
    if not row:
      continue
    if len(row) != len(header):
      raise DataError(path, f"record has {len(row)} fields, header has {len(header)}", start)
    yield start, column, row


def read_interactions(path: str) -> RawInteractions:
  """Reads `RAW_interactions.csv`: users = user_id, items = recipe_id, timestamps = date (UTC
  midnight, unix seconds), ratings = rating (integer 0-5).

  Raises:
    DataError: naming the line of an empty id, a bad date or a bad rating.
  """
  path = os.fspath(path)
  users, items, times, ratings, lines = [], [], [], [], []
  seconds = {}  # date string -> unix seconds (a few thousand distinct dates)
  for line, col, row in _records(path, ("user_id", "recipe_id", "date", "rating")):
    user, item = row[col["user_id"]].strip(), row[col["recipe_id"]].strip()
    for name, value in (("user_id", user), ("recipe_id", item)):
      if not value:
        raise DataError(path, f"empty {name}, expected an id", line)
    date = row[col["date"]].strip()
    if date not in seconds:
      try:
        day = datetime.datetime.strptime(date, "%Y-%m-%d").date()
      except ValueError:
        raise DataError(path, f"date {date!r} is not a date, expected YYYY-MM-DD", line) from None
      seconds[date] = float((day - _EPOCH).days * 86400)
    rating = row[col["rating"]].strip()
    try:
      value = int(rating)
    except ValueError:
      value = -1
    if not 0 <= value <= 5:
      raise DataError(path, f"rating {rating!r} is not valid, expected an integer 0-5", line)
    users.append(user)
    items.append(item)
    times.append(seconds[date])
    ratings.append(value)
    lines.append(line)
  return RawInteractions.from_rows(path, users, items, times, ratings, lines)


def _tags(value: str, path: str, line: int) -> str:
  """A `tags` cell ("['a', 'b']") as 'a b'; an empty cell is ''."""
  if not value.strip():
    return ""
  try:
    tags = ast.literal_eval(value.strip())
  except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
    tags = None
  if not isinstance(tags, (list, tuple)) or not all(isinstance(t, str) for t in tags):
    shown = value if len(value) <= 60 else value[:57] + "..."
    raise DataError(path, f"tags {shown!r} is not a list literal of strings, expected e.g. "
                    "\"['60-minutes-or-less', 'time-to-make']\"", line)
  return " ".join(t for t in (clean_text(t) for t in tags) if t)


def read_recipes(path: str) -> ItemTable:
  """Reads `RAW_recipes.csv` into ("name", "description", "tags") text per recipe id.

  Raises:
    DataError: naming the line of an empty or repeated id or malformed tags.
  """
  path = os.fspath(path)
  text, order = {}, []
  for line, col, row in _records(path, ("name", "id", "description", "tags")):
    item = row[col["id"]].strip()
    if not item:
      raise DataError(path, "empty id, expected a recipe id", line)
    if item in text:
      raise DataError(path, f"recipe {item!r} has a second row", line)
    text[item] = (clean_text(row[col["name"]]), clean_text(row[col["description"]]),
                  _tags(row[col["tags"]], path, line))
    order.append(item)
  return ItemTable(path, TEXT_FIELDS, text, order)


def load_foodcom(directory: str) -> tuple[RawInteractions, ItemTable]:
  """Reads `<directory>/RAW_interactions.csv` and `<directory>/RAW_recipes.csv`.

  Recipes are joined on `recipe_id` = `id`; reviewed recipes missing from the recipe file are
  reported by `build_dataset`. `ItemTable.order` is recipe file order.

  Returns:
    (interactions, item table with fields ("name", "description", "tags")).

  Raises:
    DataError: naming file and line of the first problem.
  """
  directory = os.fspath(directory)
  return (read_interactions(os.path.join(directory, INTERACTIONS_FILE)),
          read_recipes(os.path.join(directory, RECIPES_FILE)))
