"""The real command line, in subprocesses: modes, locked config, one-line errors."""

import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO


def cli(*args, env=None, cwd=REPO):
  full_env = dict(os.environ, **(env or {}))
  return subprocess.run([sys.executable, "-m", "colarec_jax.main", *args], cwd=cwd,
                        capture_output=True, text=True, env=full_env, timeout=300)


def test_default_mode_prepares_prints_stats_and_baselines(tmp_path):
  result = cli("--config=configs/tiny.py", f"--workdir={tmp_path}", "--config.cf.epochs=2")
  assert result.returncode == 0, result.stderr
  assert "prepared data written" in result.stdout
  assert "test metrics" in result.stdout and "lightgcn long-tail" in result.stdout
  rows = dict(line.split(None, 1) for line in result.stdout.splitlines() if line[:1].isalpha())
  assert rows["users"].strip() == "48" and rows["interactions"].strip() == "395"
  assert os.path.isfile(tmp_path / "data" / "manifest.json")


def test_prepare_then_stats_reuses(tmp_path):
  assert cli("--config=configs/tiny.py", f"--workdir={tmp_path}", "--mode=prepare").returncode == 0
  result = cli("--config=configs/tiny.py", f"--workdir={tmp_path}", "--mode=stats")
  assert result.returncode == 0 and "reusing prepared data" in result.stdout


def test_override_changes_preparation(tmp_path):
  result = cli("--config=configs/tiny.py", f"--workdir={tmp_path}",
               "--mode=prepare", "--config.data.split_order=temporal",
               "--config.data.max_item_tokens=7")
  assert result.returncode == 0, result.stderr
  assert '"max_item_tokens": 7' in (tmp_path / "data" / "manifest.json").read_text()


def test_mistyped_key_fails_at_startup(tmp_path):
  result = cli("--config=configs/tiny.py", f"--workdir={tmp_path}", "--config.data.sourc=atomic")
  assert result.returncode != 0
  assert "sourc" in result.stderr
  assert not os.path.exists(tmp_path / "data")


def test_bad_value_is_one_line_without_traceback(tmp_path):
  result = cli("--config=configs/tiny.py", f"--workdir={tmp_path}", "--config.data.source=csv")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      "error: config.data.source: got 'csv', expected one of 'movielens', 'atomic', 'amazon', "
      "'foodcom'"]


def test_bad_file_names_file_and_line(tmp_path):
  src = tmp_path / "src"
  shutil.copytree(os.path.join(REPO, "tests", "fixtures", "tiny"), src)
  with open(src / "tiny.inter", "a") as f:
    f.write("u01\ti02\n")
  result = cli("--config=configs/tiny.py", f"--workdir={tmp_path / 'w'}",
               f"--config.data.dir={src}")
  assert result.returncode == 2
  assert result.stderr.strip() == f"error: {src}/tiny.inter:397: row has 2 fields, header has 3"
  assert "Traceback" not in result.stderr
  assert os.listdir(tmp_path / "w") == []


def test_default_config_on_embedded_dataset_offline(shared_data, tmp_path):
  cache = tmp_path / "cache" / "ml-100k"
  shutil.copytree(os.path.join(shared_data, "ml-100k"), cache)
  result = cli("--config=configs/default.py", f"--workdir={tmp_path / 'w'}", "--mode=stats",
               env={"COLAREC_CACHE": str(tmp_path / "cache"), "PIP_NO_INDEX": "1",
                    "PIP_CONFIG_FILE": os.devnull})
  assert result.returncode == 0, result.stderr
  assert "ml-100k" in result.stdout and "100,000" in result.stdout


@pytest.mark.skipif(shutil.which("colarec-jax") is None, reason="package not pip-installed")
def test_console_script(tmp_path):
  result = subprocess.run(["colarec-jax", "--config=configs/tiny.py", f"--workdir={tmp_path}",
                           "--mode=prepare"], cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr


def test_train_mode_runs_the_named_baseline(tmp_path):
  result = cli("--config=configs/tiny.py", f"--workdir={tmp_path}", "--mode=train",
               "--config.model.name=mostpop")
  assert result.returncode == 0, result.stderr
  table = result.stdout.split("test metrics\n")[1].splitlines()
  assert table[2].startswith("mostpop ") and table[3].startswith("mostpop long-tail")
  assert "lightgcn" not in result.stdout
