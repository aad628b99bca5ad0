"""Batch export: the top-N items of every user (or of the users listed in a file) into one file.

The format follows the file's suffix: JSON Lines (`.jsonl`, one `{"user": id, "items": [...],
"scores": [...]}` per line) or Parquet (`.parquet`, columns user, items, scores; needs pyarrow).
Users are ranked as `Recommender.recommend(user=...)` ranks them (nothing they already have),
in beam-search calls of the recommender's batch size, a chunk of users at a time. The file is
written through a temporary file beside it and renamed at the end, so a failed export leaves
nothing half-written.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

import numpy as np
import tqdm

from colarec_jax.runtime import sharding
from colarec_jax.runtime.errors import DataError, RequestError, UsageError
from colarec_jax.serving.recommender import TOP_N, Catalog, Query, Recommender, check_top_n

FORMATS = (".jsonl", ".parquet")
CHUNK_BATCHES = 16  # beam-search batches per chunk of users (a chunk's rows are held at once)


def check_output(output: str) -> str:
  """The format of `output` ('.jsonl' or '.parquet'), checked before any work.

  Raises:
    UsageError: no file, another suffix, a folder that does not exist or cannot be written, or
      no pyarrow.
  """
  if not output:
    raise UsageError("output", "give the file to write, e.g. --output=top10.jsonl "
                     f"(formats: {', '.join(FORMATS)})")
  suffix = os.path.splitext(output)[1].lower()
  if suffix not in FORMATS:
    raise UsageError("output", f"{output!r} ends in {suffix or 'no suffix'!r}; expected one of "
                     f"{', '.join(FORMATS)}")
  folder = os.path.dirname(os.path.abspath(output))
  if not os.path.isdir(folder):
    raise UsageError("output", f"{folder} is not a folder; expected the output file's folder to "
                     "exist")
  if os.path.isdir(output):
    raise UsageError("output", f"{output} is a folder; expected a file name")
  try:  # a file in the folder, written and removed: permissions, a read-only disk, ...
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".colarec-write-check-"):
      pass
  except OSError as e:
    raise UsageError("output", f"cannot write to {folder}: {e.strerror or e}") from None
  if suffix == ".parquet":
    try:
      import pyarrow  # noqa: F401
    except ImportError:
      raise UsageError("output", "writing .parquet needs pyarrow: pip install "
                       "'colarec-jax[serve]', or write .jsonl") from None
  return suffix


def _temp_prefix(output: str) -> str:
  return f".{os.path.basename(output)}-"


def _stale_temps(output: str) -> list[str]:
  """Temporary files of exports to `output` whose process is gone (killed before renaming)."""
  folder, prefix = os.path.dirname(os.path.abspath(output)), _temp_prefix(output)
  out = []
  for name in os.listdir(folder):
    pid = name[len(prefix):].split("-")[0]
    if name.startswith(prefix) and name.endswith(".tmp") and pid.isdigit():
      try:
        os.kill(int(pid), 0)
      except ProcessLookupError:
        out.append(os.path.join(folder, name))
      except PermissionError:
        pass  # alive, another user's
  return out


def read_users(path: str, catalog: Catalog) -> list[str]:
  """The user ids in `path`, one per line (blank lines skipped).

  Raises:
    DataError: naming the file and line of an unknown or repeated id, or an empty file.
  """
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.read().splitlines()
  except FileNotFoundError:
    raise DataError(path, "file not found; expected user ids, one per line") from None
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(path, f"cannot read: {e}") from None
  users, seen = [], {}
  for number, line in enumerate(lines, start=1):
    raw = line.strip()
    if not raw:
      continue
    try:
      catalog.user_index(raw)
    except RequestError as e:
      raise DataError(path, e.message, number) from None
    if raw in seen:
      raise DataError(path, f"{raw!r} is listed twice (first on line {seen[raw]})", number)
    seen[raw] = number
    users.append(raw)
  if not users:
    raise DataError(path, "holds no user ids; expected one per line")
  return users


class _JsonLines:
  def __init__(self, path: str):
    self.file = open(path, "w", encoding="utf-8")  # noqa: SIM115  (closed by `close`)

  def write(self, users, items, scores) -> None:
    self.file.writelines(json.dumps({"user": u, "items": i, "scores": s}) + "\n"
                         for u, i, s in zip(users, items, scores))

  def close(self) -> None:
    self.file.close()


class _Nothing:
  def write(self, *_) -> None:
    pass

  def close(self) -> None:
    pass


class _Parquet:
  def __init__(self, path: str):
    import pyarrow as pa
    import pyarrow.parquet as pq
    self.pa = pa
    self.schema = pa.schema([("user", pa.string()), ("items", pa.list_(pa.string())),
                             ("scores", pa.list_(pa.float32()))])
    self.writer = pq.ParquetWriter(path, self.schema)

  def write(self, users, items, scores) -> None:
    self.writer.write_table(self.pa.table({"user": users, "items": items, "scores": scores},
                                          schema=self.schema))

  def close(self) -> None:
    self.writer.close()


def export(rec: Recommender, output: str, *, users: list[str] | None = None, top_n: int = TOP_N,
           progress_bar: bool = True, log=print) -> dict:
  """Writes the top `top_n` items of `users` (default: every user) to `output`.

  Returns:
    {'users': how many, 'seconds': the ranking and writing time, 'users_per_second'}.

  Raises:
    UsageError: a bad output name or top_n; RequestError: an unknown user.
  """
  suffix = check_output(output)
  if users is None:
    users = [str(u) for u in rec.catalog.dataset.user_ids[1:]]
  try:
    check_top_n(top_n, rec.max_top_n)
  except RequestError as e:
    raise UsageError("top_n", e.message) from None
  ds = rec.catalog.dataset
  # Every process of a multi-process run ranks its share of each batch; the main one writes.
  main = sharding.is_main_process()
  tmp = None
  if main:
    folder, prefix = os.path.dirname(os.path.abspath(output)), _temp_prefix(output)
    for stale in _stale_temps(output):
      os.unlink(stale)
      log(f"removed {stale}, left by an export that was killed")
    # The writer's pid in the name: a later export can tell a killed one's file from a live one's.
    fd, tmp = tempfile.mkstemp(prefix=f"{prefix}{os.getpid()}-", suffix=".tmp", dir=folder)
    os.close(fd)
  start = time.perf_counter()
  try:
    writer = (_JsonLines if suffix == ".jsonl" else _Parquet)(tmp) if main else _Nothing()
    try:
      chunk = CHUNK_BATCHES * rec.batch_size
      with tqdm.tqdm(total=len(users), desc="export", unit="user", leave=False,
                     disable=None if progress_bar and main else True) as bar:
        for first in range(0, len(users), chunk):
          queries: list[Query] = [rec.query(user=u, top_n=top_n)
                                  for u in users[first:first + chunk]]
          items, scores = rec.rank(queries, progress=bar.update)
          real = items > 0
          writer.write([q.user for q in queries],
                       [ds.item_ids[row[keep]].tolist() for row, keep in zip(items, real)],
                       [row[keep].astype(np.float64).tolist() for row, keep in zip(scores, real)])
    finally:
      writer.close()
    if main:
      os.replace(tmp, output)
  finally:
    if tmp is not None and os.path.exists(tmp):
      os.unlink(tmp)
  seconds = time.perf_counter() - start
  log(f"wrote the top {top_n} items of {len(users)} users to {output} in {seconds:.1f} s "
      f"({len(users) / seconds:.1f} users/s)")
  return {"users": len(users), "seconds": seconds, "users_per_second": len(users) / seconds}
