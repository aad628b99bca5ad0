"""Balanced k-means: exact capacities, nearest-centroid when loose, determinism, one compile."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from colarec_jax.gid import kmeans


@pytest.mark.parametrize("n,k,capacity", [(1, 1, 1), (10, 3, 4), (37, 4, 10), (200, 8, 25),
                                          (200, 8, 40), (513, 32, 17)])
def test_balanced_assign_respects_capacity_exactly(n, k, capacity):
  rng = np.random.default_rng(n + k)
  dist = jnp.asarray(rng.random((n, k)), jnp.float32)
  mask = np.ones(n, bool)
  mask[rng.random(n) < 0.1] = False
  assign = np.asarray(kmeans.balanced_assign(dist, jnp.asarray(mask), capacity))
  assert (assign[~mask] == -1).all()
  assert ((assign[mask] >= 0) & (assign[mask] < k)).all()
  assert np.bincount(assign[mask], minlength=k).max() <= capacity


def test_loose_capacity_is_nearest_centroid():
  dist = jnp.asarray(np.random.default_rng(0).random((50, 5)), jnp.float32)
  assign = kmeans.balanced_assign(dist, jnp.ones(50, bool), capacity=50)
  np.testing.assert_array_equal(assign, np.argmin(np.asarray(dist), 1))


def test_tight_capacity_prefers_closest_points():
  # Three points all nearest to cluster 0 with room for one: the closest one gets it.
  dist = jnp.asarray([[0.3, 5.0], [0.1, 5.0], [0.2, 6.0]], jnp.float32)
  assign = kmeans.balanced_assign(dist, jnp.ones(3, bool), capacity=2)
  assert np.asarray(assign).tolist() == [1, 0, 0]


def blobs(seed, per=30, centers=((0, 0), (10, 0), (0, 10))):
  rng = np.random.default_rng(seed)
  x = np.concatenate([rng.normal(c, 0.5, size=(per, 2)) for c in centers]).astype(np.float32)
  return x, np.repeat(np.arange(len(centers)), per)


def test_recovers_separated_blobs_and_is_deterministic():
  x, truth = blobs(0)
  a1, e1 = kmeans.balanced_kmeans(jax.random.key(3), jnp.asarray(x), jnp.ones(len(x), bool), k=3,
                                  capacity=30, n_init=4)
  a2, e2 = kmeans.balanced_kmeans(jax.random.key(3), jnp.asarray(x), jnp.ones(len(x), bool), k=3,
                                  capacity=30, n_init=4)
  np.testing.assert_array_equal(a1, a2)
  assert float(e1) == float(e2)
  a1 = np.asarray(a1)
  # Same partition as the truth, up to relabelling.
  assert len({(int(t), int(a)) for t, a in zip(truth, a1)}) == 3
  reference = sum(((x[truth == c] - x[truth == c].mean(0)) ** 2).sum() for c in range(3))
  assert float(e1) == pytest.approx(reference, rel=1e-4)


def test_padding_rows_are_ignored():
  x, _ = blobs(1)
  padded = np.concatenate([x, np.full((7, 2), 1e6, np.float32)])
  mask = np.arange(len(padded)) < len(x)
  a, err = kmeans.balanced_kmeans(jax.random.key(0), jnp.asarray(padded), jnp.asarray(mask), k=3,
                                  capacity=30)
  assert (np.asarray(a)[len(x):] == -1).all() and float(err) < 1e4


def test_grouped_call_compiles_once_per_shape():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 20, 3)), jnp.float32)
  mask = jnp.ones((4, 20), bool)
  before = kmeans.grouped_balanced_kmeans._cache_size()
  for seed in range(3):
    kmeans.grouped_balanced_kmeans(jax.random.split(jax.random.key(seed), 4), x, mask, k=3,
                                   capacity=8)
  assert kmeans.grouped_balanced_kmeans._cache_size() == before + 1
