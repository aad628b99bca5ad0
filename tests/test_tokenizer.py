"""Trained and loaded tokenizers: special-token layout, determinism, truncation."""

import numpy as np
import pytest

from colarec_jax.data import tokenizer as tokenizer_lib
from colarec_jax.runtime.errors import DataError

CORPUS = [f"title {adj} phone case model {n} brand Acme categories Cases Basic"
          for n, adj in enumerate(["red", "slim", "rugged", "clear", "blue", "green"] * 5)]


def test_special_ids_follow_t5():
  tok = tokenizer_lib.train_tokenizer(CORPUS, vocab_size=120)
  assert [tok.token_to_id(t) for t in ("<pad>", "</s>", "<unk>")] == [0, 1, 2]
  assert tokenizer_lib.special_ids(tok) == {"pad": 0, "eos": 1}


def test_training_is_deterministic_and_learns_words():
  a = tokenizer_lib.train_tokenizer(CORPUS, vocab_size=120)
  b = tokenizer_lib.train_tokenizer(CORPUS, vocab_size=120)
  assert a.to_str() == b.to_str()
  # A word in every string becomes one piece.
  assert a.encode("title").tokens == ["▁title"]


def test_encode_pads_truncates_and_reports_full_length():
  tok = tokenizer_lib.train_tokenizer(CORPUS, vocab_size=120)
  full = tok.encode(CORPUS[0], add_special_tokens=False).ids
  tokens, lengths = tokenizer_lib.encode_texts(tok, [CORPUS[0], ""], max_tokens=4)
  assert tokens.dtype == np.int32 and tokens.shape == (2, 4)
  np.testing.assert_array_equal(tokens[0], full[:4])
  np.testing.assert_array_equal(tokens[1], [0, 0, 0, 0])
  assert lengths.tolist() == [len(full), 0]


def test_lowercase_option():
  tok = tokenizer_lib.train_tokenizer(CORPUS, vocab_size=120, lowercase=True)
  assert tok.encode("TITLE").ids == tok.encode("title").ids


def test_load_round_trip_and_errors(tmp_path):
  tok = tokenizer_lib.train_tokenizer(CORPUS, vocab_size=120)
  tok.save(str(tmp_path / "tokenizer.json"))
  loaded = tokenizer_lib.load_tokenizer(str(tmp_path / "tokenizer.json"))
  assert loaded.encode(CORPUS[3]).ids == tok.encode(CORPUS[3]).ids
  (tmp_path / "bad.json").write_text("{not json")
  with pytest.raises(DataError, match=r"bad\.json: not a readable tokenizer\.json"):
    tokenizer_lib.load_tokenizer(str(tmp_path / "bad.json"))
