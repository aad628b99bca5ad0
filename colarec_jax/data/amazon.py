"""Amazon review data, 2014 edition (McAuley et al.): `reviews_<C>_5.json.gz`, `meta_<C>.json.gz`.

Reviews: gzip, one JSON object per line with keys reviewerID, asin, reviewerName, helpful,
reviewText, overall (rating), summary, unixReviewTime (seconds), reviewTime. Metadata: gzip, one
*Python dict literal* per line (single-quoted strings), parsed with `ast.literal_eval`, never
evaluated. The uncompressed names (`.json`) are read when the `.gz` file is absent. Every problem is
reported as one `DataError` naming the file and line.
"""

from __future__ import annotations

import ast
import gzip
import json
import math
import os
import re
import zlib
from typing import Iterator

import numpy as np

from colarec_jax.data.dataset import ItemTable, RawInteractions
from colarec_jax.runtime.errors import DataError

TEXT_FIELDS = ("title", "brand", "categories")
_SPACE = re.compile(r"\s+")


def clean_text(value) -> str:
  """Collapses runs of whitespace to one space and strips; None -> ''. HTML entities are kept."""
  if value is None:
    return ""
  return _SPACE.sub(" ", value if isinstance(value, str) else str(value)).strip()


def amazon_paths(directory: str, category: str) -> dict[str, str]:
  """The files of `category` in `directory`: keys reviews, meta (the `.gz` name unless only the
  uncompressed one exists)."""
  paths = {}
  for key, name in (("reviews", f"reviews_{category}_5.json"), ("meta", f"meta_{category}.json")):
    path = os.path.join(directory, name)
    paths[key] = path if os.path.exists(path) and not os.path.exists(path + ".gz") else path + ".gz"
  return paths


def _lines(path: str) -> Iterator[tuple[int, str]]:
  """(1-based line number, decoded line) for each non-blank line of a plain or gzip file."""
  if not os.path.exists(path):
    alt = path[:-3] if path.endswith(".gz") else path + ".gz"
    raise DataError(path, f"file not found (nor {os.path.basename(alt)} next to it)")
  n = 0
  try:
    with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as f:
      for n, raw in enumerate(f, start=1):
        try:
          line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
          raise DataError(path, f"invalid UTF-8 (byte {e.start + 1} of the line), expected UTF-8 "
                          "text", n) from None
        if line.strip():
          yield n, line
  except (gzip.BadGzipFile, EOFError, zlib.error) as e:
    raise DataError(path, f"corrupt or truncated gzip data ({e}), expected a complete .gz file",
                    n + 1) from None
  except OSError as e:
    raise DataError(path, f"cannot read: {e.strerror or e}") from None


def _number(value) -> float | None:
  """A finite float from a JSON number or numeric string, else None."""
  if isinstance(value, bool):
    return None
  if isinstance(value, (int, float)):
    out = float(value)
  elif isinstance(value, str):
    try:
      out = float(value)
    except ValueError:
      return None
  else:
    return None
  return out if math.isfinite(out) else None


def _id(record: dict, key: str, path: str, line: int, what: str) -> str:
  value = record.get(key)
  if isinstance(value, int) and not isinstance(value, bool):
    value = str(value)
  if not isinstance(value, str) or not value:
    shown = "missing" if key not in record else f"{value!r}"
    raise DataError(path, f"{what} has {key} {shown}, expected a non-empty string", line)
  return value


def read_reviews(path: str) -> RawInteractions:
  """Reads a `reviews_<C>_5.json(.gz)` file: users = reviewerID, items = asin,
  ratings = overall (NaN when absent), timestamps = unixReviewTime.

  Raises:
    DataError: missing file, bad gzip / UTF-8 / JSON, or a review missing an id or its time.
  """
  path = os.fspath(path)
  users, items, times, ratings, lines = [], [], [], [], []
  for n, line in _lines(path):
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise DataError(path, f"not valid JSON ({e.msg} at column {e.colno}), expected one review "
                      "object per line", n) from None
    if not isinstance(record, dict):
      raise DataError(path, f"line holds a JSON {type(record).__name__}, expected one review "
                      "object per line", n)
    users.append(_id(record, "reviewerID", path, n, "review"))
    items.append(_id(record, "asin", path, n, "review"))
    if "unixReviewTime" not in record:
      raise DataError(path, "review has no unixReviewTime, expected unix seconds", n)
    time = _number(record["unixReviewTime"])
    if time is None:
      raise DataError(path, f"unixReviewTime {record['unixReviewTime']!r} is not a number, "
                      "expected unix seconds", n)
    rating = np.nan
    if record.get("overall") is not None:
      rating = _number(record["overall"])
      if rating is None:
        raise DataError(path, f"overall {record['overall']!r} is not a number, expected a "
                        "rating like 5.0", n)
    times.append(time)
    ratings.append(rating)
    lines.append(n)
  return RawInteractions.from_rows(path, users, items, times, ratings, lines)


def flatten_categories(paths, path: str = "", line: int | None = None) -> str:
  """Category paths as words: each path without its root level, level names deduplicated across
  paths in first-seen order, joined by spaces.

  Example: [['Toys & Games', 'Dolls', 'Playsets'], ['Toys & Games', 'Dolls']] -> 'Dolls Playsets'.
  """
  if paths is None:
    return ""
  if not isinstance(paths, (list, tuple)) or not all(
      isinstance(p, (list, tuple)) and all(isinstance(name, str) for name in p) for p in paths):
    raise DataError(path, f"categories {paths!r} is not a list of category paths, expected e.g. "
                    "[['Beauty', 'Makeup', 'Face']]", line)
  seen = []
  for levels in paths:
    for name in levels[1:]:
      name = clean_text(name)
      if name and name not in seen:
        seen.append(name)
  return " ".join(seen)


def _literal(line: str):
  """A metadata line as a Python literal; strict-JSON lines (true/false/null) are accepted too."""
  try:
    return ast.literal_eval(line.strip())
  except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
    try:
      return json.loads(line)
    except ValueError:
      raise e from None


def read_meta(path: str) -> ItemTable:
  """Reads a `meta_<C>.json(.gz)` file into ("title", "brand", "categories") text per asin.

  Raises:
    DataError: missing file, bad gzip / UTF-8, a line that is not a dict literal, a missing or
      repeated asin, or malformed categories.
  """
  path = os.fspath(path)
  text, order = {}, []
  for n, line in _lines(path):
    try:
      record = _literal(line)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
      reason = e.msg if isinstance(e, SyntaxError) and e.msg else type(e).__name__
      raise DataError(path, f"not a Python dict literal ({reason}), expected one "
                      "{'asin': ..., 'title': ...} per line", n) from None
    if not isinstance(record, dict):
      raise DataError(path, f"line holds a {type(record).__name__} literal, expected one "
                      "{'asin': ..., 'title': ...} dict per line", n)
    asin = _id(record, "asin", path, n, "metadata record")
    if asin in text:
      raise DataError(path, f"item {asin!r} has a second metadata record", n)
    text[asin] = (clean_text(record.get("title")), clean_text(record.get("brand")),
                  flatten_categories(record.get("categories"), path, n))
    order.append(asin)
  return ItemTable(path, TEXT_FIELDS, text, order)


def load_amazon(directory: str, category: str) -> tuple[RawInteractions, ItemTable]:
  """Reads `<directory>/reviews_<category>_5.json.gz` and `meta_<category>.json.gz`.

  Reviewed items absent from the metadata are not checked here (`build_dataset` reports them);
  metadata items without reviews stay in the table. `ItemTable.order` is metadata file order.

  Args:
    directory: the folder holding both files.
    category: the file-name category, e.g. 'Toys_and_Games' or 'Beauty'.

  Returns:
    (interactions, item table with fields ("title", "brand", "categories")).

  Raises:
    DataError: naming file and line of the first problem.
  """
  paths = amazon_paths(os.fspath(directory), category)
  return read_reviews(paths["reviews"]), read_meta(paths["meta"])
