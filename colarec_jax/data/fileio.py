"""File helpers shared by the stages: reading with one clear error, staged (all-or-nothing)
output folders, and the cached stage that every stage (data, LightGCN, GIDs) is built with."""

from __future__ import annotations

import contextlib
import json
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


MANIFEST = "manifest.json"


def read_manifest(directory: str) -> dict | None:
  """`<directory>/manifest.json`, or None when there is none."""
  path = os.path.join(directory, MANIFEST)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def cached_stage(directory: str, key: dict, build, load, *, what: str, log=print):
  """A stage's output folder, reused while its manifest's key equals `key`, else rebuilt.

  Args:
    directory: the stage's folder, e.g. `<workdir>/gid`.
    key: JSON-able description of everything the output depends on (inputs' keys, config).
    build: `build(staging_dir) -> dict` writes the output files into the staging folder and
      returns the manifest's other entries; the folder replaces `directory` whole on success.
    load: `load(directory, manifest) -> result` reads a finished folder.
    what: names the output in the "reusing ..." and "... written to" lines.
    log: where those lines go.

  Returns:
    `load`'s result, for a reused folder or a fresh build alike.
  """
  manifest = read_manifest(directory)
  if manifest is not None and manifest.get("key") == key:
    log(f"reusing {what} in {directory}")
    return load(directory, manifest)
  with staged_directory(directory) as staging:
    manifest = {"key": key, **build(staging)}
    with open(os.path.join(staging, MANIFEST), "w") as f:
      json.dump(manifest, f, indent=1)
  log(f"{what} written to {directory}")
  return load(directory, manifest)

