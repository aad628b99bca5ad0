"""train_and_evaluate on the tiny config: exact resume, checkpoints, outputs, and its errors."""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from colarec_jax.runtime import checkpoint
from colarec_jax.training import loop as train_lib
from colarec_jax.runtime.errors import ConfigError
from colarec_jax.config.settings import Settings
from configs import tiny

QUIET = dict(log=lambda *_: None, progress_bar=False)


def config(**train):
  c = tiny.get_config()
  c.cf.epochs = 2
  c.train.update(train)
  return c


def train(c, workdir, **kwargs):
  return train_lib.train_and_evaluate(Settings.parse(c), workdir, **kwargs)


def latest_params(workdir):
  manager = ocp.CheckpointManager(os.path.join(workdir, "colarec", "checkpoints", "latest"))
  step = manager.latest_step()
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return step, restored["state"]["params"]


def history(workdir):
  with open(os.path.join(workdir, "colarec", "metrics.json")) as f:
    rows = json.load(f)["history"]
  timings = ("seconds", "examples_per_second", "seconds_per_step")
  return [{k: v for k, v in r.items() if k not in timings} for r in rows]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("straight"))
  reports = train(config(epochs=2, steps_per_epoch=6), workdir, **QUIET)
  return workdir, reports


def test_resume_continues_exactly(straight, tmp_path):
  workdir, reports = straight
  resumed = str(tmp_path)
  train(config(epochs=1, steps_per_epoch=6), resumed, **QUIET)
  assert latest_params(resumed)[0] == 1
  logs = []
  again = train(config(epochs=2, steps_per_epoch=6), resumed,
                                       log=logs.append, progress_bar=False)
  assert any("resuming ColaRec after epoch 1" in line for line in logs)
  step_a, params_a = latest_params(workdir)
  step_b, params_b = latest_params(resumed)
  assert step_a == step_b == 2
  for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
    np.testing.assert_array_equal(a, b)
  assert history(workdir) == history(resumed)
  assert again["test"].overall == reports["test"].overall


def test_outputs_and_best_checkpoint(straight):
  workdir, reports = straight
  run = os.path.join(workdir, "colarec")
  with open(os.path.join(run, "metrics.json")) as f:
    metrics = json.load(f)
  assert [r["epoch"] for r in metrics["history"]] == [1, 2]
  best_epoch = max(metrics["history"], key=lambda r: r["valid/ndcg@10"])["epoch"]
  assert metrics["best_epoch"] == best_epoch
  assert metrics["test"]["overall"] == reports["test"].overall
  assert set(metrics["history"][0]) >= {"loss", "rec", "index", "bpr", "contrastive",
                                        "grad_norm", "learning_rate", "valid/ndcg@10"}
  assert os.path.getsize(os.path.join(run, "training_curves.png")) > 1000
  best = checkpoint.create_manager(os.path.join(run, "checkpoints"), checkpoint.BEST)
  assert best.all_steps() == [best_epoch]
  assert os.listdir(os.path.join(workdir, "tensorboard", "colarec"))
  for report in reports.values():
    assert 0 <= report.overall["recall@5"] <= report.overall["recall@20"] <= 1


def test_finished_run_does_not_train_again(straight):
  workdir, reports = straight
  logs = []
  again = train(config(epochs=2, steps_per_epoch=6), workdir,
                                       log=logs.append, progress_bar=False)
  assert not any(line.startswith("colarec epoch") for line in logs)
  assert again["test"].overall == reports["test"].overall


def test_changed_model_config_is_refused_on_resume(straight):
  workdir, _ = straight
  c = config(epochs=3, steps_per_epoch=6)
  c.model.d_ff = 48
  with pytest.raises(ConfigError, match=r"config.model.d_ff: got 48, but the checkpoints in .* "
                                        r"were trained with 64"):
    train(c, workdir, **QUIET)


def test_non_finite_loss_stops_with_a_clear_message(tmp_path):
  c = config(epochs=1, steps_per_epoch=3, log_every=1)
  c.optim.learning_rate = 1e38
  with pytest.raises(ConfigError, match=r"config.optim.learning_rate: the training loss became "
                                        r"non-finite at step \d+ of epoch 1 .*no checkpoint"):
    train(c, str(tmp_path), **QUIET)


@pytest.mark.parametrize("key,value,message", [
    ("train.epochs", 0, "expected >= 1"),
    ("train.steps_per_epoch", -1, "expected >= 0"),
    ("train.max_seconds", -1.0, "expected >= 0"),
    ("eval.beam_size", 5, "expected at least the longest list evaluated"),
])
def test_bad_train_keys(tmp_path, key, value, message):
  c = config()
  section, name = key.split(".")
  c[section][name] = value
  with pytest.raises(ConfigError, match=f"config.{key}: got {value}, {message}"):
    train(c, str(tmp_path), **QUIET)


def test_a_wall_clock_budget_stops_at_an_epoch_end_validated_and_tested(tmp_path):
  # A budget shorter than one epoch: the first epoch still ends, is validated although
  # eval_every=2 would skip it, and its checkpoint is tested; no second epoch starts.
  c, logs = config(epochs=4, steps_per_epoch=3, eval_every=2, max_seconds=1e-6), []
  reports = train(c, str(tmp_path), log=logs.append, progress_bar=False)
  rows = history(str(tmp_path))
  assert [r["epoch"] for r in rows] == [1] and "valid/ndcg@10" in rows[0]
  assert any(line.startswith("stopping after epoch 1: another would pass train.max_seconds=1e-06")
             for line in logs)
  assert reports["test"].overall["ndcg@10"] >= 0
  # A rerun continues from the checkpoint with a fresh budget: one more epoch.
  train(c, str(tmp_path), **QUIET)
  assert [r["epoch"] for r in history(str(tmp_path))] == [1, 2]


def test_tied_last_level_trains_validates_and_tests_end_to_end(tmp_path):
  """model.tie_last_level through the whole loop: batches carry the targets' last-level items
  (the tied decoder cannot run without them), beam search ranks with the item term."""
  c = config(epochs=1, steps_per_epoch=3)
  c.model.tie_last_level = True
  reports = train(c, str(tmp_path), **QUIET)
  assert "valid/ndcg@10" in history(str(tmp_path))[0]
  assert 0 <= reports["test"].overall["ndcg@10"] <= 1
  with open(tmp_path / "config.json") as f:
    assert json.load(f)["model"]["tie_last_level"] is True


def test_prefix_embed_trains_its_prefixes_rows_and_ranks_end_to_end(tmp_path):
  """model.prefix_embed through the whole loop: the table starts at zero, training moves only
  rows of prefixes that items' GIDs pass through (the root's among them), and the search ranks
  with it."""
  from colarec_jax.run import parts as parts_lib
  c = config(epochs=1, steps_per_epoch=3)
  c.model.prefix_embed = True
  reports = train(c, str(tmp_path), **QUIET)
  assert 0 <= reports["test"].overall["ndcg@10"] <= 1
  settings = Settings.parse(c)
  parts = parts_lib.build(settings, str(tmp_path), log=lambda *_: None, read_only=True)
  params, _ = parts_lib.checkpoints(parts, settings, str(tmp_path)).load_params(
      checkpoint.LATEST, parts.abstract_params())
  table = np.asarray(params["prefix_embed"])
  k, depth = parts.gids.branching, parts.gids.depth
  assert table.shape == (sum(k ** t for t in range(depth)), c.model.d_model)
  moved = np.abs(table).sum(axis=1) > 0
  used = np.zeros(len(table), bool)  # the rows of the items' prefixes of length 0..l-1
  for gid in parts.gids.codes[1:].tolist():
    for t in range(depth):
      used[sum(k ** j for j in range(t)) + sum((c - 1) * k ** (t - 1 - i)
                                               for i, c in enumerate(gid[:t]))] = True
  assert moved[0] and not (moved & ~used).any()
  assert moved[1 + k:].sum() > 0  # some level-2 prefixes' rows trained too


def test_prefetch_keeps_order_and_reraises():
  assert list(train_lib.prefetch(iter(range(50)), size=3)) == list(range(50))

  def broken():
    yield 1
    raise ValueError("bad batch")

  with pytest.raises(ValueError, match="bad batch"):
    list(train_lib.prefetch(broken()))


def test_id_init_from_lightgcn_starts_from_its_embeddings(straight):
  """`model.id_init=lightgcn`: the first state's ID tables are LightGCN's embeddings of the run
  (unit-variance, projected to d_model), not the random ones."""
  from colarec_jax.run import stages
  from colarec_jax.run import parts as parts_lib
  from colarec_jax.training.state import id_embeddings, initial_state
  from colarec_jax.training.step import create_optimizer
  workdir, _ = straight
  c = config()
  c.model.id_init = "lightgcn"
  settings = Settings.parse(c)
  ws = parts_lib.build(settings, workdir, log=lambda *_: None)
  state = initial_state(ws, settings, workdir, create_optimizer(settings.optim),
                        log=lambda *_: None)
  cf = stages.lightgcn(settings, ws.prepared, workdir, log=lambda *_: None)
  for name, table in (("item_embed", cf.item_embeddings), ("user_embed", cf.user_embeddings)):
    np.testing.assert_allclose(np.asarray(state.params[name]["embedding"]),
                               id_embeddings(table, c.model.d_model, c.seed), rtol=1e-6)
  plain = Settings.parse(config())
  random = initial_state(parts_lib.build(plain, workdir, log=lambda *_: None), plain, workdir,
                         create_optimizer(settings.optim))
  assert not np.allclose(np.asarray(random.params["item_embed"]["embedding"]),
                         np.asarray(state.params["item_embed"]["embedding"]))


def test_checkpoints_of_a_config_without_a_newer_key_read_it_as_its_default(tmp_path):
  """A key added to the code after a checkpoint was trained counts as its default value then."""
  import copy

  from colarec_jax.config.stored import check_trained_with
  settings = Settings.parse(config())
  older = copy.deepcopy(settings.fixed)
  del older["loss"]["pair_temperature"], older["model"]["id_init"]
  check_trained_with(settings.fixed, older, "here")  # both at their defaults: the same model
  changed = config()
  changed.loss.pair_temperature = 0.1
  with pytest.raises(ConfigError, match=r"loss\.pair_temperature: got 0\.1, but the checkpoints "
                     r"in here were trained with 0\.0"):
    check_trained_with(Settings.parse(changed).fixed, older, "here")
