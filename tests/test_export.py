"""Batch export: every user's top-N as JSON Lines or Parquet, equal to what `recommend` gives,
nothing the user has, and nothing half-written when it fails."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from colarec_jax.serving import export
from colarec_jax.data.dataset import TEST, TRAIN, VALID
from colarec_jax.runtime.errors import DataError, UsageError
from colarec_jax.serving.recommender import Recommender


@pytest.fixture(scope="module")
def rec(tiny_workdir):
  return Recommender.load(tiny_workdir)


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def check_against_recommend(rec, rows, top_n):
  """Each row is what `recommend(user=...)` answers, and holds nothing the user has."""
  ds = rec.catalog.dataset
  known = rec.parts.prepared.csr(TRAIN, VALID, TEST)
  for row in rows:
    single = rec.recommend(user=row["user"], top_n=top_n)
    assert row["items"] == single.items and len(row["items"]) == len(row["scores"])
    np.testing.assert_allclose(row["scores"], single.scores, atol=1e-5)
    has = {str(ds.item_ids[i]) for i in known.row(list(ds.user_ids).index(row["user"]))}
    assert not has & set(row["items"])


def test_jsonl_holds_every_user_as_recommend_ranks_them(rec, tmp_path, monkeypatch):
  monkeypatch.setattr(export, "CHUNK_BATCHES", 1)  # several chunks of 16 users for 48 users
  out = tmp_path / "top.jsonl"
  stats = export.export(rec, str(out), top_n=5, progress_bar=False, log=lambda *_: None)
  rows = read_jsonl(out)
  assert [r["user"] for r in rows] == [str(u) for u in rec.catalog.dataset.user_ids[1:]]
  assert stats["users"] == 48 and set(rows[0]) == {"user", "items", "scores"}
  check_against_recommend(rec, rows, 5)
  assert os.listdir(tmp_path) == ["top.jsonl"]  # no temporary file left


def test_parquet_equals_jsonl(rec, tmp_path):
  pq = pytest.importorskip("pyarrow.parquet")
  users = ["u05", "u00", "u40"]
  export.export(rec, str(tmp_path / "a.jsonl"), users=users, progress_bar=False,
                log=lambda *_: None)
  export.export(rec, str(tmp_path / "a.parquet"), users=users, progress_bar=False,
                log=lambda *_: None)
  table = pq.read_table(tmp_path / "a.parquet")
  assert table.column_names == ["user", "items", "scores"]
  rows = read_jsonl(tmp_path / "a.jsonl")
  assert [r["user"] for r in rows] == users
  for parquet_row, row in zip(table.to_pylist(), rows, strict=True):
    assert parquet_row["user"] == row["user"] and parquet_row["items"] == row["items"]
    np.testing.assert_allclose(parquet_row["scores"], row["scores"], rtol=1e-6)  # float32


def test_failed_export_leaves_the_old_file_and_nothing_else(rec, tmp_path, monkeypatch):
  out = tmp_path / "top.jsonl"
  out.write_text("the previous export\n")
  calls = []
  rank = rec.rank

  def failing(queries, progress=None):
    calls.append(1)
    if len(calls) == 2:
      raise RuntimeError("device lost")
    return rank(queries, progress)

  monkeypatch.setattr(export, "CHUNK_BATCHES", 1)
  monkeypatch.setattr(rec, "rank", failing)
  with pytest.raises(RuntimeError, match="device lost"):
    export.export(rec, str(out), progress_bar=False, log=lambda *_: None)
  assert os.listdir(tmp_path) == ["top.jsonl"] and out.read_text() == "the previous export\n"


@pytest.mark.parametrize("lines,message", [
    (["u01", "", "nobody"], "users.txt:3: 'nobody' is not a user of tiny (48 users"),
    (["u01", "u02", "u01"], "users.txt:3: 'u01' is listed twice (first on line 1)"),
    (["", " "], "users.txt: holds no user ids; expected one per line"),
])
def test_users_file_errors_name_file_and_line(rec, tmp_path, lines, message):
  path = tmp_path / "users.txt"
  path.write_text("\n".join(lines) + "\n")
  with pytest.raises(DataError) as error:
    export.read_users(str(path), rec.catalog)
  assert str(error.value).startswith(str(path)) and message in str(error.value)


def test_users_file_keeps_its_order(rec, tmp_path):
  path = tmp_path / "users.txt"
  path.write_text("u07\n\n u03 \n")
  assert export.read_users(str(path), rec.catalog) == ["u07", "u03"]


@pytest.mark.parametrize("output,message", [
    ("", "--output: give the file to write"),
    ("top.csv", "--output: '.*top.csv' ends in '.csv'; expected one of .jsonl, .parquet"),
    ("missing/top.jsonl", "missing is not a folder"),
])
def test_bad_output_names(tmp_path, output, message):
  with pytest.raises(UsageError, match=message):
    export.check_output(str(tmp_path / output) if output else "")


def test_cli_export_with_only_the_workdir(rec, tiny_workdir, tmp_path):
  users = tmp_path / "users.txt"
  users.write_text("u10\nu02\n")
  out = tmp_path / "top.jsonl"
  result = subprocess.run(
      [sys.executable, "-m", "colarec_jax.main", f"--workdir={tiny_workdir}", "--mode=export",
       f"--output={out}", f"--users_file={users}", "--top_n=7"], cwd=REPO, capture_output=True,
      text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  assert f"wrote the top 7 items of 2 users to {out}" in result.stdout
  rows = read_jsonl(out)
  assert [r["user"] for r in rows] == ["u10", "u02"]
  check_against_recommend(rec, rows, 7)


def test_an_unwritable_folder_is_refused_before_the_model_loads(tiny_workdir):
  """/proc takes no new file, not even from root: one line, before any checkpoint is read."""
  result = subprocess.run([sys.executable, "-m", "colarec_jax.main", f"--workdir={tiny_workdir}",
                           "--mode=export", "--output=/proc/top.jsonl"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert result.stderr.strip().startswith("error: --output: cannot write to /proc:"), result.stderr
  assert "checkpoint" not in result.stdout


def test_a_killed_exports_temporary_file_is_removed_by_the_next(rec, tmp_path):
  output = tmp_path / "top.jsonl"
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True).stdout.strip()
  stale = tmp_path / f".top.jsonl-{dead}-abc123.tmp"  # as a SIGKILLed export leaves it
  live = tmp_path / f".top.jsonl-{os.getpid()}-def456.tmp"  # a running export's: kept
  stale.write_text("half")
  live.write_text("busy")
  logs = []
  export.export(rec, str(output), users=["u01"], top_n=3, log=logs.append, progress_bar=False)
  assert not stale.exists() and live.exists() and output.exists()
  assert any(f"removed {stale}" in line for line in logs)
  assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "top.jsonl"]
