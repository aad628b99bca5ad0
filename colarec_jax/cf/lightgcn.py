"""LightGCN (He et al., SIGIR 2020) as pure functions over a jraph `GraphsTuple`.

Nodes are users then items, with the padding ids kept as isolated nodes so ids index directly:
user u is node u (0..num_users), item i is node num_users + 1 + i. The training interactions give
edges in both directions, weighted 1 / sqrt(deg(s) deg(r)). A layer is gather + `segment_sum`; the
final embedding is the mean of the layer-0..L embeddings. On a mesh the edges are split over the
`data` axis and each layer's partial sums are combined with `psum`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import jraph
import numpy as np
import optax

from colarec_jax.runtime import sharding
from colarec_jax.runtime.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class LightGCNConfig:
  """config.cf, checked: the model, BPR training, and its early-stopping loop."""

  embedding_dim: int = 64
  num_layers: int = 3
  learning_rate: float = 1e-3
  reg_weight: float = 1e-4
  batch_size: int = 2048  # 0: `batch_size_for` the training rows (AUTO_STEPS steps an epoch)
  epochs: int = 300  # at most; early stopping usually ends sooner
  eval_every: int = 1  # validate every this many epochs
  patience: int = 10  # validations without improvement before stopping

  @classmethod
  def from_config(cls, cf) -> "LightGCNConfig":
    out = cls(embedding_dim=int(cf.embedding_dim), num_layers=int(cf.num_layers),
              learning_rate=float(cf.learning_rate), reg_weight=float(cf.reg_weight),
              batch_size=int(cf.batch_size), epochs=int(cf.epochs), eval_every=int(cf.eval_every),
              patience=int(cf.patience))
    for name in ("embedding_dim", "epochs", "eval_every", "patience"):
      if getattr(out, name) < 1:
        raise ConfigError(f"cf.{name}", f"got {getattr(out, name)}, expected >= 1")
    if out.batch_size < 0:
      raise ConfigError("cf.batch_size", f"got {out.batch_size}, expected >= 1, or 0 for a batch "
                        f"that covers the training rows in at most {AUTO_STEPS} steps")
    if out.num_layers < 0:
      raise ConfigError("cf.num_layers", f"got {out.num_layers}, expected >= 0")
    if out.epochs < out.eval_every:
      raise ConfigError("cf.epochs", f"got {out.epochs}, expected >= cf.eval_every = "
                        f"{out.eval_every} so that validation runs")
    return out


# cf.batch_size=0: an epoch of at most this many steps (see `batch_size_for`).
AUTO_STEPS = 512
AUTO_UNIT = 2048


def batch_size_for(cfg: LightGCNConfig, rows: int) -> int:
  """Examples per LightGCN step: cf.batch_size, or with 0 the smallest multiple of 2048 that
  covers `rows` training rows in at most `AUTO_STEPS` steps (2048 up to ~1M rows).

  Every step propagates over the whole graph, so at a fixed batch an epoch costs
  (rows / batch) x rows: quadratic in the data (2.3 s at 100k interactions, 93 s at 1M,
  bench/results/scale.json). A batch that grows with the rows keeps the epoch linear; what it
  does to the number of epochs LightGCN needs has not been measured here.
  """
  if cfg.batch_size:
    return cfg.batch_size
  return max(1, -(-rows // (AUTO_STEPS * AUTO_UNIT))) * AUTO_UNIT


def build_graph(users: np.ndarray, items: np.ndarray, num_users: int, num_items: int,
                num_shards: int = 1) -> jraph.GraphsTuple:
  """The symmetric-normalised user-item graph of the training interactions.

  Args:
    users: [n] training user ids (1..num_users).
    items: [n] training item ids (1..num_items).
    num_users: number of users.
    num_items: number of items.
    num_shards: pad the edge count to a multiple of this (padding edges have weight 0 and point
      at node 0), so the edges split evenly over a mesh.

  Returns:
    A single-graph `GraphsTuple`: `edges` [E] float32 weights, `senders`/`receivers` [E] int32,
    sorted by receiver; `n_node` = [num_users + num_items + 2].
  """
  num_nodes = num_users + num_items + 2
  item_nodes = items.astype(np.int64) + num_users + 1
  senders = np.concatenate([users, item_nodes]).astype(np.int64)
  receivers = np.concatenate([item_nodes, users]).astype(np.int64)
  degree = np.bincount(receivers, minlength=num_nodes).astype(np.float64)
  weights = 1.0 / np.sqrt(degree[senders] * degree[receivers])
  order = np.argsort(receivers, kind="stable")
  senders, receivers, weights = senders[order], receivers[order], weights[order]
  pad = (-len(senders)) % num_shards
  senders = np.concatenate([senders, np.zeros(pad, np.int64)])
  receivers = np.concatenate([receivers, np.zeros(pad, np.int64)])
  weights = np.concatenate([weights, np.zeros(pad)])
  return jraph.GraphsTuple(
      nodes=None, edges=jnp.asarray(weights, jnp.float32), senders=jnp.asarray(senders, jnp.int32),
      receivers=jnp.asarray(receivers, jnp.int32), globals=None,
      n_node=jnp.asarray([num_nodes]), n_edge=jnp.asarray([len(senders)]))


def place_graph(graph: jraph.GraphsTuple, mesh: jax.sharding.Mesh | None) -> jraph.GraphsTuple:
  """Edges split over the mesh's `data` axis, counts replicated (unchanged without a mesh)."""
  if mesh is None:
    return graph
  edges = sharding.shard_rows((graph.edges, graph.senders, graph.receivers), mesh)
  counts = sharding.replicate((graph.n_node, graph.n_edge), mesh)
  return graph._replace(edges=edges[0], senders=edges[1], receivers=edges[2], n_node=counts[0],
                        n_edge=counts[1])


def init_params(key: jax.Array, num_users: int, num_items: int, dim: int) -> dict:
  """Layer-0 embeddings [num_users + num_items + 2, dim]: the user table (padding row 0 included)
  and the item table, each Xavier-uniform over its own shape, as LightGCN's and RecBole's separate
  tables are. (One Xavier draw over all nodes would start items 40% smaller on beauty.)"""
  user_key, item_key = jax.random.split(key)
  init = jax.nn.initializers.xavier_uniform()
  return {"embedding": jnp.concatenate([init(user_key, (num_users + 1, dim), jnp.float32),
                                        init(item_key, (num_items + 1, dim), jnp.float32)])}


def default_edge_block() -> int:
  """Edges per block of a propagation layer on the default backend.

  On CPU a layer over all edges at once materialises the [E, d] gathered messages (76 MB on
  beauty), and filling fresh pages dominated the step; blocks of 4096 edges stay in cache and made
  the training step 2x faster there. Accelerators take every edge in one block.
  """
  return 4096 if jax.default_backend() == "cpu" else 0


def _edge_blocks(graph: jraph.GraphsTuple, block: int) -> tuple[jax.Array, ...]:
  """(senders, receivers, weights), each [num_blocks, block]; padding edges have weight 0."""
  arrays = (graph.senders, graph.receivers, graph.edges)
  num_edges = arrays[0].shape[0]
  block = min(block, num_edges) if block > 0 else num_edges
  pad = (-num_edges) % block
  # Repeating the last edge keeps sorted receivers sorted; its weight is zeroed.
  arrays = [jnp.pad(a, (0, pad), mode="edge") for a in arrays[:2]] + [jnp.pad(arrays[2], (0, pad))]
  return tuple(a.reshape(-1, block) for a in arrays)


def propagate(embedding: jax.Array, graph: jraph.GraphsTuple, num_layers: int,
              axis_name: str | None = None, edge_block: int | None = None) -> jax.Array:
  """LightGCN propagation: mean of E^0..E^L with E^{l+1} = A_hat E^l.

  A layer gathers the senders' rows and segment-sums them over receivers (a scatter-add),
  `edge_block` edges at a time into one accumulator (a `lax.scan`). The graph must be symmetric, as
  `build_graph`'s is: the backward pass applies A_hat again instead of its transpose, which
  turns the scatter-add of the gather's transpose into the forward's cheaper sorted scatter.

  Args:
    embedding: [num_nodes, dim] layer-0 embeddings.
    graph: the (possibly edge-sharded) symmetric graph.
    num_layers: L.
    axis_name: mesh axis the edges are split over; partial sums are `psum`med across it.
    edge_block: edges per block; None for `default_edge_block()`, 0 for all edges in one block.

  Returns:
    [num_nodes, dim] final embeddings.
  """
  blocks = _edge_blocks(graph, default_edge_block() if edge_block is None else edge_block)

  def apply(x):
    def add_block(acc, block):
      senders, receivers, weights = block
      messages = x[senders] * weights[:, None]
      return acc.at[receivers].add(messages, indices_are_sorted=axis_name is None), None

    out = jax.lax.scan(add_block, _zeros(x, axis_name), blocks)[0]
    return out if axis_name is None else jax.lax.psum(out, axis_name)

  # Sharded, sum_d A_d^T g = A_hat^T g = A_hat g: the psum of each shard's A_d g.
  adjacency = jax.custom_vjp(apply)
  adjacency.defvjp(lambda x: (apply(x), None), lambda _, g: (apply(g),))
  layer, total = embedding, embedding
  for _ in range(num_layers):
    layer = adjacency(layer)
    total = total + layer
  return total / (num_layers + 1)


def _zeros(x: jax.Array, axis_name: str | None) -> jax.Array:
  """An accumulator like x; device-varying under `shard_map` when the edges are split."""
  zeros = jnp.zeros_like(x)
  return zeros if axis_name is None else jax.lax.pcast(zeros, axis_name, to="varying")


def split(final: jax.Array, num_users: int) -> tuple[jax.Array, jax.Array]:
  """(user embeddings [num_users + 1, d], item embeddings [num_items + 1, d]) by id."""
  return final[:num_users + 1], final[num_users + 1:]


def bpr_loss(final: jax.Array, embedding: jax.Array, batch: dict, *, num_users: int,
             reg_weight: float, total: jax.Array | int) -> tuple[jax.Array, jax.Array]:
  """BPR loss plus L2 on the batch's layer-0 embeddings, summed over this batch and divided by
  `total` (the number of real examples in the global batch).

  Args:
    final: [num_nodes, d] propagated embeddings.
    embedding: [num_nodes, d] layer-0 embeddings.
    batch: 'users', 'pos', 'neg' [b] int32 ids and 'mask' [b] float32 (0 for padding rows).
    num_users: offset of item nodes is num_users + 1.
    reg_weight: L2 weight (LightGCN: lambda / 2 * squared norms, per example).
    total: normaliser.

  Returns:
    (bpr part, regulariser part), each a scalar.
  """
  offset = num_users + 1
  u, p, n = batch["users"], batch["pos"] + offset, batch["neg"] + offset
  diff = jnp.sum(final[u] * (final[p] - final[n]), axis=-1)
  bpr = -jnp.sum(jax.nn.log_sigmoid(diff) * batch["mask"]) / total
  squares = sum(jnp.sum(embedding[ids] ** 2, axis=-1) for ids in (u, p, n))
  reg = reg_weight * 0.5 * jnp.sum(squares * batch["mask"]) / total
  return bpr, reg


def make_optimizer(cfg: LightGCNConfig) -> optax.GradientTransformation:
  return optax.adam(cfg.learning_rate)


def make_train_step(cfg: LightGCNConfig, optimizer: optax.GradientTransformation, num_users: int,
                    mesh: jax.sharding.Mesh | None = None, edge_block: int | None = None):
  """A jitted `(params, opt_state, graph, batch) -> (params, opt_state, metrics)`.

  Without a mesh it runs on one device. With a mesh (axis 'data') it is one per-device program
  under `jax.shard_map`: edges and batch rows are split over the axis, parameters replicated,
  layer sums and gradients combined with `psum`. `edge_block` is `propagate`'s.
  """

  def local_step(params, opt_state, graph, batch):
    axis = "data" if mesh is not None else None
    total = jnp.sum(batch["mask"])
    if axis is not None:
      total = jax.lax.psum(total, axis)

    def loss_fn(p):
      final = propagate(p["embedding"], graph, cfg.num_layers, axis, edge_block)
      bpr, reg = bpr_loss(final, p["embedding"], batch, num_users=num_users,
                          reg_weight=cfg.reg_weight, total=total)
      return bpr + reg, (bpr, reg)

    (loss, (bpr, reg)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    if axis is not None:
      loss, bpr, reg = jax.lax.psum((loss, bpr, reg), axis)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, {"loss": loss, "bpr": bpr, "reg": reg}

  if mesh is None:
    return jax.jit(local_step, donate_argnums=(0, 1))
  rep, dat = jax.P(), jax.P("data")
  graph_spec = jraph.GraphsTuple(nodes=None, edges=dat, senders=dat, receivers=dat, globals=None,
                                 n_node=rep, n_edge=rep)
  sharded = jax.shard_map(local_step, mesh=mesh, in_specs=(rep, rep, graph_spec, dat),
                          out_specs=(rep, rep, rep))
  # Outputs keep the inputs' replicated sharding exactly, so step t + 1 hits step t's compile.
  replicated = jax.sharding.NamedSharding(mesh, rep)
  return jax.jit(sharded, donate_argnums=(0, 1), out_shardings=replicated)


@functools.partial(jax.jit, static_argnames=("num_layers", "num_users"))
def final_embeddings(params: dict, graph: jraph.GraphsTuple, *, num_layers: int,
                     num_users: int) -> tuple[jax.Array, jax.Array]:
  """(user [num_users + 1, d], item [num_items + 1, d]) embeddings after propagation."""
  return split(propagate(params["embedding"], graph, num_layers), num_users)
