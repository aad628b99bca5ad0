"""Host-side sampling shared by LightGCN and ColaRec (NumPy): fixed-size batches of rows, in a
shuffled or given order, and uniform negatives."""

from __future__ import annotations

import numpy as np

from colarec_jax.runtime.errors import ConfigError


class NegativeSampler:
  """Uniform negatives among items the user has no training interaction with (and, optionally,
  that pass an extra rule, e.g. ColaRec's "not in the positive's leaf")."""

  def __init__(self, users: np.ndarray, items: np.ndarray, num_items: int):
    self.num_items = num_items
    # Each (user, item) pair as one sorted int64 key: membership is a vectorised searchsorted,
    # with no per-user Python sets.
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
    # Rejection sampling: draw for everyone, then redraw only the rows that hit a positive (or a
    # rejected item); with sparse data a round or two settles every row.
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


def padded_batches(order: np.ndarray, batch_size: int):
  """Fixed-size batches of `order`'s rows; the last is padded by repeating its first row.

  Every batch has the same shape, so a jitted consumer compiles once.

  Yields:
    (rows [batch_size] taken from `order`, real: how many leading rows are not padding).
  """
  for start in range(0, len(order), batch_size):
    rows = order[start:start + batch_size]
    yield np.concatenate([rows, np.repeat(rows[:1], batch_size - len(rows))]), len(rows)


def shuffled_batches(n: int, batch_size: int, rng: np.random.Generator):
  """`padded_batches` over a permutation of range(n), drawn from `rng` now (not lazily), so what
  the caller draws from `rng` next is the same however the batches are consumed.

  Returns:
    (order [n], an iterator of (rows [batch_size], mask [batch_size] bool: True = real row)).
  """
  order = rng.permutation(n)
  return order, ((rows, np.arange(batch_size) < real)
                 for rows, real in padded_batches(order, batch_size))

