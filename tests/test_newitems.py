"""Items added after training: their GIDs, the overlay, ranking them, and every refusal."""

import dataclasses
import hashlib
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FIXTURES

from colarec_jax.cli import modes
from colarec_jax.ranking import decode
from colarec_jax.training import loop as train_lib
from colarec_jax.runtime.errors import ConfigError, DataError
from colarec_jax.data import fileio
from colarec_jax.data.dataset import TRAIN
from colarec_jax.gid import overlay
from colarec_jax.model.colarec import UNKNOWN_ITEM
from colarec_jax.config.settings import Settings
from colarec_jax.cli.flags import AddItemsFlags, RecommendFlags
from colarec_jax.newitems import catalogue
from colarec_jax.run import parts as parts_lib
from configs import tiny

QUIET = lambda *_: None
NEW = os.path.join(FIXTURES, "new_items")


def settings():
  c = tiny.get_config()
  c.cf.epochs = 2
  c.inputs.item_id_dropout = 0.2
  c.train.update(epochs=2, steps_per_epoch=6)
  return Settings.parse(c)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("trained"))
  train_lib.train_and_evaluate(settings(), workdir, log=QUIET, progress_bar=False)
  return workdir


@pytest.fixture
def workdir(trained, tmp_path):
  """A copy of the trained workdir, so that each test adds to its own overlay."""
  path = str(tmp_path / "w")
  shutil.copytree(trained, path)
  return path


def add(workdir, name):
  return modes.add_items(settings(), workdir, AddItemsFlags(items_file=os.path.join(NEW, name)),
                         log=QUIET)


def workspace(workdir):
  ws = parts_lib.build(settings(), workdir, log=QUIET, read_only=True)
  return ws, catalogue.with_new_items(ws, catalogue.load(ws, workdir))


def best_params(workdir, parts):
  return parts_lib.checkpoints(parts, settings(), workdir).load_params("best",
                                                                       parts.abstract_params())


def sha(path):
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def test_new_items_get_unique_gids_under_existing_prefixes(workdir):
  gid_file = os.path.join(workdir, "gid", "gids.npz")
  trained_gids = sha(gid_file)
  added = add(workdir, "new.item")
  base, ws = workspace(workdir)
  n = base.gids.num_items
  assert added.item_ids.tolist() == ["n01", "n02", "n03"]
  assert sha(gid_file) == trained_gids  # the trained GIDs are never rewritten
  np.testing.assert_array_equal(ws.gids.codes[:n + 1], base.gids.codes)
  # Unique, and each under a leaf parent the trained tree already has.
  assert len(np.unique(ws.gids.codes[1:], axis=0)) == n + 3
  trained_prefixes = {tuple(c) for c in base.gids.codes[1:, :-1].tolist()}
  for k, gid in enumerate(added.codes.tolist()):
    assert tuple(gid[:-1]) in trained_prefixes
    # The lowest last code no earlier item (trained, or added before it) holds.
    earlier = ws.gids.codes[1:n + 1 + k]
    taken = {c[-1] for c in earlier.tolist() if c[:-1] == gid[:-1]}
    assert gid[-1] == min(set(range(1, 5)) - taken)
    assert ws.gids.item_of(gid) == n + 1 + k
  assert ws.prepared.dataset.item_ids[n + 1:].tolist() == ["n01", "n02", "n03"]


def test_the_trie_returns_new_items(workdir):
  add(workdir, "new.item")
  base, ws = workspace(workdir)
  params, _ = best_params(workdir, base)
  n = base.gids.num_items
  # A beam as wide as the catalogue returns every item's GID, the new ones included.
  trie = decode.Trie.build(ws.gids, n + 3)
  inputs = {k: jnp.asarray(v) for k, v in ws.builder.eval_inputs(np.array([1, 2])).items()}
  items, scores, codes = decode.beam_search(ws.model, params, inputs, trie)
  for row in np.asarray(items):
    assert sorted(row.tolist()) == list(range(1, n + 4))
  assert np.isfinite(np.asarray(scores)).all()
  found = np.asarray(codes)[0][np.asarray(items)[0] == n + 2][0]
  assert found.tolist() == ws.gids.codes[n + 2].tolist()


def test_added_items_score_their_last_step_as_their_siblings_mean_by_default(workdir):
  """The default eval.new_item_score: the catalogue's trie scores items past the trained ones
  as their trained siblings' mean (decode.Trie.known_items); a catalogue without added items
  searches plainly."""
  base, _ = workspace(workdir)
  assert base.trie.known_items == 0
  add(workdir, "new.item")
  base, ws = workspace(workdir)
  assert ws.eval.new_item_score == "sibling_mean"
  assert ws.trie.known_items == base.gids.num_items == ws.model.config.num_items
  assert ws.trie.new_leaf == "sibling_mean"


@pytest.mark.parametrize("score,known,leaf", [("sibling_max", True, "sibling_max"),
                                              ("sibling_mean", True, "sibling_mean"),
                                              ("model", False, "sibling_mean")])
def test_the_trie_scores_added_items_as_eval_new_item_score_says(workdir, score, known, leaf):
  """eval.new_item_score reaches the search: the sibling scorings mark the trained items
  (known_items) and say how the added ones pool their siblings; 'model' searches plainly."""
  add(workdir, "new.item")
  base, ws = workspace(workdir)
  trie = parts_lib.make_trie(ws.gids, ws.model, dataclasses.replace(ws.eval, new_item_score=score),
                             ws.mesh)
  assert trie.known_items == (base.gids.num_items if known else 0)
  assert trie.new_leaf == leaf


def test_without_added_items_every_scoring_searches_the_plain_trie(workdir):
  """Nothing to pool for: 'sibling_max' builds the trie 'model' and 'sibling_mean' build, so the
  search is the one compiled program whatever eval.new_item_score says."""
  base, _ = workspace(workdir)
  tries = [parts_lib.make_trie(base.gids, base.model,
                               dataclasses.replace(base.eval, new_item_score=score), base.mesh)
           for score in ("model", "sibling_mean", "sibling_max")]
  assert {(t.known_items, t.new_leaf) for t in tries} == {(0, "sibling_mean")}


def test_eval_code_prior_weights_each_levels_code_popularity_by_training_interactions(workdir):
  """eval.code_prior reaches the trie: under each node at depth t, weight t times the log of each
  code's share of the training interactions below it, every child counted once more (counted
  here by walking each interaction's path); a code leading to an added item takes its trained
  siblings' best, as its decoder score does with 'sibling_max'. Wrong lengths are refused."""
  add(workdir, "new.item")
  _, ws = workspace(workdir)
  depth, trained = ws.gids.depth, ws.model.config.num_items
  assert ws.gids.num_items > trained
  weights = tuple(float(w) for w in np.linspace(0.5, 2.0, depth))
  ev = dataclasses.replace(ws.eval, code_prior=weights, new_item_score="sibling_max")
  prior = np.asarray(ws.with_eval(ev).trie.prior)
  below = np.zeros(len(ws.gids.children))
  for item in ws.prepared.rows(TRAIN)[1]:
    node = 0
    for code in ws.gids.codes[item]:
      node = ws.gids.children[node, code]
      below[node] += 1
  pooled = 0
  for node, children in enumerate(ws.gids.children):
    valid = children >= 0
    if not valid.any():
      assert (prior[node] == 0).all()
      continue
    share = (below[children[valid]] + 1) / (below[children[valid]] + 1).sum()
    expected = np.zeros(len(children))
    expected[valid] = weights[ws.gids.node_depth[node]] * np.log(share)
    added = valid & (ws.gids.leaf_item[np.maximum(children, 0)] > trained)
    if added.any() and (valid & ~added).any():
      expected[added] = expected[valid & ~added].max()
      pooled += 1
    np.testing.assert_allclose(prior[node], expected, rtol=1e-5, atol=1e-6)
  assert pooled  # some added item sits beside trained siblings
  assert (prior[-1] == 0).all()  # the dead node
  for none in ((), (0.0,), (0.0,) * depth):
    assert ws.with_eval(dataclasses.replace(ws.eval, code_prior=none)).trie.prior is None
  # One weight is every level's.
  every = ws.with_eval(dataclasses.replace(ws.eval, code_prior=(1.5,))).trie.prior
  same = ws.with_eval(dataclasses.replace(ws.eval, code_prior=(1.5,) * depth)).trie.prior
  np.testing.assert_array_equal(np.asarray(every), np.asarray(same))
  with pytest.raises(ConfigError, match=rf"eval.code_prior: got 2 weights \(1.0, 1.0\), "
                     rf"expected one for all GID levels or one per level \({depth}\)"):
    ws.with_eval(dataclasses.replace(ws.eval, code_prior=(1.0, 1.0)))


def test_new_items_read_the_unknown_item_token(workdir):
  add(workdir, "new.item")
  base, ws = workspace(workdir)
  n = base.gids.num_items
  row = ws.builder.rec_input([n + 1, 1])
  content = ws.builder.content[n + 1]
  assert row["items"][1] == UNKNOWN_ITEM and row["items"][2 + len(content)] == 1
  assert row["tokens"][2:2 + len(content)].tolist() == content.tolist() and len(content) > 0
  assert ws.builder.index_input(n + 2, [])["items"][1] == UNKNOWN_ITEM


def test_recommend_and_evaluate_use_the_new_items(workdir):
  add(workdir, "new.item")
  answer = modes.recommend(settings(), workdir, RecommendFlags(items="n01,i00", top_n=5),
                           log=QUIET)
  assert len(answer.items) == 5 and not {"n01", "i00"} & set(answer.items)
  # The Python API of the same workdir knows the added items too.
  from colarec_jax import Recommender
  api = Recommender.load(workdir).recommend(history=["n01", "i00"], top_n=5)
  assert api.items == answer.items
  report = modes.evaluate_checkpoint(settings(), workdir, log=QUIET)
  assert report.num_users > 0
  base, ws = workspace(workdir)
  ranked, _ = ws.ranker(best_params(workdir, base)[0]).ranked(
      ws.builder.eval_inputs(np.arange(1, 49)), [np.zeros(0)] * 48, 20)
  assert ranked.max() <= base.gids.num_items + 3


def test_added_candidates_join_the_beam_scored_as_the_full_search_scores_them(workdir):
  """eval.added_candidates=2 with a beam too narrow to reach the added items: each list is the
  plain beam's items and the user's best 2 added items by h(X_u).h(X_i) (NumPy), all ordered by
  the full-width search's score of each item plus 0.5 h(X_u).h(X_i)."""
  add(workdir, "new.item")
  base, ws = workspace(workdir)
  params, _ = best_params(workdir, base)
  n = base.gids.num_items
  ev = dataclasses.replace(ws.eval, new_item_score="sibling_mean", beam_size=10)
  at = ws.with_eval
  users = np.arange(1, 49)
  inputs, none = ws.builder.eval_inputs(users), [np.zeros(0, np.int64)] * len(users)
  plain = at(ev).ranker(params)
  beam, _ = plain.ranked(inputs, none, 10)
  everything = at(dataclasses.replace(ev, beam_size=n + 3)).ranker(params)
  all_items, all_scores = everything.ranked(inputs, none, n + 3)
  h_users, h_items = plain.encode(inputs), plain.item_encodings()
  added = np.arange(n + 1, n + 4)
  best = added[np.argsort(-(h_users @ h_items[added].T), axis=1, kind="stable")[:, :2]]
  assert any(not set(b) <= set(r) for b, r in zip(best.tolist(), beam.tolist()))
  got, got_scores = at(dataclasses.replace(ev, added_candidates=2, encoder_weight=0.5)).ranker(
      params).ranked(inputs, none, 10)
  for u in range(len(users)):
    score = dict(zip(all_items[u].tolist(), all_scores[u].tolist()))
    pool = sorted(set(beam[u].tolist()) | set(best[u].tolist()))
    total = {i: score[i] + 0.5 * float(h_users[u] @ h_items[i]) for i in pool}
    expected = sorted(pool, key=lambda i: -total[i])[:10]
    assert got[u].tolist() == expected
    np.testing.assert_allclose(got_scores[u], [total[i] for i in expected], atol=1e-4)


def test_a_second_call_adds_to_the_overlay(workdir):
  first = add(workdir, "new.item")
  second = add(workdir, "more.item")
  _, ws = workspace(workdir)
  n = ws.gids.num_items - 4
  np.testing.assert_array_equal(ws.gids.codes[n + 1:n + 4], first.codes)
  np.testing.assert_array_equal(ws.gids.codes[n + 4:], second.codes)
  assert len(np.unique(ws.gids.codes[1:], axis=0)) == n + 4


@pytest.mark.parametrize("name,message", [
    ("known.item", "known.item:3: item 'i01' is already an item of this workdir"),
    ("new.item", "new.item:2: item 'n01' is already an item of this workdir"),
    ("twice.item", "twice.item:3: item 'n08' has a second row"),
    ("no_text.item", ("no_text.item:3: item 'n07' has no text in data.text_fields (title, "
                      "brand, categories)")),
    ("many.item", "many.item: 70 new items, but the GID tree (K=4, l=3) has only"),
    ("missing.item", "missing.item: file not found"),
])
def test_refusals_are_one_error_and_write_nothing(workdir, name, message):
  add(workdir, "new.item")
  before = sha(os.path.join(workdir, overlay.FILE))
  with pytest.raises(DataError) as e:
    add(workdir, name)
  assert message in str(e.value)
  assert sha(os.path.join(workdir, overlay.FILE)) == before
  assert not [f for f in os.listdir(workdir) if "tmp" in f]


def test_a_full_tree_is_refused_before_the_model_runs(workdir):
  base, _ = workspace(workdir)
  _, free = overlay.leaf_parents(base.gids)
  # The free leaves counted by hand: K per leaf parent, less the items under it.
  assert free.sum() == 4 * len(np.unique(base.gids.codes[1:, :2], axis=0)) - base.gids.num_items
  with pytest.raises(DataError, match=f"has only {free.sum()} free leaves"):
    add(workdir, "many.item")
  assert not os.path.exists(os.path.join(workdir, overlay.FILE))


def test_a_long_text_neither_bloats_the_overlay_nor_its_readers(workdir, tmp_path):
  """One item with a 300,000-character title: the stored text is cut to MAX_FIELD_CHARS, the
  overlay stays small (NumPy's fixed-width unicode made it 4 bytes x title length x fields),
  and the catalogue's text table does not widen every row to the longest."""
  path = tmp_path / "long.item"
  title = "word " * 60_000
  path.write_text("item_id:token\ttitle:token_seq\tbrand:token\tcategories:token_seq\n"
                  f"n51\t{title}\tAcme\tCases\nn52\tshort case\tZen\tCases\n")
  logs = []
  modes.add_items(settings(), workdir, AddItemsFlags(items_file=str(path)), log=logs.append)
  assert any("longer than 4096 characters" in line for line in logs)
  assert os.path.getsize(os.path.join(workdir, overlay.FILE)) < 64_000
  _, ws = workspace(workdir)
  text = ws.prepared.dataset.item_text
  assert text.dtype == object and len(text[-2, 0]) == overlay.MAX_FIELD_CHARS
  assert text[-2, 0] == title[:overlay.MAX_FIELD_CHARS] and text[-1, 0] == "short case"
  assert ws.prepared.dataset.content(ws.gids.num_items) == "title short case brand Zen categories Cases"


def test_an_overlay_written_with_fixed_width_text_still_loads(workdir):
  """Workdirs whose new_items.npz predates variable-length text keep their added items."""
  add(workdir, "new.item")
  path = os.path.join(workdir, overlay.FILE)
  with np.load(path) as z:
    arrays = {k: z[k] for k in z.files}
  arrays["item_text"] = fileio.unpack_text(arrays, "text").astype(str)  # the old layout: a unicode array
  for key in ("text_bytes", "text_offsets", "text_shape"):
    del arrays[key]
  np.savez(path, **arrays)
  _, ws = workspace(workdir)
  assert ws.prepared.dataset.item_ids[-3:].tolist() == ["n01", "n02", "n03"]
  assert ws.prepared.dataset.item_text[-1].tolist() == ["rugged headsets model 92", "",
                                                        "Headsets Wireless"]


def test_an_overlong_item_id_is_refused(workdir, tmp_path):
  path = tmp_path / "long_id.item"
  path.write_text("item_id:token\ttitle:token_seq\tbrand:token\tcategories:token_seq\n"
                  f"{'x' * 300}\tred case\tAcme\tCases\n")
  with pytest.raises(DataError, match=r"long_id.item:2: item id 'x+'\.\.\. has 300 characters; "
                     r"expected at most 256"):
    modes.add_items(settings(), workdir, AddItemsFlags(items_file=str(path)), log=QUIET)


def test_readers_share_the_workdir_and_add_items_waits_for_them(workdir, tmp_path):
  """While a reader (a server, say) holds the workdir, export runs beside it and add_items is
  refused with what to do, not a bare "in use"."""
  from colarec_jax.data import fileio
  from colarec_jax.runtime.errors import WorkdirInUse
  with fileio.workdir_lock(workdir, exclusive=False, log=QUIET):
    modes.run("export", settings(), workdir, log=QUIET, output=str(tmp_path / "top.jsonl"))
    assert (tmp_path / "top.jsonl").exists()
    with pytest.raises(WorkdirInUse, match=r"is being read by another colarec-jax process "
                       r"\(evaluate, recommend, export or serve\); a mode that writes"):
      modes.run("add_items", settings(), workdir, log=QUIET,
                items_file=os.path.join(NEW, "new.item"))
  assert not os.path.exists(os.path.join(workdir, overlay.FILE))
  modes.run("add_items", settings(), workdir, log=QUIET, items_file=os.path.join(NEW, "new.item"))
  assert os.path.exists(os.path.join(workdir, overlay.FILE))


def test_a_killed_add_items_staging_file_is_removed(workdir):
  staging = overlay.staging_path(workdir)
  with open(staging, "wb") as f:
    f.write(b"half an overlay")
  logs = []
  modes.add_items(settings(), workdir, AddItemsFlags(items_file=os.path.join(NEW, "new.item")),
                  log=logs.append)
  assert not os.path.exists(staging) and any("removed" in line for line in logs)
