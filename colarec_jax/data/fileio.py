"""File reading shared by the sources: one `DataError` naming the file when it cannot be read."""

from __future__ import annotations

import os

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
