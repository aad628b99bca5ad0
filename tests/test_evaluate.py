"""Recall/NDCG@N against hand-computed values and a loop reference; masked device top-k."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from colarec_jax import evaluate
from colarec_jax.data.dataset import Csr


def test_hand_computed_single_and_multi_item_users():
  ranked = np.array([[3, 1, 2, 4, 5],    # held-out {1}: hit at rank 2
                     [7, 8, 9, 6, 5],    # held-out {6, 9}: hits at ranks 3 and 4
                     [1, 2, 3, 4, 5]])   # held-out {8, 9, 10}: no hit
  heldout = [np.array([1]), np.array([6, 9]), np.array([8, 9, 10])]
  m = evaluate.ranking_metrics(ranked, heldout, ks=(1, 3, 5))
  assert m["recall@1"].tolist() == [0, 0, 0]
  assert m["recall@3"].tolist() == [1, 0.5, 0]
  assert m["recall@5"].tolist() == [1, 1, 0]
  assert m["ndcg@3"][0] == pytest.approx(1 / math.log2(3))
  # User 2 at N=3: DCG = 1/log2(4); ideal over min(2, 3) = 2 hits: 1 + 1/log2(3).
  assert m["ndcg@3"][1] == pytest.approx((1 / math.log2(4)) / (1 + 1 / math.log2(3)))
  assert m["ndcg@5"][1] == pytest.approx((1 / math.log2(4) + 1 / math.log2(5)) /
                                         (1 + 1 / math.log2(3)))
  # N=1 with 2 held-out items: ideal uses min(2, 1) = 1 hit.
  m1 = evaluate.ranking_metrics(np.array([[9, 6]]), [np.array([6, 9])], ks=(1,))
  assert m1["ndcg@1"][0] == pytest.approx(1.0) and m1["recall@1"][0] == pytest.approx(0.5)


def reference(ranked, heldout, k):
  recalls, ndcgs = [], []
  for row, truth in zip(ranked, heldout):
    truth = set(truth.tolist())
    dcg = sum(1 / math.log2(r + 2) for r, item in enumerate(row[:k]) if item in truth)
    idcg = sum(1 / math.log2(r + 2) for r in range(min(len(truth), k)))
    recalls.append(sum(item in truth for item in row[:k]) / len(truth))
    ndcgs.append(dcg / idcg)
  return np.array(recalls), np.array(ndcgs)


@pytest.mark.parametrize("seed", range(3))
def test_matches_loop_reference(seed):
  rng = np.random.default_rng(seed)
  ranked = np.stack([rng.permutation(np.arange(1, 41))[:20] for _ in range(50)])
  heldout = [rng.choice(np.arange(1, 41), rng.integers(1, 4), replace=False) for _ in range(50)]
  m = evaluate.ranking_metrics(ranked, heldout, ks=(5, 10, 20))
  for k in (5, 10, 20):
    r, n = reference(ranked, heldout, k)
    np.testing.assert_allclose(m[f"recall@{k}"], r)
    np.testing.assert_allclose(m[f"ndcg@{k}"], n)


@jax.jit
def _scores(table, users):
  return table[users]


def test_top_k_excludes_and_ranks():
  rng = np.random.default_rng(0)
  num_users, num_items = 7, 12
  table = rng.normal(size=(num_users + 1, num_items + 1)).astype(np.float32)
  exclude = Csr.from_pairs(np.array([1, 1, 3, 5]), np.array([4, 2, 7, 1]), num_users)
  users = np.arange(1, num_users + 1)
  got = evaluate.top_k_items(functools.partial(_scores, jnp.asarray(table)), users, exclude,
                             num_items, k=5, batch_size=3)  # 3 does not divide 7: padding
  for n, u in enumerate(users):
    scores = table[u].copy()
    scores[0] = -np.inf
    scores[exclude.row(u)] = -np.inf
    np.testing.assert_array_equal(got[n], np.argsort(-scores, kind="stable")[:5])


def test_top_k_holds_at_most_max_scores_per_call():
  """Users per call shrink so that a call's [users, num_items + 1] scores stay under max_scores,
  whatever batch_size asks (1,024 users x a million items was 4 GB); the lists are unchanged."""
  rng = np.random.default_rng(1)
  num_users, num_items = 9, 12
  table = rng.normal(size=(num_users + 1, num_items + 1)).astype(np.float32)
  exclude = Csr.from_pairs(np.array([2, 4, 4]), np.array([3, 1, 9]), num_users)
  users = np.arange(1, num_users + 1)
  shapes = []

  def score_fn(batch):
    shapes.append(len(batch))
    return _scores(jnp.asarray(table), batch)

  capped = evaluate.top_k_items(score_fn, users, exclude, num_items, k=4, batch_size=1024,
                                max_scores=3 * (num_items + 1) + 5)
  assert set(shapes) == {3}
  full = evaluate.top_k_items(functools.partial(_scores, jnp.asarray(table)), users, exclude,
                              num_items, k=4, batch_size=1024)
  np.testing.assert_array_equal(capped, full)

def test_long_tail_threshold_and_report():
  counts = np.array([0, 3, 1, 1, 8, 2, 5, 1, 9, 4, 6])  # users 1..10
  users = np.arange(1, 11)
  mask, threshold = evaluate.long_tail_users(counts, users, fraction=0.2)
  assert threshold == 1  # 2 of 10 users -> the 2nd smallest count; the tie brings in a third
  assert users[mask].tolist() == [2, 3, 7]
  heldout = Csr.from_pairs(users, users, 10)  # each user holds out item == its id
  ranked = np.tile(np.arange(1, 21), (10, 1))  # item u at rank u
  report = evaluate.evaluate_ranking(ranked, users, heldout, counts, ks=(5,))
  assert report.num_long_tail == 3 and report.long_tail_threshold == 1
  assert report.overall["recall@5"] == pytest.approx(0.5)
  assert report.long_tail["recall@5"] == pytest.approx(2 / 3)  # users 2, 3 hit; 7 does not
  table = evaluate.format_table({"m": report}, ks=(5,))
  assert "m long-tail" in table and "<= 1 training interactions (3 of 10)" in table


def test_csr_dense_mask():
  csr = Csr.from_pairs(np.array([2, 1, 2]), np.array([3, 1, 2]), 3)
  assert csr.row(2).tolist() == [3, 2] and csr.row(3).tolist() == []
  mask = csr.dense_mask(np.array([2, 3]), num_items=4)
  assert mask.tolist() == [[True, False, True, True, False], [True, False, False, False, False]]


def test_validation_on_a_fixed_sample_of_users(tmp_path):
  from colarec_jax.data.dataset import TEST, VALID
  from colarec_jax.evaluate import EvalConfig, EvalSplit
  from colarec_jax.config.settings import Settings
  from colarec_jax.run import stages
  from configs import tiny
  config = tiny.get_config()
  config.eval.valid_sample = 10
  settings = Settings.parse(config)
  prepared = stages.prepared_data(settings, str(tmp_path), log=lambda *_: None)
  all_valid = prepared.users_with(VALID)
  sample = EvalSplit.build(prepared, VALID, settings.eval)
  assert len(sample.users) == 10 and set(sample.users) <= set(all_valid)
  assert list(sample.users) == sorted(sample.users)
  np.testing.assert_array_equal(EvalSplit.build(prepared, VALID, settings.eval).users,
                                sample.users)  # fixed: the same users every validation
  test = EvalSplit.build(prepared, TEST, settings.eval)  # testing ranks every test user
  np.testing.assert_array_equal(test.users, prepared.users_with(TEST))
  whole = EvalSplit.build(prepared, VALID, EvalConfig(beam_size=20))
  np.testing.assert_array_equal(whole.users, all_valid)
