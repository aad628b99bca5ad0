"""Balanced k-means: exact capacities, a NumPy reference of the rounds, nearest-centroid when loose,
determinism, the reported error, one compile."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from colarec_jax.gid import kmeans


@pytest.mark.parametrize("n,k,capacity", [(1, 1, 1), (10, 3, 4), (37, 4, 10), (200, 8, 25),
                                          (200, 8, 40), (513, 32, 17)])
def test_balanced_assign_respects_capacity_exactly(n, k, capacity):
  rng = np.random.default_rng(n + k)
  dist = jnp.asarray(rng.random((k, n)), jnp.float32)
  mask = np.ones(n, bool)
  mask[rng.random(n) < 0.1] = False
  assign = np.asarray(kmeans.balanced_assign(dist, jnp.asarray(mask), capacity))
  assert (assign[~mask] == -1).all()
  assert ((assign[mask] >= 0) & (assign[mask] < k)).all()
  assert np.bincount(assign[mask], minlength=k).max() <= capacity


def test_loose_capacity_is_nearest_centroid():
  dist = jnp.asarray(np.random.default_rng(0).random((5, 50)), jnp.float32)
  assign = kmeans.balanced_assign(dist, jnp.ones(50, bool), capacity=50)
  np.testing.assert_array_equal(assign, np.argmin(np.asarray(dist), 0))


def test_tight_capacity_prefers_closest_points():
  # Three points all nearest to cluster 0 with room for one: the closest one gets it.
  dist = jnp.asarray([[0.3, 5.0], [0.1, 5.0], [0.2, 6.0]], jnp.float32).T
  assign = kmeans.balanced_assign(dist, jnp.ones(3, bool), capacity=2)
  assert np.asarray(assign).tolist() == [1, 0, 0]


def reference_balanced_assign(dist, mask, capacity):
  """The rounds in plain NumPy: [k, n] distances -> [n] clusters."""
  k, n = dist.shape
  assign = np.full(n, -1)
  room = np.full(k, capacity)
  while (mask & (assign < 0)).any():
    todo = np.flatnonzero(mask & (assign < 0))
    open_dist = np.where(room[:, None] > 0, dist[:, todo], np.inf)
    choice = open_dist.argmin(0)
    cost = open_dist[choice, np.arange(len(todo))]
    for cluster in np.unique(choice):
      proposers = todo[choice == cluster]
      by_cost = proposers[np.lexsort((proposers, cost[choice == cluster]))]
      accepted = by_cost[:room[cluster]]
      assign[accepted] = cluster
      room[cluster] -= len(accepted)
  return assign


@pytest.mark.parametrize("n,k,capacity", [(10, 3, 4), (200, 8, 25), (640, 32, 20), (1000, 5, 500)])
def test_balanced_assign_matches_numpy_rounds(n, k, capacity):
  rng = np.random.default_rng(n * k)
  dist = rng.random((2, k, n)).astype(np.float32)  # two problems in one batched call
  mask = rng.random((2, n)) > 0.05
  got = np.asarray(kmeans.balanced_assign(jnp.asarray(dist), jnp.asarray(mask), capacity))
  for b in range(2):
    np.testing.assert_array_equal(got[b], reference_balanced_assign(dist[b], mask[b], capacity))


def test_ranks_within_clusters_break_ties_by_index():
  cluster = jnp.asarray([1, 0, 1, 2, 1, 0, 2], jnp.int32)  # 2 = k: not proposing
  cost = jnp.asarray([0.5, 0.2, 0.5, 9.0, 0.1, 0.3, 9.0], jnp.float32)
  ranks = kmeans._ranks_within_clusters(cluster, cost, 2)
  assert np.asarray(ranks)[[0, 1, 2, 4, 5]].tolist() == [1, 0, 2, 0, 1]


def test_sort_key_limit_is_a_clear_error():
  with pytest.raises(ValueError, match="int32 sort keys"):
    kmeans.check_sizes(2 ** 27, 32)


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
  # New keys and a new capacity (traced) reuse the first call's compile.
  run = lambda seed: kmeans.grouped_balanced_kmeans(jax.random.split(jax.random.key(seed), 4), x,
                                                    mask, k=3, capacity=8 + seed)
  run(0)
  compiled = kmeans._grouped._cache_size()
  for seed in (1, 2):
    run(seed)
  assert kmeans._grouped._cache_size() == compiled


def test_grouped_error_is_the_returned_partitions_error():
  rng = np.random.default_rng(5)
  x = rng.normal(size=(3, 120, 4)).astype(np.float32)
  mask = rng.random((3, 120)) > 0.2
  assign, error = kmeans.grouped_balanced_kmeans(jax.random.split(jax.random.key(1), 3),
                                                 jnp.asarray(x), jnp.asarray(mask), k=5,
                                                 capacity=25, n_init=3)
  assign, error = np.asarray(assign), np.asarray(error)
  for g in range(3):
    a = assign[g][mask[g]]
    assert (assign[g][~mask[g]] == -1).all() and np.bincount(a, minlength=5).max() <= 25
    points = x[g][mask[g]].astype(np.float64)
    sse = sum(((points[a == c] - points[a == c].mean(0)) ** 2).sum() for c in np.unique(a))
    assert error[g] == pytest.approx(sse, rel=1e-4)


def test_non_finite_points_end_instead_of_hanging():
  """One NaN coordinate used to keep the assignment rounds running forever (36 x 16 points).

  Run in a subprocess with a time limit, so a regression fails instead of hanging the suite."""
  import subprocess
  import sys
  code = ("import jax, numpy as np\n"
          "from colarec_jax.gid import kmeans\n"
          "x = np.random.default_rng(0).normal(size=(36, 16)).astype(np.float32)\n"
          "x[5, 3] = np.nan\n"
          "assign, _ = kmeans.balanced_kmeans(jax.random.key(0), x, np.ones(36, bool), k=4,\n"
          "                                   capacity=9, max_iters=5)\n"
          "print(np.asarray(assign).shape)\n")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "(36,)"


def test_gid_builder_refuses_non_finite_embeddings():
  from colarec_jax.gid import builder
  x = np.ones((20, 4), np.float32)
  x[7, 1] = np.inf
  with pytest.raises(ValueError, match=r"GID embeddings must be finite; 1 of 20 rows are not "
                                       r"\(first: row 7, item 8\)"):
    builder.hierarchical_codes(x, branching=4, depth=3, key=jax.random.key(0))
