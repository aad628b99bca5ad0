"""The Amazon 2014 and Food.com raw-format readers, on hand-written fixtures in the real formats."""

import gzip
import os
import shutil

import numpy as np
import pytest

from colarec_jax.data.amazon import flatten_categories, load_amazon
from colarec_jax.data.foodcom import load_foodcom
from colarec_jax.runtime.errors import DataError

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
AMAZON = os.path.join(FIXTURES, "amazon")
FOODCOM = os.path.join(FIXTURES, "foodcom")
REVIEWS = "reviews_Toys_5.json.gz"
META = "meta_Toys.json.gz"


# ----------------------------------------------------------------------------------------------
# Amazon 2014


def _gz_lines(name):
  with gzip.open(os.path.join(AMAZON, name), "rt", encoding="utf-8") as f:
    return f.read().splitlines()


def _amazon_copy(tmp_path, reviews=None, meta=None, raw_reviews=None):
  """Fixture copies in tmp_path, with `reviews` / `meta` lines replaced where given."""
  for name, lines in ((REVIEWS, reviews), (META, meta)):
    lines = _gz_lines(name) if lines is None else lines
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    if name == REVIEWS and raw_reviews is not None:
      data = raw_reviews
    (tmp_path / name).write_bytes(gzip.compress(data, mtime=0))
  return str(tmp_path)


def _amazon_error(tmp_path, **kw):
  with pytest.raises(DataError) as e:
    load_amazon(_amazon_copy(tmp_path, **kw), "Toys")
  return e.value


def test_amazon_interactions():
  raw, _ = load_amazon(AMAZON, "Toys")
  a, b, c, d = "A1KLRMWW2FWPL4", "A2G5TCU2WDFZ65", "A1QGNMC6O1VW39", "A3RPJF1FMD7JMB"
  assert raw.users.tolist() == [a, a, b, b, b, c, c, c, d, d]
  assert raw.items.tolist() == ["0000031852", "0000031895", "0000031852", "B00004U9VV",
                                "B000096QNR", "B00004U9VV", "B00000IZJB", "0000031895",
                                "B000096QNR", "B00000IZJB"]
  assert raw.timestamps.dtype == np.float64
  assert raw.timestamps.tolist() == [1297468800, 1297555200, 1358553600, 1358640000, 1358726400,
                                     1293840000, 1293926400, 1294012800, 1325376000, 1325462400]
  assert raw.ratings.tolist() == [5, 4, 3, 5, 2, 4, 1, 5, 3, 4]
  assert raw.split is None
  assert raw.files == [os.path.join(AMAZON, REVIEWS)]
  assert raw.row_file.tolist() == [0] * 10
  assert raw.row_line.tolist() == list(range(1, 11))
  assert raw.where(4) == (os.path.join(AMAZON, REVIEWS), 5)


def test_amazon_item_table():
  _, items = load_amazon(AMAZON, "Toys")
  assert items.path == os.path.join(AMAZON, META)
  assert items.fields == ("title", "brand", "categories")
  assert items.order == ["0000031852", "0000031895", "B00004U9VV", "B000096QNR", "B00000IZJB",
                         "B0000C9Z1A"]
  assert items.text == {
      "0000031852": ("Girls Ballet Tutu Zebra Hot Pink", "Coxlures", "Other Sports Dance"),
      # No brand; HTML entity kept; two paths flattened, shared levels once.
      "0000031895": ("Adult Ballet Tutu Purple &amp; Pink", "",
                     "Dress-Up & Pretend Play Costumes Accessories"),
      "B00004U9VV": ("Melissa & Doug Kid's Easel", "Melissa &amp; Doug", "Arts & Crafts Easels"),
      # Tab / newline / double space collapsed; a root-only path gives no words.
      "B000096QNR": ("LEGO Creator Set 4 in 1", "LEGO", ""),
      "B00000IZJB": ("", "", "Games Card Games Board Games"),
      # In the metadata only (no reviews): still in the table.
      "B0000C9Z1A": ("Duncan Butterfly Yo-Yo", "Duncan", "Novelty & Gag Toys Yo-yos"),
  }


def test_flatten_categories():
  assert flatten_categories([["Beauty", "Makeup", "Face"], ["Beauty", "Makeup", "Eyes"]]) == (
      "Makeup Face Eyes")
  assert flatten_categories([["Beauty"]]) == ""
  assert flatten_categories([]) == ""
  assert flatten_categories(None) == ""


def test_amazon_uncompressed_names(tmp_path):
  for name in (REVIEWS, META):
    with gzip.open(os.path.join(AMAZON, name), "rb") as f:
      (tmp_path / name[:-3]).write_bytes(f.read())
  raw, items = load_amazon(str(tmp_path), "Toys")
  assert raw.files == [str(tmp_path / "reviews_Toys_5.json")]
  assert items.path == str(tmp_path / "meta_Toys.json")
  assert raw.row_line.tolist() == list(range(1, 11))
  assert items.text["0000031895"][2] == "Dress-Up & Pretend Play Costumes Accessories"


def test_amazon_item_without_meta_is_not_an_error(tmp_path):
  meta = [line for line in _gz_lines(META) if "B00000IZJB" not in line]
  raw, items = load_amazon(_amazon_copy(tmp_path, meta=meta), "Toys")
  assert "B00000IZJB" in raw.items.tolist() and "B00000IZJB" not in items.text


def test_amazon_json_meta_line_accepted(tmp_path):
  meta = _gz_lines(META) + ['{"asin": "B0JSON0001", "title": "Kite", "brand": null, '
                            '"categories": [["Toys & Games", "Outdoor Play"]], "x": true}']
  _, items = load_amazon(_amazon_copy(tmp_path, meta=meta), "Toys")
  assert items.text["B0JSON0001"] == ("Kite", "", "Outdoor Play")


@pytest.mark.parametrize("missing", [REVIEWS, META])
def test_amazon_missing_file(tmp_path, missing):
  _amazon_copy(tmp_path)
  os.remove(tmp_path / missing)
  with pytest.raises(DataError) as e:
    load_amazon(str(tmp_path), "Toys")
  assert e.value.path == str(tmp_path / missing)
  assert missing in str(e.value) and "file not found" in str(e.value)


def test_amazon_bad_json(tmp_path):
  lines = _gz_lines(REVIEWS)
  lines[3] = lines[3][:-1]  # drop the closing brace
  err = _amazon_error(tmp_path, reviews=lines)
  assert f"{REVIEWS}:4:" in str(err) and err.line == 4
  assert "not valid JSON" in str(err) and "expected one review object per line" in str(err)


def test_amazon_review_not_an_object(tmp_path):
  lines = _gz_lines(REVIEWS)
  lines[1] = "[1, 2]"
  err = _amazon_error(tmp_path, reviews=lines)
  assert f"{REVIEWS}:2:" in str(err) and "expected one review object" in str(err)


@pytest.mark.parametrize("key", ["reviewerID", "asin"])
def test_amazon_review_missing_id(tmp_path, key):
  lines = _gz_lines(REVIEWS)
  lines[6] = lines[6].replace(f'"{key}"', '"other"')
  err = _amazon_error(tmp_path, reviews=lines)
  assert f"{REVIEWS}:7:" in str(err)
  assert f"{key} missing" in str(err) and "expected a non-empty string" in str(err)


def test_amazon_review_missing_time(tmp_path):
  lines = _gz_lines(REVIEWS)
  lines[8] = lines[8].replace('"unixReviewTime": 1325376000, ', "")
  err = _amazon_error(tmp_path, reviews=lines)
  assert f"{REVIEWS}:9:" in str(err)
  assert "no unixReviewTime" in str(err) and "expected unix seconds" in str(err)


def test_amazon_review_bad_time(tmp_path):
  lines = _gz_lines(REVIEWS)
  lines[2] = lines[2].replace("1358553600", '"yesterday"')
  err = _amazon_error(tmp_path, reviews=lines)
  assert f"{REVIEWS}:3:" in str(err)
  assert "'yesterday' is not a number" in str(err) and "expected unix seconds" in str(err)


def test_amazon_review_bad_rating(tmp_path):
  lines = _gz_lines(REVIEWS)
  lines[9] = lines[9].replace('"overall": 4.0', '"overall": "four"')
  err = _amazon_error(tmp_path, reviews=lines)
  assert f"{REVIEWS}:10:" in str(err)
  assert "overall 'four' is not a number" in str(err) and "expected a rating" in str(err)


def test_amazon_invalid_utf8(tmp_path):
  data = "".join(line + "\n" for line in _gz_lines(REVIEWS)).encode("utf-8")
  lines = data.split(b"\n")
  lines[4] = lines[4].replace(b"Pieces", b"Pi\xffeces")
  err = _amazon_error(tmp_path, raw_reviews=b"\n".join(lines))
  assert f"{REVIEWS}:5:" in str(err)
  assert "invalid UTF-8" in str(err) and "expected UTF-8 text" in str(err)


def test_amazon_corrupt_gzip(tmp_path):
  _amazon_copy(tmp_path)
  data = (tmp_path / REVIEWS).read_bytes()
  (tmp_path / REVIEWS).write_bytes(data[:len(data) // 2])
  with pytest.raises(DataError) as e:
    load_amazon(str(tmp_path), "Toys")
  assert REVIEWS in str(e.value) and "expected a complete .gz file" in str(e.value)


def test_amazon_meta_not_a_literal(tmp_path):
  meta = _gz_lines(META)
  meta[2] = "{'asin': 'B00004U9VV', 'title': }"
  err = _amazon_error(tmp_path, meta=meta)
  assert f"{META}:3:" in str(err)
  assert "not a Python dict literal" in str(err) and "expected one {'asin'" in str(err)


def test_amazon_meta_not_a_dict(tmp_path):
  meta = _gz_lines(META)
  meta[0] = "['0000031852', 'Girls Ballet Tutu']"
  err = _amazon_error(tmp_path, meta=meta)
  assert f"{META}:1:" in str(err) and "holds a list literal" in str(err)
  assert "dict per line" in str(err)


def test_amazon_meta_code_is_not_executed(tmp_path, monkeypatch):
  marker = tmp_path / "pwned"
  calls = []
  monkeypatch.setattr(os, "system", lambda *a: calls.append(a) or 0)
  meta = _gz_lines(META)
  meta[4] = f"__import__('os').system('touch {marker}')"
  err = _amazon_error(tmp_path, meta=meta)
  assert f"{META}:5:" in str(err) and "not a Python dict literal" in str(err)
  assert not calls and not marker.exists()


def test_amazon_meta_missing_asin(tmp_path):
  meta = _gz_lines(META)
  meta[5] = meta[5].replace("'asin': 'B0000C9Z1A', ", "")
  err = _amazon_error(tmp_path, meta=meta)
  assert f"{META}:6:" in str(err)
  assert "asin missing" in str(err) and "expected a non-empty string" in str(err)


def test_amazon_meta_repeated_asin(tmp_path):
  meta = _gz_lines(META)
  meta.append(meta[1])
  err = _amazon_error(tmp_path, meta=meta)
  assert f"{META}:7:" in str(err) and "'0000031895' has a second metadata record" in str(err)


def test_amazon_meta_bad_categories(tmp_path):
  meta = _gz_lines(META)
  meta[3] = meta[3].replace("[['Toys & Games']]", "'Toys & Games'")
  err = _amazon_error(tmp_path, meta=meta)
  assert f"{META}:4:" in str(err)
  assert "not a list of category paths" in str(err) and "expected e.g." in str(err)


# ----------------------------------------------------------------------------------------------
# Food.com

INTERACTIONS = "RAW_interactions.csv"
RECIPES = "RAW_recipes.csv"


def _foodcom_text(name):
  with open(os.path.join(FOODCOM, name), encoding="utf-8", newline="") as f:
    return f.read()


def _foodcom_error(tmp_path, name, old, new, count=1):
  shutil.copy(os.path.join(FOODCOM, INTERACTIONS), tmp_path / INTERACTIONS)
  shutil.copy(os.path.join(FOODCOM, RECIPES), tmp_path / RECIPES)
  text = _foodcom_text(name)
  assert old in text
  (tmp_path / name).write_bytes(text.replace(old, new, count).encode("utf-8"))
  with pytest.raises(DataError) as e:
    load_foodcom(str(tmp_path))
  return e.value


def test_foodcom_interactions():
  raw, _ = load_foodcom(FOODCOM)
  assert raw.users.tolist() == ["38094", "1293707", "8937", "126440", "57222", "124416",
                                "2000192946", "76535", "8937", "38094"]
  assert raw.items.tolist() == ["137739", "137739", "31490", "31490", "112140", "112140",
                                "59389", "59389", "112140", "59389"]
  # Dates as UTC midnight: 2003-02-17, 2011-12-21, 2002-12-01, 2010-02-27, 2011-10-01,
  # 2011-08-06, 2015-05-10, 2005-02-15, 2003-04-15, 2004-01-01.
  assert raw.timestamps.dtype == np.float64
  assert raw.timestamps.tolist() == [1045440000, 1324425600, 1038700800, 1267228800, 1317427200,
                                     1312588800, 1431216000, 1108425600, 1050364800, 1072915200]
  assert raw.ratings.tolist() == [4, 5, 4, 5, 5, 0, 2, 4, 3, 5]
  assert raw.split is None
  assert raw.files == [os.path.join(FOODCOM, INTERACTIONS)]
  assert raw.row_file.tolist() == [0] * 10
  # Records 4 and 5 span 2 and 3 physical lines; each row keeps the line it starts on.
  assert raw.row_line.tolist() == [2, 3, 4, 5, 7, 10, 11, 12, 13, 14]


def test_foodcom_item_table():
  _, items = load_foodcom(FOODCOM)
  assert items.path == os.path.join(FOODCOM, RECIPES)
  assert items.fields == ("name", "description", "tags")
  assert items.order == ["137739", "31490", "112140", "59389", "44061"]
  assert items.text == {
      "137739": ("arriba baked winter squash mexican style",
                 "autumn is my favorite time of year to cook! this recipe can be made either spicy "
                 "or sweet, it's up to you.",
                 "60-minutes-or-less time-to-make course main-ingredient vegetables mexican easy"),
      "31490": ("a bit different breakfast pizza", "",
                "30-minutes-or-less time-to-make breakfast"),
      "112140": ("all in the kitchen chili",
                 "this modified version of \"mom's\" chili was a hit at our 2004 christmas party. "
                 "we made an extra large pot to have some leftover.",
                 "time-to-make course main-ingredient"),
      "59389": ("alouette potatoes",
                "this is a super easy side dish that goes well with almost any meat, fish or "
                "poultry.",
                "60-minutes-or-less cook's-choice easy"),
      "44061": ("amish tomato ketchup for canning",
                "my dh's amish mother raised him on this recipe. he much prefers it over "
                "store-bought ketchup. it was a taste he grew up with.", ""),
  }


@pytest.mark.parametrize("missing", [INTERACTIONS, RECIPES])
def test_foodcom_missing_file(tmp_path, missing):
  for name in (INTERACTIONS, RECIPES):
    if name != missing:
      shutil.copy(os.path.join(FOODCOM, name), tmp_path / name)
  with pytest.raises(DataError) as e:
    load_foodcom(str(tmp_path))
  assert e.value.path == str(tmp_path / missing) and "file not found" in str(e.value)


def test_foodcom_interactions_header_missing_column(tmp_path):
  err = _foodcom_error(tmp_path, INTERACTIONS, "user_id,recipe_id,date,rating,review",
                       "user_id,recipe_id,date,stars,review")
  assert f"{INTERACTIONS}:1:" in str(err) and "no column 'rating'" in str(err)
  assert "expected a header with user_id, recipe_id, date, rating" in str(err)


def test_foodcom_recipes_header_missing_column(tmp_path):
  err = _foodcom_error(tmp_path, RECIPES, "steps,description,", "steps,desc,")
  assert f"{RECIPES}:1:" in str(err) and "no column 'description'" in str(err)


def test_foodcom_bad_date(tmp_path):
  err = _foodcom_error(tmp_path, INTERACTIONS, "124416,112140,2011-08-06",
                       "124416,112140,08/06/2011")
  assert f"{INTERACTIONS}:10:" in str(err)
  assert "date '08/06/2011'" in str(err) and "expected YYYY-MM-DD" in str(err)


def test_foodcom_impossible_date(tmp_path):
  err = _foodcom_error(tmp_path, INTERACTIONS, "2011-10-01", "2011-02-30")
  assert f"{INTERACTIONS}:7:" in str(err) and "expected YYYY-MM-DD" in str(err)


@pytest.mark.parametrize("bad", ["6", "five", "4.5", ""])
def test_foodcom_bad_rating(tmp_path, bad):
  err = _foodcom_error(tmp_path, INTERACTIONS, "76535,59389,2005-02-15,4,",
                       f"76535,59389,2005-02-15,{bad},")
  assert f"{INTERACTIONS}:12:" in str(err)
  assert f"rating {bad!r}" in str(err) and "expected an integer 0-5" in str(err)


def test_foodcom_wrong_width(tmp_path):
  err = _foodcom_error(tmp_path, INTERACTIONS, "Very good!", "Very, good!")
  assert f"{INTERACTIONS}:12:" in str(err) and "record has 6 fields, header has 5" in str(err)


def test_foodcom_unterminated_quote(tmp_path):
  err = _foodcom_error(tmp_path, INTERACTIONS, '"""Delicious"", my husband said."',
                       '"""Delicious"", my husband said.')
  assert f"{INTERACTIONS}:14:" in str(err) and "malformed CSV record" in str(err)


def test_foodcom_empty_user(tmp_path):
  err = _foodcom_error(tmp_path, INTERACTIONS, "2000192946,59389", ",59389")
  assert f"{INTERACTIONS}:11:" in str(err) and "empty user_id, expected an id" in str(err)


def test_foodcom_invalid_utf8(tmp_path):
  shutil.copy(os.path.join(FOODCOM, RECIPES), tmp_path / RECIPES)
  data = _foodcom_text(INTERACTIONS).encode("utf-8").replace(b"Very good!", b"Very g\xc3od!")
  (tmp_path / INTERACTIONS).write_bytes(data)
  with pytest.raises(DataError) as e:
    load_foodcom(str(tmp_path))
  assert f"{INTERACTIONS}:12:" in str(e.value) and "invalid UTF-8 (byte 32 of the line)" in str(
      e.value) and "expected UTF-8 text" in str(e.value)


def test_foodcom_malformed_tags(tmp_path):
  err = _foodcom_error(tmp_path, RECIPES, "'time-to-make', 'breakfast']\"",
                       "'time-to-make', 'breakfast'\"")
  assert f"{RECIPES}:4:" in str(err)
  assert "is not a list literal of strings" in str(err) and "expected e.g." in str(err)


def test_foodcom_tags_code_is_not_executed(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(os, "system", lambda *a: calls.append(a) or 0)
  err = _foodcom_error(tmp_path, RECIPES, "2002-10-25,[],",
                       "2002-10-25,\"__import__('os').system('x')\",")
  assert f"{RECIPES}:7:" in str(err) and "is not a list literal of strings" in str(err)
  assert not calls


def test_foodcom_repeated_recipe(tmp_path):
  err = _foodcom_error(tmp_path, RECIPES, "alouette  potatoes,59389,", "alouette  potatoes,112140,")
  assert f"{RECIPES}:6:" in str(err) and "recipe '112140' has a second row" in str(err)
