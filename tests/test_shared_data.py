"""Each shared dataset prepares with exact counts and the split rule holds for every user."""

import os

import numpy as np
import pytest

from colarec_jax.data import prepare as prepare_lib
from colarec_jax.config.settings import Settings
from colarec_jax.data.dataset import SPLIT_NAMES, TEST, TRAIN, VALID
from colarec_jax.data.split import split_counts
from configs import beauty, default, phones, sports

EXPECTED = {  # users, items, interactions (shared/data/README.md)
    "phones": (27_879, 10_429, 194_439),
    "beauty": (22_363, 12_101, 198_502),
    "sports": (35_598, 18_357, 296_337),
    "ml-100k": (943, 1_682, 100_000),
}


def config_for(name, shared_data):
  if name == "ml-100k":
    config = default.get_config()
    config.data.source = "atomic"  # the shared copy of the embedded files; no download
  else:
    config = {"phones": phones, "beauty": beauty, "sports": sports}[name].get_config()
  config.data.dir = os.path.join(shared_data, name)
  return config


@pytest.fixture(scope="module")
def prepared(shared_data, tmp_path_factory):
  cache = {}

  def get(name):
    if name not in cache:
      workdir = str(tmp_path_factory.mktemp(name))
      cache[name] = prepare_lib.prepare(Settings.parse(config_for(name, shared_data)).data, workdir, log=lambda *_: 0)
    return cache[name]
  return get


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_counts(prepared, name):
  ds = prepared(name).dataset
  assert (ds.num_users, ds.num_items, ds.num_interactions) == EXPECTED[name]
  assert ds.users.min() == 1 and ds.users.max() == ds.num_users
  assert ds.items.min() == 1 and ds.items.max() == ds.num_items
  assert len(np.unique(ds.users.astype(np.int64) * (ds.num_items + 1) + ds.items)) == len(ds.users)


@pytest.mark.parametrize("name", ["beauty", "sports", "ml-100k"])
def test_ratio_split_rule_for_every_user(prepared, name):
  p = prepared(name)
  users, split = p.dataset.users, p.split
  sizes = np.bincount(users)[1:]
  per_split = np.stack([np.bincount(users[split == s], minlength=len(sizes) + 1)[1:]
                        for s in (TRAIN, VALID, TEST)], axis=1)
  expected = np.array([split_counts(int(n)) for n in sizes])
  np.testing.assert_array_equal(per_split, expected)
  assert (per_split[:, 1] >= 1).all() and (per_split[:, 2] >= 1).all()


def read_pairs(path):
  with open(path, encoding="utf-8") as f:
    next(f)
    return sorted(tuple(line.rstrip("\n").split("\t")[:2]) for line in f)


def test_phones_given_split_reproduced_exactly(prepared, shared_data):
  p = prepared("phones")
  ds = p.dataset
  for code, part in enumerate(SPLIT_NAMES):
    mask = p.split == code
    got = sorted(zip(ds.user_ids[ds.users[mask]].tolist(), ds.item_ids[ds.items[mask]].tolist()))
    assert got == read_pairs(os.path.join(shared_data, "phones", f"phones.{part}.inter")), part
  assert [int((p.split == s).sum()) for s in (TRAIN, VALID, TEST)] == [137_277, 28_581, 28_581]
  # The authors' 1-based item ids map to our ids unchanged (.item rows are in id order).
  assert ds.item_ids[1:].tolist() == [str(i) for i in range(1, ds.num_items + 1)]
  assert p.manifest["report"]["cold_item_rows"] == 27  # 11 valid + 16 test rows, kept


def test_phones_content_string_is_official(prepared):
  ds = prepared("phones").dataset
  assert ds.content(1) == ("title Leopard Home Button Sticker for Iphone 4g/4s Ipad2 Ipod "
                           "(At&amp;t Only) Jc064an + Free Screen Protector brand Unknown "
                           "categories Cases Basic Cases")
  assert ds.content(2).startswith("title PowerBear&reg; Samsung Galaxy S4 Battery Case - White "
                                  "(Double Your Power) categories Accessories")  # no brand


def test_ml100k_content_and_time_order(prepared):
  p = prepared("ml-100k")
  ds = p.dataset
  toy_story = int(np.flatnonzero(ds.item_ids == "1")[0])
  assert ds.content(toy_story) == "title Toy Story year 1995 genres Animation Children's Comedy"
  for u in range(1, ds.num_users + 1, 97):
    assert (np.diff(ds.timestamps[ds.users == u]) >= 0).all()
