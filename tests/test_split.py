"""RecBole's ratio split rule, per user, random and temporal."""

import numpy as np
import pytest

from colarec_jax.data.dataset import TEST, TRAIN, VALID, Dataset
from colarec_jax.data.split import hold_out_items, ratio_split, split_counts
from colarec_jax.runtime.errors import ConfigError


@pytest.mark.parametrize("n,expected", [
    (5, (3, 1, 1)), (9, (7, 1, 1)), (10, (8, 1, 1)), (19, (17, 1, 1)), (20, (16, 2, 2)),
    (25, (21, 2, 2)), (30, (24, 3, 3)), (3, (1, 1, 1)), (2, (1, 0, 1)), (1, (1, 0, 0))])
def test_counts_follow_recbole(n, expected):
  assert split_counts(n) == expected


@pytest.mark.parametrize("n", range(1, 60))
def test_counts_formula(n):
  """RecBole's ratio rule: valid = test = floor(0.1 n), raised to 1 when that is 0 (for n >= 3)."""
  if n >= 3:
    k = max(1, int(0.1 * n))
    assert split_counts(n) == (n - 2 * k, k, k)
  assert sum(split_counts(n)) == n


def users_of(sizes):
  return np.repeat(np.arange(1, len(sizes) + 1), sizes)


def test_random_split_per_user_sizes_and_seed():
  sizes = [5, 12, 25, 7, 40]
  users = users_of(sizes)
  a = ratio_split(users, order="random", seed=3)
  b = ratio_split(users, order="random", seed=3)
  c = ratio_split(users, order="random", seed=4)
  np.testing.assert_array_equal(a, b)
  assert (a != c).any()
  for u, n in enumerate(sizes, start=1):
    part = a[users == u]
    assert tuple(int((part == s).sum()) for s in (TRAIN, VALID, TEST)) == split_counts(n)


def test_temporal_split_keeps_newest_for_test():
  users = users_of([5, 25])
  split = ratio_split(users, order="temporal")
  assert split[:5].tolist() == [TRAIN, TRAIN, TRAIN, VALID, TEST]
  assert split[5:].tolist() == [TRAIN] * 21 + [VALID] * 2 + [TEST] * 2


def toy_dataset():
  """6 items, 4 users; item i has text 't<i>'."""
  users = np.array([1, 1, 1, 2, 2, 3, 3, 3, 4, 4], np.int32)
  items = np.array([1, 2, 3, 2, 4, 5, 6, 1, 3, 6], np.int32)
  return Dataset(name="toy", user_ids=np.array(["[PAD]", "a", "b", "c", "d"]),
                 item_ids=np.array(["[PAD]"] + [f"x{i}" for i in range(1, 7)]), users=users,
                 items=items, timestamps=None, split=None, text_fields=("title",),
                 item_text=np.array([[""]] + [[f"t{i}"] for i in range(1, 7)]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hold_out_items_moves_all_their_rows_out(seed):
  ds = toy_dataset()
  split = np.array([TRAIN, VALID, TEST] * 3 + [TRAIN], np.int8)
  warm, warm_split, held = hold_out_items(ds, split, 0.34, seed)  # round(0.34 * 6) = 2 items
  assert len(held) == 2 and warm.num_items == 4
  # Every row survives exactly once: kept rows keep user, item (by raw id) and split label.
  raw = ds.item_ids[ds.items]
  kept = ~np.isin(raw, held.item_ids)
  np.testing.assert_array_equal(warm.item_ids[warm.items], raw[kept])
  np.testing.assert_array_equal(warm.users, ds.users[kept])
  np.testing.assert_array_equal(warm_split, split[kept])
  np.testing.assert_array_equal(held.item_ids[held.items], raw[~kept])
  np.testing.assert_array_equal(held.users, ds.users[~kept])
  # Text follows its item; the user table is unchanged.
  for table, ids in ((warm.item_text[1:], warm.item_ids[1:]), (held.item_text, held.item_ids)):
    assert [t[0] for t in table.tolist()] == [f"t{i[1:]}" for i in ids.tolist()]
  np.testing.assert_array_equal(warm.user_ids, ds.user_ids)
  assert warm.report["held_out_items"] == 2 and warm.report["held_out_rows"] == (~kept).sum()
  again = hold_out_items(ds, split, 0.34, seed)[2]
  np.testing.assert_array_equal(again.item_ids, held.item_ids)


@pytest.mark.parametrize("fraction", [0.01, 0.95])
def test_hold_out_needs_one_item_out_and_one_in(fraction):
  with pytest.raises(ConfigError, match="config.data.cold_item_fraction: got"):
    hold_out_items(toy_dataset(), np.zeros(10, np.int8), fraction, 0)
