"""What each CLI mode runs, as library functions (so a notebook can run them too).

Every entry takes `Settings` (the config parsed once, `Settings.parse(config)`) and a workdir.
"""

from __future__ import annotations

import contextlib
import json
import os

from colarec_jax import coldstart, evaluate, export, newitems, runconfig, serve, sharding, stages
from colarec_jax import train as train_lib
from colarec_jax.cf import train as cf_train
from colarec_jax.data import fileio
from colarec_jax.data import prepare as prepare_lib
from colarec_jax.data.dataset import TEST, VALID
from colarec_jax.errors import RequestError, UsageError
from colarec_jax.recommender import (
  Catalog,
  Recommendation,
  Recommender,
  checkpoint_epoch,
)
from colarec_jax.settings import Settings
from colarec_jax.workspace import check_batch_size, check_compatible

PARTS = {"valid": VALID, "test": TEST}
ALL_MODELS = ("mostpop", "lightgcn", "colarec")  # --mode=all: the baselines first, then ColaRec


def train_models(settings: Settings, workdir: str, names, *, log=print, prepared=None,
                 gids=None) -> dict[str, dict]:
  """Trains and evaluates each named model; returns {name: {'valid': Report, 'test': Report}}.

  `prepared` and `gids` may be passed when the caller has built them for these settings.
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


def add_items(settings: Settings, workdir: str, *, items_file: str, which: str = "best",
              log=print, prepared=None):
  """Indexes the items of `items_file` (the dataset's item format) with checkpoint `which` and
  adds them to the workdir (see `newitems`); returns them."""
  _check_items_file(items_file)
  rec = Recommender.from_settings(settings, workdir, which, prepared=prepared, log=log,
                                  new_items=False)
  return newitems.add_items(rec.workspace, rec.ranker.params, workdir, items_file, log=log)


def _check_items_file(items_file: str) -> None:
  if not items_file:
    raise UsageError("items_file", "give the new items' file: --items_file=FILE, in the "
                     "dataset's item format (an atomic .item file)")


def evaluate_checkpoint(settings: Settings, workdir: str, *, which: str = "best",
                        part: str = "test", log=print, prepared=None) -> evaluate.Report:
  """Recall/NDCG of a ColaRec checkpoint on the valid or test split (`prepared`: the workdir's
  prepared data, when the caller has read it)."""
  if part not in PARTS:
    raise UsageError("split", f"got {part!r}, expected 'valid' or 'test'")
  rec = Recommender.from_settings(settings, workdir, which, prepared=prepared, log=log)
  return rec.ranker.evaluate(*rec.workspace.eval_data(PARTS[part]))


# The recommend flags that stand for a request's fields (`RequestError.field`).
REQUEST_FLAGS = {"user": "user", "history": "items", "top_n": "top_n"}


def recommend(settings: Settings, workdir: str, *, user: str = "", items: str = "",
              top_n: int = 10, which: str = "best", log=print, prepared=None) -> Recommendation:
  """Top-N items for a known user id, or for a comma-separated list of item ids (an ad-hoc
  history, most recent first: a new user, no retraining). Ids are the dataset's own."""
  _check_recommend_flags(settings, user, items, top_n)
  prepared = prepared or stages.prepared_data(settings, workdir, log=log, read_only=True)
  history = [x.strip() for x in items.split(",")] if items else None
  query = None
  try:  # the request is checked before the model is loaded...
    query = Catalog(prepared, settings).query(user or None, history, top_n)
  except RequestError as e:
    # ...except history items unknown to the training data: they may have been added since
    if not (e.field == "history" and e.not_found):
      raise UsageError(REQUEST_FLAGS[e.field], e.message) from None
  rec = Recommender.from_settings(settings, workdir, which, prepared=prepared, log=log)
  if query is None:
    try:
      query = rec.catalog.query(None, history, top_n)
    except RequestError as e:
      raise UsageError(REQUEST_FLAGS[e.field], e.message) from None
  return rec.answer([query])[0]


def _check_recommend_flags(settings: Settings, user: str, items: str, top_n: int) -> None:
  if bool(user) == bool(items):
    raise UsageError("user", "give exactly one of --user=<user id> or --items=<id,id,...>")
  _check_top_n(settings, top_n)


def _check_top_n(settings: Settings, top_n: int) -> None:
  if not 1 <= top_n <= settings.eval.beam_size:
    raise UsageError("top_n", f"got {top_n}, expected 1 to eval.beam_size = "
                     f"{settings.eval.beam_size}")


# Modes that use a trained model: they build no stage, and may change only eval.* keys.
READERS = ("evaluate", "recommend", "export", "serve", "add_items")


def run(mode: str, settings: Settings, workdir: str, *, log=print, **flags) -> None:
  """Runs one CLI mode (see `main`); `flags` are the evaluate/recommend/export/serve flags."""
  if not sharding.is_main_process():
    log = lambda *_: None  # one voice on the console

  trained = ALL_MODELS if mode == "all" else (settings.model.name,)
  if mode in ("train", "all") and "colarec" in trained:
    check_batch_size(settings)  # before any data is prepared or model trained
  read_only = mode in READERS
  if read_only:  # the workdir's config, then flag mistakes, before any other file is read
    runconfig.check_reader(settings.full, workdir)
    checkpoint_epoch(flags.get("checkpoint", "best"))
  elif (saved := runconfig.stored(workdir)) is not None:
    # A workdir that holds a trained model keeps the config it was trained with: a mode that
    # writes (prepare, gid, train, all) with other model keys is refused here, before a stage is
    # rebuilt under the trained checkpoints.
    check_compatible(settings, saved, workdir)
  if mode == "recommend":
    _check_recommend_flags(settings, flags.get("user", ""), flags.get("items", ""),
                           int(flags.get("top_n", 10)))
  if mode == "add_items":
    _check_items_file(flags.get("items_file", ""))
  if mode == "export":
    export.check_output(flags.get("output", ""))
    _check_top_n(settings, int(flags.get("top_n", 10)))
  if mode == "serve":
    if sharding.process_count() > 1:
      raise UsageError("distributed", "serve runs in one process (one host's devices); start it "
                       "without --distributed")
    serve.require_server()
    serve.check_serve_flags(int(flags.get("port", 8000)), int(flags.get("max_batch", 0)),
                            float(flags.get("batch_window_ms", 5.0)))
  # One writer per workdir (readers share it); the main process speaks for a multi-process run.
  writes = mode not in ("evaluate", "recommend")
  lock = (fileio.workdir_lock(workdir, exclusive=writes, log=log)
          if sharding.is_main_process() else contextlib.nullcontext())
  with lock:
    _run(mode, settings, workdir, trained, read_only, log, flags)


def _run(mode, settings, workdir, trained, read_only, log, flags) -> None:
  """`run`'s work, under the workdir's lock."""
  def cached_stages():
    prepared, gids = stages.prepared_data(settings, workdir, log=log, read_only=read_only), None
    if mode in ("stats", "all"):
      log(prepare_lib.format_stats(prepared))
    if mode in ("gid", "all"):
      gids = stages.gid_table(settings, prepared, workdir, log=log)
    return prepared, gids
  prepared, gids = sharding.main_first("colarec-cached-stages", cached_stages)
  ks = settings.eval.ks
  which = flags.get("checkpoint", "best")
  if mode in ("train", "all"):
    results = train_models(settings, workdir, trained, log=log, prepared=prepared, gids=gids)
    log(report(results, workdir, ks))
    if mode == "all" and settings.data.cold_item_fraction:
      log(coldstart.cold_start_report(settings, workdir, prepared=prepared, gids=gids, log=log))
  elif mode == "evaluate":
    part = flags.get("split", "test")
    result = evaluate_checkpoint(settings, workdir, which=which, part=part, log=log,
                                 prepared=prepared)
    log(f"{part} metrics\n" + evaluate.format_table({"colarec": result}, ks))
  elif mode == "add_items":
    add_items(settings, workdir, items_file=flags.get("items_file", ""),
              which=flags.get("checkpoint", "best"), log=log, prepared=prepared)
  elif mode == "recommend":
    answer = recommend(settings, workdir, user=flags.get("user", ""), items=flags.get("items", ""),
                       top_n=int(flags.get("top_n", 10)), which=which, log=log,
                       prepared=prepared)
    width = max(map(len, answer.items), default=4)
    log("\n".join(f"{rank:>3}. {item:<{width}}  {score:8.3f}  {text}" for rank, (item, score, text)
                  in enumerate(zip(answer.items, answer.scores, answer.texts), start=1)))
  elif mode == "export":
    users_file = flags.get("users_file", "")
    users = export.read_users(users_file, Catalog(prepared, settings)) if users_file else None
    rec = Recommender.from_settings(settings, workdir, which, prepared=prepared, log=log)
    export.export(rec, flags["output"], users=users, top_n=int(flags.get("top_n", 10)), log=log)
  elif mode == "serve":
    rec = Recommender.from_settings(settings, workdir, which, prepared=prepared, log=log,
                                    batch_size=int(flags.get("max_batch", 0)))
    serve.serve(rec, host=flags.get("host", "127.0.0.1"), port=int(flags.get("port", 8000)),
                max_batch=int(flags.get("max_batch", 0)),
                window_ms=float(flags.get("batch_window_ms", 5.0)), log=log)
