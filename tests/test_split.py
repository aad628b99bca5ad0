"""RecBole's ratio split rule, per user, random and temporal."""

import numpy as np
import pytest

from colarec_jax.data.dataset import TEST, TRAIN, VALID
from colarec_jax.data.split import ratio_split, split_counts


@pytest.mark.parametrize("n,expected", [
    (5, (3, 1, 1)), (9, (7, 1, 1)), (10, (8, 1, 1)), (19, (17, 1, 1)), (20, (16, 2, 2)),
    (25, (21, 2, 2)), (30, (24, 3, 3)), (3, (1, 1, 1)), (2, (1, 0, 1)), (1, (1, 0, 0))])
def test_counts_follow_recbole(n, expected):
  assert split_counts(n) == expected


@pytest.mark.parametrize("n", range(1, 60))
def test_counts_formula(n):
  """SPEC: valid = test = floor(0.1 n), raised to 1 when that is 0 (for n >= 3)."""
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
