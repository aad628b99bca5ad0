"""A study's results folder: the part of a study that is committed, and that another machine
resumes from (`colarec-jax-experiments --results=DIR`).

A run's folder (checkpoints, stages) stays on the machine that trained it, so a series longer
than one machine's session could never finish. With `--results`, after every run the runner
writes into DIR the study's report, figures and `rows.jsonl` (each row holding its run's whole
config) and each row's per-user test metrics, `per_user/<arm>-seed<N>.npz` (the paired test's
input). Given the same DIR on another machine, a run trains only when no row there, or in a
study folder beside DIR, already finished its config: otherwise that row is restored into its
workdir (`restored_from` names it) and nothing trains.

What "its config" means follows the runner's own check of a finished run: a ColaRec row must
have been trained with this run's whole config (seed and evaluation included; keys added to the
code since count as their defaults); MostPop and LightGCN rows with this run's data, LightGCN,
GID and evaluation sections and seed, all they depend on.
"""

from __future__ import annotations

import glob
import json
import os
import shutil

import numpy as np

from colarec_jax.config import stored
from colarec_jax.config.settings import Settings
from colarec_jax.data import fileio
from colarec_jax.runtime.errors import UsageError
from colarec_jax.studies import report as report_lib
from colarec_jax.studies.variants import slug

ROWS = "rows.jsonl"
PER_USER = "per_user"
# The sections a MostPop or LightGCN run depends on (its stages' keys come from these alone).
BASELINE_SECTIONS = ("seed", "data", "cf", "gid", "eval")


def per_user_name(variant: str, seed: int) -> str:
  return os.path.join(PER_USER, f"{slug(variant)}-seed{seed}.npz")


def difference(row: dict, settings: Settings) -> tuple | None:
  """(config key, value now, value in the row) of the first difference that makes `row` another
  run than `settings` would be, or None when the row is this run's result."""
  if row.get("model") != settings.model.name:
    return "model.name", settings.model.name, row.get("model")
  if not isinstance(row.get("config"), dict):
    return "config", "the run's whole config", "none recorded (a row from before rows kept it)"
  try:
    then = json.loads(stored.on_base(row["config"], "rows.jsonl").to_json())
  except UsageError:
    return "config", "the keys the code has now", "a key the code no longer has"
  now = settings.full
  if settings.model.name != "colarec":
    now, then = ({k: tree[k] for k in BASELINE_SECTIONS} for tree in (now, then))
  found = fileio.first_difference(now, then)
  return (fileio.config_key(found[0]), *found[1:]) if found else None


def _rows(folder: str, strict: bool = True) -> list[dict]:
  """The rows of a results folder (none when it has no rows file yet). Not `strict` (a study
  folder beside this study's, perhaps committed before rows kept their per-user metrics): only
  its rows that could be restored, the others skipped.

  Raises:
    UsageError: (strict) naming the file and line of a row that is not a JSON object with its
      arm's name and seed, or whose per-user metrics are missing.
  """
  path, rows = os.path.join(folder, ROWS), []
  try:
    with open(path) as f:
      lines = f.read().splitlines()
  except FileNotFoundError:
    return []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except ValueError:
      row = None
    if not (isinstance(row, dict) and isinstance(row.get("variant"), str)
            and isinstance(row.get("seed"), int)):
      if not strict:
        continue
      raise UsageError("results", f"{path}:{number}: expected a row (a JSON object with its "
                       "variant and seed), as the runner writes")
    per_user = os.path.join(folder, per_user_name(row["variant"], row["seed"]))
    if not os.path.isfile(per_user):
      if not strict:
        continue
      raise UsageError("results", f"{path}:{number}: {per_user} is missing; expected the "
                       "row's per-user test metrics beside it, as the runner writes them")
    rows.append(row)
  return rows


def find(results: str, settings: Settings) -> tuple[str, dict] | None:
  """(its study folder, the row) of a finished row with this run's config, in `results` first,
  then in the study folders beside it (sorted), or None."""
  here = os.path.abspath(results)
  beside = sorted(p for p in glob.glob(os.path.join(os.path.dirname(here), "*"))
                  if os.path.isdir(p) and p != here)
  for folder in [here, *beside]:
    for row in _rows(folder, strict=folder == here):
      if difference(row, settings) is None:
        return folder, row
  return None


def restore(found: tuple[str, dict], workdir: str, *, suite: str, variant, order: int,
            log) -> dict:
  """Writes the found row, under this run's study and arm names, and its per-user metrics into
  `workdir`; returns the row."""
  folder, row = found
  return _restore(folder, row, workdir, log, suite=suite, variant=variant.name, order=order,
                  overrides={k: v for k, v in variant.overrides})


def restore_study(results: str, study_folder: str, log) -> None:
  """Restores every row of `results` whose run has none in `study_folder` yet (its folder there
  is `<arm>/seed<N>`, as the runner's): the study's report then holds what any machine finished,
  as a root's report holds every run under it, and the runner checks each against its config
  when it comes to that run."""
  for row in _rows(results):
    workdir = os.path.join(study_folder, slug(row["variant"]), f"seed{row['seed']}")
    if not os.path.isfile(os.path.join(workdir, "row.json")):
      _restore(os.path.abspath(results), row, workdir, log)


def _restore(folder: str, row: dict, workdir: str, log, **names) -> dict:
  source = f"{os.path.relpath(folder)} ({row['variant']}, seed {row['seed']})"
  with np.load(os.path.join(folder, per_user_name(row["variant"], row["seed"]))) as z:
    arrays = dict(z)
  row = {k: v for k, v in row.items() if k != "reused_from"}  # that folder is on another machine
  row.update(names, restored_from=source)
  os.makedirs(workdir, exist_ok=True)
  fileio.write_file(os.path.join(workdir, "per_user_test.npz"),
                    lambda f: np.savez(f, **arrays))
  fileio.write_file(os.path.join(workdir, "row.json"),
                    lambda f: f.write(json.dumps(row, indent=1).encode()))
  log(f"finished on another machine: {os.path.relpath(workdir)}'s row is {source}")
  return row


def publish(study_folder: str, results: str) -> None:
  """Copies the study's report, figures and rows into `results`, with each row's per-user test
  metrics (compressed); every file through a temporary one, so none is ever half-written."""
  os.makedirs(os.path.join(results, PER_USER), exist_ok=True)
  for name in ["report.md", ROWS, *map(os.path.basename,
                                       glob.glob(os.path.join(study_folder, "*.png")))]:
    with open(os.path.join(study_folder, name), "rb") as source:
      fileio.write_file(os.path.join(results, name),
                        lambda f, source=source: shutil.copyfileobj(source, f))
  for row in report_lib.load_rows(study_folder):
    target = os.path.join(results, per_user_name(row["variant"], row["seed"]))
    with np.load(os.path.join(row["_dir"], "per_user_test.npz")) as z:
      arrays = dict(z)
    if not _holds(target, arrays):  # rewriting an unchanged file would only churn its bytes
      fileio.write_file(target, lambda f, arrays=arrays: np.savez_compressed(f, **arrays))


def _holds(path: str, arrays: dict) -> bool:
  """Whether the .npz at `path` holds exactly `arrays` (by content, not by file dates, which a
  checkout or copy resets)."""
  if not os.path.exists(path):
    return False
  with np.load(path) as z:
    return set(z.files) == set(arrays) and all(
        z[k].dtype == v.dtype and np.array_equal(z[k], v) for k, v in arrays.items())
