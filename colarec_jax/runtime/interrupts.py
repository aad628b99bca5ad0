"""SIGINT and SIGTERM as a request to stop: one line, a distinct exit code, nothing lost.

`main` installs the handlers. Outside the training loop a signal raises `Interrupted` at once
(every cache is written through a staging folder, so nothing is half-written); inside it
(`deferred()`) the signal only sets a flag, and the loop saves a checkpoint at the next step
boundary before raising, so a rerun resumes from that step.
"""

from __future__ import annotations

import contextlib
import signal
import sys

from colarec_jax.runtime.errors import ColarecError

NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}
_state = {"deferring": False, "requested": None}


class Interrupted(ColarecError):
  """The run was stopped by a signal; `exit_code` is 128 + the signal's number."""

  def __init__(self, signum: int, message: str = ""):
    super().__init__(message or f"stopped by {NAMES.get(signum, signum)}; every finished stage "
                     "is kept, rerun the same command to go on")
    self.exit_code = 128 + int(signum)


def _handler(signum, frame):
  if _state["deferring"]:
    _state["requested"] = signum
    return
  raise Interrupted(signum)


def install() -> None:
  """Routes SIGINT and SIGTERM to `_handler` (call once, from the main thread)."""
  for signum in NAMES:
    signal.signal(signum, _handler)


@contextlib.contextmanager
def deferred():
  """Within the block a signal is only recorded (see `requested`)."""
  previous = _state["deferring"]
  _state["deferring"], _state["requested"] = True, None
  try:
    yield
  finally:
    _state["deferring"] = previous


def requested() -> int | None:
  """The signal received inside `deferred()`, or None."""
  return _state["requested"]


def stop_if_requested(where: str) -> None:
  """Raises `Interrupted` when a signal came inside `deferred()`; `where` says where the run
  stopped and what it saved, e.g. 'after epoch 3; its checkpoint is saved'."""
  signum = _state["requested"]
  if signum is not None:
    raise Interrupted(signum, f"stopped by {NAMES[signum]} {where}, rerun the same command to "
                      "resume")


@contextlib.contextmanager
def one_line_errors():
  """A command line's last word: a stop by signal or a user's mistake becomes one line on
  stderr and the exit code (128 + the signal, or 2), never a traceback."""
  try:
    yield
  except Interrupted as e:
    print(f"interrupted: {e}", file=sys.stderr)
    sys.exit(e.exit_code)
  except ColarecError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)

