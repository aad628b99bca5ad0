"""Per-user train/valid/test split with RecBole's ratio rule (SPEC section 2)."""

from __future__ import annotations

import numpy as np

from colarec_jax.data.dataset import TEST, TRAIN, VALID


def split_counts(n: int, ratios=(0.8, 0.1, 0.1)) -> tuple[int, ...]:
  """RecBole's `_calcu_split_ids` rule: how many of a user's n rows go to each part.

  Each non-train part gets floor(ratio * n) rows, raised to 1 when ratio * n is in (0, 1) as long as
  train keeps more than one row; train takes the rest. With (0.8, 0.1, 0.1): 5 <= n < 20 gives
  (n - 2, 1, 1), n = 25 gives (21, 2, 2).
  """
  counts = [int(r * n) for r in ratios]
  counts[0] = n - sum(counts[1:])
  for i in range(1, len(ratios)):
    if counts[0] <= 1:
      break
    if 0 < ratios[-i] * n < 1:
      counts[-i] += 1
      counts[0] -= 1
  return tuple(counts)


def ratio_split(users: np.ndarray, *, ratios=(0.8, 0.1, 0.1), order: str = "random",
                seed: int = 0) -> np.ndarray:
  """Assigns every row to train, valid or test, user by user.

  Args:
    users: [n] user ids, sorted, each user's rows in time order (as `Dataset.users`).
    ratios: train/valid/test fractions.
    order: 'temporal' puts each user's oldest rows in train and newest in test; 'random' shuffles
      each user's rows with `seed` first (rows keep their time order inside each part).
    seed: seed of the shuffle.

  Returns:
    [n] int8 split labels.
  """
  split = np.empty(len(users), np.int8)
  starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(users) else np.array([])
  ends = np.r_[starts[1:], len(users)]
  rng = np.random.default_rng(seed)
  labels = np.array([TRAIN, VALID, TEST], np.int8)
  for start, end in zip(starts, ends):
    n = end - start
    part = np.repeat(labels, split_counts(n, ratios))
    if order == "random":
      part = part[rng.permutation(n)]
    split[start:end] = part
  return split
