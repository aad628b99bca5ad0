"""Command line: `python -m colarec_jax.main --config=configs/default.py --workdir=DIR [--mode=M]`.

Flags only; the work is done by library functions (`colarec_jax.cli.modes`). Without --config,
the config is the one training stored in the workdir (`colarec_jax/config/stored.py`), and
`--config.key=value` overrides apply on top of it. Modes:
  prepare  load, filter, split and tokenise the dataset into <workdir>/data (reused when unchanged)
  stats    print the statistics table of the prepared dataset (preparing it first if needed)
  gid      build (or reuse) the GIDs of config.gid.source and print the tree summary
  train    train and evaluate config.model.name (colarec | lightgcn | mostpop), print its table;
           ColaRec resumes from the latest checkpoint in <workdir>/colarec/checkpoints
  evaluate a ColaRec checkpoint (--checkpoint=best|latest|<epoch>) on --split=valid|test
  recommend top --top_n items for --user=<user id>, or for --items=<id,id,...> (a new user's
           history, most recent first), from a ColaRec checkpoint
  export   top --top_n items of every user (or of the ids in --users_file) to --output=FILE
           (.jsonl or .parquet)
  serve    an HTTP endpoint on --host:--port: POST /recommend, GET /health
  add_items index the items of --items_file (the dataset's item format) from their text with a
           ColaRec checkpoint and add them to the workdir; evaluate and recommend then rank them
  import_official  turn the authors' PyTorch checkpoint (--checkpoint=their epochN/ folder) and
           data folder (--official_data) into this workdir, with --tokenizer their vocabulary's
           tokenizer.json; then evaluate, recommend, export and serve it (--config=configs/official.py)
  all      everything (default): prepare, stats, GIDs, then MostPop, LightGCN and ColaRec in one
           table (with data.cold_item_fraction > 0, also the held-out items' table)
"""

import os

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from colarec_jax.cli import flags as mode_flags
from colarec_jax.cli import modes, parsing
from colarec_jax.config import stored
from colarec_jax.config.settings import Settings
from colarec_jax.runtime import allocator, interrupts, sharding

config_flags.DEFINE_config_file("config", None, "Path to a config file in configs/ (default: "
                                "the one training stored in --workdir).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for prepared data, checkpoints and results.")
flags.DEFINE_enum("mode", "all", tuple(modes.MODES), "What to run.")
_DEFAULT = mode_flags.defaults()  # each mode flag's default, written once (colarec_jax/cli/flags.py)
flags.DEFINE_string("checkpoint", _DEFAULT["checkpoint"],
                    "evaluate/recommend/export/serve/add_items: best | latest | an epoch number; "
                    "import_official: the authors' checkpoint folder.")
flags.DEFINE_enum("split", _DEFAULT["split"], mode_flags.SPLITS, "evaluate: the split to rank.")
flags.DEFINE_string("user", _DEFAULT["user"], "recommend: a user id of the dataset.")
flags.DEFINE_string("items", _DEFAULT["items"], "recommend: comma-separated item ids, most recent "
                    "first.")
flags.DEFINE_integer("top_n", _DEFAULT["top_n"], "recommend/export: how many items to list.")
flags.DEFINE_string("output", _DEFAULT["output"], "export: the file to write, .jsonl or .parquet.")
flags.DEFINE_string("users_file", _DEFAULT["users_file"], "export: user ids, one per line "
                    "(default: every user).")
flags.DEFINE_string("host", _DEFAULT["host"], "serve: the address to listen on.")
flags.DEFINE_integer("port", _DEFAULT["port"], "serve: the port to listen on.")
flags.DEFINE_integer("max_batch", _DEFAULT["max_batch"], "serve: requests per beam-search call at "
                     "most (0: eval.decode_batch_size; 1: one request at a time).")
flags.DEFINE_float("batch_window_ms", _DEFAULT["batch_window_ms"], "serve: how long a request "
                   "waits for others to join its batch.")
flags.DEFINE_integer("max_body_bytes", _DEFAULT["max_body_bytes"], "serve: the largest request "
                     "body taken (413 beyond).")
flags.DEFINE_integer("max_queue", _DEFAULT["max_queue"], "serve: requests waiting at most (503 "
                     "beyond).")
flags.DEFINE_string("auth_token_file", _DEFAULT["auth_token_file"], "serve: a file whose first "
                    "line is the bearer token /recommend requires (default: $COLAREC_SERVE_TOKEN, "
                    "or none).")
flags.DEFINE_string("items_file", _DEFAULT["items_file"], "add_items: the new items, in the "
                    "dataset's item format.")
flags.DEFINE_string("official_data", _DEFAULT["official_data"], "import_official: the authors' "
                    "data folder (corpus_512.json and the three CSVs).")
flags.DEFINE_string("tokenizer", _DEFAULT["tokenizer"], "import_official: the tokenizer.json of "
                    "the vocabulary their model was trained with.")
flags.DEFINE_bool("distributed", os.environ.get("COLAREC_DISTRIBUTED", "") in ("1", "true"),
                  "Start JAX's multi-process runtime first (one process per host; default from "
                  "$COLAREC_DISTRIBUTED). See colarec_jax/runtime/sharding.py and launch/.")
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)
  interrupts.install()  # SIGINT / SIGTERM: one line, a distinct exit code, a resumable run
  allocator.keep_freed_memory()  # before XLA's first big buffers; see colarec_jax/runtime/allocator.py
  with interrupts.one_line_errors():
    settings = Settings.parse(FLAGS.config)  # every key checked before any work
    # Compiled steps are cached on disk across runs (JAX's persistent cache), unless the user
    # points JAX_COMPILATION_CACHE_DIR elsewhere: a rerun or a later mode starts in seconds.
    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
      jax.config.update("jax_compilation_cache_dir",
                        os.path.join(settings.data.cache_root, "xla"))
      jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    sharding.use_cpu_devices(settings.cpu_devices)  # before JAX starts its backends
    if FLAGS.distributed:
      sharding.initialize_distributed()
    modes.run(FLAGS.mode, settings, FLAGS.workdir,
              **{name: FLAGS[name].value for name in _DEFAULT})


def _with_stored_config(argv: list[str]) -> list[str]:
  """`argv`, with `--config=<stored.py>:<workdir>` added when it names a workdir and no
  --config: the config training stored there, under the command line's overrides."""
  if any(a == "--config" or a.startswith("--config=") for a in argv[1:]):
    return argv
  workdir = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--workdir=")), None)
  if workdir is None and "--workdir" in argv[1:-1]:
    workdir = argv[argv.index("--workdir") + 1]
  if not workdir:
    return argv
  return [argv[0], f"--config={stored.__file__}:{os.path.abspath(workdir)}", *argv[1:]]


def run():
  """Console-script entry point (`colarec-jax`)."""
  app.run(main, flags_parser=parsing.one_line_parser(FLAGS, _with_stored_config))


if __name__ == "__main__":
  run()
