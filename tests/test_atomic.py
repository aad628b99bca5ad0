"""RecBole atomic reader: typed headers, exact values, and one clear error per bad input."""

import os

import numpy as np
import pytest

from colarec_jax.data import atomic
from colarec_jax.data.dataset import TEST, TRAIN, VALID
from colarec_jax.runtime.errors import DataError


def write(path, text, mode="w"):
  with open(path, mode) as f:
    f.write(text)
  return str(path)


def test_reads_types_values_and_lines(tmp_path):
  path = write(tmp_path / "d.inter", "user_id:token\titem_id:token\ttimestamp:float\n"
               "u 1\ta\t10\nu2\tb\t\n")
  table = atomic.read_atomic(path)
  assert table.names == ["user_id", "item_id", "timestamp"]
  assert table.types == ["token", "token", "float"]
  raw = atomic.interactions_from_table(table, user_field="user_id", item_field="item_id",
                                       time_field="timestamp", rating_field="")
  assert raw.users.tolist() == ["u 1", "u2"]  # a token may contain spaces
  np.testing.assert_array_equal(raw.timestamps, [10.0, np.nan])
  assert raw.ratings is None
  assert raw.row_line.tolist() == [2, 3]


def test_item_table_keeps_file_order_and_labels(tmp_path):
  path = write(tmp_path / "d.item", "item_id:token\ttitle:token_seq\tbrand:token\n"
               "z\tZ phone\t\na\tA case\tAcme\n")
  items = atomic.item_table_from_atomic(atomic.read_atomic(path), item_field="item_id",
                                        text_fields=[("brand", "maker"), ("title", "title")])
  assert items.order == ["z", "a"]
  assert items.fields == ("maker", "title")
  assert items.text == {"z": ("", "Z phone"), "a": ("Acme", "A case")}


def test_benchmark_files_carry_their_split(tmp_path):
  header = "user_id:token\titem_id:token\n"
  write(tmp_path / "d.train.inter", "user_id:token\titem_id:token\ttimestamp:float\n"
        "u\ta\t1\nu\tb\t2\n")
  write(tmp_path / "d.valid.inter", header + "u\tc\n")
  write(tmp_path / "d.test.inter", header + "u\td\n")
  raw, items = atomic.load_atomic(str(tmp_path), "d", user_field="user_id", item_field="item_id",
                                  time_field="timestamp", rating_field="", text_fields=[])
  assert items is None
  assert raw.split.tolist() == [TRAIN, TRAIN, VALID, TEST]
  np.testing.assert_array_equal(raw.timestamps, [1, 2, np.nan, np.nan])
  assert raw.where(2) == (str(tmp_path / "d.valid.inter"), 2)


BAD = [
    ("missing", None, "d.inter: file not found"),
    ("unknown type", "user_id:token\titem_id:tok\nu\ti\n",
     "d.inter:1: header field 'item_id:tok' has unknown type 'tok'; expected one of token"),
    ("no type", "user_id\titem_id:token\nu\ti\n", "d.inter:1: header field 'user_id' is not"),
    ("wrong width", "user_id:token\titem_id:token\nu\ti\nu\ti\textra\n",
     "d.inter:3: row has 3 fields, header has 2"),
    ("bad timestamp", "user_id:token\titem_id:token\ttimestamp:float\nu\ti\t1\nu\tj\tyesterday\n",
     "d.inter:3: column 'timestamp' (time) holds 'yesterday', expected a number"),
    ("invalid utf-8", b"user_id:token\titem_id:token\nu\ti\n\xff\xfe\tj\n",
     "d.inter:3: invalid UTF-8 (byte 1 of the line)"),
    ("missing column", "user:token\titem_id:token\nu\ti\n",
     "d.inter:1: no column 'user_id' for the user"),
    ("empty id", "user_id:token\titem_id:token\nu\t\n", "d.inter:2: empty item id"),
]


@pytest.mark.parametrize("case,content,message", BAD, ids=[b[0] for b in BAD])
def test_bad_inter_file(tmp_path, case, content, message):
  if content is not None:
    write(tmp_path / "d.inter", content, "wb" if isinstance(content, bytes) else "w")
  with pytest.raises(DataError) as e:
    atomic.load_atomic(str(tmp_path), "d", user_field="user_id", item_field="item_id",
                       time_field="timestamp" if "timestamp" in case else "",
                       rating_field="", text_fields=[])
  assert str(e.value).startswith(f"{tmp_path}/{message}"), str(e.value)


def test_bad_item_file(tmp_path):
  write(tmp_path / "d.inter", "user_id:token\titem_id:token\nu\ti\n")
  write(tmp_path / "d.item", "item_id:token\ttitle:token_seq\ni\tA\ni\tB\n")
  kw = dict(user_field="user_id", item_field="item_id", time_field="", rating_field="")
  with pytest.raises(DataError, match=r"d\.item:3: item 'i' has a second row"):
    atomic.load_atomic(str(tmp_path), "d", text_fields=[("title", "title")], **kw)
  with pytest.raises(DataError, match=r"d\.item:1: no text column 'brand'.*config.data.text_fields"):
    atomic.load_atomic(str(tmp_path), "d", text_fields=[("brand", "brand")], **kw)


def test_one_benchmark_file_missing(tmp_path):
  write(tmp_path / "d.train.inter", "user_id:token\titem_id:token\nu\ti\n")
  write(tmp_path / "d.valid.inter", "user_id:token\titem_id:token\nu\ti\n")
  with pytest.raises(DataError, match=r"d\.test\.inter: file not found .*all three"):
    atomic.load_atomic(str(tmp_path), "d", user_field="user_id", item_field="item_id",
                       time_field="", rating_field="", text_fields=[])


def test_time_column_required_in_single_file(tmp_path):
  write(tmp_path / "d.inter", "user_id:token\titem_id:token\nu\ti\n")
  with pytest.raises(DataError, match=r"d\.inter:1: no column 'timestamp' for the time.*"
                     r"config\.data\.time_field"):
    atomic.load_atomic(str(tmp_path), "d", user_field="user_id", item_field="item_id",
                       time_field="timestamp", rating_field="", text_fields=[])
  assert os.listdir(tmp_path) == ["d.inter"]
