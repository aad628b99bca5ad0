"""Training and evaluating the collaborative baselines: LightGCN (BPR, early stopping) and MostPop.

LightGCN's item (and user) embeddings are saved to `<workdir>/lightgcn/` for the GID builder,
with a manifest of what produced them, so a rerun with the same data and config reuses them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from colarec_jax import evaluate, sharding
from colarec_jax.cf import lightgcn
from colarec_jax.data.dataset import TEST, TRAIN, VALID
from colarec_jax.data.fileio import staged_directory
from colarec_jax.data.prepare import Prepared
from colarec_jax.data.sampling import NegativeSampler
from colarec_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """config.eval, checked."""

  ks: tuple[int, ...]
  metric: str
  long_tail_fraction: float
  exclude_valid_at_test: bool
  batch_size: int

  @classmethod
  def from_config(cls, ev) -> "EvalConfig":
    ks = tuple(int(k) for k in ev.ks)
    names = [f"{m}@{k}" for m in ("recall", "ndcg") for k in ks]
    if ev.metric not in names:
      raise ConfigError("eval.metric", f"got {ev.metric!r}, expected one of {', '.join(names)}")
    if not 0 < float(ev.long_tail_fraction) <= 1:
      raise ConfigError("eval.long_tail_fraction", f"got {ev.long_tail_fraction}, expected (0, 1]")
    return cls(ks, ev.metric, float(ev.long_tail_fraction), bool(ev.exclude_valid_at_test),
               int(ev.batch_size))


@dataclasses.dataclass(frozen=True)
class EvalSplit:
  """What evaluating one part needs, built once per run rather than at every validation.

  Attributes:
    users: [m] users with held-out items in the part.
    exclude: items removed from their rankings (training items, plus validation items at test
      time when `exclude_valid_at_test`).
    heldout: the part's items per user.
    train_counts: [num_users + 1] training interactions per user (for the long-tail split).
  """

  users: np.ndarray
  exclude: evaluate.Csr
  heldout: evaluate.Csr
  train_counts: np.ndarray

  @classmethod
  def build(cls, prepared: Prepared, part: int, ev: EvalConfig) -> "EvalSplit":
    seen = (TRAIN,) if part == VALID or not ev.exclude_valid_at_test else (TRAIN, VALID)
    return cls(prepared.users_with(part), prepared.csr(*seen), prepared.csr(part),
               np.bincount(prepared.rows(TRAIN)[0], minlength=prepared.dataset.num_users + 1))


def evaluate_scores(score_fn, split: EvalSplit, num_items: int,
                    ev: EvalConfig) -> evaluate.Report:
  """Full-ranking metrics of a score-based model on one evaluation split."""
  ranked = evaluate.top_k_items(score_fn, split.users, split.exclude, num_items, max(ev.ks),
                                ev.batch_size)
  return evaluate.evaluate_ranking(ranked, split.users, split.heldout, split.train_counts, ev.ks,
                                   ev.long_tail_fraction)


@jax.jit
def _dot_scores(user_emb, item_emb, users):
  return user_emb[users] @ item_emb.T


@jax.jit
def _popularity_scores(counts, users):
  return jnp.broadcast_to(counts, (users.shape[0], counts.shape[0]))


def mostpop(prepared: Prepared, ev: EvalConfig) -> dict[str, evaluate.Report]:
  """MostPop: every user gets the items with the most training interactions."""
  counts = np.bincount(prepared.rows(TRAIN)[1], minlength=prepared.dataset.num_items + 1)
  score_fn = functools.partial(_popularity_scores, jnp.asarray(counts, jnp.float32))
  num_items = prepared.dataset.num_items
  return {part_name: evaluate_scores(score_fn, EvalSplit.build(prepared, part, ev), num_items, ev)
          for part_name, part in (("valid", VALID), ("test", TEST))}


def epoch_batches(users: np.ndarray, items: np.ndarray, sampler: NegativeSampler,
                  batch_size: int, rng: np.random.Generator):
  """Shuffled (user, pos, neg) batches of a fixed size; the last is padded with mask 0."""
  order = rng.permutation(len(users))
  neg = sampler(users[order], rng)
  for start in range(0, len(order), batch_size):
    idx = order[start:start + batch_size]
    n = len(idx)
    pad = lambda a: np.concatenate([a, np.zeros(batch_size - n, a.dtype)]).astype(np.int32)
    yield {"users": pad(users[idx]), "pos": pad(items[idx]), "neg": pad(neg[start:start + n]),
           "mask": (np.arange(batch_size) < n).astype(np.float32)}


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


# Bumped when training changes what the same config produces (2: per-table initialisation).
RESULT_VERSION = 2


def _cache_key(config, prepared: Prepared) -> dict:
  return {"version": RESULT_VERSION, "data": prepared.manifest["key"],
          "cf": json.loads(config.cf.to_json()), "eval": json.loads(config.eval.to_json()),
          "seed": int(config.seed)}


def train_lightgcn(config, prepared: Prepared, workdir: str, *, log=print,
                   progress: bool = True) -> CFResult:
  """Trains LightGCN with BPR and early stopping on validation `config.eval.metric`.

  Reuses `<workdir>/lightgcn/` when it was produced from the same data and config.

  Returns:
    The best epoch's validation and test reports and embeddings.
  """
  out_dir = os.path.join(workdir, "lightgcn")
  key = _cache_key(config, prepared)
  cached = load_result(out_dir, key)
  if cached is not None:
    log(f"reusing LightGCN embeddings in {out_dir}")
    return cached

  cfg = lightgcn.LightGCNConfig.from_config(config.cf)
  ev = EvalConfig.from_config(config.eval)
  # Every process of a multi-process run trains the same LightGCN on its own devices.
  mesh = sharding.make_mesh(int(config.num_devices), local=True)
  shards = sharding.num_shards(mesh)
  if cfg.batch_size % shards:
    raise ConfigError("cf.batch_size", f"got {cfg.batch_size}, expected a multiple of the "
                      f"{shards} devices")
  ds = prepared.dataset
  train_users, train_items = prepared.rows(TRAIN)
  graph = lightgcn.place_graph(
      lightgcn.build_graph(train_users, train_items, ds.num_users, ds.num_items, shards), mesh)
  optimizer = lightgcn.make_optimizer(cfg)
  params = lightgcn.init_params(jax.random.key(int(config.seed)), ds.num_users, ds.num_items,
                                cfg.embedding_dim)
  params = sharding.replicate(params, mesh)
  opt_state = sharding.replicate(optimizer.init(params), mesh)
  step = lightgcn.make_train_step(cfg, optimizer, ds.num_users, mesh)
  sampler = NegativeSampler(train_users, train_items, ds.num_items)
  writer = summary_writer(os.path.join(workdir, "tensorboard", "lightgcn"))
  valid_split = EvalSplit.build(prepared, VALID, ev)

  def score_fn_of(p):
    user_emb, item_emb = lightgcn.final_embeddings(p, graph, num_layers=cfg.num_layers,
                                                   num_users=ds.num_users)
    return functools.partial(_dot_scores, user_emb, item_emb)

  best = (-np.inf, None, -1, None)  # metric, params on host, epoch, valid report
  bad_evals, epoch_seconds, epoch = 0, [], -1
  steps_per_epoch = -(-len(train_users) // cfg.batch_size)
  for epoch in range(int(config.cf.epochs)):
    rng = np.random.default_rng([int(config.seed), epoch])
    start = time.perf_counter()
    sums = {}
    bar = tqdm.tqdm(epoch_batches(train_users, train_items, sampler, cfg.batch_size, rng),
                    total=steps_per_epoch, desc=f"lightgcn epoch {epoch + 1}", leave=False,
                    disable=None if progress else True)
    for batch in bar:
      params, opt_state, metrics = step(params, opt_state, graph,
                                        sharding.shard_rows(batch, mesh))
      for k, v in metrics.items():
        sums[k] = sums.get(k, 0.0) + v
    losses = {k: float(v) / steps_per_epoch for k, v in sums.items()}
    epoch_seconds.append(time.perf_counter() - start)
    if not np.isfinite(losses["loss"]):
      raise ConfigError("cf.learning_rate", f"LightGCN loss became {losses['loss']} in epoch "
                        f"{epoch + 1}; expected a finite loss, try a lower learning rate")
    for k, v in losses.items():
      writer.add_scalar(f"train/{k}", v, epoch + 1)
    if (epoch + 1) % int(config.cf.eval_every):
      continue
    report = evaluate_scores(score_fn_of(params), valid_split, ds.num_items, ev)
    value = report.overall[ev.metric]
    for k, v in report.overall.items():
      writer.add_scalar(f"valid/{k}", v, epoch + 1)
    log(f"lightgcn epoch {epoch + 1}: loss {losses['loss']:.4f} valid {ev.metric} {value:.4f} "
        f"({epoch_seconds[-1]:.1f} s)")
    if value > best[0]:
      best = (value, jax.device_get(params), epoch + 1, report)
      bad_evals = 0
    else:
      bad_evals += 1
      if bad_evals >= int(config.cf.patience):
        break
  writer.close()
  if best[1] is None:
    raise ConfigError("cf.epochs", "no validation ran; expected cf.epochs >= cf.eval_every")
  best_params = sharding.replicate(best[1], mesh)
  test = evaluate_scores(score_fn_of(best_params), EvalSplit.build(prepared, TEST, ev),
                         ds.num_items, ev)
  user_emb, item_emb = jax.device_get(lightgcn.final_embeddings(
      best_params, graph, num_layers=cfg.num_layers, num_users=ds.num_users))
  result = CFResult(valid=best[3], test=test, best_epoch=best[2], epochs_run=epoch + 1,
                    seconds_per_epoch=float(np.mean(epoch_seconds[1:] or epoch_seconds)),
                    user_embeddings=np.asarray(user_emb), item_embeddings=np.asarray(item_emb))
  save_result(out_dir, key, result)
  return result


def summary_writer(path: str):
  """A TensorBoard event writer for `path`."""
  from tensorboardX import SummaryWriter
  return SummaryWriter(path)


def save_result(out_dir: str, key: dict, result: CFResult) -> None:
  """Writes embeddings and a manifest through a temp folder, then renames into place."""
  with staged_directory(out_dir) as staging:
    np.savez(os.path.join(staging, "embeddings.npz"), users=result.user_embeddings,
             items=result.item_embeddings)
    summary = {k: v for k, v in dataclasses.asdict(result).items()
               if k not in ("user_embeddings", "item_embeddings")}
    with open(os.path.join(staging, "manifest.json"), "w") as f:
      json.dump({"key": key, "result": summary}, f, indent=1)


def load_result(out_dir: str, key: dict) -> CFResult | None:
  """The saved result when its manifest key equals `key`, else None."""
  path = os.path.join(out_dir, "manifest.json")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    manifest = json.load(f)
  if manifest["key"] != key:
    return None
  summary = manifest["result"]
  with np.load(os.path.join(out_dir, "embeddings.npz")) as z:
    users, items = z["users"], z["items"]
  report = lambda d: evaluate.Report(**d)
  return CFResult(valid=report(summary["valid"]), test=report(summary["test"]),
                  best_epoch=summary["best_epoch"], epochs_run=summary["epochs_run"],
                  seconds_per_epoch=summary["seconds_per_epoch"], user_embeddings=users,
                  item_embeddings=items)
