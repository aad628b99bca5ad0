"""The CLI with one fault injected, for tests/test_faults.py: COLAREC_FAULT=where:count:SIGNAL.

  step           the signal after the count-th train step (mid-epoch)
  inside_latest  the signal after Orbax wrote the count-th `latest` checkpoint and before its
                 checksums (the save is not finished)
  after_latest   the signal after the count-th `latest` save, before the best save
  gid_build      the signal inside the GID stage's build (its staging folder exists)
"""

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from colarec_jax import main  # noqa: E402
from colarec_jax.runtime import checkpoint  # noqa: E402
from colarec_jax.training import loop as train  # noqa: E402
from colarec_jax.gid import builder  # noqa: E402

where, count, name = os.environ["COLAREC_FAULT"].split(":")
calls = {"n": 0}


def hit():
  calls["n"] += 1
  if calls["n"] == int(count):
    os.kill(os.getpid(), getattr(signal, name))


if where == "step":
  make_step = train.make_train_step

  def make_train_step(*args, **kwargs):
    step = make_step(*args, **kwargs)

    def faulty(*a, **k):
      out = step(*a, **k)
      hit()
      return out
    return faulty
  train.make_train_step = make_train_step
elif where == "inside_latest":
  hashes = checkpoint._hashes

  def _hashes(folder):
    if os.path.basename(os.path.dirname(folder)) == checkpoint.LATEST:
      hit()
    return hashes(folder)
  checkpoint._hashes = _hashes
elif where == "after_latest":
  save = checkpoint.save

  def faulty_save(manager, *args, **kwargs):
    save(manager, *args, **kwargs)
    if os.path.basename(str(manager.directory)) == checkpoint.LATEST:
      hit()
  checkpoint.save = faulty_save
elif where == "gid_build":
  codes = builder.hierarchical_codes

  def hierarchical_codes(*args, **kwargs):
    hit()
    return codes(*args, **kwargs)
  builder.hierarchical_codes = hierarchical_codes
else:
  raise SystemExit(f"unknown fault {where!r}")

main.run()
