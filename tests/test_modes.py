"""The command line's one route: each mode's flags parsed once into a checked object, and one
table of modes (`colarec_jax/cli`)."""

import dataclasses

import pytest

from colarec_jax.cli import flags, modes
from colarec_jax.config.settings import Settings
from colarec_jax.runtime.errors import UsageError
from configs import tiny


@pytest.fixture(scope="module")
def settings():
  return Settings.parse(tiny.get_config())


def test_the_modes_table_says_who_reads_and_who_writes():
  assert list(modes.MODES) == ["all", "prepare", "stats", "gid", "train", "evaluate",
                               "recommend", "export", "serve", "add_items", "import_official"]
  assert [n for n, m in modes.MODES.items() if m.own_stages] == ["import_official"]
  assert modes.READERS == ("evaluate", "recommend", "export", "serve", "add_items")
  shared = [name for name, mode in modes.MODES.items() if not mode.exclusive]
  assert shared == ["evaluate", "recommend", "export", "serve"]  # readers share the workdir
  assert [n for n, m in modes.MODES.items() if m.trains_colarec] == ["all", "train"]


def test_each_default_is_written_once():
  """Every flag a mode reads has one default, the same in every mode that reads it."""
  seen = {}
  for cls in flags.FLAGS.values():
    for field in dataclasses.fields(cls):
      assert seen.setdefault(field.name, field.default) == field.default, field.name
  assert flags.defaults() == seen
  assert seen["top_n"] == 10 and seen["checkpoint"] == "best" and seen["port"] == 8000


@pytest.mark.parametrize("mode,values,field", [
    ("recommend", {"user": "u00", "items": "i01"}, "user"),
    ("recommend", {}, "user"),
    ("recommend", {"user": "u00", "top_n": 0}, "top_n"),
    ("recommend", {"user": "u00", "top_n": 101}, "top_n"),
    ("export", {"output": "top.csv"}, "output"),
    ("export", {"output": "top.jsonl", "top_n": 101}, "top_n"),
    ("evaluate", {"checkpoint": "newest"}, "checkpoint"),
    ("evaluate", {"split": "train"}, "split"),
    ("add_items", {}, "items_file"),
    ("serve", {"port": 0}, "port"),
])
def test_bad_flags_are_named(settings, mode, values, field):
  with pytest.raises(UsageError) as e:
    flags.parse(mode, values, settings)
  assert e.value.flag == field


def test_a_mode_keeps_only_its_own_flags(settings):
  parsed = flags.parse("recommend", {"user": "u00", "top_n": 5, "port": 1, "output": "x"},
                       settings)
  assert parsed == flags.RecommendFlags(user="u00", top_n=5) and parsed.history is None
  assert flags.parse("recommend", {"items": "a, b"}, settings).history == ["a", "b"]
  assert flags.parse("train", {"user": "u00", "top_n": -1}, settings) == flags.NoFlags()
