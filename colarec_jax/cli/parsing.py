"""Command-line parsing with one line per mistake, for every console script: absl's flag and
config-file failures become `error: <flag or config key>: what was expected` and exit code 2."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable

from absl import flags

from colarec_jax.runtime.errors import ColarecError


def flag_error(error: BaseException, argv: list[str]) -> str:
  """A flag-parsing failure as one line: the flag or config key, and what was expected."""
  if isinstance(error, ColarecError):  # the workdir's stored config (stored.get_config)
    return str(error)
  text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
  path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "")
  keys = [a[2:].split("=")[0] for a in argv if a.startswith("--config.")]
  key = next((k for k in keys if any(f"'{part}" in text for part in k.split(".")[1:])), None)
  if isinstance(error, (AttributeError, KeyError)) and key:
    # A --config.<key> override naming no key of the config.
    suggestion = re.findall(r'Did you mean "([^"]+)"', text)
    hint = f'; did you mean "{suggestion[0]}"?' if suggestion else ""
    return f"{key}: there is no such config key{hint}"
  if path and not os.path.isfile(path):
    return f"--config: {path!r} is not a file; expected a config file such as configs/default.py"
  if isinstance(error, flags.Error):
    return text.removeprefix("flag ")
  cause = error.__cause__ or error
  where = f" (line {cause.lineno})" if getattr(cause, "lineno", None) else ""
  return (f"--config: cannot load {path!r}: {type(cause).__name__}: "
          f"{getattr(cause, 'msg', None) or cause}{where}; expected a file whose get_config() "
          "returns a config, such as configs/default.py")


def one_line_parser(FLAGS, transform: Callable[[list[str]], list[str]] = lambda argv: argv):  # noqa: N803
  """An absl `flags_parser`: parses `transform(argv)`, loads a --config file at once (it loads
  lazily: fail here, not in the middle of a run), and turns any failure into one line on stderr
  and exit code 2."""
  def parse(argv: list[str]) -> list[str]:
    try:
      remaining = FLAGS(transform(argv))
      if "config" in FLAGS and FLAGS["config"].present:
        FLAGS.config.keys()
      return remaining
    except Exception as e:  # noqa: BLE001  (whatever the config file or a flag raises: one line)
      print(f"error: {flag_error(e, argv)}", file=sys.stderr)
      sys.exit(2)
  return parse
