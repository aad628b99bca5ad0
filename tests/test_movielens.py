"""The embedded ml-100k: verified cache hits need no network; a miss with no network is one error."""

import os
import shutil

import pytest

from colarec_jax.data import movielens
from colarec_jax.runtime.errors import DataError


@pytest.fixture
def no_network(monkeypatch):
  """pip with no index and no local wheel folders: any download fails at once."""
  monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
  monkeypatch.setenv("PIP_NO_INDEX", "1")
  monkeypatch.setenv("PIP_FIND_LINKS", "")


def fill_from_shared(shared_data, cache):
  os.makedirs(os.path.join(cache, "ml-100k"))
  for name in movielens.FILES_SHA256:
    shutil.copy(os.path.join(shared_data, "ml-100k", name), os.path.join(cache, "ml-100k", name))


def test_filled_cache_works_offline(shared_data, tmp_path, no_network):
  fill_from_shared(shared_data, str(tmp_path))
  logs = []
  folder = movielens.ensure_ml100k(str(tmp_path), log=logs.append)
  assert folder == str(tmp_path / "ml-100k") and logs == []


def test_cache_from_environment(shared_data, tmp_path, monkeypatch, no_network):
  fill_from_shared(shared_data, str(tmp_path))
  monkeypatch.setenv("COLAREC_CACHE", str(tmp_path))
  assert movielens.ensure_ml100k("", log=lambda *_: 0) == str(tmp_path / "ml-100k")


def test_empty_cache_and_no_network_is_one_clear_error(tmp_path, no_network):
  with pytest.raises(DataError) as e:
    movielens.ensure_ml100k(str(tmp_path), log=lambda *_: 0)
  message = str(e.value)
  assert message.startswith(f"{tmp_path}/wheels/recbole-1.2.1-py3-none-any.whl: MovieLens-100k "
                            "is not in the cache and could not be downloaded")
  assert "--config.data.source=atomic" in message
  assert os.listdir(tmp_path / "wheels") == []  # no partial download left


def test_tampered_cache_is_not_trusted(shared_data, tmp_path, no_network):
  fill_from_shared(shared_data, str(tmp_path))
  with open(tmp_path / "ml-100k" / "ml-100k.item", "a") as f:
    f.write("9999\tFake\t2000\tDrama\n")
  with pytest.raises(DataError, match="could not be downloaded"):
    movielens.ensure_ml100k(str(tmp_path), log=lambda *_: 0)


@pytest.mark.network
def test_download_verify_extract_then_offline_reextract(tmp_path, monkeypatch):
  logs = []
  folder = movielens.ensure_ml100k(str(tmp_path), log=logs.append)
  assert logs[0].startswith("downloading MovieLens-100k")
  for name, digest in movielens.FILES_SHA256.items():
    assert movielens.sha256(os.path.join(folder, name)) == digest
  # With the wheel cached, a lost extraction is redone without the network.
  shutil.rmtree(folder)
  monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
  monkeypatch.setenv("PIP_NO_INDEX", "1")
  logs.clear()
  assert movielens.ensure_ml100k(str(tmp_path), log=logs.append) == folder
  assert not any(line.startswith("downloading") for line in logs)
  assert sorted(os.listdir(tmp_path)) == ["ml-100k", "wheels"]
