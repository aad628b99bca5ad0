"""LightGCN against dense NumPy references; one compile; 4 fake devices equal 1 device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from colarec_jax.runtime import sharding
from colarec_jax.cf import lightgcn
from colarec_jax.cf.train import epoch_batches
from colarec_jax.data.sampling import NegativeSampler

U, I = 9, 7


def random_graph(seed=0, n=30):
  rng = np.random.default_rng(seed)
  pairs = {(int(rng.integers(1, U + 1)), int(rng.integers(1, I + 1))) for _ in range(n)}
  users, items = map(np.array, zip(*sorted(pairs)))
  return users, items


def dense_adjacency(users, items):
  """A_hat = D^-1/2 A D^-1/2 over nodes [pad user, users, pad item, items]."""
  n = U + I + 2
  a = np.zeros((n, n))
  a[users, items + U + 1] = 1
  a[items + U + 1, users] = 1
  d = a.sum(1)
  inv = np.where(d > 0, 1 / np.sqrt(np.maximum(d, 1)), 0)
  return inv[:, None] * a * inv[None, :]


@pytest.mark.parametrize("edge_block", [0, 7, 4096])
@pytest.mark.parametrize("layers", [0, 1, 3])
def test_propagation_matches_dense_reference(layers, edge_block):
  users, items = random_graph()
  graph = lightgcn.build_graph(users, items, U, I)
  emb = np.random.default_rng(1).normal(size=(U + I + 2, 4)).astype(np.float32)
  a = dense_adjacency(users, items)
  expected = sum(np.linalg.matrix_power(a, k) @ emb for k in range(layers + 1)) / (layers + 1)
  got = lightgcn.propagate(jnp.asarray(emb), graph, layers, edge_block=edge_block)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("edge_block", [0, 5])
@pytest.mark.parametrize("layers", [1, 3])
def test_propagation_gradient_matches_dense_reference(layers, edge_block):
  # The gradient of sum(W * mean_k A^k E) is mean_k (A^k)^T W; the backward pass assumes A = A^T.
  users, items = random_graph(3)
  graph = lightgcn.build_graph(users, items, U, I)
  rng = np.random.default_rng(4)
  emb = rng.normal(size=(U + I + 2, 4)).astype(np.float32)
  weight = rng.normal(size=emb.shape).astype(np.float32)
  a = dense_adjacency(users, items)
  expected = sum(np.linalg.matrix_power(a, k).T @ weight for k in range(layers + 1)) / (layers + 1)
  got = jax.grad(lambda e: jnp.sum(lightgcn.propagate(e, graph, layers, edge_block=edge_block)
                                   * weight))(
      jnp.asarray(emb))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_graph_padding_for_shards_changes_nothing():
  users, items = random_graph()
  emb = jnp.asarray(np.random.default_rng(1).normal(size=(U + I + 2, 4)), jnp.float32)
  plain = lightgcn.build_graph(users, items, U, I)
  padded = lightgcn.build_graph(users, items, U, I, num_shards=8)
  assert int(padded.n_edge[0]) % 8 == 0 and int(padded.n_edge[0]) >= int(plain.n_edge[0])
  np.testing.assert_allclose(lightgcn.propagate(emb, padded, 2), lightgcn.propagate(emb, plain, 2),
                             rtol=1e-6)


def test_init_is_xavier_uniform_per_table():
  users, items, dim = 2000, 300, 8
  table = np.asarray(lightgcn.init_params(jax.random.key(0), users, items, dim)["embedding"])
  assert table.shape == (users + items + 2, dim)
  for rows in (table[:users + 1], table[users + 1:]):
    bound = np.sqrt(6 / (len(rows) + dim))  # Glorot: U(-b, b), b = sqrt(6 / (fan_in + fan_out))
    assert np.abs(rows).max() <= bound
    assert np.abs(rows).max() > 0.95 * bound
    assert np.var(rows) == pytest.approx(bound ** 2 / 3, rel=0.1)


def test_bpr_loss_matches_numpy():
  rng = np.random.default_rng(2)
  final = rng.normal(size=(U + I + 2, 3)).astype(np.float32)
  layer0 = rng.normal(size=(U + I + 2, 3)).astype(np.float32)
  batch = {"users": np.array([1, 2, 3]), "pos": np.array([1, 2, 3]), "neg": np.array([4, 5, 6]),
           "mask": np.array([1.0, 1.0, 0.0])}
  bpr, reg = lightgcn.bpr_loss(jnp.asarray(final), jnp.asarray(layer0), batch, num_users=U,
                               reg_weight=0.1, total=2)
  u, p, n = batch["users"][:2], batch["pos"][:2] + U + 1, batch["neg"][:2] + U + 1
  diff = (final[u] * (final[p] - final[n])).sum(1)
  assert float(bpr) == pytest.approx(np.mean(np.log1p(np.exp(-diff))), rel=1e-5)
  squares = sum((layer0[ids] ** 2).sum(1) for ids in (u, p, n))
  assert float(reg) == pytest.approx(0.1 * 0.5 * squares.mean(), rel=1e-5)


def make_batches(seed, count, size=8):
  rng = np.random.default_rng(seed)
  users, items = random_graph()
  sampler = NegativeSampler(users, items, I)
  batches = []
  while len(batches) < count:
    batches.extend(epoch_batches(users, items, sampler, size, rng))
  return users, items, batches[:count]


def run_steps(mesh, count=3, edge_block=None):
  cfg = lightgcn.LightGCNConfig(embedding_dim=4, num_layers=2, learning_rate=1e-2,
                                reg_weight=1e-2, batch_size=8)
  users, items, batches = make_batches(0, count)
  graph = lightgcn.place_graph(
      lightgcn.build_graph(users, items, U, I, sharding.num_shards(mesh)), mesh)
  optimizer = lightgcn.make_optimizer(cfg)
  params = sharding.replicate(lightgcn.init_params(jax.random.key(0), U, I, 4), mesh)
  opt_state = sharding.replicate(optimizer.init(params), mesh)
  step = lightgcn.make_train_step(cfg, optimizer, U, mesh, edge_block)
  losses = []
  for batch in batches:
    params, opt_state, metrics = step(params, opt_state, graph, sharding.shard_rows(batch, mesh))
    losses.append(float(metrics["loss"]))
  assert step._cache_size() == 1  # one compile for all batches
  return np.asarray(params["embedding"]), losses


def test_step_compiles_once_and_learns():
  _, losses = run_steps(None, count=40)
  assert all(np.isfinite(losses))
  assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_four_devices_match_one():
  assert jax.device_count() >= 4, "tests expect XLA_FLAGS=--xla_force_host_platform_device_count=4"
  one, losses_one = run_steps(None, edge_block=0)
  four, losses_four = run_steps(sharding.make_mesh(4), edge_block=4)
  np.testing.assert_allclose(four, one, atol=1e-6)
  np.testing.assert_allclose(losses_four, losses_one, rtol=1e-6)


def test_negative_sampler_avoids_training_items():
  users, items = random_graph(n=40)
  sampler = NegativeSampler(users, items, I)
  rng = np.random.default_rng(0)
  query = np.repeat(np.arange(1, U + 1), 200)
  neg = sampler(query, rng)
  seen = set(zip(users.tolist(), items.tolist()))
  assert not any((u, n) in seen for u, n in zip(query.tolist(), neg.tolist()))
  assert neg.min() >= 1 and neg.max() <= I
  # Uniform over the allowed items: every allowed (user, item) pair shows up.
  allowed = {(u, i) for u in range(1, U + 1) for i in range(1, I + 1)} - seen
  assert set(zip(query.tolist(), neg.tolist())) == allowed


def test_epoch_batches_cover_every_row_once():
  users, items = random_graph()
  sampler = NegativeSampler(users, items, I)
  batches = list(epoch_batches(users, items, sampler, 8, np.random.default_rng(3)))
  assert all(len(b["users"]) == 8 for b in batches)
  real = np.concatenate([b["mask"] for b in batches]) > 0
  got = sorted(zip(np.concatenate([b["users"] for b in batches])[real].tolist(),
                   np.concatenate([b["pos"] for b in batches])[real].tolist()))
  assert got == sorted(zip(users.tolist(), items.tolist()))


def test_auto_batch_grows_with_the_rows():
  """cf.batch_size=0: 2048 while 512 steps of it cover the rows, then the next multiple of 2048
  that does, so an epoch stays at most 512 full-graph steps; a set batch is kept."""
  auto = lightgcn.LightGCNConfig(batch_size=0)
  assert lightgcn.batch_size_for(auto, 10) == 2048
  assert lightgcn.batch_size_for(auto, 512 * 2048) == 2048
  assert lightgcn.batch_size_for(auto, 512 * 2048 + 1) == 4096
  for rows in (10**6, 8 * 10**6, 10**8):
    batch = lightgcn.batch_size_for(auto, rows)
    assert batch % 2048 == 0 and -(-rows // batch) <= 512
    assert batch == 2048 or -(-rows // (batch - 2048)) > 512  # the smallest such multiple
  assert lightgcn.batch_size_for(lightgcn.LightGCNConfig(batch_size=64), 10**8) == 64
