"""The cold-start protocol: the content baseline against a dense NumPy reference, and one tiny
end-to-end run with held-out items through `--mode=all`'s library path."""

import dataclasses
import json
import os

import numpy as np
import pytest

from colarec_jax.cli import modes
from colarec_jax.gid import overlay
from colarec_jax.gid.table import GidTable
from colarec_jax.model.inputs import stack
from colarec_jax.ranking.decode import Trie
from colarec_jax.ranking.ranker import Ranker
from colarec_jax.newitems import coldstart, indexing
from colarec_jax.data.dataset import TRAIN
from colarec_jax.data.prepare import load_prepared
from colarec_jax.config.settings import Settings
from colarec_jax.newitems import catalogue
from colarec_jax.run import parts as parts_lib
from configs import tiny

TEXTS = ["", "title red case brand acme", "title blue case brand zen", "title car charger",
         "title red charger brand acme", "brand zen", "title case case red"]


def reference_scores(texts, history):
  """Dense TF-IDF by hand: counts x (ln((1 + n) / (1 + df)) + 1), unit rows; cosine with the
  history rows' mean."""
  words = sorted({w for t in texts for w in t.lower().split()})
  counts = np.array([[t.lower().split().count(w) for w in words] for t in texts], float)
  idf = np.log((1 + len(texts)) / (1 + (counts > 0).sum(0))) + 1
  x = counts * idf
  x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  profile = x[history].sum(0)
  profile /= max(np.linalg.norm(profile), 1e-12)
  return x @ profile


@pytest.mark.parametrize("history,exclude", [([1], [1]), ([3, 5], [3]), ([6, 2, 4], [])])
def test_content_ranking_matches_a_dense_reference(history, exclude):
  ranked = coldstart.content_ranking(TEXTS, [np.array(history)], [np.array(exclude)], k=4)[0]
  scores = reference_scores(TEXTS, history)
  scores[[0] + exclude] = -np.inf
  expected = sorted(range(len(TEXTS)), key=lambda i: (-scores[i], i))[:4]
  assert ranked.tolist() == expected


def test_content_ranking_in_batches_equals_one_batch():
  histories = [np.array(h) for h in ([1], [2, 3], [4], [5, 6], [1, 6])]
  exclude = [np.zeros(0, int)] * 5
  np.testing.assert_array_equal(coldstart.content_ranking(TEXTS, histories, exclude, 3, 2),
                                coldstart.content_ranking(TEXTS, histories, exclude, 3, 64))


def settings():
  c = tiny.get_config()
  c.data.cold_item_fraction = 0.1
  c.inputs.item_id_dropout = 0.2
  c.cf.epochs = 2
  c.train.update(epochs=2, steps_per_epoch=6)
  return Settings.parse(c)


@pytest.fixture(scope="module")
def cold_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("cold"))
  lines = []
  modes.run("all", settings(), workdir, log=lines.append)
  return workdir, "\n".join(map(str, lines))


def test_held_out_items_are_in_no_training_input(cold_run):
  workdir, _ = cold_run
  prepared = load_prepared(os.path.join(workdir, "data"))
  held = prepared.held_out
  assert len(held) == 4  # round(0.1 * 36)
  assert not set(held.item_ids.tolist()) & set(prepared.dataset.item_ids.tolist())
  # The 395 interactions are the kept items' plus the held-out ones'.
  assert len(prepared.split) + len(held.users) == 395
  # Their users keep their ids (the user table is the whole dataset's).
  assert prepared.dataset.num_users == 48 and held.users.min() >= 1
  assert len(prepared.users_with(TRAIN)) <= 48


def test_cold_table_scores_models_that_read_text_and_says_what_cannot(cold_run):
  workdir, log = cold_run
  table = log.split("test metrics with held-out items")[1]
  rows = {line[:38].strip(): line[38:].split() for line in table.splitlines()[3:]
          if line and not line.startswith(("long-tail", "lightgcn ranks"))}
  assert rows["lightgcn cold items"] == coldstart.CANNOT_RANK.split()
  for name in ("mostpop", "lightgcn", "colarec", "content (tf-idf)"):
    assert name in rows and name + " long-tail" in rows
  with open(os.path.join(workdir, coldstart.RESULTS)) as f:
    saved = json.load(f)
  assert saved["held_out_items"] == 4 and saved["indexed"] == 4
  cold = saved["rows"]
  # Held-out items have no training interaction, so MostPop never ranks them in the top 20;
  # the content baseline, which reads their text, does.
  assert cold["mostpop cold items"]["overall"]["recall@20"] == 0.0
  assert cold["content (tf-idf) cold items"]["overall"]["recall@20"] > 0.0
  assert cold["colarec cold items"]["num_users"] == cold["mostpop cold items"]["num_users"] > 0
  # The cold rows use the overall rows' long-tail threshold.
  assert (cold["colarec cold items"]["long_tail_threshold"]
          == cold["colarec"]["long_tail_threshold"])


def test_colarec_can_return_the_held_out_items(cold_run):
  workdir, _ = cold_run
  ws = parts_lib.build(settings(), workdir, log=lambda *_: 0, read_only=True)
  params, _ = parts_lib.checkpoints(ws, settings(), workdir).load_params("best",
                                                                         ws.abstract_params())
  new, ids = coldstart.held_out_as_new(ws, params, settings().data)
  extended = catalogue.with_new_items(ws, new)
  n = ws.gids.num_items
  assert ids.tolist() == list(range(n + 1, n + 5))
  assert [extended.gids.item_of(g) for g in new.codes.tolist()] == ids.tolist()
  # Their text reaches the model: every held-out item is a leaf the beam search can end on.
  assert set(np.asarray(extended.trie.leaf_item).tolist()) >= set(ids.tolist())


def reference_parents(new, trained, item_parent, allowed, k):
  """Parents ranked by hand: each of the k best trained items by h_i.h_j votes
  exp(s - best s) for its parent; then by the best score under a parent; then by index."""
  out = []
  for h in new:
    s = trained @ h
    near = np.argsort(-s, kind="stable")[:k]
    votes = {}
    for j in near:
      votes[item_parent[j]] = votes.get(item_parent[j], 0.0) + np.exp(s[j] - s[near[0]])
    best = [max(s[item_parent == p]) if (item_parent == p).any() else -np.inf
            for p in range(len(allowed))]
    out.append(sorted(np.flatnonzero(allowed), key=lambda p: (-votes.get(p, 0.0), -best[p], p)))
  return out


@pytest.mark.parametrize("k,count,batch", [(1, 256, 1 << 25), (3, 4, 40), (30, 256, 1)])
def test_neighbour_parents_match_a_reference(k, count, batch):
  rng = np.random.default_rng(k)
  new, trained = rng.normal(size=(6, 5)), rng.normal(size=(30, 5))
  item_parent = rng.integers(0, 7, 30)
  allowed = np.ones(8, bool)  # parent 7 holds no trained item (one added before, say)
  allowed[[2, 5]] = False
  ranked = indexing.neighbour_parents(new, trained, item_parent, allowed, k, count, batch)
  expected = [row[:count] for row in reference_parents(new, trained, item_parent, allowed, k)]
  assert ranked.tolist() == expected


def test_neighbours_placement_follows_the_nearest_trained_items(cold_run):
  """eval.new_item_placement='neighbours': each held-out item, in order, takes the first parent
  with a free leaf in its reference ranking (the best checkpoint's item encodings)."""
  workdir, _ = cold_run
  placed = dataclasses.replace(settings(), eval=dataclasses.replace(
      settings().eval, new_item_placement="neighbours", placement_neighbours=3))
  ws = parts_lib.build(placed, workdir, log=lambda *_: 0, read_only=True)
  params, _ = parts_lib.checkpoints(ws, placed, workdir).load_params("best", ws.abstract_params())
  new, _ = coldstart.held_out_as_new(ws, params, placed.data)
  n = ws.gids.num_items
  encodings = catalogue.with_new_items(ws, new).ranker(params).item_encodings()
  prefixes, free = overlay.leaf_parents(ws.gids)
  parent_of = {tuple(p): i for i, p in enumerate(prefixes.tolist())}
  item_parent = np.array([parent_of[tuple(c)] for c in ws.gids.codes[1:, :-1].tolist()])
  ranked = reference_parents(encodings[n + 1:], encodings[1:n + 1], item_parent, free > 0, 3)
  for row, gid in zip(ranked, new.codes.tolist()):
    parent = next(p for p in row if free[p] > 0)
    free[parent] -= 1
    assert gid[:-1] == prefixes[parent].tolist()


def test_cold_rows_count_only_the_given_half(cold_run):
  workdir, _ = cold_run
  test = coldstart.cold_test(settings(), workdir, log=lambda *_: 0)
  selection, report = test.halves()
  held = np.unique(test.cold.items)
  assert not set(selection) & set(report) and sorted([*selection, *report]) == held.tolist()
  rng = np.random.default_rng(0)
  lists = np.stack([rng.permutation(np.arange(1, test.parts.gids.num_items + 1))[:20]
                    for _ in test.users])
  whole = test.rows("x", lists)
  assert test.rows("x", lists, items=held)["x cold items"].overall == whole["x cold items"].overall
  for half in (selection, report):
    row = test.rows("x", lists, items=half)["x cold items"]
    expected = {}
    for n, u in enumerate(test.users):
      truth = [i for i in test.cold.row(u) if i in half]
      if truth:
        expected[u] = len(set(lists[n]) & set(truth)) / len(truth)
    assert row.users.tolist() == sorted(expected)
    np.testing.assert_allclose(row.per_user["recall@20"], [expected[u] for u in sorted(expected)])
    assert row.long_tail_threshold == whole["x"].long_tail_threshold


def test_indexing_placement_takes_parents_the_indexing_search_ranks(cold_run):
  """eval.new_item_placement='indexing': unique GIDs, each under a trained leaf parent that had
  room, each the beam's best parent over the open ones for the first item (nothing taken yet)."""
  workdir, _ = cold_run
  placed = dataclasses.replace(settings(), eval=dataclasses.replace(
      settings().eval, new_item_placement="indexing"))
  ws = parts_lib.build(placed, workdir, log=lambda *_: 0, read_only=True)
  params, _ = parts_lib.checkpoints(ws, placed, workdir).load_params("best", ws.abstract_params())
  new, _ = coldstart.held_out_as_new(ws, params, placed.data)
  prefixes, free = overlay.leaf_parents(ws.gids)
  room = {tuple(p) for p in prefixes[free > 0].tolist()}
  assert all(tuple(g[:-1]) in room for g in new.codes.tolist())
  every = {tuple(g) for g in [*new.codes.tolist(), *ws.gids.codes[1:].tolist()]}
  assert len(every) == len(new.codes) + ws.gids.num_items
  # The first item's parent is the indexing search's best among the open parents.
  open_parents = prefixes[free > 0]
  table = GidTable.from_codes(open_parents, ws.gids.branching)
  builder = ws.builder.with_items(new.tokens[:1], ws.prepared.pad_id)
  inputs = stack([builder.index_input(ws.gids.num_items + 1, [])])
  ranker = Ranker(ws.model, params, Trie.build(table, len(open_parents)), builder, ws.eval)
  ranked, _ = ranker.ranked(inputs, [np.zeros(0)], len(open_parents))
  assert new.codes[0, :-1].tolist() == open_parents[ranked[0, 0] - 1].tolist()
