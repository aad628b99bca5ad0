"""Ranking items with a trained ColaRec: evaluation on a split, and recommendations for a known
user or for an ad-hoc history of items (a new user, no retraining).

Beam search returns `beam_size` items per user, best first; the user's excluded items (training
items, and validation items at test time when configured) are dropped and the first N kept.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from colarec_jax import decode, evaluate, sharding
from colarec_jax.cf.train import EvalConfig, EvalSplit
from colarec_jax.data.dataset import Csr
from colarec_jax.errors import ConfigError
from colarec_jax.inputs import InputBuilder, stack
from colarec_jax.model.colarec import ColaRec


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
  """How ColaRec ranks (config.eval's decoding keys)."""

  beam_size: int = 100  # official 100
  renormalize: bool = False  # official: mask after the log-softmax
  batch_size: int = 32  # users per compiled call

  @classmethod
  def from_config(cls, ev) -> "DecodeConfig":
    out = cls(int(ev.beam_size), bool(ev.renormalize), int(ev.decode_batch_size))
    if out.beam_size < max(ev.ks):
      raise ConfigError("eval.beam_size", f"got {out.beam_size}, expected at least the longest "
                        f"list evaluated (max(eval.ks) = {max(ev.ks)})")
    if out.batch_size < 1:
      raise ConfigError("eval.decode_batch_size", f"got {out.batch_size}, expected >= 1")
    return out


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
               cfg: DecodeConfig, mesh=None):
    """`trie` is `decode.Trie.build(gids, cfg.beam_size, mesh)`."""
    self.model, self.params, self.trie, self.builder, self.cfg, self.mesh = (
        model, params, trie, builder, cfg, mesh)
    shards = sharding.num_shards(mesh)
    self.batch_size = -(-cfg.batch_size // shards) * shards  # whole rows per device

  def ranked(self, inputs: dict, exclude: list[np.ndarray], k: int) -> np.ndarray:
    """[n, k] top items for stacked encoder inputs, excluded items dropped."""
    n = len(inputs["mask"])
    out = np.zeros((n, k), np.int32)
    for start in range(0, n, self.batch_size):
      chunk = {name: v[start:start + self.batch_size] for name, v in inputs.items()}
      size = len(chunk["mask"])
      padded = {name: np.concatenate([v, np.repeat(v[:1], self.batch_size - size, 0)])
                for name, v in chunk.items()}
      items, _, _ = decode.beam_search(
          self.model, self.params, sharding.shard_rows(
              {name: jnp.asarray(v) for name, v in padded.items()}, self.mesh),
          self.trie, beam_size=self.cfg.beam_size, renormalize=self.cfg.renormalize)
      out[start:start + size] = drop_excluded(sharding.to_host(items)[:size],
                                              exclude[start:start + size], k)
    return out

  def evaluate(self, split: EvalSplit, inputs: dict, ev: EvalConfig) -> evaluate.Report:
    """Recall/NDCG of one evaluation split; `inputs` = `self.builder.eval_inputs(split.users)`."""
    exclude = [split.exclude.row(u) for u in split.users]
    ranked = self.ranked(inputs, exclude, max(ev.ks))
    return evaluate.evaluate_ranking(ranked, split.users, split.heldout, split.train_counts,
                                     ev.ks, ev.long_tail_fraction)

  def for_user(self, user: int, exclude: Csr, k: int) -> np.ndarray:
    """[k] items for a known user (internal id) from their most recent training items."""
    inputs = self.builder.eval_inputs(np.asarray([user]))
    return self.ranked(inputs, [exclude.row(user)], k)[0]

  def for_history(self, history: list[int], k: int) -> np.ndarray:
    """[k] items for an ad-hoc history (internal item ids, most recent first), history dropped."""
    inputs = stack([self.builder.rec_input(history[:self.builder.cfg.eval_history])])
    return self.ranked(inputs, [np.asarray(history)], k)[0]
