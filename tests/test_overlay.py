"""The new-items overlay on a GID table: free leaves, their assignment, the file and its checks."""

import os

import numpy as np
import pytest

from colarec_jax.runtime.errors import UsageError
from colarec_jax.gid import overlay
from colarec_jax.gid.table import GidTable

# K = 3, l = 3: leaf parents (1, 1) holds codes 1, 3; (1, 2) holds 1, 2, 3 (full); (2, 1) holds 2.
CODES = np.array([[1, 1, 1], [1, 1, 3], [1, 2, 1], [1, 2, 2], [1, 2, 3], [2, 1, 2]])


def table():
  return GidTable.from_codes(CODES, 3)


def new_items(codes):
  m = len(codes)
  return overlay.NewItems(np.array([f"n{k}" for k in range(m)]), np.full((m, 2), "text"),
                          np.ones((m, 4), np.int32), np.full(m, 4, np.int32),
                          np.asarray(codes, np.int32))


def test_leaf_parents_and_their_free_leaves():
  prefixes, free = overlay.leaf_parents(table())
  assert prefixes.tolist() == [[1, 1], [1, 2], [2, 1]]
  assert free.tolist() == [1, 0, 2]


def test_take_leaves_takes_the_best_parent_with_room_in_row_order():
  free = np.array([1, 0, 2])
  ranked = np.array([[0, 2, -1], [0, 2, -1], [1, -1, -1], [2, 0, 1]])
  # Row 0 takes parent 0's last leaf, row 1 falls back to 2, row 2 finds only a full parent,
  # row 3 takes parent 2's last leaf.
  assert overlay.take_leaves(ranked, free).tolist() == [0, 2, -1, 2]
  assert free.tolist() == [0, 0, 0]


def test_last_codes_are_the_lowest_free_ones():
  codes = overlay.last_codes(table(), np.array([[1, 1], [2, 1], [2, 1]]))
  assert codes.tolist() == [2, 1, 3]
  with pytest.raises(ValueError, match=r"\[1, 2\] has no free leaf"):
    overlay.last_codes(table(), np.array([[1, 2]]))


def test_extend_keeps_trained_gids_and_adds_unique_leaves():
  extended = overlay.extend(table(), np.array([[1, 1, 2], [2, 1, 1]]))
  np.testing.assert_array_equal(extended.codes[:7], table().codes)
  assert extended.item_of([1, 1, 2]) == 7 and extended.item_of([2, 1, 1]) == 8
  assert extended.valid_next([2, 1]).tolist() == [False, True, True, False]


def test_save_load_round_trip_and_append(tmp_path):
  fingerprint = {"data": "a", "gids": "b"}
  assert overlay.NewItems.load(str(tmp_path), fingerprint) is None
  first = new_items([[1, 1, 2]])
  first.save(str(tmp_path), fingerprint)
  both = overlay.NewItems.load(str(tmp_path), fingerprint) + new_items([[2, 1, 1]])
  both.save(str(tmp_path), fingerprint)
  loaded = overlay.NewItems.load(str(tmp_path), fingerprint)
  assert loaded.item_ids.tolist() == ["n0", "n0"] and loaded.codes.tolist() == [[1, 1, 2],
                                                                                 [2, 1, 1]]
  assert os.listdir(tmp_path) == [overlay.FILE]  # the staging file was renamed into place


def test_load_refuses_an_overlay_of_other_gids(tmp_path):
  new_items([[1, 1, 2]]).save(str(tmp_path), {"data": "a", "gids": "b"})
  with pytest.raises(UsageError, match="indexed on other prepared data or GIDs"):
    overlay.NewItems.load(str(tmp_path), {"data": "a", "gids": "c"})
  (tmp_path / overlay.FILE).write_bytes(b"not an npz")
  with pytest.raises(UsageError, match="is unreadable"):
    overlay.NewItems.load(str(tmp_path), {"data": "a", "gids": "b"})
