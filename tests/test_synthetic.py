"""The synthetic dataset generator: the promised shape, seeded, and read by the real reader."""

import os
import subprocess
import sys

import numpy as np
import pytest

from colarec_jax.config.settings import Settings
from colarec_jax.data import prepare as prepare_lib
from colarec_jax.data import synthetic
from conftest import REPO
from configs import synthetic as synthetic_config


@pytest.fixture(scope="module")
def data():
  return synthetic.generate(synthetic.Shape(2000), seed=3)


def test_shape_is_as_promised(data):
  per_user = np.bincount(data.users)
  per_item = np.bincount(data.items, minlength=2000)
  assert per_user.min() >= 5 and 6 <= np.median(per_user) <= 8  # the real sets' median is 6
  assert per_item.min() >= 1 and len(per_item) == 2000  # every item interacted with
  assert abs(len(data.users) - 20_000) <= 500  # ~10 interactions per item
  # Power-law popularity: the top 1% of items take far more than 1% of the interactions.
  assert np.sort(per_item)[::-1][:20].sum() / len(data.items) > 0.08
  pairs = data.users * 2000 + data.items
  assert len(np.unique(pairs)) == len(pairs)  # a user takes an item once
  assert (np.diff(data.users) >= 0).all()  # grouped by user ...
  same_user = np.diff(data.users) == 0
  assert (np.diff(data.timestamps)[same_user] > 0).all()  # ... in time order
  words = np.array([len(t.split()) for t in data.titles])
  assert words.min() >= 3 and 10 <= np.median(words) <= 16  # category words + ~12 drawn
  assert all(c.startswith("Synthetic > ") for c in data.categories)


def test_same_seed_same_files_other_seed_other_files(tmp_path, data):
  synthetic.write_atomic(data, str(tmp_path / "a"))
  synthetic.write_atomic(synthetic.generate(synthetic.Shape(2000), seed=3), str(tmp_path / "b"))
  synthetic.write_atomic(synthetic.generate(synthetic.Shape(2000), seed=4), str(tmp_path / "c"))
  for name in ("synthetic.inter", "synthetic.item"):
    a, b, c = ((tmp_path / d / name).read_bytes() for d in "abc")
    assert a == b and a != c
  assert not [f for f in os.listdir(tmp_path / "a") if f.endswith(".partial")]


def test_the_project_reader_reads_it(tmp_path, data):
  """configs/synthetic.py prepares the files like any atomic dataset: the same counts, the
  timestamps ordering each user, both text fields in the content strings, l=3 for 2,000 items."""
  synthetic.write_atomic(data, str(tmp_path / "d"))
  config = synthetic_config.get_config("cpu")
  config.data.dir = str(tmp_path / "d")
  settings = Settings.parse(config)
  prepared = prepare_lib.prepare(settings.data, str(tmp_path / "w"), log=lambda *_: 0)
  ds = prepared.dataset
  assert (ds.num_users, ds.num_items, ds.num_interactions) == (
      data.num_users, 2000, len(data.users))
  assert ds.timestamps is not None
  item = int(np.flatnonzero(ds.item_ids == "i7")[0])
  assert ds.content(item) == f"title {data.titles[7]} categories {data.categories[7]}"
  assert settings.gid.depth == 0 and settings.cf.batch_size == 0


def test_bad_sizes_are_refused_and_write_nothing(tmp_path):
  with pytest.raises(ValueError, match=r"^num_items: got 6, expected at least 10"):
    synthetic.generate(synthetic.Shape(6))
  out = tmp_path / "x"
  result = subprocess.run([sys.executable, "-m", "colarec_jax.data.synthetic", f"--out={out}",
                           "--items=3"], cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 2 and "num_items: got 3, expected at least 10" in result.stderr
  assert not out.exists()
