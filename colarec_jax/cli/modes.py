"""What each CLI mode runs, as library functions (so a notebook can run them too).

`run(mode, settings, workdir, flags)` is the command line's one route: the mode's flags are parsed
once into a checked object (`cli.flags`), the workdir's config is checked against the settings,
and `MODES` says what the mode writes and which function runs it. Every entry takes `Settings`
(the config parsed once, `Settings.parse(config)`) and a workdir.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Callable

from colarec_jax import evaluate
from colarec_jax.cf import train as cf_train
from colarec_jax.cli import flags as flags_lib
from colarec_jax.cli.flags import (
  AddItemsFlags,
  EvaluateFlags,
  ExportFlags,
  ImportFlags,
  RecommendFlags,
  ServeFlags,
)
from colarec_jax.config import stored
from colarec_jax.config.settings import Settings
from colarec_jax.data import fileio
from colarec_jax.data import prepare as prepare_lib
from colarec_jax.data.dataset import TEST, VALID
from colarec_jax.newitems import coldstart, indexing
from colarec_jax.official import importer
from colarec_jax.run import stages
from colarec_jax.runtime import sharding
from colarec_jax.runtime.errors import RequestError, UsageError
from colarec_jax.serving import export, serve
from colarec_jax.serving.recommender import Recommendation, Recommender
from colarec_jax.training import loop as train_lib
from colarec_jax.training.step import check_batch_size

PARTS = {"valid": VALID, "test": TEST}
ALL_MODELS = ("mostpop", "lightgcn", "colarec")  # --mode=all: the baselines first, then ColaRec


def train_models(settings: Settings, workdir: str, names, *, log=print, prepared=None,
                 gids=None) -> dict[str, dict]:
  """Trains and evaluates each named model; returns {name: {'valid': Report, 'test': Report}}.

  `prepared` and `gids` may be passed when the caller has built them for these settings; a
  ColaRec among `names` needs its batch size checked first (`step.check_batch_size`).
  """
  prepared = prepared or stages.prepared_data(settings, workdir, log=log)
  stages.check_evaluable(prepared)
  results = {}
  for name in names:
    if name == "mostpop":
      results[name] = cf_train.mostpop(prepared, settings.eval)
    elif name == "lightgcn":
      run = sharding.main_first("colarec-lightgcn", lambda: stages.lightgcn(
          settings, prepared, workdir, log=log))
      results[name] = {"valid": run.valid, "test": run.test}
    else:
      results[name] = train_lib.train_and_evaluate(settings, workdir, log=log, prepared=prepared,
                                                   gids=gids)
  return results


def report(results: dict[str, dict], workdir: str, ks, part: str = "test") -> str:
  """Writes `<workdir>/results.json` and returns the metrics table of `part`."""
  if sharding.is_main_process():
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump({name: {p: r.to_json() for p, r in parts.items()}
                 for name, parts in results.items()}, f, indent=1)
  return f"{part} metrics\n" + evaluate.format_table(
      {name: parts[part] for name, parts in results.items()}, ks)


def add_items(settings: Settings, workdir: str, flags: AddItemsFlags, *, log=print,
              prepared=None):
  """Indexes the items of `flags.items_file` (the dataset's item format) with checkpoint
  `flags.checkpoint` and adds them to the workdir (see `newitems.indexing`); returns them."""
  rec = Recommender.from_settings(settings, workdir, flags.checkpoint, prepared=prepared, log=log,
                                  new_items=False)
  return indexing.add_items(rec.parts, rec.ranker.params, workdir, flags.items_file,
                            data_cfg=settings.data, use_content=settings.inputs.use_content,
                            log=log)


def evaluate_checkpoint(settings: Settings, workdir: str, flags: EvaluateFlags = EvaluateFlags(),
                        *, log=print, prepared=None) -> evaluate.Report:
  """Recall/NDCG of a ColaRec checkpoint on the valid or test split (`prepared`: the workdir's
  prepared data, when the caller has read it)."""
  rec = Recommender.from_settings(settings, workdir, flags.checkpoint, prepared=prepared, log=log)
  return rec.ranker.evaluate(*rec.parts.eval_data(PARTS[flags.split]))


# The recommend flags that stand for a request's fields (`RequestError.field`).
REQUEST_FLAGS = {"user": "user", "history": "items", "top_n": "top_n"}


def recommend(settings: Settings, workdir: str, flags: RecommendFlags, *, log=print,
              prepared=None) -> Recommendation:
  """Top-N items for a known user id, or for a comma-separated list of item ids (an ad-hoc
  history, most recent first: a new user, no retraining). Ids are the dataset's own; history
  items may be items added after training."""
  rec = Recommender.from_settings(settings, workdir, flags.checkpoint, prepared=prepared, log=log)
  try:
    query = rec.catalog.query(flags.user or None, flags.history, flags.top_n)
  except RequestError as e:
    raise UsageError(REQUEST_FLAGS[e.field], e.message) from None
  return rec.answer([query])[0]


def _print_recommendation(answer: Recommendation, log) -> None:
  width = max(map(len, answer.items), default=4)
  log("\n".join(f"{rank:>3}. {item:<{width}}  {score:8.3f}  {text}" for rank, (item, score, text)
                in enumerate(zip(answer.items, answer.scores, answer.texts), start=1)))


# The modes ----------------------------------------------------------------------------------------
# Each runs under the workdir's lock, after its flags and the workdir's config were checked, with
# the prepared data (and, for gid/all, the GIDs) the cached stages gave it.


def _train(settings, workdir, flags, prepared, gids, log, *, models) -> None:
  del flags
  log(report(train_models(settings, workdir, models, log=log, prepared=prepared, gids=gids),
             workdir, settings.eval.ks))
  if models == ALL_MODELS and settings.data.cold_item_fraction:
    log(coldstart.cold_start_report(settings, workdir, prepared=prepared, gids=gids, log=log))


def _evaluate(settings, workdir, flags: EvaluateFlags, prepared, gids, log) -> None:
  del gids
  result = evaluate_checkpoint(settings, workdir, flags, log=log, prepared=prepared)
  log(f"{flags.split} metrics\n" + evaluate.format_table({"colarec": result}, settings.eval.ks))


def _recommend(settings, workdir, flags: RecommendFlags, prepared, gids, log) -> None:
  del gids
  _print_recommendation(recommend(settings, workdir, flags, log=log, prepared=prepared), log)


def _export(settings, workdir, flags: ExportFlags, prepared, gids, log) -> None:
  del gids
  rec = Recommender.from_settings(settings, workdir, flags.checkpoint, prepared=prepared, log=log)
  users = export.read_users(flags.users_file, rec.catalog) if flags.users_file else None
  export.export(rec, flags.output, users=users, top_n=flags.top_n, log=log)


def _serve(settings, workdir, flags: ServeFlags, prepared, gids, log) -> None:
  del gids
  limits = serve.Limits(flags.max_body_bytes, flags.max_queue, serve.read_token(
      flags.auth_token_file))
  sock = serve.bind(flags.host, flags.port)  # a port in use is said before the model loads
  with contextlib.closing(sock):
    rec = Recommender.from_settings(settings, workdir, flags.checkpoint, prepared=prepared,
                                    log=log, batch_size=flags.max_batch)
    serve.serve(rec, sock=sock, max_batch=flags.max_batch, window_ms=flags.batch_window_ms,
                limits=limits, log=log)


def _add_items(settings, workdir, flags: AddItemsFlags, prepared, gids, log) -> None:
  del gids
  add_items(settings, workdir, flags, log=log, prepared=prepared)


def _import_official(settings, workdir, flags: ImportFlags, prepared, gids, log) -> None:
  del prepared, gids  # it prepares its own, from their data folder
  importer.import_official(settings, workdir, flags.checkpoint, flags.official_data,
                           flags.tokenizer, log=log)


def _stages_only(settings, workdir, flags, prepared, gids, log) -> None:
  """prepare, stats and gid: the cached stages did the work."""
  del settings, workdir, flags, prepared, gids, log


@dataclasses.dataclass(frozen=True)
class Mode:
  """One CLI mode.

  Attributes:
    run: `(settings, workdir, flags, prepared, gids, log) -> None`.
    reads_model: uses a trained model: builds no stage, and may change only the keys a reader may
      (`config.base.READER_KEYS`).
    exclusive: holds the workdir's lock alone (it writes); readers share it.
    trains_colarec: its ColaRec batch size is checked before any stage is built.
    own_stages: builds its own data and config (import_official): no cached stages first, and
      the config a workdir holds is not compared (the mode refuses a workdir that has one).
  """

  run: Callable
  reads_model: bool = False
  exclusive: bool = True
  trains_colarec: bool = False
  own_stages: bool = False


MODES = {
    "all": Mode(lambda *a: _train(*a, models=ALL_MODELS), trains_colarec=True),
    "prepare": Mode(_stages_only),
    "stats": Mode(_stages_only),
    "gid": Mode(_stages_only),
    "train": Mode(lambda s, *a: _train(s, *a, models=(s.model.name,)), trains_colarec=True),
    "evaluate": Mode(_evaluate, reads_model=True, exclusive=False),
    "recommend": Mode(_recommend, reads_model=True, exclusive=False),
    "export": Mode(_export, reads_model=True, exclusive=False),
    "serve": Mode(_serve, reads_model=True, exclusive=False),
    "add_items": Mode(_add_items, reads_model=True),
    "import_official": Mode(_import_official, own_stages=True),
}
READERS = tuple(name for name, mode in MODES.items() if mode.reads_model)


def run(mode: str, settings: Settings, workdir: str, *, log=print, **values) -> None:
  """Runs one CLI mode (see `main`); `values` are the mode flags given (`cli.flags`).

  Raises:
    UsageError, ConfigError: a bad flag or config key, named before any work starts.
  """
  if not sharding.is_main_process():
    log = lambda *_: None  # one voice on the console
  spec = MODES[mode]
  trains = spec.trains_colarec and (mode == "all" or settings.model.name == "colarec")
  if trains:
    check_batch_size(settings)  # before any data is prepared or model trained
  if spec.reads_model:  # the workdir's config, then flag mistakes, before any other file is read
    stored.check_reader(settings.full, workdir)
  elif not spec.own_stages and (saved := stored.stored(workdir)) is not None:
    # A workdir that holds a trained model keeps the config it was trained with: a mode that
    # writes (prepare, gid, train, all) with other model keys is refused here, before a stage is
    # rebuilt under the trained checkpoints.
    stored.check_trained_with(settings.fixed, saved, workdir)
  flags = flags_lib.parse(mode, values, settings)
  if mode == "serve" and sharding.process_count() > 1:
    raise UsageError("distributed", "serve runs in one process (one host's devices); start it "
                     "without --distributed")
  # One writer per workdir (readers share it); the main process speaks for a multi-process run.
  lock = (fileio.workdir_lock(workdir, exclusive=spec.exclusive, log=log)
          if sharding.is_main_process() else contextlib.nullcontext())
  with lock:
    prepared, gids = None, None
    if not spec.own_stages:
      prepared, gids = sharding.main_first("colarec-cached-stages", lambda: _cached_stages(
          mode, settings, workdir, spec.reads_model, log, trains))
    spec.run(settings, workdir, flags, prepared, gids, log)


def _cached_stages(mode, settings, workdir, read_only, log, trains=False):
  """The prepared data (read as it is for a reader), its stats for stats/all, and the GIDs for
  gid/all; for a mode that trains ColaRec, its optimizer is built first, so that a warm-up the
  run's steps cannot hold is refused before LightGCN trains."""
  prepared, gids = stages.prepared_data(settings, workdir, log=log, read_only=read_only), None
  if trains:
    train_lib.run_optimizer(prepared, settings)
  if mode in ("stats", "all"):
    log(prepare_lib.format_stats(prepared))
  if mode in ("gid", "all"):
    gids = stages.gid_table(settings, prepared, workdir, log=log)
  return prepared, gids
