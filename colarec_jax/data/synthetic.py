"""Synthetic datasets of any size in the project's atomic-file format, for scale benchmarks.

The shape follows the real sets (`../shared/data/README.md`): item popularity and user activity
are power laws (a Zipf popularity over a random item order; user activity a discrete Pareto with
a minimum of `min_per_user`, so the median user has about 6-7 interactions as on phones and
beauty), every item is interacted with at least once, each user's rows are in time order with
integer timestamps, and item text is a title and a category path drawn from a Zipf vocabulary
with log-normal lengths. Items belong to latent categories and each user leans to one, so the
interactions carry collaborative structure for LightGCN and the GID tree to find, and the text
shares words with it (a category's items share its path words).

Everything is drawn with NumPy from one seed, vectorised over rows (no Python loop per
interaction), so a million items with ten million interactions take about a minute. The files go
through the same reader as real data (`config.data.source='atomic'`):

  python -m colarec_jax.data.synthetic --out=/tmp/synth --items=100000 --seed=0
  colarec-jax --config=configs/default.py --config.data.source=atomic \
      --config.data.dir=/tmp/synth --config.data.name=synthetic ...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

import numpy as np


NAME = "synthetic"
# What `config.data` needs to read a synthetic folder (`configs/synthetic.py` sets these).
TEXT_FIELDS = (("title", "title"), ("categories", "categories"))


@dataclasses.dataclass(frozen=True)
class Shape:
  """The knobs of a synthetic dataset (defaults follow the real sets' shape).

  Attributes:
    num_items: catalogue size; every item gets at least one interaction.
    interactions_per_item: mean interactions per item (so ~num_items * this rows).
    min_per_user: the fewest interactions a user has (the 5-core floor of the real sets).
    activity_exponent: Pareto tail index of user activity (smaller: heavier tail).
    max_per_user: the most interactions a user has.
    popularity_exponent: Zipf exponent of item popularity.
    category_share: the share of a user's picks from their favourite category.
    vocab_size: distinct title words.
    title_words_median: median title length in words (log-normal, sigma 0.5, 1 to 60).
  """

  num_items: int
  interactions_per_item: float = 10.0
  min_per_user: int = 5
  activity_exponent: float = 1.6
  max_per_user: int = 500
  popularity_exponent: float = 0.9
  category_share: float = 0.5
  vocab_size: int = 30_000
  title_words_median: float = 12.0

  def check(self) -> None:
    if self.num_items < 2 * self.min_per_user:
      raise ValueError(f"num_items: got {self.num_items}, expected at least "
                       f"{2 * self.min_per_user} (twice min_per_user)")
    if self.interactions_per_item < 1:
      raise ValueError(f"interactions_per_item: got {self.interactions_per_item}, expected >= 1")
    if not 0 <= self.category_share <= 1:
      raise ValueError(f"category_share: got {self.category_share}, expected in [0, 1]")


@dataclasses.dataclass(frozen=True)
class Synthetic:
  """A generated dataset, 0-based ids.

  Attributes:
    users: [m] int64 user of each row, rows grouped by user, each user's in time order.
    items: [m] int64 item of each row.
    timestamps: [m] int64 seconds.
    titles: [num_items] item titles.
    categories: [num_items] item category paths.
  """

  users: np.ndarray
  items: np.ndarray
  timestamps: np.ndarray
  titles: list[str]
  categories: list[str]

  @property
  def num_users(self) -> int:
    return int(self.users.max()) + 1


def _words(rng: np.random.Generator, count: int) -> np.ndarray:
  """`count` distinct pronounceable lowercase words (syllables of consonant + vowel)."""
  consonants = np.array(list("bcdfghjklmnprstvwz"))
  vowels = np.array(list("aeiou"))
  out, seen = [], set()
  while len(out) < count:
    n = count - len(out)
    syllables = rng.integers(2, 5, n)
    width = 4
    c = consonants[rng.integers(0, len(consonants), (n, width))]
    v = vowels[rng.integers(0, len(vowels), (n, width))]
    for k in range(n):
      word = "".join(c[k, j] + v[k, j] for j in range(syllables[k]))
      if word not in seen:
        seen.add(word)
        out.append(word)
  return np.array(out, dtype=object)


def _zipf_cdf(n: int, exponent: float, offset: float = 1.0) -> np.ndarray:
  weights = (np.arange(n) + offset) ** -exponent
  cdf = np.cumsum(weights)
  return cdf / cdf[-1]


def generate(shape: Shape, seed: int = 0) -> Synthetic:
  """Draws a dataset of `shape` from `seed` (the same seed gives the same dataset)."""
  shape.check()
  rng = np.random.default_rng(seed)
  n_items = shape.num_items
  target = int(round(n_items * shape.interactions_per_item))

  # User activity: a discrete Pareto from min_per_user, capped; users are drawn until the rows
  # reach the target (a mean-sized surplus is drawn at once, the tail cut off).
  cap = min(shape.max_per_user, n_items // 2)
  mean = shape.min_per_user * shape.activity_exponent / (shape.activity_exponent - 1)
  counts = np.empty(0, np.int64)
  while counts.sum() < target:
    u = rng.random(int(target / mean * 1.2) + 16)
    draw = np.floor(shape.min_per_user * u ** (-1 / shape.activity_exponent)).astype(np.int64)
    counts = np.concatenate([counts, np.minimum(draw, cap)])
  counts = counts[:np.searchsorted(np.cumsum(counts), target) + 1]
  n_users = len(counts)
  users = np.repeat(np.arange(n_users), counts)
  m = len(users)

  # Items: a random popularity order, latent categories (about sqrt(n) of them, sizes Zipf too).
  n_categories = max(2, int(np.sqrt(n_items) / 2))
  popularity_rank = rng.permutation(n_items)  # item -> its rank in the popularity order
  pop_cdf = _zipf_cdf(n_items, shape.popularity_exponent, offset=10.0)
  category = np.minimum(np.searchsorted(_zipf_cdf(n_categories, 0.6), rng.random(n_items)),
                        n_categories - 1)
  by_rank = np.argsort(popularity_rank)  # rank -> item
  # Within a category, items weighted by popularity: sort items by (category, rank) and keep a
  # global CDF of their weights, so a category's slice is a contiguous range.
  weights = (popularity_rank + 10.0) ** -shape.popularity_exponent
  order = np.lexsort((popularity_rank, category))
  cum = np.cumsum(weights[order])
  bounds = np.searchsorted(category[order], np.arange(n_categories + 1))
  low = np.where(bounds[:-1] > 0, cum[np.maximum(bounds[:-1] - 1, 0)], 0.0)
  high = cum[np.maximum(bounds[1:] - 1, 0)]
  favourite = category[by_rank[np.minimum(np.searchsorted(pop_cdf, rng.random(n_users)),
                                          n_items - 1)]]

  def draw_items(rows: np.ndarray) -> np.ndarray:
    """Items for row positions `rows`: from the user's favourite category or the whole catalogue,
    popularity-weighted."""
    from_category = rng.random(len(rows)) < shape.category_share
    fav = favourite[users[rows]]
    u = rng.random(len(rows))
    in_cat = order[np.minimum(np.searchsorted(cum, low[fav] + u * (high[fav] - low[fav])),
                              n_items - 1)]
    overall = by_rank[np.minimum(np.searchsorted(pop_cdf, u), n_items - 1)]
    return np.where(from_category, in_cat, overall)

  items = draw_items(np.arange(m))
  # Every item at least once: the first n_items of a random row order take a permutation of all
  # items (m >= n_items because interactions_per_item >= 1).
  cover = rng.permutation(m)[:n_items]
  items[cover] = rng.permutation(n_items)
  covered = np.zeros(m, bool)
  covered[cover] = True
  # A user takes an item once: redraw repeats (never a covering row) until none is left.
  for _ in range(100):
    key = users * n_items + items
    # Rows sorted so that a covering row comes first among its (user, item) repeats.
    sort = np.lexsort((~covered, key))
    dup = np.zeros(m, bool)
    dup[sort[1:]] = key[sort[1:]] == key[sort[:-1]]
    if not dup.any():
      break
    rows = np.flatnonzero(dup)
    items[rows] = draw_items(rows)
  else:
    raise RuntimeError("could not draw distinct items per user in 100 rounds")

  # Time: each user starts anywhere in ~10 years and acts at exponential gaps of ~30 days;
  # rows are already grouped by user, so within-user cumulative gaps give time order.
  start = rng.integers(1_000_000_000, 1_300_000_000, n_users)
  gaps = rng.exponential(30 * 86400, m).astype(np.int64) + 1
  first = np.concatenate([[0], np.cumsum(counts)[:-1]])
  csum = np.cumsum(gaps)
  timestamps = start[users] + csum - (csum[first] - gaps[first])[users]

  # Text: titles of Zipf-drawn words (the category's two words lead, as brands and product types
  # do), a 3-level category path of the category's own words.
  vocab = _words(rng, shape.vocab_size + 4 * n_categories)
  title_vocab, cat_vocab = vocab[:shape.vocab_size], vocab[shape.vocab_size:]
  lengths = np.clip(np.round(rng.lognormal(np.log(shape.title_words_median), 0.5, n_items)),
                    1, 60).astype(np.int64)
  word_cdf = _zipf_cdf(shape.vocab_size, 1.0, offset=2.0)
  picks = title_vocab[np.minimum(np.searchsorted(word_cdf, rng.random(int(lengths.sum()))),
                                 shape.vocab_size - 1)]
  ends = np.cumsum(lengths)
  cat_words = cat_vocab.reshape(n_categories, 4)
  titles, categories = [], []
  for i in range(n_items):
    c = category[i]
    titles.append(" ".join([cat_words[c, 0].capitalize(), cat_words[c, 1],
                            *picks[ends[i] - lengths[i]:ends[i]]]))
    categories.append(" > ".join(["Synthetic", cat_words[c, 2].capitalize(), cat_words[c, 3]]))
  return Synthetic(users=users, items=items, timestamps=timestamps, titles=titles,
                   categories=categories)


def write_atomic(data: Synthetic, directory: str, name: str = NAME) -> dict[str, str]:
  """Writes `<directory>/<name>.inter` (user_id, item_id, timestamp) and `<name>.item` (item_id,
  title, categories); ids are `u<n>` and `i<n>`. Each file is written whole or not at all."""
  os.makedirs(directory, exist_ok=True)
  paths = {"inter": os.path.join(directory, f"{name}.inter"),
           "item": os.path.join(directory, f"{name}.item")}
  inter = "\n".join(["user_id:token\titem_id:token\ttimestamp:float"] + [
      f"u{u}\ti{i}\t{t}" for u, i, t in zip(data.users.tolist(), data.items.tolist(),
                                            data.timestamps.tolist())]) + "\n"
  item = "\n".join(["item_id:token\ttitle:token_seq\tcategories:token_seq"] + [
      f"i{i}\t{t}\t{c}" for i, (t, c) in enumerate(zip(data.titles, data.categories))]) + "\n"
  for key, text in (("inter", inter), ("item", item)):
    staging = paths[key] + ".partial"
    try:
      with open(staging, "w", encoding="utf-8") as f:
        f.write(text)
      os.replace(staging, paths[key])
    finally:
      if os.path.exists(staging):
        os.remove(staging)
  return paths


def describe(data: Synthetic) -> dict:
  """Counts and the shape's percentiles, as the data README reports them for the real sets."""
  per_user = np.bincount(data.users)
  per_item = np.bincount(data.items)
  return {"users": data.num_users, "items": len(data.titles), "interactions": len(data.users),
          "per_user": {"min": int(per_user.min()), "median": float(np.median(per_user)),
                       "max": int(per_user.max())},
          "per_item": {"min": int(per_item.min()), "median": float(np.median(per_item)),
                       "max": int(per_item.max())},
          "top_1pct_item_share": float(np.sort(per_item)[::-1][:max(1, len(per_item) // 100)]
                                       .sum() / len(data.users))}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="folder to write <name>.inter and .item")
  parser.add_argument("--name", default=NAME)
  parser.add_argument("--items", type=int, required=True)
  parser.add_argument("--interactions-per-item", type=float, default=10.0)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  try:
    data = generate(Shape(args.items, interactions_per_item=args.interactions_per_item),
                    args.seed)
  except ValueError as e:
    parser.error(str(e))
  write_atomic(data, args.out, args.name)
  print(json.dumps(describe(data)))


if __name__ == "__main__":
  main()
