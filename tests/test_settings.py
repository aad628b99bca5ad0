"""The config's defaults have one source: `config/base.py`. The frozen views' own defaults (used
when a test or notebook builds a view by hand) must be the base config's, and every top-level key
must be classified by what a trained model is tied to."""

import dataclasses

import pytest

from colarec_jax.cf.lightgcn import LightGCNConfig
from colarec_jax.config import base
from colarec_jax.config.settings import LossWeights, OptimConfig, Settings, TrainConfig
from colarec_jax.data.config import DataConfig
from colarec_jax.evaluate import EvalConfig
from colarec_jax.gid.sources import GidConfig
from colarec_jax.model.colarec import ModelConfig
from colarec_jax.model.inputs import InputConfig

VIEWS = {"optim": OptimConfig, "train": TrainConfig, "loss": LossWeights, "cf": LightGCNConfig,
         "gid": GidConfig, "eval": EvalConfig, "model": ModelConfig, "data": DataConfig,
         "inputs": InputConfig}


@pytest.mark.parametrize("section", sorted(VIEWS))
def test_view_defaults_are_the_base_configs(section):
  """Each field a view gives a default has the base config's value (parsed as `Settings` does)."""
  parsed = getattr(Settings.parse(base.base_config()), section)
  view = VIEWS[section]
  differ = {f.name: (f.default, getattr(parsed, f.name)) for f in dataclasses.fields(view)
            if f.default is not dataclasses.MISSING and f.default != getattr(parsed, f.name)}
  assert not differ, f"{view.__name__} defaults (view, base config): {differ}"


def test_the_check_catches_a_drifted_default(monkeypatch):
  """The check above can fail: a view default changed alone is reported."""
  fields = {f.name: f for f in dataclasses.fields(OptimConfig)}
  monkeypatch.setattr(fields["learning_rate"], "default", 1.0)
  with pytest.raises(AssertionError, match="learning_rate"):
    test_view_defaults_are_the_base_configs("optim")


def test_every_top_level_key_is_classified_once():
  keys = set(base.base_config().keys())
  groups = (base.FIXED_SECTIONS, base.READER_KEYS, base.RESUMABLE_SECTIONS)
  assert sorted(k for group in groups for k in group) == sorted(keys)


def test_the_default_config_and_the_cpu_budget_share_the_model_size():
  from configs import default
  config = default.get_config()
  budget = base.cpu_budget(base.base_config())
  assert config.model.to_dict() == budget.model.to_dict()
  assert config.inputs.max_length == budget.inputs.max_length


@pytest.mark.parametrize("schedule,warmup,refused", [
    ("warmup_cosine", 5, False), ("warmup_cosine", 6, True), ("constant", 6, False)])
def test_a_warm_up_the_capped_run_cannot_hold_is_refused_by_the_parse(schedule, warmup, refused):
  """2 epochs capped at 3 steps take at most 6 steps: a warm-up of 6 leaves no decay, found
  before any data is read (a constant schedule ignores the warm-up)."""
  from colarec_jax.runtime.errors import ConfigError
  config = base.base_config()
  config.optim.schedule, config.optim.warmup_steps = schedule, warmup
  config.train.epochs, config.train.steps_per_epoch = 2, 3
  if refused:
    with pytest.raises(ConfigError, match=r"optim\.warmup_steps: got 6, expected fewer than the 6"):
      Settings.parse(config)
  else:
    assert Settings.parse(config).optim.warmup_steps == warmup
