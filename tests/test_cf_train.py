"""The LightGCN loop (early stopping, saved embeddings, reuse, mesh) and MostPop on tiny."""

import os

import numpy as np
import pytest

from colarec_jax import evaluate
from colarec_jax.cli import modes
from colarec_jax.cf import train as cf_train
from colarec_jax.data import prepare as prepare_lib
from colarec_jax.data.dataset import TEST, TRAIN, VALID
from colarec_jax.runtime.errors import ConfigError
from colarec_jax.evaluate import EvalConfig
from colarec_jax.config.settings import Settings
from configs import tiny


def small_config(**cf):
  config = tiny.get_config()
  config.cf.embedding_dim = 16
  config.cf.batch_size = 64
  config.cf.epochs = 6
  config.cf.patience = 3
  config.cf.update(cf)
  return config


def train_lightgcn(config, prepared, workdir, **kwargs):
  settings = Settings.parse(config)
  return cf_train.train_lightgcn(prepared, workdir, settings.cf, settings.eval, seed=settings.seed,
                                 num_devices=settings.num_devices, **kwargs)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("prep"))
  return prepare_lib.prepare(Settings.parse(small_config()).data, workdir, log=lambda *_: 0)


def test_lightgcn_trains_saves_and_reuses(prepared, tmp_path):
  config = small_config()
  config.num_devices = 1
  logs = []
  result = train_lightgcn(config, prepared, str(tmp_path), log=logs.append,
                                   progress=False)
  ds = prepared.dataset
  assert result.item_embeddings.shape == (ds.num_items + 1, 16)
  assert result.user_embeddings.shape == (ds.num_users + 1, 16)
  assert 1 <= result.best_epoch <= result.epochs_run <= 6
  assert result.valid.num_users == len(prepared.users_with(VALID))
  assert set(result.test.overall) == {f"{m}@{k}" for m in ("recall", "ndcg") for k in (5, 10, 20)}
  assert os.path.isfile(tmp_path / "lightgcn" / "embeddings.npz")
  assert os.listdir(tmp_path / "tensorboard" / "lightgcn")
  logs.clear()
  again = train_lightgcn(config, prepared, str(tmp_path), log=logs.append)
  assert logs == [f"reusing LightGCN embeddings in {tmp_path}/lightgcn"]
  np.testing.assert_array_equal(again.item_embeddings, result.item_embeddings)
  assert again.test == result.test
  config.cf.learning_rate = 2e-3  # another config trains again
  logs.clear()
  train_lightgcn(config, prepared, str(tmp_path), log=logs.append, progress=False)
  assert not logs[0].startswith("reusing")


def test_lightgcn_on_four_devices_matches_one(prepared, tmp_path):
  results = []
  for devices in (1, 4):
    config = small_config(epochs=3, patience=5)
    config.num_devices = devices
    results.append(train_lightgcn(config, prepared, str(tmp_path / str(devices)),
                                           log=lambda *_: 0, progress=False))
  np.testing.assert_allclose(results[1].item_embeddings, results[0].item_embeddings, atol=1e-5)
  assert results[1].best_epoch == results[0].best_epoch


def test_mostpop_matches_reference(prepared):
  ev = EvalConfig.from_config(small_config().eval)
  report = cf_train.mostpop(prepared, ev)["test"]
  ds = prepared.dataset
  counts = np.bincount(prepared.rows(TRAIN)[1], minlength=ds.num_items + 1).astype(float)
  seen = prepared.csr(TRAIN, VALID)  # validation items are dropped at test time by default
  users = prepared.users_with(TEST)
  ranked = []
  for u in users:
    scores = counts.copy()
    scores[0] = -np.inf
    scores[seen.row(u)] = -np.inf
    ranked.append(np.argsort(-scores, kind="stable")[:20])  # ties: lower item id first
  expected = evaluate.ranking_metrics(np.array(ranked), [prepared.csr(TEST).row(u) for u in users])
  assert report.num_users == len(users)
  for name, values in expected.items():
    assert report.overall[name] == pytest.approx(values.mean(), abs=1e-9), name


def test_eval_config_errors():
  config = small_config()
  config.eval.metric = "ndcg@50"
  with pytest.raises(ConfigError, match=r"config\.eval\.metric: got 'ndcg@50', expected one of "):
    EvalConfig.from_config(config.eval)


def test_pipeline_all_writes_results(tmp_path):
  config = small_config(epochs=2)
  logs = []
  modes.run("all", Settings.parse(config), str(tmp_path), log=logs.append)
  table = logs[-1]
  assert table.startswith("test metrics") and "mostpop" in table and "lightgcn long-tail" in table
  assert os.path.isfile(tmp_path / "results.json")
