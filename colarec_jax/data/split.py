"""Per-user train/valid/test split with RecBole's ratio rule, and the cold-start
protocol's held-out items."""

from __future__ import annotations

import dataclasses

import numpy as np

from colarec_jax.data.dataset import TEST, TRAIN, VALID, Dataset
from colarec_jax.runtime.errors import ConfigError


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


@dataclasses.dataclass(frozen=True)
class HeldOutItems:
  """Items the cold-start protocol held out before training, with all their interactions (which
  are test interactions).

  Attributes:
    item_ids: [m] raw item ids.
    item_text: [m, len(text_fields)] str, the items' text fields.
    users: [r] int32 user ids of their interactions.
    items: [r] int32 row of each interaction's item in this table (0..m-1).
  """

  item_ids: np.ndarray
  item_text: np.ndarray
  users: np.ndarray
  items: np.ndarray

  @classmethod
  def none(cls, num_fields: int) -> HeldOutItems:
    return cls(np.zeros(0, str), np.zeros((0, num_fields), str), np.zeros(0, np.int32),
               np.zeros(0, np.int32))

  def __len__(self) -> int:
    return len(self.item_ids)


def hold_out_items(dataset: Dataset, split: np.ndarray, fraction: float,
                   seed: int) -> tuple[Dataset, np.ndarray, HeldOutItems]:
  """Holds out `fraction` of the items, chosen with `seed`, with all their interactions.

  The rest keeps its split labels and its users (user ids are unchanged, so a user whose every
  interaction was held out stays a user without rows); items are renumbered 1..n' in their order.

  Returns:
    (the dataset without the held-out items, its [n'] split labels, the held-out items).

  Raises:
    ConfigError: the share holds no item, or every item.
  """
  count = round(fraction * dataset.num_items)
  if not 1 <= count < dataset.num_items:
    raise ConfigError("data.cold_item_fraction", f"got {fraction}, which holds out {count} of "
                      f"the {dataset.num_items} items of {dataset.name}; expected at least one "
                      "item held out and one kept")
  rng = np.random.default_rng([seed, 25])  # a stream apart from the split's
  held = np.zeros(dataset.num_items + 1, bool)
  held[rng.choice(np.arange(1, dataset.num_items + 1), count, replace=False)] = True
  held_rows = held[dataset.items]
  renumber = np.cumsum(~held) - 1  # kept items -> 1..n' (item 0 stays 0)
  table_row = np.cumsum(held) - 1  # held-out items -> 0..m-1
  kept_items = np.flatnonzero(~held)
  take = lambda a: None if a is None else a[~held_rows]
  report = dict(dataset.report, held_out_items=count, held_out_rows=int(held_rows.sum()))
  warm = dataclasses.replace(
      dataset, item_ids=dataset.item_ids[kept_items], item_text=dataset.item_text[kept_items],
      users=dataset.users[~held_rows], items=renumber[dataset.items[~held_rows]].astype(np.int32),
      timestamps=take(dataset.timestamps), split=take(dataset.split), report=report)
  cold = HeldOutItems(item_ids=dataset.item_ids[held], item_text=dataset.item_text[held],
                      users=dataset.users[held_rows].astype(np.int32),
                      items=table_row[dataset.items[held_rows]].astype(np.int32))
  return warm, split[~held_rows], cold
