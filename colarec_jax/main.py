"""Command line: `python -m colarec_jax.main --config=configs/default.py --workdir=DIR [--mode=M]`.

Flags only; the work is done by library functions (`colarec_jax.pipeline`). Modes:
  prepare  load, filter, split and tokenise the dataset into <workdir>/data (reused when unchanged)
  stats    print the statistics table of the prepared dataset (preparing it first if needed)
  gid      build (or reuse) the GIDs of config.gid.source and print the tree summary
  train    train and evaluate config.model.name (lightgcn | mostpop), print its metrics table
  all      everything (default): prepare, stats, GIDs, then MostPop and LightGCN in one table
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from colarec_jax import pipeline
from colarec_jax.errors import ColarecError

MODES = ("all", "prepare", "stats", "gid", "train")

config_flags.DEFINE_config_file("config", None, "Path to a config file in configs/.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for prepared data, checkpoints and results.")
flags.DEFINE_enum("mode", "all", MODES, "What to run.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)
  try:
    pipeline.run(FLAGS.mode, FLAGS.config, FLAGS.workdir)
  except ColarecError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def run():
  """Console-script entry point (`colarec-jax`)."""
  app.run(main)


if __name__ == "__main__":
  run()
