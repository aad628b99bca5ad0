"""Command line: `python -m colarec_jax.main --config=configs/default.py --workdir=DIR [--mode=M]`.

Flags only; the work is done by library functions. Modes:
  prepare  load, filter, split and tokenise the dataset into <workdir>/data (reused when unchanged)
  stats    print the statistics table of the prepared dataset (preparing it first if needed)
  all      everything that exists so far (default): prepare, then stats
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from colarec_jax.errors import ColarecError

MODES = ("all", "prepare", "stats")

config_flags.DEFINE_config_file("config", None, "Path to a config file in configs/.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for prepared data, checkpoints and results.")
flags.DEFINE_enum("mode", "all", MODES, "What to run.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def _run_mode(mode, config, workdir):
  from colarec_jax.data import prepare as prepare_lib

  prepared = prepare_lib.prepare(config, workdir)
  if mode in ("stats", "all"):
    print(prepare_lib.format_stats(prepared))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)
  try:
    _run_mode(FLAGS.mode, FLAGS.config, FLAGS.workdir)
  except ColarecError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def run():
  """Console-script entry point (`colarec-jax`)."""
  app.run(main)


if __name__ == "__main__":
  run()
