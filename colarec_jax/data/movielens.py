"""The embedded default dataset: MovieLens-100k, taken from the RecBole 1.2.1 wheel on PyPI.

On first use the wheel is fetched with `pip download` into the cache directory (`$COLAREC_CACHE`,
default `~/.cache/colarec_jax`), its sha256 is checked, and the two atomic files are extracted and
checked too. Later runs use the extracted files and need no network.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

from colarec_jax.data.config import cache_root
from colarec_jax.data.fileio import sha256_file as sha256
from colarec_jax.runtime.errors import DataError

WHEEL = "recbole-1.2.1-py3-none-any.whl"
WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
MEMBER_DIR = "recbole/dataset_example/ml-100k"
FILES_SHA256 = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
}


def _verified(path: str, expected: str) -> bool:
  return os.path.isfile(path) and sha256(path) == expected


def ensure_ml100k(cache: str = "", log=print) -> str:
  """Returns a folder holding the verified `ml-100k.inter` and `ml-100k.item`.

  Args:
    cache: the cache root ('' = $COLAREC_CACHE or ~/.cache/colarec_jax).
    log: where progress lines go.

  Raises:
    DataError: the wheel could not be downloaded (with what to do instead) or its checksum is wrong.
  """
  root = cache_root(cache)
  folder = os.path.join(root, "ml-100k")
  if all(_verified(os.path.join(folder, f), h) for f, h in FILES_SHA256.items()):
    return folder
  wheel = os.path.join(root, "wheels", WHEEL)
  if not _verified(wheel, WHEEL_SHA256):
    _download_wheel(wheel, log)
  os.makedirs(root, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=".ml-100k-", dir=root)
  try:
    with zipfile.ZipFile(wheel) as zf:
      for name, expected in FILES_SHA256.items():
        target = os.path.join(staging, name)
        with zf.open(f"{MEMBER_DIR}/{name}") as src, open(target, "wb") as dst:
          shutil.copyfileobj(src, dst)
        if sha256(target) != expected:
          raise DataError(wheel, f"{name} inside the wheel has an unexpected sha256")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(staging, folder)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  log(f"ml-100k extracted to {folder}")
  return folder


def _download_wheel(wheel: str, log) -> None:
  """`pip download --no-deps recbole==1.2.1` into a temp folder, verify, then move into place."""
  os.makedirs(os.path.dirname(wheel), exist_ok=True)
  log(f"downloading MovieLens-100k (the {WHEEL} wheel, 2 MB) into {os.path.dirname(wheel)}")
  with tempfile.TemporaryDirectory(dir=os.path.dirname(wheel)) as tmp:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--quiet", "-d", tmp, "recbole==1.2.1"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    got = os.path.join(tmp, WHEEL)
    if result.returncode != 0 or not os.path.isfile(got):
      reason = (result.stderr or result.stdout).strip().splitlines()
      raise DataError(wheel, "MovieLens-100k is not in the cache and could not be downloaded "
                      f"({reason[-1] if reason else 'pip gave no reason'}). Connect to PyPI and "
                      f"rerun, or put {WHEEL} (sha256 {WHEEL_SHA256[:12]}...) at this path, or "
                      "use RecBole files you have: --config.data.source=atomic "
                      "--config.data.dir=DIR --config.data.name=ml-100k")
    if sha256(got) != WHEEL_SHA256:
      raise DataError(wheel, f"downloaded {WHEEL} has sha256 {sha256(got)}, expected "
                      f"{WHEEL_SHA256}; refusing to use it")
    os.replace(got, wheel)
