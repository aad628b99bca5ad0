"""The cold-start protocol: the content baseline against a dense NumPy reference, and one tiny
end-to-end run with held-out items through `--mode=all`'s library path."""

import json
import os

import numpy as np
import pytest

from colarec_jax.cli import modes
from colarec_jax.newitems import coldstart
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
