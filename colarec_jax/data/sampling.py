"""Negative sampling shared by LightGCN's BPR and ColaRec's inputs (host side, NumPy)."""

from __future__ import annotations

import numpy as np

from colarec_jax.errors import ConfigError


class NegativeSampler:
  """Uniform negatives among items the user has no training interaction with (and, optionally,
  that pass an extra rule, e.g. ColaRec's "not in the positive's leaf")."""

  def __init__(self, users: np.ndarray, items: np.ndarray, num_items: int):
    self.num_items = num_items
    self.keys = np.unique(users.astype(np.int64) * (num_items + 1) + items)

  def __call__(self, users: np.ndarray, rng: np.random.Generator,
               reject=None, max_rounds: int = 1000) -> np.ndarray:
    """[n] negatives for `users`.

    Args:
      users: [n] user ids.
      rng: the sampling generator.
      reject: optional `(rows, candidates) -> bool mask` of further candidates to redraw.
      max_rounds: redraw rounds before giving up.

    Raises:
      ConfigError: some user has almost no allowed item left.
    """
    neg = rng.integers(1, self.num_items + 1, len(users))
    bad = np.arange(len(users))
    for _ in range(max_rounds):
      keys = users[bad].astype(np.int64) * (self.num_items + 1) + neg[bad]
      pos = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
      redraw = self.keys[pos] == keys
      if reject is not None:
        redraw |= reject(bad, neg[bad])
      bad = bad[redraw]
      if not len(bad):
        return neg
      neg[bad] = rng.integers(1, self.num_items + 1, len(bad))
    raise ConfigError("data", "could not sample negatives: some user has interacted with nearly "
                      "every item")
