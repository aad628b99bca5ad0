"""File helpers shared by the stages: reading with one clear error, staged (all-or-nothing)
output folders, and the cached stage that every stage (data, LightGCN, GIDs) is built with."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time

import numpy as np

from colarec_jax.runtime.errors import ConfigError, DataError, UsageError, WorkdirInUse


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


def write_file(path: str, fill) -> None:
  """Writes `path` through a temporary file beside it (`fill(f)` writes the bytes), so it is
  never half-written: the old file or the new one, whole."""
  staged = path + ".tmp"
  try:
    with open(staged, "wb") as f:
      fill(f)
    os.replace(staged, path)
  finally:
    if os.path.exists(staged):
      os.unlink(staged)


def sha256_file(path: str) -> str:
  """The file's sha256, hex."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def file_hashes(directory: str) -> dict[str, str]:
  """sha256 of every file directly in `directory` except the manifest, by name."""
  return {name: sha256_file(os.path.join(directory, name)) for name in sorted(os.listdir(directory))
          if name != MANIFEST and os.path.isfile(os.path.join(directory, name))}


def first_difference(now, then, prefix: str = ""):
  """(dotted key, value now, value then) of the first difference of two JSON trees, or None."""
  if isinstance(now, dict) and isinstance(then, dict):
    for k in sorted(set(now) | set(then)):
      found = first_difference(now.get(k), then.get(k), f"{prefix}.{k}" if prefix else str(k))
      if found:
        return found
    return None
  return (prefix, now, then) if now != then else None


def _damage(directory: str) -> tuple[dict | None, str]:
  """(manifest, '') for a complete stage folder; (manifest or None, what is wrong) otherwise."""
  path = os.path.join(directory, MANIFEST)
  if not os.path.isdir(directory):
    return None, "missing"
  try:
    with open(path) as f:
      manifest = json.load(f)
  except FileNotFoundError:
    return None, f"{MANIFEST} is missing"
  except (OSError, ValueError) as e:
    return None, f"{MANIFEST} is unreadable ({type(e).__name__})"
  if not isinstance(manifest, dict) or "key" not in manifest or "files" not in manifest:
    return None, f"{MANIFEST} lacks its key or file list"
  for name, expected in manifest["files"].items():
    file = os.path.join(directory, name)
    if not os.path.isfile(file):
      return manifest, f"{name} is missing"
    if sha256_file(file) != expected:
      return manifest, f"{name} does not match its recorded checksum"
  return manifest, ""


def read_manifest(directory: str) -> dict | None:
  """The manifest of a complete, undamaged stage folder, or None."""
  manifest, problem = _damage(directory)
  return None if problem else manifest


def cached_stage(directory: str, key: dict, build, load, *, what: str, log=print,
                 read_only: bool = False):
  """A stage's output folder, reused while its manifest's key equals `key`, else rebuilt.

  The manifest records the key and the sha256 of every output file; a folder whose manifest is
  unreadable or whose files do not match it is damaged, and is rebuilt with a one-line notice.

  Args:
    directory: the stage's folder, e.g. `<workdir>/gid`.
    key: JSON-able description of everything the output depends on (inputs' keys, config).
    build: `build(staging_dir) -> dict` writes the output files into the staging folder and
      returns the manifest's other entries; the folder replaces `directory` whole on success.
    load: `load(directory, manifest) -> result` reads a finished folder.
    what: names the output in the "reusing ..." and "... written to" lines.
    log: where those lines go.
    read_only: never build: a missing, damaged or differently keyed folder is an error
      (evaluate and recommend use what training built, or nothing).

  Returns:
    `load`'s result, for a reused folder or a fresh build alike.

  Raises:
    UsageError: read-only, and the folder is missing or damaged.
    ConfigError: read-only, and the folder was built from another config (names the key).
  """
  manifest, problem = _damage(directory)
  if not problem and manifest["key"] == key:
    log(f"reusing {what} in {directory}")
    return load(directory, manifest)
  if read_only:
    if problem == "missing":
      raise UsageError("mode", f"there are no {what} in {directory}; train first (--mode=train)")
    if problem:
      raise UsageError("mode", f"the {what} in {directory} are damaged ({problem}); rebuild them "
                       "with --mode=train")
    name, now, then = first_difference(key, manifest["key"])
    raise ConfigError(config_key(name), f"got {now!r}, but the {what} in {directory} were built "
                      f"with {then!r}; evaluate and recommend use what training built: give the "
                      "training config")
  if problem and problem != "missing":
    log(f"the {what} in {directory} are damaged ({problem}); rebuilding them")
  with staged_directory(directory) as staging:
    entries = build(staging)
    manifest = {"key": key, **entries, "files": file_hashes(staging)}
    with open(os.path.join(staging, MANIFEST), "w") as f:
      json.dump(manifest, f, indent=1)
  log(f"{what} written to {directory}")
  return load(directory, manifest)


SECTIONS = ("data", "cf", "gid", "eval", "seed")


def config_key(path: str) -> str:
  """A stage key's dotted path -> the config key it comes from (its last section.name part)."""
  parts = path.split(".")
  if "inputs" in parts:  # an input file's checksum: the files in data.dir changed
    return "data.dir"
  for n in range(len(parts) - 1, -1, -1):
    if parts[n] in SECTIONS and (n + 1 < len(parts) or parts[n] == "seed"):
      return ".".join(parts[n:n + 2])
  return path


def _held_exclusively(fd: int) -> bool:
  """Whether another process holds the lock exclusively (a shared request would fail too)."""
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
  except BlockingIOError:
    return True
  fcntl.flock(fd, fcntl.LOCK_UN)
  return False


def remove_stale_staging(workdir: str) -> list[str]:
  """Removes staging folders (`.<stage>-XXXX`) that a killed build left in `workdir`; call it only
  while holding the workdir's exclusive lock. Returns what was removed."""
  removed = []
  if not os.path.isdir(workdir):
    return removed
  for name in os.listdir(workdir):
    path = os.path.join(workdir, name)
    if name.startswith(".") and "-" in name and os.path.isdir(path) and (
        os.path.basename(name[1:].rsplit("-", 1)[0]) in STAGES):
      shutil.rmtree(path, ignore_errors=True)
      removed.append(path)
  return removed


STAGES = ("data", "lightgcn", "gid")

LOCK = ".colarec.lock"


@contextlib.contextmanager
def workdir_lock(workdir: str, *, exclusive: bool = True, log=print):
  """Holds `<workdir>/.colarec.lock` for the block: exclusive for runs that write the workdir,
  shared for runs that only read it (evaluate, recommend), so two writers, or a writer and a
  reader, never share a workdir. The lock is the kernel's (`flock`), so it dies with its process:
  a lock file left by a killed run is stale and taken over. The exclusive holder removes the
  staging folders a killed build left behind.

  Raises:
    UsageError: the workdir cannot be created or written, or another run holds the lock.
  """
  created = not os.path.exists(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
    fd = os.open(os.path.join(workdir, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
  except FileExistsError:
    raise UsageError("workdir", f"{workdir} is a file; expected a folder (new or a run's)") from None
  except OSError as e:
    raise UsageError("workdir", f"cannot write to {workdir}: {e.strerror or e}") from None
  try:
    try:
      fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
      if exclusive and not _held_exclusively(fd):
        # Only readers hold it (evaluate, recommend, export, a server): they may share it with
        # each other, never with a writer that would change what they serve.
        raise WorkdirInUse(f"{workdir} is being read by another colarec-jax process "
                         "(evaluate, recommend, export or serve); a mode that writes (train, "
                         "add_items, ...) waits for it: stop the server (or let the others "
                         "finish), then run this again") from None
      raise WorkdirInUse(f"{workdir} is in use by another colarec-jax run "
                       f"({holder or 'another process'}); wait for it to finish, or use another "
                       "--workdir") from None
    if exclusive:
      os.ftruncate(fd, 0)
      os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
      for path in remove_stale_staging(workdir):
        log(f"removed {path}, left by a build that did not finish")
    try:
      yield
    finally:
      if (exclusive or created) and os.listdir(workdir) == [LOCK]:
        os.unlink(os.path.join(workdir, LOCK))  # a run that wrote nothing leaves nothing
        if created:
          os.rmdir(workdir)
  finally:
    os.close(fd)  # releases the lock


def text_array(rows) -> np.ndarray:
  """[m, fields] object array of Python strings: each cell as long as its own text, where a NumPy
  unicode array would give every cell the longest one's width (a million items of two fields with
  one 500-character title: 4 GB instead of ~0.2 GB)."""
  rows = [tuple(str(x) for x in row) for row in rows]
  out = np.empty((len(rows), len(rows[0]) if rows else 0), object)
  for n, row in enumerate(rows):
    out[n, :] = row
  return out


def pack_text(text: np.ndarray, prefix: str) -> dict[str, np.ndarray]:
  """A text array as `<prefix>_bytes` (UTF-8), `<prefix>_offsets` ([cells + 1]) and
  `<prefix>_shape`, for `np.savez`: no pickles, no fixed width."""
  cells = [str(x).encode("utf-8") for x in text.reshape(-1)]
  offsets = np.zeros(len(cells) + 1, np.int64)
  offsets[1:] = np.cumsum([len(c) for c in cells])
  return {f"{prefix}_bytes": np.frombuffer(b"".join(cells), np.uint8),
          f"{prefix}_offsets": offsets, f"{prefix}_shape": np.asarray(text.shape, np.int64)}


def unpack_text(arrays, prefix: str, legacy: str | None = None) -> np.ndarray:
  """The object array `pack_text` stored under `prefix`; a file written before text was stored
  variable-length holds a unicode array under `legacy` instead."""
  if legacy is not None and legacy in arrays:
    return text_array(arrays[legacy].tolist())
  data, offsets = arrays[f"{prefix}_bytes"].tobytes(), arrays[f"{prefix}_offsets"]
  cells = [data[offsets[n]:offsets[n + 1]].decode("utf-8") for n in range(len(offsets) - 1)]
  out = np.empty(len(cells), object)
  out[:] = cells
  return out.reshape(tuple(int(x) for x in arrays[f"{prefix}_shape"]))
