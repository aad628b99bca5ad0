"""The quality diagnostics on a tiny trained run, against independent computations: prefix
survival against the final beams and the prefix counts, the encoder ranking against NumPy."""

import jax
import numpy as np
import pytest

from colarec_jax.ranking import decode
from colarec_jax.runtime import checkpoint
from colarec_jax.studies import diagnose
from colarec_jax.training import loop as train_lib
from colarec_jax.data.dataset import VALID
from colarec_jax.model.colarec import ColaRec
from colarec_jax.model.inputs import stack
from colarec_jax.config.settings import Settings
from colarec_jax.run import parts as parts_lib
from configs import tiny


def workspace(workdir, beam_size):
  c = _config(False)
  c.eval.beam_size = beam_size
  if beam_size < max(c.eval.ks):
    c.eval.update(ks=(1, beam_size), metric=f"ndcg@{beam_size}")
  settings = Settings.parse(c)
  return settings, parts_lib.build(settings, workdir, log=lambda *_: None)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("diagnose"))
  settings, ws = workspace(workdir, 20)
  train_lib.train_and_evaluate(settings, workdir, log=lambda *_: None, progress_bar=False)
  params, _ = parts_lib.checkpoints(ws, settings, workdir).load_params(checkpoint.BEST,
                                                                      ws.abstract_params())
  return workdir, params


@pytest.mark.parametrize("beam_size", [3, 20])
def test_prefix_survival_ends_at_the_share_of_held_out_items_in_the_final_beams(run, beam_size):
  workdir, params = run
  _, ws = workspace(workdir, beam_size)
  split, inputs = ws.eval_data(VALID)
  survival = diagnose.prefix_survival(ws, params, split, inputs)
  items, scores, _ = map(np.asarray, decode.beam_search(ws.model, params, inputs, ws.trie))
  held = [split.heldout.row(u) for u in split.users]
  found = sum(np.isin(h, items[r][np.isfinite(scores[r])]).sum() for r, h in enumerate(held))
  assert survival[-1] == pytest.approx(found / sum(len(h) for h in held))
  # A beam at least as wide as the tree's first level keeps every first code.
  if beam_size >= ws.gids.branching:
    assert survival[0] == 1.0
  assert all(0 <= v <= 1 for v in survival) and len(survival) == ws.gids.depth


def test_encoder_report_ranks_by_pooled_dot_products(run):
  workdir, params = run
  _, ws = workspace(workdir, 20)
  split, inputs = ws.eval_data(VALID)
  report = diagnose.encoder_report(ws, params, split, inputs, seed=0)
  # NumPy reference: pool every input one at a time, rank all items, drop training items.
  rng = np.random.default_rng(0)
  n = ws.prepared.dataset.num_items
  encoder = jax.jit(lambda x: ColaRec.pool(ws.model.apply({"params": params}, x,
                                                           method=ColaRec.encode), x["mask"]))
  pool = lambda x: np.concatenate([np.asarray(encoder({k: v[r:r + 1] for k, v in x.items()}))
                                   for r in range(len(x["mask"]))])
  h_items = pool(stack([ws.builder.index_input(i, ws.builder.sample_users(i, rng))
                        for i in range(1, n + 1)]))
  h_users = pool(inputs)
  recall = []
  for r, user in enumerate(split.users):
    scores = h_items @ h_users[r]
    scores[split.exclude.row(user) - 1] = -np.inf
    top = np.argsort(-scores, kind="stable")[:20] + 1
    held = split.heldout.row(user)
    recall.append(np.isin(held, top).sum() / len(held))
  assert report.overall["recall@20"] == pytest.approx(np.mean(recall), abs=1e-6)


def test_ranker_excluding_inside_the_search_fills_every_list(run):
  """Users' training items skipped inside the search: no list loses places to them (the official
  way, dropping them after a beam of 20, leaves some lists short), and none is returned."""
  workdir, params = run
  lists = {}
  for inside in (False, True):
    ws = parts_lib.build(Settings.parse(_config(inside)), workdir, log=lambda *_: None)
    split, inputs = ws.eval_data(VALID)
    exclude = [split.exclude.row(u) for u in split.users]
    lists[inside], _ = ws.ranker(params).ranked(inputs, exclude, 20)
  for row, (official, inside) in enumerate(zip(lists[False], lists[True])):
    assert (inside > 0).sum() >= (official > 0).sum()
    assert not np.isin(inside, [split.exclude.row(u) for u in split.users][row]).any()
  assert (lists[True] > 0).sum() > (lists[False] > 0).sum()


def _config(exclude_in_search):
  c = tiny.get_config()
  c.cf.epochs = 2
  c.train.update(epochs=1, steps_per_epoch=4)
  c.eval.exclude_in_search = exclude_in_search
  return c


def test_level_nll_by_teacher_forcing_and_the_popularity_reference(run):
  from collections import Counter

  import jax
  import jax.numpy as jnp

  from colarec_jax.model.colarec import ColaRec
  workdir, params = run
  _, ws = workspace(workdir, 20)
  split, inputs = ws.eval_data(VALID)
  first = np.asarray([split.heldout.row(u)[0] for u in split.users])
  codes = ws.gids.codes[first]
  # Reference: one user at a time, no batching.
  expected = np.zeros(codes.shape[1])
  for r in range(len(first)):
    one = {k: jnp.asarray(v[r:r + 1]) for k, v in inputs.items()}
    encoded = ws.model.apply({"params": params}, one, method=ColaRec.encode)
    logits = ws.model.apply({"params": params}, encoded, one["mask"],
                            jnp.asarray(codes[r:r + 1]), method=ColaRec.decode_codes)
    logp = np.asarray(jax.nn.log_softmax(logits[0], axis=-1))
    expected -= logp[np.arange(codes.shape[1]), codes[r]]
  np.testing.assert_allclose(diagnose.level_nll(ws, params, split, inputs),
                             expected / len(first), rtol=1e-4)
  shuffled = diagnose.level_nll(ws, params, split, inputs, shuffle_seed=0)
  assert not np.allclose(shuffled, expected / len(first))
  # Code popularity: counts of the training interactions' GID prefixes.
  train = ws.gids.codes[ws.prepared.rows(0)[1]]
  reference = []
  for t in range(codes.shape[1]):
    joint = Counter(map(tuple, train[:, :t + 1].tolist()))
    prefix = Counter(map(tuple, train[:, :t].tolist()))
    reference.append(np.mean([-np.log(max(joint[tuple(g[:t + 1])], 1)
                                      / max(prefix[tuple(g[:t])], 1)) for g in codes.tolist()]))
  np.testing.assert_allclose(diagnose.popularity_level_nll(ws, split), reference, rtol=1e-9)


def test_encoder_weight_reranks_the_beam_by_pooled_dot_products(run):
  """eval.encoder_weight: the beam's lists re-sorted by log p + w h(X_u).h(X_i), against NumPy
  over the plain beam's lists, with each input pooled alone (X_i without user slots)."""
  workdir, params = run
  c = _config(False)
  c.eval.encoder_weight = 0.5
  ws = parts_lib.build(Settings.parse(c), workdir, log=lambda *_: None)
  split, inputs = ws.eval_data(VALID)
  exclude = [split.exclude.row(u) for u in split.users]
  plain_ws = parts_lib.build(Settings.parse(_config(False)), workdir, log=lambda *_: None)
  items, scores = plain_ws.ranker(params).ranked(inputs, exclude, 20)
  encoder = jax.jit(lambda x: ColaRec.pool(ws.model.apply({"params": params}, x,
                                                          method=ColaRec.encode), x["mask"]))
  pool = lambda x: np.concatenate([np.asarray(encoder({k: v[r:r + 1] for k, v in x.items()}))
                                   for r in range(len(x["mask"]))])
  n = ws.prepared.dataset.num_items
  h_items = np.concatenate([np.zeros((1, ws.model.config.transformer.d_model)),
                            pool(stack([ws.builder.index_input(i, []) for i in range(1, n + 1)]))])
  h_users = pool(inputs)
  total = np.where(items > 0, scores + 0.5 * np.einsum("nd,nkd->nk", h_users, h_items[items]),
                   -np.inf)
  order = np.argsort(-total, axis=1, kind="stable")
  got_items, got_scores = ws.ranker(params).ranked(inputs, exclude, 20)
  np.testing.assert_array_equal(got_items, np.take_along_axis(items, order, 1))
  np.testing.assert_allclose(got_scores, np.take_along_axis(total, order, 1), atol=1e-4)
  assert (got_items != items).any()  # the weight changed some order


def test_greedy_report_scores_the_decoders_single_best_item_at_every_cut_off(run):
  workdir, params = run
  settings, ws = workspace(workdir, 20)
  split, inputs = ws.eval_data(VALID)
  report = diagnose.greedy_report(ws, params, split, inputs)
  ks = settings.eval.ks
  assert max(ks) > 1
  # One item per user: recall is the same at every cut-off.
  for k in ks:
    np.testing.assert_array_equal(report.per_user[f"recall@{k}"],
                                  report.per_user[f"recall@{ks[0]}"])
  # Where plain greedy decoding (nothing blocked) ends at an item the user may be shown, blocking
  # excluded items changes nothing on its path: the report scores exactly that item.
  items, _, _ = map(np.asarray, decode.beam_search(ws.model, params, inputs,
                                                   decode.Trie.build(ws.gids, 1)))
  greedy = items[:, 0]
  checked = 0
  for r, u in enumerate(split.users):
    if greedy[r] in split.exclude.row(u):
      continue
    truth = split.heldout.row(u)
    assert report.per_user[f"recall@{max(ks)}"][r] == pytest.approx(
        float(greedy[r] in truth) / len(truth))
    checked += 1
  assert checked > len(split.users) // 2
