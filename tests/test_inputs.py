"""ColaRec inputs: exact layout, truncation, histories, and the negative/positive samplers."""

import numpy as np
import pytest

from colarec_jax.data import prepare as prepare_lib
from colarec_jax.config.settings import Settings
from colarec_jax.data.dataset import TRAIN
from colarec_jax.gid import builder
from colarec_jax.gid.table import GidTable
from colarec_jax.model.inputs import InputBuilder, InputConfig, epoch_order
from colarec_jax.model.colarec import TASK_INDEX, TASK_REC, UNKNOWN_ITEM
from colarec_jax.runtime.errors import ConfigError
from configs import tiny


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  return prepare_lib.prepare(Settings.parse(tiny.get_config()).data, str(tmp_path_factory.mktemp("inp")),
                             log=lambda *_: 0)


@pytest.fixture(scope="module")
def gids(prepared):
  return GidTable.from_codes(builder.random_codes(prepared.dataset.num_items, branching=4,
                                                  depth=3, seed=0), 4)


def make(prepared, gids, **kw):
  cfg = InputConfig(**{"max_item_tokens": 12, **kw})
  return InputBuilder(prepared, gids, cfg)


def test_recommendation_input_layout(prepared, gids):
  b = make(prepared, gids, max_length=64)
  row = b.rec_input([3, 7])
  c3, c7 = b.content[3], b.content[7]
  expected = [0, 0] + c3.tolist() + [0] + c7.tolist() + [prepared.eos_id]
  n = len(expected)
  assert row["tokens"][:n].tolist() == expected and (row["tokens"][n:] == 0).all()
  assert row["items"][1] == 3 and row["items"][2 + len(c3)] == 7
  assert np.count_nonzero(row["items"]) == 2 and not row["users"].any()
  assert row["mask"].tolist() == [True] * n + [False] * (64 - n)
  assert row["task"] == TASK_REC


def test_history_truncated_to_length_budget(prepared, gids):
  b = make(prepared, gids, max_length=20)
  row = b.rec_input([1, 2, 3, 4])
  assert row["mask"].sum() <= 20 and row["tokens"][row["mask"].sum() - 1] == prepared.eos_id
  kept = row["items"][row["items"] > 0].tolist()
  assert kept == [1, 2, 3, 4][:len(kept)] and len(kept) >= 1


def test_token_cut_keeps_the_cut_items_slot_and_first_tokens(prepared, gids):
  """history_cut='token' (the authors' tokenizer): [task] [slot content]... cut at length - 1
  entries, then EOS; 'item' drops the item that does not fit whole."""
  items = [1, 2, 3, 4]
  full = [0]
  for item in items:
    full += [0] + make(prepared, gids).content[item].tolist()
  length = len(full) - 3  # item 4 loses its last 4 tokens: 3, and 1 for the EOS
  cut = make(prepared, gids, max_length=length, history_cut="token").rec_input(items)
  expected = full[:length - 1] + [prepared.eos_id]
  assert cut["tokens"].tolist() == expected and cut["mask"].all()
  assert np.flatnonzero(cut["items"]).size == 4 and cut["items"][cut["items"] > 0][-1] == 4
  whole = make(prepared, gids, max_length=length, history_cut="item").rec_input(items)
  assert whole["items"][whole["items"] > 0].tolist() == [1, 2, 3]
  assert whole["mask"].sum() == len(full) - 1 - len(make(prepared, gids).content[4]) + 1
  # No room past the slot: the slot alone, then EOS.
  slot_only = make(prepared, gids, max_length=len(full) - len(
      make(prepared, gids).content[4]) + 1, history_cut="token").rec_input(items)
  assert slot_only["items"][slot_only["mask"].sum() - 2] == 4
  assert slot_only["tokens"][slot_only["mask"].sum() - 1] == prepared.eos_id
  with pytest.raises(ConfigError, match="inputs.history_cut"):
    InputConfig.from_config(type("C", (), dict(
        max_history=10, eval_history=20, max_length=64, index_users=1, uad_on_item_inputs=True,
        use_content=True, history_cut="words", history_codes=False, item_id_dropout=0.0))(), 12)


def test_index_input_has_user_slots(prepared, gids):
  b = make(prepared, gids, index_users=2)
  row = b.index_input(5, [9, 4])
  length = 1 + 1 + len(b.content[5])
  assert row["task"] == TASK_INDEX and row["items"][1] == 5
  assert row["users"][length:length + 2].tolist() == [9, 4]
  assert row["tokens"][length + 2] == prepared.eos_id and row["mask"].sum() == length + 3
  assert len(row["tokens"]) == b.cfg.index_length


def test_eval_history_is_most_recent_first(prepared, gids):
  b = make(prepared, gids, eval_history=3)
  train = prepared.csr(TRAIN)
  for user in (1, 5, 17):
    assert b.eval_history(user) == train.row(user)[::-1][:3].tolist()


def test_train_history_excludes_target_and_caps(prepared, gids):
  b = make(prepared, gids, max_history=2)
  rng = np.random.default_rng(0)
  train = prepared.csr(TRAIN)
  for user in range(1, 20):
    target = int(train.row(user)[0])
    history = b.train_history(user, target, rng)
    assert target not in history and len(history) == min(2, len(train.row(user)) - 1)
    assert set(history) <= set(train.row(user).tolist())


def test_negatives_and_positives(prepared, gids):
  b = make(prepared, gids)
  users, items = prepared.rows(TRAIN)
  rng = np.random.default_rng(1)
  neg = b.sample_negatives(users, items, rng)
  seen = set(zip(users.tolist(), items.tolist()))
  assert not any((u, n) in seen for u, n in zip(users.tolist(), neg.tolist()))
  codes = gids.codes
  assert not (codes[neg, :2] == codes[items, :2]).all(1).any()
  pos = b.sample_positives(items, rng)
  assert (codes[pos, :2] == codes[items, :2]).all()
  has_sibling = np.array([len(gids.siblings().row(i)) > 1 for i in items])
  assert (pos[has_sibling] != items[has_sibling]).all()


def test_training_batch_and_uad_switch(prepared, gids):
  users, items = prepared.rows(TRAIN)
  bu, bi, bm = next(epoch_order(users, items, 8, np.random.default_rng(0)))
  paper = make(prepared, gids).training_batch(bu, bi, bm, np.random.default_rng(2))
  official = make(prepared, gids, uad_on_item_inputs=False).training_batch(
      bu, bi, bm, np.random.default_rng(2))
  assert paper["user"]["tokens"].shape == (8, 256)
  assert paper["item"]["users"].any() and not official["item"]["users"].any()
  assert not official["neg"]["users"].any() and official["pos"]["users"].any()
  np.testing.assert_array_equal(paper["item_codes"], gids.codes[bi])
  again = make(prepared, gids).training_batch(bu, bi, bm, np.random.default_rng(2))
  for key in ("user", "item", "neg", "pos"):
    np.testing.assert_array_equal(again[key]["tokens"], paper[key]["tokens"])


def test_epoch_order_pads_last_batch(prepared):
  users, items = prepared.rows(TRAIN)
  batches = list(epoch_order(users, items, 64, np.random.default_rng(0)))
  assert all(len(b[0]) == 64 for b in batches)
  masks = np.concatenate([b[2] for b in batches])
  assert masks.sum() == len(users)


def test_history_codes_ride_on_recommendation_inputs_only(prepared, gids):
  plain = make(prepared, gids, max_length=64)
  b = make(prepared, gids, max_length=64, history_codes=True)
  row = b.rec_input([3, 7])
  assert "codes" not in plain.rec_input([3, 7])
  assert row["codes"].shape == (64, 3)
  slots = np.flatnonzero(row["items"])
  assert row["items"][slots].tolist() == [3, 7]
  np.testing.assert_array_equal(row["codes"][slots], gids.codes[[3, 7]])
  others = np.setdiff1d(np.arange(64), slots)
  assert (row["codes"][others] == 0).all()
  # The indexing input's item GID is the target: it never carries codes.
  assert "codes" not in b.index_input(3, [1])
  batch = b.training_batch(np.asarray([1, 2]), np.asarray([3, 4]), np.ones(2),
                           np.random.default_rng(0))
  assert batch["user"]["codes"].shape == (2, 64, 3) and "codes" not in batch["item"]


@pytest.mark.parametrize("rate", [0.0, 0.3, 1.0])
def test_item_id_dropout_hides_slots_and_nothing_else(prepared, gids, rate):
  users, items = prepared.rows(TRAIN)
  bu, bi, bm = next(epoch_order(users, items, 16, np.random.default_rng(0)))
  plain = make(prepared, gids).training_batch(bu, bi, bm, np.random.default_rng(2))
  dropped = make(prepared, gids, item_id_dropout=rate).training_batch(
      bu, bi, bm, np.random.default_rng(2))
  slots = hidden = 0
  for key in ("user", "item", "neg", "pos"):
    for field in ("tokens", "users", "mask"):  # sampling before the dropout is unchanged
      np.testing.assert_array_equal(dropped[key][field], plain[key][field])
    was, now = plain[key]["items"], dropped[key]["items"]
    changed = was != now
    assert (now[changed] == UNKNOWN_ITEM).all() and (was[changed] > 0).all()
    slots, hidden = slots + (was > 0).sum(), hidden + changed.sum()
  if rate == 0.0:
    assert hidden == 0
  elif rate == 1.0:
    assert hidden == slots
  else:  # a binomial draw over a few hundred slots: within 5 standard deviations of the rate
    assert abs(hidden - rate * slots) < 5 * np.sqrt(slots * rate * (1 - rate))


def test_items_after_the_known_ones_read_the_unknown_token(prepared, gids):
  b = make(prepared, gids)
  n = prepared.dataset.num_items
  tokens = np.full((2, 12), prepared.pad_id, np.int32)
  tokens[0, :3] = [5, 6, 7]
  tokens[1, :1] = [9]
  extended = b.with_items(tokens, prepared.pad_id)
  row = extended.rec_input([n + 2, 4, n + 1])
  c4 = b.content[4]
  assert row["items"][1] == UNKNOWN_ITEM and row["tokens"][2] == 9
  assert row["items"][3] == 4 and row["items"][4 + len(c4)] == UNKNOWN_ITEM
  assert row["tokens"][5 + len(c4):8 + len(c4)].tolist() == [5, 6, 7]
  assert len(b.content) == n + 1 and b.rec_input([4])["items"][1] == 4  # the original unchanged
