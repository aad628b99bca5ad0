"""Ranking items with a trained ColaRec: evaluation on a split, and recommendations for a known
user or for an ad-hoc history of items (a new user, no retraining).

Beam search returns `beam_size` items per user, best first; the user's excluded items (training
items, and validation items at test time when configured) are dropped and the first N kept.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from colarec_jax import decode, evaluate, sharding
from colarec_jax.data.dataset import Csr
from colarec_jax.data.sampling import padded_batches
from colarec_jax.evaluate import EvalConfig, EvalSplit
from colarec_jax.inputs import InputBuilder, stack
from colarec_jax.model.colarec import ColaRec


def drop_excluded(items: np.ndarray, exclude: list[np.ndarray], k: int) -> np.ndarray:
  """The first `k` items of each row that are real (> 0) and not excluded, 0-padded.

  Args:
    items: [n, beam] ranked items.
    exclude: per row, item ids to drop.
    k: list length.

  Returns:
    [n, k] int32.
  """
  out = np.zeros((len(items), k), np.int32)
  for n, (row, drop) in enumerate(zip(items, exclude)):
    kept = row[(row > 0) & ~np.isin(row, drop)][:k]
    out[n, :len(kept)] = kept
  return out


class Ranker:
  """Beam-search ranking with fixed parameters; one compile per (batch, input length)."""

  def __init__(self, model: ColaRec, params, trie: decode.Trie, builder: InputBuilder,
               eval_cfg: EvalConfig, mesh=None):
    """`trie` is `decode.Trie.build(gids, eval_cfg.beam_size, mesh)`: it holds the beam size."""
    self.model, self.params, self.trie, self.builder, self.eval_cfg, self.mesh = (
        model, params, trie, builder, eval_cfg, mesh)
    shards = sharding.num_shards(mesh)
    self.batch_size = -(-eval_cfg.decode_batch_size // shards) * shards  # whole rows per device

  def ranked(self, inputs: dict, exclude: list[np.ndarray], k: int) -> np.ndarray:
    """[n, k] top items for stacked encoder inputs, excluded items dropped."""
    n = len(inputs["mask"])
    out = np.zeros((n, k), np.int32)
    for rows, real in padded_batches(np.arange(n), self.batch_size):
      batch = {name: jnp.asarray(v[rows]) for name, v in inputs.items()}
      if self.eval_cfg.exclude_in_search:
        batch["blocked"] = jnp.asarray(decode.blocked_nodes(
            self.builder.gids, [exclude[r] for r in rows[:real]] + [[]] * (len(rows) - real)))
      batch = sharding.shard_rows(batch, self.mesh)
      blocked = batch.pop("blocked", None)
      items, _, _ = decode.beam_search(self.model, self.params, batch, self.trie,
                                       renormalize=self.eval_cfg.renormalize, blocked=blocked)
      out[rows[:real]] = drop_excluded(sharding.to_host(items)[:real],
                                       [exclude[r] for r in rows[:real]], k)
    return out

  def evaluate(self, split: EvalSplit, inputs: dict) -> evaluate.Report:
    """Recall/NDCG of one evaluation split; `inputs` = `self.builder.eval_inputs(split.users)`."""
    exclude = [split.exclude.row(u) for u in split.users]
    ranked = self.ranked(inputs, exclude, max(self.eval_cfg.ks))
    return evaluate.evaluate_ranking(ranked, split.users, split.heldout, split.train_counts,
                                     self.eval_cfg.ks, self.eval_cfg.long_tail_fraction)

  def for_user(self, user: int, exclude: Csr, k: int) -> np.ndarray:
    """[k] items for a known user (internal id) from their most recent training items."""
    inputs = self.builder.eval_inputs(np.asarray([user]))
    return self.ranked(inputs, [exclude.row(user)], k)[0]

  def for_history(self, history: list[int], k: int) -> np.ndarray:
    """[k] items for an ad-hoc history (internal item ids, most recent first), history dropped."""
    inputs = stack([self.builder.rec_input(history[:self.builder.cfg.eval_history])])
    return self.ranked(inputs, [np.asarray(history)], k)[0]
