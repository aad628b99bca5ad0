"""Hierarchical GIDs and the GID table, checked against brute force over random shapes."""

import itertools

import jax
import numpy as np
import pytest

from colarec_jax.runtime.errors import ConfigError, DataError
from colarec_jax.gid import builder
from colarec_jax.gid.table import GidTable

# (items, K, l): single item, exactly full (4 = 2^2, 64 = 4^3), ragged, deep, paper-sized K.
SHAPES = [(1, 2, 2), (4, 2, 2), (37, 4, 3), (64, 4, 3), (20, 2, 5), (2000, 32, 3)]


def check_tree(codes, branching, depth):
  n = len(codes)
  assert codes.shape == (n, depth) and codes.dtype == np.int32
  assert codes.min() >= 1 and codes.max() <= branching
  assert len({tuple(c) for c in codes.tolist()}) == n  # unique
  for level in range(1, depth):
    _, sizes = np.unique(codes[:, :level], axis=0, return_counts=True)
    assert sizes.max() <= branching ** (depth - level), level


@pytest.mark.parametrize("n,branching,depth", SHAPES)
def test_hierarchical_codes_properties(n, branching, depth):
  x = np.random.default_rng(n).normal(size=(n, 8)).astype(np.float32)
  codes = builder.hierarchical_codes(x, branching=branching, depth=depth,
                                     key=jax.random.key(1), n_init=2, max_iters=20)
  check_tree(codes, branching, depth)
  again = builder.hierarchical_codes(x, branching=branching, depth=depth,
                                     key=jax.random.key(1), n_init=2, max_iters=20)
  np.testing.assert_array_equal(codes, again)


@pytest.mark.parametrize("n,branching,depth", SHAPES)
def test_random_codes_are_a_balanced_tree(n, branching, depth):
  codes = builder.random_codes(n, branching=branching, depth=depth, seed=0)
  check_tree(codes, branching, depth)
  sizes = np.unique(codes[:, 0], return_counts=True)[1]
  assert sizes.max() - sizes.min() <= 1


def test_similar_items_share_prefixes():
  rng = np.random.default_rng(0)
  centers = rng.normal(scale=20, size=(4, 6))
  x = np.concatenate([c + rng.normal(size=(16, 6)) for c in centers]).astype(np.float32)
  codes = builder.hierarchical_codes(x, branching=4, depth=3, key=jax.random.key(0), n_init=3)
  for group in range(4):
    assert len(set(codes[group * 16:(group + 1) * 16, 0].tolist())) == 1


def test_capacity_errors_name_the_key():
  with pytest.raises(ConfigError, match=r"config\.gid\.depth: K\^l = 4\^2 = 16 codes cannot "
                     r"hold 17 items; set gid\.depth=3"):
    builder.check_capacity(17, 4, 2)
  with pytest.raises(ConfigError, match=r"config\.gid\.depth: got 1"):
    builder.check_capacity(3, 4, 1)
  with pytest.raises(ConfigError, match=r"config\.gid\.branching: got 1"):
    builder.check_capacity(3, 1, 3)


def brute_next(codes, prefix, branching):
  mask = np.zeros(branching + 1, bool)
  for gid in codes.tolist():
    if tuple(gid[:len(prefix)]) == tuple(prefix) and len(prefix) < len(gid):
      mask[gid[len(prefix)]] = True
  return mask


@pytest.mark.parametrize("n,branching,depth", [(30, 3, 4), (60, 4, 3), (9, 3, 2)])
def test_table_masks_lookup_and_siblings_match_brute_force(n, branching, depth):
  codes = builder.random_codes(n, branching=branching, depth=depth, seed=n)
  table = GidTable.from_codes(codes, branching)
  for item in range(1, n + 1):
    assert table.item_of(table.codes[item]) == item
  for length in range(depth):
    for prefix in itertools.product(range(1, branching + 1), repeat=length):
      np.testing.assert_array_equal(table.valid_next(prefix), brute_next(codes, prefix, branching))
  full = set(map(tuple, codes.tolist()))
  for gid in itertools.product(range(1, branching + 1), repeat=depth):
    assert (table.item_of(gid) > 0) == (gid in full)
  siblings = table.siblings()
  for item in range(1, n + 1):
    expected = [j + 1 for j in range(n) if (codes[j, :-1] == codes[item - 1, :-1]).all()]
    assert sorted(siblings.row(item).tolist()) == expected
  last = table.last_level_items(np.arange(n + 1))
  assert last.shape == (n + 1, branching + 1) and not last[0].any()
  for item in range(1, n + 1):
    for code in range(branching + 1):
      under = [j + 1 for j in range(n) if (codes[j, :-1] == codes[item - 1, :-1]).all()
               and codes[j, -1] == code]
      assert last[item, code] == (under[0] if under else 0)
  assert table.item_of([0] * depth) == 0 and table.item_of([branching + 1] * depth) == 0


def test_table_save_load_and_bad_codes(tmp_path):
  codes = builder.random_codes(20, branching=3, depth=3, seed=0)
  table = GidTable.from_codes(codes, 3)
  table.save(str(tmp_path / "g.npz"))
  loaded = GidTable.load(str(tmp_path / "g.npz"))
  np.testing.assert_array_equal(loaded.codes, table.codes)
  np.testing.assert_array_equal(loaded.children, table.children)
  dup = codes.copy()
  dup[5] = dup[2]
  with pytest.raises(DataError, match=r"src: items 3 and 6 share the GID"):
    GidTable.from_codes(dup, 3, source="src")
  bad = codes.copy()
  bad[4, 1] = 7
  with pytest.raises(DataError, match=r"src: item 5 has GID \[.*\]; expected codes in 1\.\.3"):
    GidTable.from_codes(bad, 3, source="src")


def _inserted_one_by_one(codes, branching):
  """The reference trie: items inserted in row order, a node created when a prefix is first met."""
  children, node_depth, leaf_item = [[-1] * (branching + 1)], [0], [0]
  parents = [0]
  for item, gid in enumerate(codes.tolist(), start=1):
    node = 0
    for t, code in enumerate(gid):
      if t == len(gid) - 1:
        parents.append(node)
      if children[node][code] < 0:
        children[node][code] = len(children)
        children.append([-1] * (branching + 1))
        node_depth.append(t + 1)
        leaf_item.append(0)
      node = children[node][code]
    leaf_item[node] = item
  return np.array(children), np.array(node_depth), np.array(leaf_item), np.array(parents)


@pytest.mark.parametrize("n,branching,depth", [(1, 32, 3), (40, 2, 6), (500, 4, 5),
                                               (3000, 32, 3), (20, 32, 13)])
def test_table_numbers_nodes_as_inserting_items_in_order(n, branching, depth):
  """The vectorised build gives the trie of inserting the items one by one (the numbering the
  per-item loop it replaced gave, 6.5 s at a million items), including a depth whose prefixes
  exceed an int64 key (K=32, l=13)."""
  rng = np.random.default_rng(n)
  if branching ** depth >= 10 * n:
    codes = np.unique(rng.integers(1, branching + 1, (3 * n, depth)), axis=0)
    codes = codes[rng.permutation(len(codes))[:n]]
  else:
    codes = builder.random_codes(n, branching=branching, depth=depth, seed=n)
  table = GidTable.from_codes(codes, branching)
  children, node_depth, leaf_item, parents = _inserted_one_by_one(codes, branching)
  np.testing.assert_array_equal(table.children, children)
  np.testing.assert_array_equal(table.node_depth, node_depth)
  np.testing.assert_array_equal(table.leaf_item, leaf_item)
  np.testing.assert_array_equal(table.item_leaf_parent, parents)


def test_code_prior_is_each_codes_smoothed_share_of_its_prefixs_interactions():
  """Hand-computed: items [1,1], [1,2], [2,1] (K=2, l=2) with 3, 0 and 5 interactions. At the
  root, code 1 leads to 3 + 0 interactions and code 2 to 5: (3 + 1) / (4 + 6) and 6 / 10. Under
  prefix [1]: (3 + 1) / 5 and (0 + 1) / 5; under [2] only code 1 leads anywhere: 1 (log 0)."""
  table = GidTable.from_codes(np.array([[1, 1], [1, 2], [2, 1]]), 2)
  prior = table.code_prior(np.array([0, 3, 0, 5]))
  assert prior.shape == (len(table.children), 3) and prior.dtype == np.float32
  node = lambda *codes: table.item_paths[table.item_of(codes)][len(codes) - 1]
  np.testing.assert_allclose(np.exp(prior[0, 1:]), [4 / 10, 6 / 10], rtol=1e-6)
  assert (prior[node(1, 1)] == 0).all()  # a leaf chooses no code
  under_1 = table.children[0, 1]
  np.testing.assert_allclose(np.exp(prior[under_1, 1:]), [4 / 5, 1 / 5], rtol=1e-6)
  under_2 = table.children[0, 2]
  np.testing.assert_allclose(prior[under_2], [0, 0, 0], atol=1e-7)  # one child: log 1
  assert (prior[:, 0] == 0).all()  # code 0 leads nowhere
  # Counts shorter than the catalogue (items added later): those items count 0.
  np.testing.assert_allclose(table.code_prior(np.array([0, 3, 0]))[under_1, 1:],
                             np.log([4 / 5, 1 / 5]), rtol=1e-6)
