"""The paper's studies as one command: every variant of a suite, over seeds, then one report.

  colarec-jax-experiments --config=configs/default.py --suite=ablation \
      --root=runs/experiments --seeds=0,1,2

Suites (`SUITES`): `main` (MostPop, LightGCN, ColaRec), `ablation` (the full model, and without
L_index, L_bpr, L_c or item content) and `gid` (GIDs from LightGCN, from item text, random, and
the dataset's own file column where it has one). `--sweep=key=v1,v2` runs a study of your own
instead: one variant per value (several --sweep flags give their product).

Each run (variant x seed) trains in its own workdir, `<root>/<suite>/<variant>/seed<N>`, and
starts from any stage (prepared data, LightGCN, GIDs) another run under the root already built
with the same key (hard-linked; the stage checks it as it would its own). A finished run writes
`row.json` and is skipped next time (an error naming the key if it ran another config: its row
would be stale); an interrupted one resumes from its checkpoints; a ColaRec run whose whole
config (seed included) a finished run anywhere under the root already trained takes that run's
row (`reused_from` says which), so a suite's reference arm trains once; one whose config differs
from a finished run's only in `eval.*` (how a trained model ranks) starts from a copy of that
run's training, which is then only ranked again (`ranked_from`: its best checkpoint, chosen
under the twin's ranking, is tested with this run's). Rows
record the config overrides, seed, commit, budget, wall time, examples seen and the metrics
overall and on long-tail users, and the run's whole config; `<root>/<suite>/report.md` and its
figures are rebuilt from all rows after every run (`report.py`). With `--results=DIR` (a folder
under bench/results/) the report, rows and per-user metrics are also written there after every
run, and a later session on another machine given the same DIR trains only the runs no row
there finished (`results.py`): a series longer than one machine's session still completes. The
arms themselves are `variants.py`'s.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

from colarec_jax.cli import modes
from colarec_jax.cf import train as cf_train
from colarec_jax.config import stored
from colarec_jax.config.settings import Settings
from colarec_jax.data import fileio
from colarec_jax.data.dataset import TEST, TRAIN
from colarec_jax.training import loop as train_lib
from colarec_jax.training.step import check_batch_size
from colarec_jax.studies import results as results_lib
from colarec_jax.studies.variants import (
  REFERENCE,
  SUITES,
  Variant,
  arm_variants,
  suite_variants,
  sweep_variants,
  variant_config,
)
from colarec_jax.run import parts as parts_lib
from colarec_jax.run import stages
from colarec_jax.runtime.errors import ConfigError, UsageError, WorkdirInUse

BUDGETS = ("cpu", "paper")
POLL_SECONDS = 10.0  # how often a runner looks again at runs another runner holds


def _commit() -> str:
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, cwd=os.path.dirname(os.path.abspath(__file__)),
                          check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def _share_stages(root: str, workdir: str, settings: Settings, log) -> None:
  """Hard-links into `workdir` each stage another run under `root` built with the same key."""
  keys = stages.stage_keys(settings, log=lambda *_: None)
  for stage, key in keys.items():
    target = os.path.join(workdir, stage)
    if os.path.exists(target):
      continue
    for manifest_path in _manifests(root, stage):
      source = os.path.dirname(manifest_path)
      manifest = fileio.read_manifest(source)
      if manifest is not None and manifest["key"] == key:
        shutil.copytree(source, target, copy_function=os.link)
        log(f"sharing {stage}/ of {os.path.relpath(source, root)}")
        break


def _manifests(root: str, stage: str):
  return (path for path in _files(root, fileio.MANIFEST, skip=("colarec",))
          if os.path.basename(os.path.dirname(path)) == stage)


def _files(root: str, name: str, skip: tuple[str, ...]):
  """Paths of the files called `name` under `root`, in sorted order, not looking inside hidden
  folders or those named in `skip`."""
  for directory, subdirs, files in os.walk(root):
    if name in files:
      yield os.path.join(directory, name)
    subdirs[:] = sorted(d for d in subdirs if not d.startswith(".") and d not in skip)


def run_one(config, variant: Variant, seed: int, workdir: str, *, root: str, suite: str,
            budget: str, order: int = 0, results: str | None = None, commit: str | None = None,
            log=print) -> dict:
  """Trains and tests one variant with one seed in `workdir`; returns (and writes) its row.

  A finished twin under `root` gives its row; then one in `results` (`results.py`); otherwise
  the run trains (resuming from its own checkpoints). `commit`: the code's commit when the
  process started (default: now), which is the code that trains, whatever lands meanwhile."""
  row_path = os.path.join(workdir, "row.json")
  cfg = variant_config(config, variant, seed)
  settings = Settings.parse(cfg)
  if os.path.isfile(row_path):
    with open(row_path) as f:
      row = json.load(f)
    _check_finished(row, workdir, root, settings)
    return row
  os.makedirs(workdir, exist_ok=True)
  twin = _finished_twin(root, workdir, settings)
  if twin is not None:
    return _reuse(twin, workdir, root, settings=settings, suite=suite, variant=variant,
                  order=order, log=log)
  found = results and results_lib.find(results, settings)
  if found:
    return results_lib.restore(found, workdir, suite=suite, variant=variant, order=order, log=log)
  trained = _finished_twin(root, workdir, settings, but=stored.READER_KEYS)
  with fileio.workdir_lock(workdir, log=log):
    if trained is not None:
      _copy_training(trained, workdir, root, log)
    _share_stages(root, workdir, settings, log)
    with _wall_clock(workdir) as clock:
      results = modes.train_models(settings, workdir, [settings.model.name], log=log)
  seconds = clock["seconds"]
  name = settings.model.name
  test = results[name]["test"]
  if test.per_user is None:  # LightGCN reused from its stage: rank its embeddings again
    prepared = stages.prepared_data(settings, workdir, log=lambda *_: None, read_only=True)
    test = _lightgcn_test(settings, prepared, workdir)
  np.savez(os.path.join(workdir, "per_user_test.npz"), users=test.users,
           **{k.replace("@", "_at_"): v for k, v in test.per_user.items()})
  row = {"suite": suite, "variant": variant.name, "order": order, "seed": seed,
         "overrides": {k: v for k, v in variant.overrides}, "model": name,
         "dataset": settings.data.name, "budget": budget, "commit": commit or _commit(),
         "wall_seconds": seconds, "examples_seen": _examples_seen(settings, workdir),
         "valid": results[name]["valid"].to_json(), "test": test.to_json(),
         "selection": settings.eval.metric,
         "long_tail_rule": f"the {settings.eval.long_tail_fraction:.0%} of test users with the "
                           f"fewest training interactions (<= {test.long_tail_threshold})",
         "curve": _curve(workdir, settings), "config": settings.full}
  if trained is not None:
    row["ranked_from"] = os.path.relpath(trained, root)
  return _write_row(row, workdir)


WALL = "wall_seconds.json"  # in a run's workdir: its time so far, over every attempt


@contextlib.contextmanager
def _wall_clock(workdir: str):
  """Yields {'seconds': ...}: the run's wall time over every attempt, this one included (an
  interrupted attempt's time is kept for the resumed one)."""
  path = os.path.join(workdir, WALL)
  try:
    with open(path) as f:
      before = float(json.load(f)["seconds"])
  except (OSError, ValueError, KeyError, TypeError):
    before = 0.0
  clock, start = {"seconds": before}, time.perf_counter()
  try:
    yield clock
  finally:
    clock["seconds"] = before + time.perf_counter() - start
    with open(path + ".tmp", "w") as f:
      json.dump({"seconds": clock["seconds"]}, f)
    os.replace(path + ".tmp", path)


def _finished_twin(root: str, workdir: str, settings: Settings,
                   but: tuple[str, ...] = ()) -> str | None:
  """A finished ColaRec run under `root` whose stored config is this run's, whole (seed and
  evaluation included; keys added since it ran count as their defaults) except the sections in
  `but`, or None.

  The same config trains the same model, so a suite's reference arm (the full model in
  `ablation`, LightGCN GIDs in `gid`) or a study's adopted arm is trained once, not per study;
  with `but=READER_KEYS`, a run that trained this run's model and ranked it another way.
  """
  if settings.model.name != "colarec":
    return None
  keep = lambda full: {k: v for k, v in full.items() if k not in but}
  for row_path in _files(root, "row.json", skip=("colarec", "data", "gid", "lightgcn",
                                                  "tensorboard")):
    source = os.path.dirname(row_path)
    if os.path.samefile(source, workdir) or not os.path.isfile(stored.path(source)):
      continue
    with open(row_path) as f:
      if but and "ranked_from" in json.load(f):
        continue  # a copy itself: take the run that trained
    if keep(_stored_full(source)) == keep(settings.full):
      return source
  return None


def _copy_training(source: str, workdir: str, root: str, log) -> None:
  """Copies the finished training of `source` (its run folder and wall time) into `workdir`,
  which has none yet: training there resumes after its last epoch and only tests again. Real
  copies, not links: testing rewrites files of the run folder."""
  target = parts_lib.run_dir(workdir)
  if os.path.exists(target):
    return
  staged = target + ".copying"
  shutil.rmtree(staged, ignore_errors=True)
  shutil.copytree(parts_lib.run_dir(source), staged)
  os.replace(staged, target)
  if os.path.exists(os.path.join(source, WALL)) and not os.path.exists(os.path.join(workdir, WALL)):
    shutil.copy(os.path.join(source, WALL), os.path.join(workdir, WALL))
  log(f"trained as {os.path.relpath(source, root)}, which finished: ranking its model again")


def _model_folder(row: dict, workdir: str, root: str) -> str:
  """Where the model of the finished run in `workdir` is: its own folder, or the run whose row it
  reused (`reused_from`, relative to `root`; a reused run trained no model of its own)."""
  return os.path.join(root, row["reused_from"]) if "reused_from" in row else workdir


def trained_folder(workdir: str) -> str:
  """`_model_folder` of a finished run given only its folder (`<root>/<study>/<arm>/seedN`)."""
  try:
    with open(os.path.join(workdir, "row.json")) as f:
      row = json.load(f)
  except FileNotFoundError:
    return workdir
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.normpath(workdir))))
  return _model_folder(row, workdir, root)


def _stored_full(workdir: str) -> dict:
  """The whole config a finished ColaRec run in `workdir` stored (keys added since: defaults)."""
  return json.loads(stored.on_base(stored.stored(workdir), workdir).to_json())


def _check_finished(row: dict, workdir: str, root: str, settings: Settings) -> None:
  """Raises UsageError when the finished run in `workdir` (or the twin its row was reused from)
  was made with another config than `settings`: its row would be a stale number.

  ColaRec runs compare their whole stored config; every run compares the keys of the stages it
  built (data, LightGCN, GIDs), which is all MostPop and LightGCN depend on.
  """
  source = _model_folder(row, workdir, root)
  found = None
  if "restored_from" in row:
    found = results_lib.difference(row, settings)
  elif settings.model.name == "colarec" and os.path.isfile(stored.path(source)):
    found = fileio.first_difference(settings.full, _stored_full(source))
  found = found or _stage_difference(source, settings)
  if found:
    key, now, then = found
    where = workdir if source == workdir else f"{workdir} (whose row is that of {source})"
    raise UsageError("root", f"{where} finished with another config ({key}: {then!r} there, "
                     f"{now!r} now); expected this run's config there: give another --root or "
                     "--study, or remove that run's folder to run it again")


def _stage_difference(source: str, settings: Settings) -> tuple | None:
  """(config key and stage, value now, value then) of the first stage in `source` built with
  another key than `settings` gives it, or None."""
  for stage, key in stages.stage_keys(settings, log=lambda *_: None).items():
    manifest = fileio.read_manifest(os.path.join(source, stage))
    found = manifest and fileio.first_difference(key, manifest["key"])
    if found:
      return f"{fileio.config_key(found[0])}, in its {stage} stage", *found[1:]
  return None


def _reuse(source: str, workdir: str, root: str, *, settings: Settings, suite: str,
           variant: Variant, order: int, log) -> dict:
  """This run's row from its finished twin `source`: the twin's metrics, curve, commit and wall
  time, this study's names, and `reused_from` saying where it ran."""
  with open(os.path.join(source, "row.json")) as f:
    row = json.load(f)
  row.update(suite=suite, variant=variant.name, order=order,
             overrides={k: v for k, v in variant.overrides},
             reused_from=os.path.relpath(source, root), config=settings.full)
  per_user = os.path.join(workdir, "per_user_test.npz")
  if not os.path.exists(per_user):
    os.link(os.path.join(source, "per_user_test.npz"), per_user)
  log(f"same config as {row['reused_from']}, which finished: its row is this run's")
  return _write_row(row, workdir)


def _write_row(row: dict, workdir: str) -> dict:
  fileio.write_file(os.path.join(workdir, "row.json"),
                    lambda f: f.write(json.dumps(row, indent=1).encode()))
  return row


def _lightgcn_test(settings: Settings, prepared, workdir: str):
  result = stages.lightgcn(settings, prepared, workdir, log=lambda *_: None)
  return cf_train.embedding_report(prepared, result, TEST, settings.eval)


def _examples_seen(settings: Settings, workdir: str) -> int:
  """Training examples the model saw: ColaRec's steps x batch, LightGCN's epochs x interactions."""
  if settings.model.name == "colarec":
    history = train_lib.read_metrics(workdir)["history"]
    return int(round(sum(r["examples_per_second"] * r["seconds"] for r in history)))
  if settings.model.name == "lightgcn":
    prepared = stages.prepared_data(settings, workdir, log=lambda *_: None, read_only=True)
    result = stages.lightgcn(settings, prepared, workdir, log=lambda *_: None)
    return result.epochs_run * len(prepared.rows(TRAIN)[0])
  return 0


def _curve(workdir: str, settings: Settings) -> list[list[float]]:
  """[examples seen, valid metric] after each validated ColaRec epoch."""
  if settings.model.name != "colarec":
    return []
  seen, out = 0.0, []
  for record in train_lib.read_metrics(workdir)["history"]:
    seen += record["examples_per_second"] * record["seconds"]
    if f"valid/{settings.eval.metric}" in record:
      out.append([round(seen), record[f"valid/{settings.eval.metric}"]])
  return out


def check_arms(config, variants, seeds) -> None:
  """Every run's config (variant x seed), checked as a run would check it, before the first run
  starts: a bad value in the last arm is reported before hours are spent on the first.

  Raises:
    ConfigError: naming the first bad key, with the arm it is in.
  """
  for variant in variants:
    for seed in seeds:
      try:
        settings = Settings.parse(variant_config(config, variant, seed))
        if settings.model.name == "colarec":
          check_batch_size(settings)
      except ConfigError as e:
        raise ConfigError(e.key, f"{str(e).split(': ', 1)[1]} (in arm {variant.name!r}, seed "
                          f"{seed})") from None


def run_suite(config, suite: str, root: str, seeds: list[int], *, sweeps=(), arms=(),
              study: str = "", budget="cpu", results: str | None = None,
              log=print) -> list[dict]:
  """Every variant x seed of a suite (or of `sweeps`, or of `arms`); returns the rows and writes
  the report into `<root>/<study>` (default: the suite's name, 'sweep' or 'arms'), and into
  `results` when given (`results.py`: rows finished there on another machine are restored)."""
  from colarec_jax.studies import report as report_lib
  if budget not in BUDGETS:
    raise UsageError("budget", f"got {budget!r}, expected one of {', '.join(BUDGETS)}")
  if not seeds:
    raise UsageError("seeds", "expected at least one seed, e.g. --seeds=0,1,2")
  if sweeps and arms:
    raise UsageError("arm", "expected --arm or --sweep, not both")
  if arms:
    variants, name = arm_variants(config, list(arms)), "arms"
  elif sweeps:
    variants, name = sweep_variants(config, list(sweeps)), "sweep"
  else:
    variants, name = suite_variants(suite, config), suite
  name = study or name
  if os.sep in name or name in (".", ".."):
    raise UsageError("study", f"got {name!r}, expected a folder name")
  for flag, folder in (("root", root), ("results", results)):
    if folder and os.path.exists(folder) and not os.path.isdir(folder):
      raise UsageError(flag, f"{folder} is a file; expected a folder for the study's "
                       + ("runs" if flag == "root" else "committed results"))
  check_arms(config, variants, seeds)
  reference = REFERENCE.get(suite) if not (sweeps or arms) else variants[0].name
  runs = [(order, variant, seed) for order, variant in enumerate(variants) for seed in seeds]
  rows: dict[tuple, dict] = {}
  commit = _commit()  # the code that runs: a commit landing during a long study is not it
  if results:
    results_lib.restore_study(results, os.path.join(root, name), log)
  # A run another runner holds (two runners on one root) is skipped and come back to after the
  # others: by then that runner has finished it, and its row is read, not trained again.
  while len(rows) < len(runs):
    held = 0
    for order, variant, seed in runs:
      if (order, seed) in rows:
        continue
      workdir = os.path.join(root, name, variant.slug, f"seed{seed}")
      log(f"== {name}: {variant.name}, seed {seed} ({workdir})")
      try:
        rows[order, seed] = run_one(config, variant, seed, workdir, root=root, suite=name,
                                    budget=budget, order=order, results=results,
                                    commit=commit, log=log)
      except WorkdirInUse:
        held += 1
        log(f"{workdir} is being run by another process; coming back to it")
        continue
      report_lib.write_report(os.path.join(root, name), reference=reference)
      if results:
        results_lib.publish(os.path.join(root, name), results)
    if held:
      time.sleep(POLL_SECONDS)
  return [rows[order, seed] for order, _, seed in runs]


def main(argv=None) -> None:
  """`colarec-jax-experiments` (console script `colarec-jax-experiments`)."""
  from absl import app, flags, logging
  from ml_collections import config_flags

  from colarec_jax.cli import parsing
  from colarec_jax.runtime import allocator, interrupts

  config_flags.DEFINE_config_file("config", None, "A config file in configs/.", lock_config=True)
  flags.DEFINE_string("root", None, "Folder of the study: one workdir per run, rows, report.")
  flags.DEFINE_string("suite", "main", f"One of {', '.join(SUITES)}.")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (config.seed) of every variant.")
  flags.DEFINE_multi_string("sweep", [], "key=v1,v2: a study of your own instead of --suite.")
  flags.DEFINE_multi_string("arm", [], "NAME:key=v;key=v: one arm of a study of your own "
                            "(instead of --suite); the first is the reference.")
  flags.DEFINE_string("study", "", "Folder name of the study under --root (default: the "
                      "suite's name, 'sweep' or 'arms').")
  flags.DEFINE_enum("budget", "cpu", BUDGETS, "What the rows record as their budget.")
  flags.DEFINE_string("results", None, "A folder for the study's committed results (report, "
                      "rows, per-user metrics), written after every run; rows finished there "
                      "(or in a study folder beside it) on another machine are not run again.")
  flags.mark_flags_as_required(["config", "root"])

  def run(_):
    logging.set_verbosity(logging.WARNING)
    allocator.keep_freed_memory()
    interrupts.install()
    cfg = flags.FLAGS.config
    try:
      seeds = [int(s) for s in flags.FLAGS.seeds]
    except ValueError:
      print(f"error: --seeds: got {flags.FLAGS.seeds}, expected integers", file=sys.stderr)
      sys.exit(2)
    with interrupts.one_line_errors():
      Settings.parse(cfg)
      run_suite(cfg, flags.FLAGS.suite, flags.FLAGS.root, seeds, sweeps=flags.FLAGS.sweep,
                arms=flags.FLAGS.arm, study=flags.FLAGS.study, budget=flags.FLAGS.budget,
                results=flags.FLAGS.results)

  app.run(run, argv=argv, flags_parser=parsing.one_line_parser(flags.FLAGS))


if __name__ == "__main__":
  main()
