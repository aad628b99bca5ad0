"""Faults injected into real runs: killed (SIGTERM, SIGKILL) at each stage, or with damaged
caches and checkpoints. Each rerun must end with exactly the metrics of an uninterrupted run."""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

ARGS = ["--config=configs/tiny.py", "--mode=train", "--config.cf.epochs=2",
        "--config.train.epochs=2", "--config.train.steps_per_epoch=6"]
TIMINGS = ("seconds", "examples_per_second", "seconds_per_step")


def cli(workdir, *extra, fault=""):
  script = [os.path.join(REPO, "tests", "fault_run.py")] if fault else ["-m", "colarec_jax.main"]
  env = dict(os.environ, COLAREC_FAULT=fault, TQDM_DISABLE="1")
  return subprocess.run([sys.executable, *script, *ARGS, f"--workdir={workdir}", *extra],
                        cwd=REPO, capture_output=True, text=True, env=env, timeout=600)


def outcome(workdir):
  """What a finished run reports: test and valid metrics, best epoch, per-epoch history."""
  with open(os.path.join(workdir, "colarec", "metrics.json")) as f:
    metrics = json.load(f)
  metrics["history"] = [{k: v for k, v in r.items() if k not in TIMINGS}
                        for r in metrics["history"]]
  return metrics


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("reference")
  result = cli(workdir)
  assert result.returncode == 0, result.stderr
  return workdir, outcome(workdir)


STOPPED = "interrupted: stopped by {} at step 4 of epoch 1; saved a checkpoint there, rerun " \
          "the same command to resume"


@pytest.mark.parametrize("fault,code,line", [
    # mid-epoch 1: a checkpoint of that step, exit 143 (SIGTERM) or 130 (SIGINT, Ctrl-C)
    ("step:4:SIGTERM", 128 + signal.SIGTERM, STOPPED.format("SIGTERM")),
    ("step:4:SIGINT", 128 + signal.SIGINT, STOPPED.format("SIGINT")),
    ("step:9:SIGKILL", -signal.SIGKILL, None),  # mid-epoch 2: nothing saved since epoch 1
    ("inside_latest:2:SIGKILL", -signal.SIGKILL, None),  # epoch 2's save written, not finished
    ("after_latest:2:SIGKILL", -signal.SIGKILL, None),  # between the last latest and best saves
    ("gid_build:1:SIGKILL", -signal.SIGKILL, None),  # inside the GID stage's build
    ("gid_build:1:SIGINT", 128 + signal.SIGINT,  # Ctrl-C there: the staging folder is removed
     "interrupted: stopped by SIGINT; every finished stage is kept, rerun the same command to "
     "go on"),
])
def test_killed_run_resumes_to_the_same_result(reference, tmp_path, fault, code, line):
  _, expected = reference
  killed = cli(tmp_path, fault=fault)
  assert killed.returncode == code, killed.stderr
  if line:  # a signal the run handles: one line, no traceback
    assert killed.stderr.strip().splitlines() == [line]
  rerun = cli(tmp_path)
  assert rerun.returncode == 0, rerun.stderr
  assert outcome(tmp_path) == expected
  assert not [n for n in os.listdir(tmp_path) if n.startswith(".") and n != ".colarec.lock"]
  leftovers = [d for d, _, _ in os.walk(tmp_path / "colarec") if "orbax-checkpoint-tmp" in d]
  assert not leftovers


def test_mid_epoch_checkpoints_resume_exactly(reference, tmp_path):
  """With train.checkpoint_every_steps a SIGKILL loses at most that many steps."""
  _, expected = reference
  killed = cli(tmp_path, "--config.train.checkpoint_every_steps=2", fault="step:11:SIGKILL")
  assert killed.returncode == -signal.SIGKILL
  rerun = cli(tmp_path, "--config.train.checkpoint_every_steps=2")
  assert rerun.returncode == 0, rerun.stderr
  assert "resuming ColaRec at step 4 of epoch 2" in rerun.stdout
  assert outcome(tmp_path) == expected


def damage_file(folder, how):
  """Truncates, deletes, or overwrites 4 KiB of the largest file under `folder`."""
  files = [os.path.join(d, n) for d, _, names in os.walk(folder) for n in names]
  files = [f for f in files if not f.endswith(".json")] or files
  path = max(files, key=os.path.getsize)
  if how == "truncated":
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  elif how == "deleted":
    os.remove(path)
  else:
    with open(path, "r+b") as f:
      f.seek(min(64, os.path.getsize(path) // 2))
      f.write(np.random.default_rng(0).bytes(min(4096, os.path.getsize(path) // 2)))
  return path


@pytest.mark.parametrize("how", ["truncated", "deleted", "overwritten"])
def test_damaged_newest_checkpoint_falls_back(reference, tmp_path, how):
  workdir, expected = reference
  shutil.copytree(workdir, tmp_path / "w")
  damage_file(tmp_path / "w" / "colarec" / "checkpoints" / "latest" / "2", how)
  rerun = cli(tmp_path / "w", "--config.train.epochs=3")  # resumes: reads the newest
  assert rerun.returncode == 0, rerun.stderr
  warnings = [line for line in rerun.stdout.splitlines() if line.startswith("warning:")]
  assert len(warnings) == 1 and "checkpoint 2 in" in warnings[0] and "damaged" in warnings[0]
  assert outcome(tmp_path / "w")["history"][:2] == expected["history"]


@pytest.mark.parametrize("stage,how", [("data", "manifest"), ("data", "truncated"),
                                       ("lightgcn", "truncated"), ("gid", "overwritten"),
                                       ("gid", "manifest")])
def test_damaged_cache_is_rebuilt_with_a_notice(reference, tmp_path, stage, how):
  workdir, expected = reference
  shutil.copytree(workdir, tmp_path / "w")
  shutil.rmtree(tmp_path / "w" / "colarec")
  if stage == "lightgcn":  # read only when the GIDs are built
    shutil.rmtree(tmp_path / "w" / "gid")
  if how == "manifest":
    (tmp_path / "w" / stage / "manifest.json").write_text("{not json")
  else:
    damage_file(tmp_path / "w" / stage, how)
  rerun = cli(tmp_path / "w")
  assert rerun.returncode == 0, rerun.stderr
  assert any(line.endswith("; rebuilding them") and f"/{stage} are damaged" in line
             for line in rerun.stdout.splitlines()), rerun.stdout
  assert outcome(tmp_path / "w") == expected


def test_read_only_modes_never_write_a_cache(reference, tmp_path):
  workdir, _ = reference
  shutil.copytree(workdir, tmp_path / "w")
  before = {d: sorted(os.listdir(tmp_path / "w" / d)) for d in ("lightgcn", "gid", "data")}
  stamps = {d: os.path.getmtime(tmp_path / "w" / d / "manifest.json") for d in before}
  result = subprocess.run([sys.executable, "-m", "colarec_jax.main", "--config=configs/tiny.py",
                           f"--workdir={tmp_path / 'w'}", "--mode=evaluate",
                           "--config.cf.epochs=2", "--config.cf.learning_rate=0.01"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  assert result.stderr.strip().startswith("error: config.cf.learning_rate: got 0.01, but the ")
  assert {d: sorted(os.listdir(tmp_path / "w" / d)) for d in before} == before
  assert {d: os.path.getmtime(tmp_path / "w" / d / "manifest.json") for d in before} == stamps


def test_a_checkpoint_is_tied_to_its_gids(reference, tmp_path):
  """GIDs permuted in place: training rebuilds them (the file no longer matches its checksum);
  evaluate refuses the damaged stage instead of ranking with the wrong GIDs."""
  workdir, expected = reference
  shutil.copytree(workdir, tmp_path / "w")
  path = tmp_path / "w" / "gid" / "gids.npz"
  with np.load(path) as z:
    arrays = {k: z[k] for k in z.files}
  arrays["codes"] = arrays["codes"][::-1]
  np.savez(path, **arrays)
  result = subprocess.run([sys.executable, "-m", "colarec_jax.main",
                           f"--workdir={tmp_path / 'w'}", "--mode=evaluate"], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 2
  assert "the GIDs in" in result.stderr and "are damaged (gids.npz does not match" in (
      result.stderr)
  rerun = cli(tmp_path / "w")
  assert rerun.returncode == 0, rerun.stderr
  assert outcome(tmp_path / "w") == expected


def test_two_runs_on_one_workdir(reference, tmp_path):
  """A second writer is refused while the first holds the workdir."""
  from colarec_jax.data import fileio
  from colarec_jax.runtime.errors import UsageError
  with fileio.workdir_lock(str(tmp_path), log=lambda *_: None):
    result = cli(tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: --workdir: {tmp_path} is in use by another "
                                    f"colarec-jax run (pid {os.getpid()} on ")
    with pytest.raises(UsageError, match="is in use"):
      with fileio.workdir_lock(str(tmp_path), exclusive=False):
        pass
