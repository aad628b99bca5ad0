"""Preparation: saved arrays, the manifest's reuse rule, atomic writes, config errors."""

import json
import os
import shutil

import numpy as np
import pytest

from colarec_jax.data import prepare as prepare_lib
from colarec_jax.config.settings import Settings
from colarec_jax.data.dataset import TEST, TRAIN, VALID
from colarec_jax.data.split import split_counts
from colarec_jax.runtime.errors import ConfigError, DataError
from configs import tiny


def tiny_config(tmp_path, copy=False):
  config = tiny.get_config()
  if copy:
    shutil.copytree(config.data.dir, tmp_path / "src")
    config.data.dir = str(tmp_path / "src")
  return config


def quiet(*_):
  pass


def test_prepare_tiny_arrays_and_split_rule(tmp_path):
  config = tiny_config(tmp_path)
  prepared = prepare_lib.prepare(Settings.parse(config).data, str(tmp_path / "w"), log=quiet)
  ds = prepared.dataset
  assert (ds.num_users, ds.num_items, ds.num_interactions) == (48, 36, 395)
  assert prepared.item_tokens.shape == (37, config.data.max_item_tokens)
  assert (prepared.item_tokens[0] == prepared.pad_id).all()
  assert (prepared.item_token_len[1:] > 0).all()
  for u in range(1, ds.num_users + 1):
    part = prepared.split[ds.users == u]
    counts = tuple(int((part == s).sum()) for s in (TRAIN, VALID, TEST))
    assert counts == split_counts(len(part))
  # Inside a user, rows are in time order (the fixture has timestamps).
  for u in range(1, ds.num_users + 1):
    assert (np.diff(ds.timestamps[ds.users == u]) >= 0).all()
  stats = prepared.manifest["stats"]
  assert stats["train"] + stats["valid"] + stats["test"] == 395
  assert stats["users_without_test"] == 0
  users, items = prepared.rows(TEST)
  assert len(users) == stats["test"] and items.min() >= 1


def test_temporal_order_puts_newest_rows_in_test(tmp_path):
  config = tiny_config(tmp_path)
  config.data.split_order = "temporal"
  prepared = prepare_lib.prepare(Settings.parse(config).data, str(tmp_path / "w"), log=quiet)
  ds = prepared.dataset
  for u in range(1, ds.num_users + 1):
    part = prepared.split[ds.users == u]
    assert (np.diff(part) >= 0).all()  # train rows, then valid, then test


def test_reuse_and_rebuild(tmp_path):
  config = tiny_config(tmp_path, copy=True)
  workdir = str(tmp_path / "w")
  logs = []
  prepare_lib.prepare(Settings.parse(config).data, workdir, log=logs.append)
  arrays = os.path.join(workdir, "data", "arrays.npz")
  stamp = os.stat(arrays).st_mtime_ns
  prepare_lib.prepare(Settings.parse(config).data, workdir, log=logs.append)
  assert logs[-1].startswith("reusing prepared data")
  assert os.stat(arrays).st_mtime_ns == stamp

  config.data.max_item_tokens = 5  # a config change rebuilds
  prepared = prepare_lib.prepare(Settings.parse(config).data, workdir, log=logs.append)
  assert prepared.item_tokens.shape[1] == 5 and logs[-1].startswith("prepared data written")

  with open(tmp_path / "src" / "tiny.inter", "a") as f:  # an input change rebuilds
    f.write("u00\ti35\t1700000000\n")
  prepared = prepare_lib.prepare(Settings.parse(config).data, workdir, log=logs.append)
  assert prepared.dataset.num_interactions == 396
  assert logs[-1].startswith("prepared data written")


def test_failed_preparation_leaves_nothing_partial(tmp_path):
  config = tiny_config(tmp_path, copy=True)
  workdir = tmp_path / "w"
  with open(tmp_path / "src" / "tiny.item", "a") as f:
    f.write("i99\tbroken row\n")
  with pytest.raises(DataError, match=r"tiny\.item:38: row has 2 fields, header has 4"):
    prepare_lib.prepare(Settings.parse(config).data, str(workdir), log=quiet)
  assert os.listdir(workdir) == []


def test_failed_rebuild_keeps_previous_complete_data(tmp_path):
  config = tiny_config(tmp_path, copy=True)
  workdir = tmp_path / "w"
  prepare_lib.prepare(Settings.parse(config).data, str(workdir), log=quiet)
  before = json.loads((workdir / "data" / "manifest.json").read_text())
  with open(tmp_path / "src" / "tiny.inter", "a") as f:
    f.write("u01\ti02\tnoon\n")
  with pytest.raises(DataError, match=r"tiny\.inter:397: column 'timestamp' \(time\) holds 'noon'"):
    prepare_lib.prepare(Settings.parse(config).data, str(workdir), log=quiet)
  assert os.listdir(workdir) == ["data"]
  assert json.loads((workdir / "data" / "manifest.json").read_text()) == before


@pytest.mark.parametrize("key,value,message", [
    ("split_ratios", (0.8, 0.1, 0.2), "config.data.split_ratios: got (0.8, 0.1, 0.2)"),
    ("source", "csv", "config.data.source: got 'csv', expected one of 'movielens'"),
    ("split_order", "chrono", "config.data.split_order: got 'chrono'"),
    ("max_item_tokens", 0, "config.data.max_item_tokens: got 0, expected >= 1"),
    ("tokenizer", "/nonexistent/tokenizer.json", "config.data.tokenizer: '/nonexistent"),
    ("text_fields", "title:a b", "config.data.text_fields: bad entry 'title:a b'"),
    ("split", "given", "config.data.split: 'given' needs benchmark files"),
])
def test_config_errors_name_the_key(tmp_path, key, value, message):
  config = tiny_config(tmp_path)
  config.data[key] = value
  with pytest.raises(ConfigError) as e:
    prepare_lib.prepare(Settings.parse(config).data, str(tmp_path / "w"), log=quiet)
  assert str(e.value).startswith(message), str(e.value)
  assert not os.path.exists(tmp_path / "w" / "data")


def test_given_tokenizer_is_used(tmp_path):
  config = tiny_config(tmp_path)
  first = prepare_lib.prepare(Settings.parse(config).data, str(tmp_path / "a"), log=quiet)
  config.data.tokenizer = os.path.join(first.directory, "tokenizer.json")
  second = prepare_lib.prepare(Settings.parse(config).data, str(tmp_path / "b"), log=quiet)
  np.testing.assert_array_equal(first.item_tokens, second.item_tokens)
  assert "tokenizer:tokenizer.json" in second.manifest["key"]["inputs"]


def test_format_stats_table(tmp_path):
  prepared = prepare_lib.prepare(Settings.parse(tiny_config(tmp_path)).data, str(tmp_path / "w"), log=quiet)
  table = prepare_lib.format_stats(prepared)
  assert table.splitlines()[0].split() == ["statistic", "value"]
  assert "interactions" in table and "395" in table and "tokens_per_item_p90" in table


@pytest.mark.parametrize("source,name,first_content", [
    ("amazon", "Toys", "title Girls Ballet Tutu Zebra Hot Pink brand Coxlures categories Other "
     "Sports Dance"),
    ("foodcom", "foodcom", "name arriba baked winter squash mexican style description autumn"),
])
def test_raw_sources_prepare(tmp_path, source, name, first_content):
  from colarec_jax.config.base import base_config
  from conftest import FIXTURES
  config = base_config()
  config.data.source = source
  config.data.name = name
  config.data.dir = os.path.join(FIXTURES, source)
  config.data.text_fields = ""
  config.data.kcore = 0  # the fixtures are far smaller than a 5-core
  config.data.vocab_size = 100
  prepared = prepare_lib.prepare(Settings.parse(config).data, str(tmp_path), log=quiet)
  ds = prepared.dataset
  assert ds.num_interactions == 10
  assert ds.content(1).startswith(first_content)
  assert prepared.manifest["stats"]["train"] + prepared.manifest["stats"]["test"] <= 10
  config.data.kcore = -1  # auto: raw sources are 5-core filtered, which empties the fixtures
  with pytest.raises(DataError, match="no interactions left after filtering"):
    prepare_lib.prepare(Settings.parse(config).data, str(tmp_path / "k"), log=quiet)


def test_items_without_text_get_one_warning(tmp_path):
  config = tiny_config(tmp_path, copy=True)
  path = tmp_path / "src" / "tiny.item"
  lines = path.read_text().splitlines()
  lines[3] = lines[3].split("\t")[0] + "\t\t\t"  # i02: no title, brand or categories
  path.write_text("\n".join(lines) + "\n")
  logs = []
  prepared = prepare_lib.prepare(Settings.parse(config).data, str(tmp_path / "w"), log=logs.append)
  warnings = [line for line in logs if line.startswith("warning:")]
  assert warnings == ["warning: 1 of 36 items have no text in data.text_fields (title, brand, "
                      "categories); ColaRec knows them by their ID alone"]
  assert prepared.manifest["stats"]["items_without_text"] == 1


def test_without_held_out_items_the_folder_is_the_one_prepared_before_the_protocol(tmp_path):
  """data.cold_item_fraction = 0 keeps the stage key and the arrays file of code that had no such
  key, so workdirs trained before it keep their data, LightGCN, GIDs and checkpoints."""
  off = prepare_lib.prepare(Settings.parse(tiny.get_config()).data, str(tmp_path / "off"),
                            log=lambda *_: 0)
  assert "cold_item_fraction" not in off.manifest["key"]["data"]
  with np.load(os.path.join(off.directory, "arrays.npz")) as z:
    assert not [k for k in z.files if k.startswith("held_out")]
  assert len(off.held_out) == 0
  c = tiny.get_config()
  c.data.cold_item_fraction = 0.2
  on = prepare_lib.prepare(Settings.parse(c).data, str(tmp_path / "on"), log=lambda *_: 0)
  assert on.manifest["key"]["data"]["cold_item_fraction"] == 0.2 and len(on.held_out) > 0


def test_item_text_is_stored_variable_length_and_old_folders_still_load(tmp_path):
  """Item text is saved as UTF-8 bytes with offsets, each cell as long as its own text: a NumPy
  unicode array gave every cell the longest one's width (355 of the 405 MB of arrays.npz at 100k
  synthetic items, bench/results/scale.json). Folders saved with the unicode array still load."""
  config = tiny_config(tmp_path, copy=True)
  item_file = os.path.join(config.data.dir, "tiny.item")
  with open(item_file) as f:
    lines = f.read().splitlines()
  header = lines[0].split("\t")
  columns = [header.index(f"{c}:token_seq") if f"{c}:token_seq" in header
             else header.index(f"{c}:token") for c, _ in Settings.parse(config).data.text_fields]
  # One long title: with a fixed width, every item would pay for it.
  first = lines[1].split("\t")
  first[columns[0]] = "long " * 400
  lines[1] = "\t".join(first)
  with open(item_file, "w") as f:
    f.write("\n".join(lines) + "\n")
  expected = {row.split("\t")[0]: [row.split("\t")[c] for c in columns] for row in lines[1:]}

  prepared = prepare_lib.prepare(Settings.parse(config).data, str(tmp_path / "w"), log=quiet)
  text, ds = prepared.dataset.item_text, prepared.dataset
  assert text.dtype == object
  for n in range(1, ds.num_items + 1):
    assert text[n].tolist() == expected[ds.item_ids[n]]
  path = os.path.join(prepared.directory, "arrays.npz")
  with np.load(path) as z:
    arrays = {k: z[k] for k in z.files}
  assert "item_text" not in arrays
  assert arrays["item_text_bytes"].size == sum(len(c.encode()) for c in text.ravel())

  legacy = {k: v for k, v in arrays.items() if not k.startswith("item_text_")}
  legacy["item_text"] = text.astype(str)
  assert legacy["item_text"].itemsize >= 4 * 2000  # the width of the long title, for every cell
  np.savez(path, **legacy)
  again = prepare_lib.load_prepared(prepared.directory).dataset.item_text
  assert again.dtype == object and again.tolist() == text.tolist()
