"""Training and evaluating the collaborative baselines: LightGCN (BPR, early stopping) and MostPop.

LightGCN's item (and user) embeddings are a cached stage in `<workdir>/lightgcn/` (see
`fileio.cached_stage`): a rerun with the same data, config and seed reuses them, and the GID
builder clusters them.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from colarec_jax import evaluate
from colarec_jax.cf import lightgcn
from colarec_jax.data.dataset import TEST, TRAIN, VALID
from colarec_jax.data.fileio import cached_stage
from colarec_jax.data.prepare import Prepared
from colarec_jax.data.sampling import NegativeSampler, shuffled_batches
from colarec_jax.evaluate import EvalConfig, EvalSplit, evaluate_scores
from colarec_jax.runtime import reporting, sharding
from colarec_jax.runtime.errors import ConfigError
from colarec_jax.runtime.progress import Progress

# Bumped when training changes what the same config produces (2: per-table initialisation).
RESULT_VERSION = 2


@jax.jit
def _dot_scores(user_emb, item_emb, users):
  return user_emb[users] @ item_emb.T


def embedding_scores(user_emb, item_emb):
  """LightGCN's score function: [batch] users -> [batch, num_items + 1] dot products."""
  return functools.partial(_dot_scores, jnp.asarray(user_emb), jnp.asarray(item_emb))


def embedding_report(prepared: Prepared, result: "CFResult", part: int,
                     eval_cfg: EvalConfig) -> evaluate.Report:
  """LightGCN's metrics on one part, ranked from its saved embeddings (with per-user values)."""
  score_fn = embedding_scores(result.user_embeddings, result.item_embeddings)
  return evaluate_scores(score_fn, EvalSplit.build(prepared, part, eval_cfg),
                         prepared.dataset.num_items, eval_cfg)


@jax.jit
def _popularity_scores(counts, users):
  return jnp.broadcast_to(counts, (users.shape[0], counts.shape[0]))


def popularity_scores(prepared: Prepared, num_items: int = 0):
  """MostPop's score function: [batch] users -> [batch, num_items + 1] training interaction
  counts (`num_items` beyond the dataset's: items added later, with none)."""
  counts = prepared.item_counts(TRAIN, num_items)
  return functools.partial(_popularity_scores, jnp.asarray(counts, jnp.float32))


def mostpop(prepared: Prepared, eval_cfg: EvalConfig) -> dict[str, evaluate.Report]:
  """MostPop: every user gets the items with the most training interactions."""
  score_fn = popularity_scores(prepared)
  num_items = prepared.dataset.num_items
  return {part_name: evaluate_scores(score_fn, EvalSplit.build(prepared, part, eval_cfg), num_items, eval_cfg)
          for part_name, part in (("valid", VALID), ("test", TEST))}


def epoch_batches(users: np.ndarray, items: np.ndarray, sampler: NegativeSampler,
                  batch_size: int, rng: np.random.Generator):
  """Shuffled (user, pos, neg) batches of a fixed size; the last is padded with mask 0."""
  order, batches = shuffled_batches(len(users), batch_size, rng)
  neg = np.empty(len(users), np.int64)
  neg[order] = sampler(users[order], rng)
  for rows, real in batches:
    yield {"users": users[rows].astype(np.int32), "pos": items[rows].astype(np.int32),
           "neg": neg[rows].astype(np.int32), "mask": real.astype(np.float32)}


@dataclasses.dataclass
class CFResult:
  """What a LightGCN run produced."""

  valid: evaluate.Report
  test: evaluate.Report
  best_epoch: int
  epochs_run: int
  seconds_per_epoch: float
  user_embeddings: np.ndarray  # [num_users + 1, d]
  item_embeddings: np.ndarray  # [num_items + 1, d]


def result_key(data_key: dict, cfg: lightgcn.LightGCNConfig, eval_cfg: EvalConfig,
               seed: int) -> dict:
  """What a LightGCN result depends on (the key of its cached stage, and of GIDs built on it);
  `data_key` is the prepared data's key."""
  return {"version": RESULT_VERSION, "data": data_key,
          "cf": dataclasses.asdict(cfg), "eval": eval_cfg.score_ranking_key(), "seed": seed}


def train_lightgcn(prepared: Prepared, workdir: str, cfg: lightgcn.LightGCNConfig,
                   eval_cfg: EvalConfig, *, seed: int, num_devices: int = 0, log=print,
                   progress: bool = True) -> CFResult:
  """Trains LightGCN with BPR and early stopping on validation `eval_cfg.metric`, or reuses
  `<workdir>/lightgcn/` when it was produced from the same data, config and seed.

  Returns:
    The best epoch's validation and test reports and embeddings.
  """
  def build(staging):
    result = _train(prepared, workdir, cfg, eval_cfg, seed=seed, num_devices=num_devices, log=log,
                    progress=progress)
    np.savez(os.path.join(staging, "embeddings.npz"), users=result.user_embeddings,
             items=result.item_embeddings)
    return {"result": {"valid": result.valid.to_json(), "test": result.test.to_json(),
                       "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
                       "seconds_per_epoch": result.seconds_per_epoch}}

  return cached_stage(os.path.join(workdir, "lightgcn"), result_key(prepared.manifest["key"], cfg, eval_cfg, seed),
                      build, _load_result, what="LightGCN embeddings", log=log)


def _train(prepared: Prepared, workdir: str, cfg: lightgcn.LightGCNConfig, eval_cfg: EvalConfig, *,
           seed: int, num_devices: int, log, progress: bool) -> CFResult:
  # Every process of a multi-process run trains the same LightGCN on its own devices.
  mesh = sharding.make_mesh(num_devices, local=True)
  shards = sharding.num_shards(mesh)
  ds = prepared.dataset
  train_users, train_items = prepared.rows(TRAIN)
  batch_size = lightgcn.batch_size_for(cfg, len(train_users))
  if batch_size % shards:
    raise ConfigError("cf.batch_size", f"got {batch_size}, expected a multiple of the "
                      f"{shards} devices")
  graph = lightgcn.place_graph(
      lightgcn.build_graph(train_users, train_items, ds.num_users, ds.num_items, shards), mesh)
  optimizer = lightgcn.make_optimizer(cfg)
  params = lightgcn.init_params(jax.random.key(seed), ds.num_users, ds.num_items,
                                cfg.embedding_dim)
  params = sharding.replicate(params, mesh)
  opt_state = sharding.replicate(optimizer.init(params), mesh)
  step = lightgcn.make_train_step(cfg, optimizer, ds.num_users, mesh)
  sampler = NegativeSampler(train_users, train_items, ds.num_items)
  writer = reporting.summary_writer(os.path.join(workdir, "tensorboard", "lightgcn"))
  valid_split = EvalSplit.build(prepared, VALID, eval_cfg)

  def score_fn_of(p):
    user_emb, item_emb = lightgcn.final_embeddings(p, graph, num_layers=cfg.num_layers,
                                                   num_users=ds.num_users)
    return embedding_scores(user_emb, item_emb)

  run = Progress()
  best_params, best_report, epoch_seconds = None, None, []
  steps_per_epoch = -(-len(train_users) // batch_size)
  while run.epoch < cfg.epochs and not run.stopped:
    # Each epoch draws from its own generator, so its batches depend on (seed, epoch) only.
    rng = np.random.default_rng([seed, run.epoch])
    start = time.perf_counter()
    sums = {}
    bar = tqdm.tqdm(epoch_batches(train_users, train_items, sampler, batch_size, rng),
                    total=steps_per_epoch, desc=f"lightgcn epoch {run.epoch + 1}", leave=False,
                    disable=None if progress else True)
    # Device metrics are summed on device and fetched once an epoch: no host sync per step.
    for batch in bar:
      params, opt_state, metrics = step(params, opt_state, graph,
                                        sharding.shard_rows(batch, mesh))
      for k, v in metrics.items():
        sums[k] = sums.get(k, 0.0) + v
    run.epoch += 1
    losses = {k: float(v) / steps_per_epoch for k, v in sums.items()}
    epoch_seconds.append(time.perf_counter() - start)
    # A non-finite loss will not recover: stop with the setting to change.
    if not np.isfinite(losses["loss"]):
      raise ConfigError("cf.learning_rate", f"LightGCN loss became {losses['loss']} in epoch "
                        f"{run.epoch}; expected a finite loss, try a lower learning rate")
    for k, v in losses.items():
      writer.add_scalar(f"train/{k}", v, run.epoch)
    if run.epoch % cfg.eval_every:
      continue
    # Validate; keep the best epoch's parameters on the host, stop after `patience` misses.
    report = evaluate_scores(score_fn_of(params), valid_split, ds.num_items, eval_cfg)
    value = report.overall[eval_cfg.metric]
    for k, v in report.overall.items():
      writer.add_scalar(f"valid/{k}", v, run.epoch)
    log(f"lightgcn epoch {run.epoch}: loss {losses['loss']:.4f} valid {eval_cfg.metric} {value:.4f} "
        f"({epoch_seconds[-1]:.1f} s)")
    if run.validated(value, run.epoch, cfg.patience):
      best_params, best_report = jax.device_get(params), report
  writer.close()
  # Test the best epoch, and keep its propagated embeddings for the GIDs.
  best_params = sharding.replicate(best_params, mesh)
  test = evaluate_scores(score_fn_of(best_params), EvalSplit.build(prepared, TEST, eval_cfg),
                         ds.num_items, eval_cfg)
  user_emb, item_emb = jax.device_get(lightgcn.final_embeddings(
      best_params, graph, num_layers=cfg.num_layers, num_users=ds.num_users))
  return CFResult(valid=best_report, test=test, best_epoch=run.best_epoch, epochs_run=run.epoch,
                  seconds_per_epoch=float(np.mean(epoch_seconds[1:] or epoch_seconds)),
                  user_embeddings=np.asarray(user_emb), item_embeddings=np.asarray(item_emb))


def _load_result(directory: str, manifest: dict) -> CFResult:
  summary = manifest["result"]
  with np.load(os.path.join(directory, "embeddings.npz")) as z:
    users, items = z["users"], z["items"]
  report = lambda d: evaluate.Report(**d)
  return CFResult(valid=report(summary["valid"]), test=report(summary["test"]),
                  best_epoch=summary["best_epoch"], epochs_run=summary["epochs_run"],
                  seconds_per_epoch=summary["seconds_per_epoch"], user_embeddings=users,
                  item_embeddings=items)
