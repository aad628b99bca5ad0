"""GID sources (content SVD, file column, random), the cached GID stage, report and CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from colarec_jax.data import prepare as prepare_lib
from colarec_jax.config.settings import Settings
from colarec_jax.run import stages
from colarec_jax.runtime.errors import DataError
from colarec_jax.gid import builder, sources
from conftest import REPO
from configs import phones, tiny


def test_content_embeddings_match_dense_svd():
  rng = np.random.default_rng(0)
  words = [f"w{i}" for i in range(40)]
  texts = [" ".join(rng.choice(words, size=rng.integers(3, 9))) for _ in range(120)]
  got = sources.content_embeddings(texts, dim=4)
  vocab = {w: n for n, w in enumerate(sorted({w for t in texts for w in t.split()}))}
  x = np.zeros((len(texts), len(vocab)))
  for n, text in enumerate(texts):
    for w in text.split():
      x[n, vocab[w]] += 1
  x *= np.log((1 + len(texts)) / (1 + (x > 0).sum(0))) + 1
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  u, s, _ = np.linalg.svd(x, full_matrices=False)
  # A randomized SVD: on this flat random spectrum it is close, not exact.
  np.testing.assert_allclose(np.linalg.norm(got, axis=0), s[:4], rtol=1e-2)
  # Nearly the same subspace: projecting onto the reference's leading left vectors keeps it.
  projected = u[:, :4] @ (u[:, :4].T @ got)
  assert np.linalg.norm(projected - got) < 0.05 * np.linalg.norm(got)


@pytest.fixture(scope="module")
def tiny_prepared(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("gidprep"))
  return workdir, prepare_lib.prepare(Settings.parse(tiny.get_config()).data, workdir,
                                      log=lambda *_: 0)


def small_gid_config(source):
  config = tiny.get_config()
  config.gid.source = source
  config.gid.branching = 4
  config.gid.n_init = 2
  config.cf.epochs = 2
  config.cf.batch_size = 64
  return config


@pytest.mark.parametrize("source", ["lightgcn", "content", "random"])
def test_gid_stage_builds_caches_and_reports(tiny_prepared, tmp_path, source):
  _, prepared = tiny_prepared
  config = small_gid_config(source)
  logs = []
  table = stages.gid_table(Settings.parse(config), prepared, str(tmp_path), log=logs.append)
  assert table.num_items == prepared.dataset.num_items and table.depth == 3
  assert len({tuple(c) for c in table.codes[1:].tolist()}) == table.num_items
  summary = logs[-1]
  assert summary.startswith(f"GIDs ({source}, K=4, l=3): 36 items; level 1: ")
  manifest = json.loads((tmp_path / "gid" / "manifest.json").read_text())
  assert sum(np.arange(len(h)) @ np.asarray(h) for h in
             [manifest["report"]["levels"][0]["size_histogram"]]) == 36
  assert (tmp_path / "gid" / "tree_balance.png").read_bytes()[:4] == b"\x89PNG"
  logs.clear()
  again = stages.gid_table(Settings.parse(config), prepared, str(tmp_path), log=logs.append)
  assert logs[0] == f"reusing GIDs in {tmp_path}/gid" and logs[1] == summary
  np.testing.assert_array_equal(again.codes, table.codes)


def test_file_source_reads_the_authors_gids(shared_data, tmp_path):
  config = phones.get_config()
  config.data.dir = os.path.join(shared_data, "phones")
  config.gid.source = "file"
  prepared = prepare_lib.prepare(Settings.parse(config).data, str(tmp_path), log=lambda *_: 0)
  table = stages.gid_table(Settings.parse(config), prepared, str(tmp_path), log=lambda *_: 0)
  with open(os.path.join(shared_data, "phones", "phones.item"), encoding="utf-8") as f:
    next(f)
    column = {line.split("\t")[0]: line.rstrip("\n").split("\t")[4] for line in f}
  for item in (1, 2, 500, prepared.dataset.num_items):
    raw = prepared.dataset.item_ids[item]
    assert " ".join(map(str, table.codes[item])) == column[raw]


def test_file_source_errors_name_file_and_line(tmp_path, tiny_prepared):
  _, prepared = tiny_prepared
  folder = tmp_path / "src"
  folder.mkdir()
  lines = (open(os.path.join(tiny.FIXTURE, "tiny.item"), encoding="utf-8")
           .read().splitlines())
  header = lines[0] + "\tgid:token_seq"
  body = [f"{line}\t{n % 4 + 1} {n // 4 % 4 + 1} {n // 16 + 1}" for n, line in enumerate(lines[1:])]
  body[6] = body[6].rsplit("\t", 1)[0] + "\t1 2"
  (folder / "tiny.item").write_text("\n".join([header] + body) + "\n")
  with pytest.raises(DataError, match=r"tiny\.item:8: item 'i06' has GID '1 2' in column 'gid'; "
                     r"expected 3 codes in 1\.\.4"):
    sources.file_codes(prepared, str(folder), "gid", 4, 3)


def test_cli_gid_mode_prints_summary(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "colarec_jax.main", "--config=configs/tiny.py",
       f"--workdir={tmp_path}", "--mode=gid", "--config.gid.source=random",
       "--config.gid.branching=4"], cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  assert "GIDs (random, K=4, l=3): 36 items; level 1: 4 clusters of 9-9 items (cap 16)" in (
      result.stdout)
  result = subprocess.run(
      [sys.executable, "-m", "colarec_jax.main", "--config=configs/tiny.py",
       f"--workdir={tmp_path}", "--mode=gid", "--config.gid.branching=3"],
      cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 2
  assert result.stderr.strip() == ("error: config.gid.depth: K^l = 3^3 = 27 codes cannot "
                                   "hold 36 items; set gid.depth=4 (or 0: the smallest that "
                                   "fits) or raise gid.branching")
  # gid.depth=0: the smallest depth that holds the 36 items (3^4 = 81 >= 36 > 27).
  result = subprocess.run(
      [sys.executable, "-m", "colarec_jax.main", "--config=configs/tiny.py",
       f"--workdir={tmp_path / 'auto'}", "--mode=gid", "--config.gid.source=random",
       "--config.gid.branching=3", "--config.gid.depth=0"], cwd=REPO, capture_output=True,
      text=True)
  assert result.returncode == 0, result.stderr
  assert "GIDs (random, K=3, l=4): 36 items" in result.stdout


def test_fitting_depth_is_the_smallest_that_holds_the_catalogue():
  for n, k in ((36, 3), (1_000_000, 32), (32_768, 32), (32_769, 32), (5, 4), (10, 10)):
    depth = builder.fitting_depth(n, k)
    assert k ** depth >= n and depth >= 2 and (depth == 2 or k ** (depth - 1) < n)
  assert builder.fitting_depth(1_000_000, 32) == 4 and builder.fitting_depth(32_768, 32) == 3
