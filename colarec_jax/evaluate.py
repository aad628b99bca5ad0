"""Full-ranking evaluation shared by every model: Recall@N, NDCG@N, long-tail breakdown.

Models hand in either a score function (batched top-k on device, excluded items masked) or ranked
item lists; metrics use binary relevance against each user's whole held-out set, with NDCG's ideal
DCG over min(|held-out|, N) hits, averaged over users that have held-out items. `EvalConfig` is
config.eval (metrics and ColaRec's decoding keys); `EvalSplit` is what evaluating one split needs.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from colarec_jax.data.dataset import TRAIN, VALID, Csr
from colarec_jax.data.prepare import Prepared
from colarec_jax.data.sampling import padded_batches
from colarec_jax.runtime.errors import ConfigError

# An added item's last step: pooled from its trained siblings (decode.unseen_leaves), or the
# decoder's own score of its code ('model').
SIBLING_SCORES = ("sibling_mean", "sibling_max")
NEW_ITEM_SCORES = ("model",) + SIBLING_SCORES
NEW_ITEM_PLACEMENTS = ("indexing", "neighbours")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """config.eval, checked: metrics, model selection, and how ColaRec ranks (beam search)."""

  ks: tuple[int, ...] = (5, 10, 20)
  metric: str = "ndcg@10"  # model selection and early stopping
  long_tail_fraction: float = 0.2
  exclude_valid_at_test: bool = True
  batch_size: int = 1024  # users per scoring call (score-based baselines)
  beam_size: int = 100  # ColaRec's constrained beam search (official 100)
  renormalize: bool = False  # official: mask after the log-softmax
  decode_batch_size: int = 32  # users per beam-search call
  valid_sample: int = 0  # validate on this many users (a fixed sample); 0 = all. Tests use all.
  exclude_in_search: bool = False  # beam search skips excluded items (official: drops them after)
  new_item_score: str = "sibling_mean"  # an added item's last step: sibling_mean|sibling_max|model
  search_width: int = 0  # prefixes kept before the last step (0: beam_size; decode.py)
  encoder_weight: float = 0.0  # the beam's items rescored by + w h(X_u).h(X_i) (ranker.py)
  added_candidates: int = 0  # added items joining each list by h(X_u).h(X_i) (decode.py)
  code_prior: tuple[float, ...] = ()  # w * log P_train(code | prefix), per GID level or for all
  new_item_placement: str = "neighbours"  # an added item's leaf parent (newitems/indexing.py)
  placement_neighbours: int = 10  # trained items voting for it (new_item_placement=neighbours)

  @classmethod
  def from_config(cls, section) -> "EvalConfig":
    out = cls(tuple(int(k) for k in section.ks), str(section.metric),
              float(section.long_tail_fraction), bool(section.exclude_valid_at_test),
              int(section.batch_size), int(section.beam_size), bool(section.renormalize),
              int(section.decode_batch_size), int(section.valid_sample),
              bool(section.exclude_in_search), str(section.new_item_score),
              int(section.search_width), float(section.encoder_weight),
              int(section.added_candidates), _weights(section.code_prior),
              str(section.new_item_placement), int(section.placement_neighbours))
    if out.new_item_placement not in NEW_ITEM_PLACEMENTS:
      raise ConfigError("eval.new_item_placement", f"got {out.new_item_placement!r}, expected one "
                        f"of {', '.join(map(repr, NEW_ITEM_PLACEMENTS))}")
    if out.placement_neighbours < 1:
      raise ConfigError("eval.placement_neighbours", f"got {out.placement_neighbours}, expected "
                        ">= 1")
    if out.new_item_score not in NEW_ITEM_SCORES:
      raise ConfigError("eval.new_item_score", f"got {out.new_item_score!r}, expected one of "
                        f"{', '.join(map(repr, NEW_ITEM_SCORES))}")
    names = [f"{m}@{k}" for m in ("recall", "ndcg") for k in out.ks]
    if out.metric not in names:
      raise ConfigError("eval.metric", f"got {out.metric!r}, expected one of {', '.join(names)}")
    if not 0 < out.long_tail_fraction <= 1:
      raise ConfigError("eval.long_tail_fraction", f"got {section.long_tail_fraction}, expected (0, 1]")
    if out.beam_size < max(out.ks):
      raise ConfigError("eval.beam_size", f"got {out.beam_size}, expected at least the longest "
                        f"list evaluated (max(eval.ks) = {max(out.ks)})")
    if out.decode_batch_size < 1:
      raise ConfigError("eval.decode_batch_size", f"got {out.decode_batch_size}, expected >= 1")
    if out.valid_sample < 0:
      raise ConfigError("eval.valid_sample", f"got {out.valid_sample}, expected >= 0 (0 = all)")
    if out.search_width < 0:
      raise ConfigError("eval.search_width", f"got {out.search_width}, expected >= 0 (0 = the "
                        "beam size)")
    if out.added_candidates < 0:
      raise ConfigError("eval.added_candidates", f"got {out.added_candidates}, expected >= 0 "
                        "(0 = none)")
    if not out.encoder_weight >= 0:
      raise ConfigError("eval.encoder_weight", f"got {section.encoder_weight}, expected >= 0")
    return out

  def score_ranking_key(self) -> dict:
    """The keys a score-based model's reports depend on (not ColaRec's decoding keys)."""
    return {"ks": list(self.ks), "metric": self.metric,
            "long_tail_fraction": self.long_tail_fraction,
            "exclude_valid_at_test": self.exclude_valid_at_test, "valid_sample": self.valid_sample}


def _weights(value) -> tuple[float, ...]:
  """eval.code_prior as floats, each finite and >= 0."""
  try:
    weights = tuple(float(w) for w in value)
  except (TypeError, ValueError):
    weights = None
  if weights is None or not all(0 <= w < float("inf") for w in weights):
    shown = tuple(value) if isinstance(value, (list, tuple)) else value
    raise ConfigError("eval.code_prior", f"got {shown!r}, expected finite weights >= 0: one for "
                      "all GID levels or one per level (() = none)")
  return weights


def ranking_metrics(ranked: np.ndarray, heldout: Sequence[np.ndarray],
                    ks: Sequence[int] = (5, 10, 20)) -> dict[str, np.ndarray]:
  """Per-user Recall@N and NDCG@N.

  Args:
    ranked: [users, >= max(ks)] item ids, best first (0 = no item).
    heldout: per user, the held-out item ids (non-empty).
    ks: cut-offs.

  Returns:
    {'recall@N': [users], 'ndcg@N': [users]} for each N.
  """
  k_max = max(ks)
  hits = np.zeros((len(ranked), k_max), bool)
  sizes = np.zeros(len(ranked))
  for n, (row, truth) in enumerate(zip(ranked, heldout)):
    hits[n] = np.isin(row[:k_max], truth) & (row[:k_max] > 0)
    sizes[n] = len(truth)
  discounts = 1.0 / np.log2(np.arange(2, k_max + 2))
  out = {}
  for k in ks:
    dcg = (hits[:, :k] * discounts[:k]).sum(1)
    ideal = np.cumsum(discounts[:k])[np.minimum(sizes, k).astype(int) - 1]
    out[f"recall@{k}"] = hits[:, :k].sum(1) / sizes
    out[f"ndcg@{k}"] = dcg / ideal
  return out


def long_tail_users(train_counts: np.ndarray, users: np.ndarray, fraction: float = 0.2,
                    threshold: int | None = None) -> tuple[np.ndarray, int]:
  """The users with the fewest training interactions.

  Args:
    train_counts: [num_users + 1] training interactions per user.
    users: the evaluated users.
    fraction: share of evaluated users to call long-tail.
    threshold: a threshold to use instead (a subgroup split as its whole group was).

  Returns:
    (mask over `users`, threshold): a user is long-tail when its count is <= threshold, the count
    of the user at the `fraction` quantile (ties included, so the group can exceed the fraction).
  """
  if threshold is None:
    counts = np.sort(train_counts[users])
    threshold = (int(counts[max(0, int(np.ceil(fraction * len(counts))) - 1)]) if len(counts)
                 else 0)
  return train_counts[users] <= threshold, threshold


# Most scores one call of `top_k_items` holds (2^26: 256 MB of float32, with the exclusion mask's
# 64 MB): 1,024 users against a million items would hold 4 GB of scores, twice over for the masked
# copy (bench/results/scale.json).
MAX_SCORES = 1 << 26


def top_k_items(score_fn: Callable[[np.ndarray], jax.Array], users: np.ndarray, exclude: Csr,
                num_items: int, k: int, batch_size: int = 1024,
                max_scores: int = MAX_SCORES) -> np.ndarray:
  """Top-k items per user by score, excluded items (and padding item 0) never returned.

  Args:
    score_fn: [batch] user ids -> [batch, num_items + 1] scores (a jitted function; the last
      batch is padded to `batch_size` so it compiles once).
    users: [n] user ids.
    exclude: items to drop per user (e.g. training items).
    num_items: number of items.
    k: list length.
    batch_size: users per device call, at most.
    max_scores: fewer users per call when batch_size x (num_items + 1) scores would exceed this.

  Returns:
    [n, k] int32 item ids, best first.
  """
  batch_size = max(1, min(batch_size, max_scores // (num_items + 1)))
  out = np.zeros((len(users), k), np.int32)
  for rows, real in padded_batches(np.arange(len(users)), batch_size):
    batch = users[rows]
    mask = exclude.dense_mask(batch, num_items)
    items = _top_k(score_fn(batch), jnp.asarray(mask), k)
    out[rows[:real]] = np.asarray(items)[:real]
  return out


@functools.partial(jax.jit, static_argnames="k")
def _top_k(scores: jax.Array, mask: jax.Array, k: int) -> jax.Array:
  return jax.lax.top_k(jnp.where(mask, -jnp.inf, scores), k)[1]


@dataclasses.dataclass(frozen=True)
class Report:
  """Averaged metrics overall and on long-tail users.

  Attributes:
    overall: metric name -> mean over evaluated users.
    long_tail: metric name -> mean over long-tail users.
    num_users: evaluated users.
    num_long_tail: long-tail users.
    long_tail_threshold: max training interactions of a long-tail user.
    users: [num_users] the evaluated users (kept in memory, not in `to_json`).
    per_user: metric name -> [num_users] each user's value (for paired tests; not in `to_json`).
  """

  overall: dict[str, float]
  long_tail: dict[str, float]
  num_users: int
  num_long_tail: int
  long_tail_threshold: int
  users: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)
  per_user: dict | None = dataclasses.field(default=None, compare=False, repr=False)

  def to_json(self) -> dict:
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
            if f.name not in ("users", "per_user")}


def evaluate_ranking(ranked: np.ndarray, users: np.ndarray, heldout: Csr,
                     train_counts: np.ndarray, ks: Sequence[int] = (5, 10, 20),
                     long_tail_fraction: float = 0.2,
                     long_tail_threshold: int | None = None) -> Report:
  """Metrics of ranked lists for `users` (all must have held-out items); the long-tail users are
  the `long_tail_fraction` with the fewest training interactions, or those with at most
  `long_tail_threshold` when it is given."""
  per_user = ranking_metrics(ranked, [heldout.row(u) for u in users], ks)
  tail, threshold = long_tail_users(train_counts, users, long_tail_fraction, long_tail_threshold)
  mean = lambda mask: {k: float(v[mask].mean()) if mask.any() else 0.0
                       for k, v in per_user.items()}
  return Report(mean(np.ones(len(users), bool)), mean(tail), len(users), int(tail.sum()),
                threshold, users=np.asarray(users), per_user=per_user)


def format_table(rows: dict[str, Report | str], ks: Sequence[int] = (5, 10, 20)) -> str:
  """One table: a row per model, Recall/NDCG@N overall and on long-tail users; a row given as a
  string (a model that cannot be scored there) prints that string instead of numbers."""
  names = [f"{m}@{k}" for m in ("recall", "ndcg") for k in ks]
  width = max([20] + [len(model) + len(" long-tail") for model in rows])
  header = f"{'model':<{width}} {'users':>6} " + " ".join(f"{n:>9}" for n in names)
  lines = [header, "-" * len(header)]
  for model, report in rows.items():
    if isinstance(report, str):
      lines.append(f"{model:<{width}} {'':>6} {report}")
      continue
    for label, values, count in (("", report.overall, report.num_users),
                                 (" long-tail", report.long_tail, report.num_long_tail)):
      lines.append(f"{(model + label):<{width}} {count:>6} " +
                   " ".join(f"{values[n]:>9.4f}" for n in names))
  scored = [r for r in rows.values() if not isinstance(r, str)]
  if scored:
    first = scored[0]
    lines.append(f"long-tail: users with <= {first.long_tail_threshold} training interactions "
                 f"({first.num_long_tail} of {first.num_users})")
  return "\n".join(lines)


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
  exclude: Csr
  heldout: Csr
  train_counts: np.ndarray

  @classmethod
  def build(cls, prepared: Prepared, part: int, eval_cfg: EvalConfig) -> "EvalSplit":
    """The part's users (the validation users sampled to `eval_cfg.valid_sample`, with a fixed
    seed, when it is set), their exclusions and held-out items."""
    seen = (TRAIN,) if part == VALID or not eval_cfg.exclude_valid_at_test else (TRAIN, VALID)
    users = prepared.users_with(part)
    if part == VALID and 0 < eval_cfg.valid_sample < len(users):
      users = np.sort(np.random.default_rng(0).choice(users, eval_cfg.valid_sample,
                                                      replace=False))
    return cls(users, prepared.csr(*seen), prepared.csr(part),
               np.bincount(prepared.rows(TRAIN)[0], minlength=prepared.dataset.num_users + 1))


def evaluate_scores(score_fn, split: EvalSplit, num_items: int, eval_cfg: EvalConfig) -> Report:
  """Full-ranking metrics of a score-based model on one evaluation split."""
  ranked = top_k_items(score_fn, split.users, split.exclude, num_items, max(eval_cfg.ks), eval_cfg.batch_size)
  return evaluate_ranking(ranked, split.users, split.heldout, split.train_counts, eval_cfg.ks,
                          eval_cfg.long_tail_fraction)

