"""Errors a user can cause, reported as one clear message (no JAX stack trace)."""


class ColarecError(Exception):
  """Base class of the errors `main` prints as a single line."""


class DataError(ColarecError):
  """An input file is missing or malformed; the message names file and line."""

  def __init__(self, path, message, line=None):
    where = f"{path}:{line}" if line is not None else f"{path}"
    super().__init__(f"{where}: {message}")
    self.path = str(path)
    self.line = line


class ConfigError(ColarecError):
  """A config value is invalid; the message names the key and what was expected."""

  def __init__(self, key, message):
    super().__init__(f"config.{key}: {message}")
    self.key = key


class UsageError(ColarecError):
  """A command-line flag is invalid (e.g. an unknown user id); the message names the flag."""

  def __init__(self, flag, message):
    super().__init__(f"--{flag}: {message}")
    self.flag = flag


class WorkdirInUse(UsageError):
  """Another colarec-jax process holds the workdir's lock (see `data.fileio.workdir_lock`)."""

  def __init__(self, message):
    super().__init__("workdir", message)


class RequestError(ColarecError, ValueError):
  """A request to a trained model is invalid (an unknown user or item id, an empty history, a
  list length out of range); the message names the request's field. `not_found`: the request is
  well formed but names an id the model does not know."""

  def __init__(self, field, message, not_found=False):
    super().__init__(f"{field}: {message}")
    self.field = field
    self.message = message
    self.not_found = not_found
