"""What each CLI mode runs, as library functions (so a notebook can run them too).

Every entry takes `Settings` (the config parsed once, `Settings.parse(config)`) and a workdir.
"""

from __future__ import annotations

import contextlib
import json
import os

from colarec_jax import checkpoint, coldstart, evaluate, newitems, sharding, stages
from colarec_jax import train as train_lib
from colarec_jax.cf import train as cf_train
from colarec_jax.data import fileio
from colarec_jax.data import prepare as prepare_lib
from colarec_jax.data.dataset import TEST, TRAIN, VALID
from colarec_jax.errors import UsageError
from colarec_jax.settings import Settings
from colarec_jax.workspace import Workspace, check_batch_size

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


def _checkpoint_epoch(which: str) -> tuple[str, int | None]:
  """'best' | 'latest' | an epoch number -> (kind, epoch or None for the newest of that kind)."""
  if which in (checkpoint.BEST, checkpoint.LATEST):
    return which, None
  if not which.isdigit():
    raise UsageError("checkpoint", f"got {which!r}, expected 'best', 'latest' or an epoch number")
  return checkpoint.LATEST, int(which)


def _restored(settings: Settings, workdir: str, which: str, log, prepared=None):
  """(workspace as trained, parameters of checkpoint `which`); the cached stages are used as
  training left them (nothing is written)."""
  ws = Workspace.build(settings, workdir, log=log, prepared=prepared, read_only=True)
  kind, epoch = _checkpoint_epoch(which)
  restored = ws.restore_params(kind, epoch)
  if restored is None:
    raise UsageError("checkpoint", f"no {kind} checkpoint in {ws.checkpoint_dir}; train first "
                     "(--mode=train)")
  params, epoch = restored
  log(f"using the {kind} checkpoint (epoch {epoch}) in {ws.checkpoint_dir}, on "
      f"{sharding.describe(ws.mesh)}")
  return ws, params


def _restored_ranker(settings: Settings, workdir: str, which: str, log, prepared=None):
  """(workspace, ranker) of checkpoint `which`, with the items added after training."""
  ws, params = _restored(settings, workdir, which, log, prepared)
  ws = ws.with_new_items(ws.new_items(workdir))
  return ws, ws.ranker(params)


def add_items(settings: Settings, workdir: str, *, items_file: str, which: str = "best",
              log=print, prepared=None):
  """Indexes the items of `items_file` (the dataset's item format) with checkpoint `which` and
  adds them to the workdir (see `newitems`); returns them."""
  _check_items_file(items_file)
  ws, params = _restored(settings, workdir, which, log, prepared)
  return newitems.add_items(ws, params, workdir, items_file, log=log)


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
  ws, ranker = _restored_ranker(settings, workdir, which, log, prepared)
  return ranker.evaluate(*ws.eval_data(PARTS[part]))


def recommend(settings: Settings, workdir: str, *, user: str = "", items: str = "",
              top_n: int = 10, which: str = "best", log=print,
              prepared=None) -> list[tuple[str, str]]:
  """Top-N (item id, content) for a known user id, or for a comma-separated list of item ids
  (an ad-hoc history, most recent first: a new user, no retraining). Ids are the dataset's own."""
  _check_recommend_flags(settings, user, items, top_n)
  prepared = prepared or stages.prepared_data(settings, workdir, log=log, read_only=True)
  ds = prepared.dataset
  if user:
    index = {raw: n for n, raw in enumerate(ds.user_ids.tolist()) if n}
    if user not in index:
      raise UsageError("user", f"{user!r} is not a user of {ds.name} ({ds.num_users} users, "
                       f"e.g. {str(ds.user_ids[1])!r})")
    user_id = index[user]
  ws, ranker = _restored_ranker(settings, workdir, which, log, prepared)
  ds = ws.prepared.dataset  # with the items added after training
  if not user:
    index = {raw: n for n, raw in enumerate(ds.item_ids.tolist()) if n}
    history = []
    for raw in (x.strip() for x in items.split(",")):
      if raw not in index:
        raise UsageError("items", f"{raw!r} is not an item of {ds.name} ({ds.num_items} items, "
                         f"e.g. {str(ds.item_ids[1])!r})")
      if index[raw] in history:
        raise UsageError("items", f"{raw!r} is listed twice; expected each item once")
      history.append(index[raw])
  if user:  # nothing the user already has: training, validation or test items
    ranked = ranker.for_user(user_id, prepared.csr(TRAIN, VALID, TEST), top_n)
  else:
    ranked = ranker.for_history(history, top_n)
  return [(str(ds.item_ids[i]), ds.content(int(i))) for i in ranked[ranked > 0]]


def _check_recommend_flags(settings: Settings, user: str, items: str, top_n: int) -> None:
  if bool(user) == bool(items):
    raise UsageError("user", "give exactly one of --user=<user id> or --items=<id,id,...>")
  if not 1 <= top_n <= settings.eval.beam_size:
    raise UsageError("top_n", f"got {top_n}, expected 1 to eval.beam_size = "
                     f"{settings.eval.beam_size}")


def run(mode: str, settings: Settings, workdir: str, *, log=print, **flags) -> None:
  """Runs one CLI mode (see `main`); `flags` are the evaluate/recommend flags."""
  if not sharding.is_main_process():
    log = lambda *_: None  # noqa: E731  (one voice on the console)

  trained = ALL_MODELS if mode == "all" else (settings.model.name,)
  if mode in ("train", "all") and "colarec" in trained:
    check_batch_size(settings)  # before any data is prepared or model trained
  read_only = mode in ("evaluate", "recommend", "add_items")  # they build no stage
  if read_only:  # flag mistakes first, before any file is read
    _checkpoint_epoch(flags.get("checkpoint", "best"))
  if mode == "recommend":
    _check_recommend_flags(settings, flags.get("user", ""), flags.get("items", ""),
                           int(flags.get("top_n", 10)))
  if mode == "add_items":
    _check_items_file(flags.get("items_file", ""))
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
  if mode in ("train", "all"):
    results = train_models(settings, workdir, trained, log=log, prepared=prepared, gids=gids)
    log(report(results, workdir, ks))
    if mode == "all" and settings.data.cold_item_fraction:
      log(coldstart.cold_start_report(settings, workdir, prepared=prepared, gids=gids, log=log))
  elif mode == "evaluate":
    part = flags.get("split", "test")
    result = evaluate_checkpoint(settings, workdir, which=flags.get("checkpoint", "best"),
                                 part=part, log=log, prepared=prepared)
    log(f"{part} metrics\n" + evaluate.format_table({"colarec": result}, ks))
  elif mode == "add_items":
    add_items(settings, workdir, items_file=flags.get("items_file", ""),
              which=flags.get("checkpoint", "best"), log=log, prepared=prepared)
  elif mode == "recommend":
    rows = recommend(settings, workdir, user=flags.get("user", ""), items=flags.get("items", ""),
                     top_n=int(flags.get("top_n", 10)), which=flags.get("checkpoint", "best"),
                     log=log, prepared=prepared)
    width = max(len(item) for item, _ in rows) if rows else 4
    log("\n".join(f"{rank:>3}. {item:<{width}}  {content}"
                  for rank, (item, content) in enumerate(rows, start=1)))
