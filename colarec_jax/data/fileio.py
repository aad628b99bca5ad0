"""File helpers shared by the stages: reading with one clear error, and staged (all-or-nothing)
output folders."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

from colarec_jax.errors import DataError


def read_bytes(path: str) -> bytes:
  """The whole file; a missing or unreadable file is a `DataError` naming it."""
  try:
    with open(os.fspath(path), "rb") as f:
      return f.read()
  except FileNotFoundError:
    raise DataError(path, "file not found") from None
  except OSError as e:
    raise DataError(path, f"cannot read: {e.strerror or e}") from None


@contextlib.contextmanager
def staged_directory(target: str):
  """Yields a fresh sibling folder to write into; on success it replaces `target` whole.

  On an exception the staging folder is removed and `target` is left as it was, so a failed
  stage never leaves a half-written folder behind.
  """
  parent = os.path.dirname(os.path.abspath(target))
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}-", dir=parent)
  try:
    yield staging
    if os.path.exists(target):
      shutil.rmtree(target)
    os.replace(staging, target)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
