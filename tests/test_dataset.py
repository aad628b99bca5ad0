"""The shared builder: ids, time order, filters and the cold-entity policy, against hand values."""

import numpy as np
import pytest

from colarec_jax.data.dataset import (PAD_TOKEN, TEST, TRAIN, VALID, ItemTable, RawInteractions,
                                      build_dataset, content_string, kcore_mask)
from colarec_jax.data.config import parse_text_fields
from colarec_jax.runtime.errors import DataError


def raw(users, items, timestamps=None, ratings=None, split=None, path="x.inter"):
  n = len(users)
  arr = lambda a, dtype: None if a is None else np.asarray(a, dtype)
  return RawInteractions(
      users=np.array(users, object), items=np.array(items, object),
      timestamps=arr(timestamps, float), ratings=arr(ratings, float), split=arr(split, np.int8),
      files=[path], row_file=np.zeros(n, np.int64), row_line=np.arange(2, n + 2))


def test_ids_and_time_order():
  ds = build_dataset("t", raw(["b", "a", "b", "a"], ["y", "x", "x", "z"], [5, 3, 1, 2]), None)
  # Users numbered by first appearance in the file, items likewise (no item file).
  assert ds.user_ids.tolist() == [PAD_TOKEN, "b", "a"]
  assert ds.item_ids.tolist() == [PAD_TOKEN, "y", "x", "z"]
  assert ds.users.tolist() == [1, 1, 2, 2]
  # Inside a user, rows follow the timestamps: b saw x (t=1) before y (t=5).
  assert ds.items.tolist() == [2, 1, 3, 2]
  np.testing.assert_array_equal(ds.timestamps, [1, 5, 2, 3])


def test_file_order_without_timestamps_and_item_file_order():
  items = ItemTable("x.item", ("title",), {"x": ("X",), "y": ("Y",), "w": ("W",)}, ["w", "y", "x"])
  ds = build_dataset("t", raw(["a", "a", "a"], ["y", "x", "y"]), items)
  assert ds.item_ids.tolist() == [PAD_TOKEN, "y", "x"]  # 'w' has no interaction
  assert ds.items.tolist() == [1, 2]  # the repeated (a, y) is dropped, first kept
  assert ds.report["dropped_duplicates"] == 1
  assert ds.content(2) == "title X"
  assert ds.item_text[0].tolist() == [""]


def test_item_without_text_row_names_file_and_line():
  items = ItemTable("x.item", ("title",), {"x": ("X",)}, ["x"])
  with pytest.raises(DataError, match=r"x\.inter:3: item 'q' has no row in the item file x\.item"):
    build_dataset("t", raw(["a", "a"], ["x", "q"]), items)


def test_min_rating_and_empty_after_filtering():
  ds = build_dataset("t", raw(["a", "a", "b"], ["x", "y", "x"], ratings=[4, 2, 5]), None,
                     min_rating=3)
  assert ds.num_interactions == 2 and ds.report["dropped_low_rating"] == 1
  with pytest.raises(DataError, match=r"^t: no interactions left after filtering"):
    build_dataset("t", raw(["a", "b"], ["x", "y"]), None, kcore=2)


def kcore_reference(pairs, k):
  """Brute force: repeatedly delete any pair whose user or item has fewer than k pairs."""
  pairs = list(pairs)
  while True:
    users = {u: sum(p[0] == u for p in pairs) for u, _ in pairs}
    items = {i: sum(p[1] == i for p in pairs) for _, i in pairs}
    kept = [p for p in pairs if users[p[0]] >= k and items[p[1]] >= k]
    if len(kept) == len(pairs):
      return kept
    pairs = kept


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [2, 3, 5])
def test_kcore_matches_brute_force(seed, k):
  rng = np.random.default_rng(seed)
  users = rng.integers(0, 30, 300)
  items = rng.integers(0, 40, 300)
  mask = kcore_mask(users, items, k)
  got = sorted(zip(users[mask].tolist(), items[mask].tolist()))
  assert got == sorted(kcore_reference(zip(users.tolist(), items.tolist()), k))


def given_split():
  return raw(users=["a", "a", "b", "a", "b", "c"], items=["x", "y", "x", "z", "y", "x"],
             split=[TRAIN, TRAIN, TRAIN, VALID, TEST, TEST], path="d.train.inter")


def test_cold_entities_error_by_default():
  with pytest.raises(DataError, match=r"d\.train\.inter:7: test row has user 'c' that never occurs"
                     r" in training \(1 such rows\); set config.data.cold_users='drop'"):
    build_dataset("t", given_split(), None)


def test_cold_entities_dropped_and_counted():
  ds = build_dataset("t", given_split(), None, cold_users="drop", cold_items="drop")
  assert ds.report["dropped_cold_user_rows"] == 1
  assert ds.report["dropped_cold_item_rows"] == 1  # a's valid item z never occurs in training
  assert ds.num_interactions == 4
  assert ds.split.tolist() == [TRAIN, TRAIN, TRAIN, TEST]
  kept = build_dataset("t", given_split(), None, cold_users="drop", cold_items="keep")
  assert kept.report["cold_item_rows"] == 1 and kept.num_interactions == 5
  with pytest.raises(DataError, match=r"valid row has item 'z'.*cold_items='drop'"):
    build_dataset("t", given_split(), None, cold_users="drop", cold_items="error")


def test_an_empty_label_writes_the_value_alone():
  """'content:' in data.text_fields: a column that already holds a whole content string (the
  authors' corpus, --mode=import_official) is written as it is, with no label before it."""
  fields = parse_text_fields("content:,title,class:genres")
  assert fields == (("content", ""), ("title", "title"), ("class", "genres"))
  labels = [label for _, label in fields]
  assert content_string(labels, ["title A brand B", "", "Drama"]) == "title A brand B genres Drama"
  assert content_string(["", "brand"], ["", "Acme"]) == "brand Acme"


def test_quicksort_ties_order_histories_as_the_authors_pandas_sort_does():
  """data.time_ties='quicksort': each user's rows as `df[df.user_id == u].sort_values(['time'])`
  orders them (the authors' get_user_interlist), ties included; 'file' keeps file order."""
  pd = pytest.importorskip("pandas")
  rng = np.random.default_rng(0)
  users, items, times = [], [], []
  for u in range(6):
    n = 40 if u % 2 else 7  # long runs of ties get past NumPy's insertion-sort cutoff
    users += [f"u{u}"] * n
    items += [f"i{u}_{k}" for k in range(n)]
    times += rng.integers(0, 4, n).tolist()  # few distinct times: many ties
  order = rng.permutation(len(users))  # users interleaved in the file
  users, items, times = ([x[i] for i in order] for x in (users, items, times))
  frame = pd.DataFrame({"user_id": users, "item_id": items, "time": times})
  for ties in ("quicksort", "file"):
    ds = build_dataset("t", raw(users, items, times), None, time_ties=ties)
    for n, user in enumerate(ds.user_ids[1:].tolist(), 1):
      ours = ds.item_ids[ds.items[ds.users == n]].tolist()
      if ties == "quicksort":
        theirs = frame[frame["user_id"] == user].sort_values(["time"])["item_id"].tolist()
      else:
        theirs = frame[frame["user_id"] == user].sort_values(["time"], kind="stable")[
            "item_id"].tolist()
      assert ours == theirs, (ties, user)


@pytest.mark.parametrize("with_position", [False, True])
def test_codes_number_ids_by_first_appearance(with_position):
  """`_codes` (one dict pass) against a plain loop: ids numbered in order of first appearance,
  by index or by a distinct position, and the uniques in that order."""
  from colarec_jax.data.dataset import _codes
  rng = np.random.default_rng(5)
  values = np.array([f"id{v}" for v in rng.integers(0, 300, 5000)], dtype=object)
  position = rng.permutation(5000) if with_position else None
  codes, uniques = _codes(values, position)
  order = np.argsort(position) if with_position else np.arange(5000)
  expected, seen = np.empty(5000, np.int64), []
  for row in order:
    if values[row] not in seen:
      seen.append(values[row])
    expected[row] = seen.index(values[row])
  np.testing.assert_array_equal(codes, expected)
  assert uniques.tolist() == seen and uniques.dtype == object
