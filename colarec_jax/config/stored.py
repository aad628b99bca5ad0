"""The workdir is the model: training stores its resolved config in `<workdir>/config.json`, and
the modes that use a trained model (evaluate, recommend, export, serve) read it from there.

Those modes may change only the keys that do not change the model (`READER_KEYS`: `eval.*` and
where it runs); any other difference is one error naming the key, before any file of the workdir
is read. This file is also a config file for the command line's `--config`: without one, the CLI
passes `--config=<this file>:<workdir>`, so `--config.eval.beam_size=50` still overrides.
"""

from __future__ import annotations

import json
import os
import tempfile

import ml_collections

from colarec_jax.config.base import READER_KEYS, base_config
from colarec_jax.data.fileio import first_difference
from colarec_jax.runtime.errors import ConfigError, UsageError

FILE = "config.json"


def path(workdir: str) -> str:
  return os.path.join(workdir, FILE)


def save(full: dict, workdir: str) -> None:
  """Writes the config (`Settings.full`) through a temporary file: never half-written."""
  os.makedirs(workdir, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{FILE}-", dir=workdir)
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(full, f, indent=1, sort_keys=True)
    os.replace(tmp, path(workdir))
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def stored(workdir: str) -> dict | None:
  """The stored config as JSON values, or None when training stored none (not trained yet, or
  trained before configs were stored).

  Raises:
    UsageError: the file is there but is not a JSON object.
  """
  try:
    with open(path(workdir)) as f:
      saved = json.load(f)
  except (FileNotFoundError, NotADirectoryError):  # no such run (a bad --workdir is reported
    return None                                     # where the workdir is opened)
  except (OSError, ValueError) as e:
    raise UsageError("workdir", f"{path(workdir)} is not readable JSON ({type(e).__name__}); "
                     "expected the config training stored, rerun --mode=train to store it") from None
  if not isinstance(saved, dict):
    raise UsageError("workdir", f"{path(workdir)} holds a JSON {type(saved).__name__}; expected "
                     "the config object training stored")
  return saved


def _flat(tree: dict, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    out.update(_flat(value, f"{name}.") if isinstance(value, dict) else {name: value})
  return out


def load(workdir: str) -> ml_collections.ConfigDict:
  """The config training stored in `workdir`, on top of the base config (keys added since keep
  their defaults).

  Raises:
    UsageError: the workdir holds no stored config, or a key the base config does not have.
  """
  saved = stored(workdir)
  if saved is None:
    raise UsageError("config", f"not given, and {workdir} holds no {FILE} from a training run; "
                     "give --config=<file>, e.g. configs/default.py")
  return on_base(saved, workdir)


def on_base(saved: dict, workdir: str) -> ml_collections.ConfigDict:
  """`saved` (a stored config, whole or some of its sections) on top of the base config: keys
  added to the code since it was saved take their defaults.

  Raises:
    UsageError: a key the base config does not have.
  """
  config = base_config()
  known = _flat(json.loads(config.to_json()))
  values = _flat(saved)
  for key in values:
    if key not in known:
      raise UsageError("workdir", f"{path(workdir)}: there is no config key {key!r}; expected "
                       "the config training stored")
  config.update_from_flattened_dict(values)
  config.lock()  # as the command line's configs are: a mistyped override fails
  return config


def get_config(workdir: str) -> ml_collections.ConfigDict:
  """The config-file entry point (`--config=colarec_jax/config/stored.py:<workdir>`)."""
  return load(workdir)


def check_reader(full: dict, workdir: str) -> None:
  """A mode that uses the trained model may change only `READER_KEYS` from the stored config.

  Args:
    full: the config it was given (`Settings.full`).
    workdir: the trained run.

  Raises:
    ConfigError: naming the first other key that differs.
  """
  saved = stored(workdir)
  if saved is None:
    return  # not trained yet, or an older run: the checkpoint's own check still applies
  saved = json.loads(on_base(saved, workdir).to_json())  # keys added since: their defaults
  keep = lambda tree: {k: v for k, v in tree.items() if k not in READER_KEYS}
  found = first_difference(keep(full), keep(saved))
  if found:
    key, now, then = found
    raise ConfigError(key, f"got {now!r}, but the model in {workdir} was trained with {then!r}; "
                      "a trained model's modes may change only eval.*, num_devices and "
                      "cpu_devices (leave --config out to use the workdir's config)")


def check_trained_with(fixed: dict, saved: dict, where: str) -> None:
  """Raises ConfigError on the first key where `fixed` (`Settings.fixed`, the sections a trained
  model is tied to) differs from a trained model's config `saved`.

  A key `saved` lacks (added to the code after it was trained) counts as its default value then:
  a newer version keeps reading older checkpoints.
  """
  full = json.loads(on_base(saved, where).to_json())
  found = first_difference(fixed, {k: full[k] for k in fixed})
  if found:
    key, now, then = found
    raise ConfigError(key, f"got {now!r}, but the checkpoints in {where} were trained with "
                      f"{then!r}; use that value or a new --workdir")
