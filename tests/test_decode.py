"""Constrained beam search: valid GIDs only, exhaustive scoring when the beam holds every item,
greedy decoding at beam 1, renormalisation, and beams sharing one user's cross keys/values."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from colarec_jax.ranking import decode
from colarec_jax.runtime import sharding
from colarec_jax.gid.builder import random_codes
from colarec_jax.gid.table import GidTable
from colarec_jax.model.colarec import ColaRec, ColaRecConfig
from colarec_jax.model.t5 import TransformerConfig

K, DEPTH, NUM_ITEMS = 3, 3, 20
TC = TransformerConfig(vocab_size=40, d_model=32, d_ff=64, num_heads=4, d_kv=8,
                       num_encoder_layers=1, num_decoder_layers=2, dropout_rate=0.0)
MODEL = ColaRec(ColaRecConfig(TC, num_items=NUM_ITEMS, num_users=5, branching=K, depth=DEPTH))


def make_inputs(b=4, length=10, seed=0):
  rng = np.random.default_rng(seed)
  mask = np.arange(length)[None] < rng.integers(4, length + 1, b)[:, None]
  return {"tokens": jnp.asarray(rng.integers(3, 40, (b, length)) * mask, jnp.int32),
          "items": jnp.asarray((rng.integers(0, NUM_ITEMS + 1, (b, length)) *
                                (rng.random((b, length)) < 0.2)) * mask, jnp.int32),
          "users": jnp.zeros((b, length), jnp.int32), "mask": jnp.asarray(mask),
          "task": jnp.zeros(b, jnp.int32)}


@pytest.fixture(scope="module")
def setup():
  gids = GidTable.from_codes(random_codes(NUM_ITEMS, branching=K, depth=DEPTH, seed=1), K)
  inputs = make_inputs()
  params = MODEL.init(jax.random.key(0), inputs, jnp.asarray(gids.codes[1:5]))["params"]
  # Sharper code distributions than the initialisation gives, so rankings are well separated.
  params = {**params, "codebook": params["codebook"] * 8}
  return gids, inputs, params


def exhaustive_scores(params, inputs, gids: GidTable, renormalize: bool,
                      model: ColaRec = MODEL) -> np.ndarray:
  """[b, num_items + 1] log-probability of every item's GID by teacher forcing (no cache, no
  beams); item 0 gets -inf. Invalid codes are masked per prefix like the search does."""
  encoded = model.apply({"params": params}, inputs, method=ColaRec.encode)
  b = encoded.shape[0]
  out = np.full((b, NUM_ITEMS + 1), -np.inf)
  for item in range(1, NUM_ITEMS + 1):
    codes = jnp.asarray(np.repeat(gids.codes[item][None], b, 0))
    last_items = jnp.asarray(gids.last_level_items(np.full(b, item)))
    logits = np.asarray(model.apply({"params": params}, encoded, inputs["mask"], codes,
                                    last_items, method=ColaRec.decode_codes), np.float64)
    total = np.zeros(b)
    for t, code in enumerate(gids.codes[item]):
      valid = gids.valid_next(gids.codes[item][:t])
      row = logits[:, t]
      if renormalize:
        row = np.where(valid, row, -np.inf)
      logp = row - np.log(np.exp(row - row.max(1, keepdims=True)).sum(1, keepdims=True)) \
          - row.max(1, keepdims=True)
      total += logp[:, code]
    out[:, item] = total
  return out


@pytest.mark.parametrize("renormalize", [False, True])
def test_full_beam_equals_exhaustive_ranking(setup, renormalize):
  gids, inputs, params = setup
  beam = 32  # more than the 20 items: every item is reached
  trie = decode.Trie.build(gids, beam)
  items, scores, codes = map(np.asarray, decode.beam_search(MODEL, params, inputs, trie,
                                                            renormalize=renormalize))
  reference = exhaustive_scores(params, inputs, gids, renormalize)
  for row in range(len(items)):
    found = items[row][items[row] > 0]
    assert sorted(found.tolist()) == list(range(1, NUM_ITEMS + 1))
    expected_order = np.argsort(-reference[row][1:], kind="stable") + 1
    np.testing.assert_array_equal(found, expected_order)
    np.testing.assert_allclose(scores[row][:NUM_ITEMS], reference[row][found], atol=1e-4)
    assert np.all(np.isneginf(scores[row][NUM_ITEMS:]))
    np.testing.assert_array_equal(codes[row][:NUM_ITEMS], gids.codes[found])


def test_a_prior_adds_its_row_of_each_prefixs_node_to_every_step(setup):
  """With a trie `prior` (any [nodes, K + 1] table) and a beam holding every item, each item
  scores its GID's log-probability plus the prior at each node its path leaves, and the items
  come in that order: a different order than without the prior for some input."""
  gids, inputs, params = setup
  prior = np.random.default_rng(3).normal(0, 2, (len(gids.children), K + 1)).astype(np.float32)
  items, scores, _ = map(np.asarray, decode.beam_search(
      MODEL, params, inputs, decode.Trie.build(gids, 32, prior=prior)))
  exact = exhaustive_scores(params, inputs, gids, renormalize=False)
  paths = np.concatenate([np.zeros((NUM_ITEMS + 1, 1), np.int64), gids.item_paths], 1)
  added = np.array([sum(prior[paths[i, t], gids.codes[i, t]] for t in range(DEPTH))
                    for i in range(NUM_ITEMS + 1)])
  reference = exact + added[None]
  for row in range(len(items)):
    expected = np.argsort(-reference[row][1:], kind="stable") + 1
    np.testing.assert_array_equal(items[row][:NUM_ITEMS], expected)
    np.testing.assert_allclose(scores[row][:NUM_ITEMS], reference[row][expected], atol=1e-4)
  assert (np.argsort(-reference[:, 1:], 1) != np.argsort(-exact[:, 1:], 1)).any()


def test_blocked_nodes_are_the_subtrees_of_excluded_items_only():
  gids = GidTable.from_codes(np.asarray([[1, 1, 1], [1, 1, 2], [1, 2, 1], [2, 1, 1]]), 2)
  paths = gids.item_paths
  for item in range(1, 5):  # each path walks the item's codes from the root to its leaf
    node = 0
    for t in range(3):
      node = gids.children[node, gids.codes[item, t]]
      assert paths[item, t] == node
  blocked = decode.blocked_nodes(gids, [np.asarray([1, 2]), np.asarray([3]), np.asarray([])])
  listed = [row[row != decode.NO_NODE].tolist() for row in blocked]
  # Row 0: items 1 and 2 fill the subtree [1, 1], so it and both leaves are blocked; [1] is not.
  assert listed[0] == sorted([paths[1, 1], paths[1, 2], paths[2, 2]])
  # Row 1: item 3 is alone under [1, 2]: that node and its leaf.
  assert listed[1] == sorted([paths[3, 1], paths[3, 2]])
  # Rows are padded to one width whatever the catalogue's size (a power of two, at least
  # MIN_BLOCKED, so most batches share one compiled search).
  assert listed[2] == [] and blocked.shape == (3, decode.MIN_BLOCKED)
  wide = decode.blocked_nodes(gids, [np.arange(1, 5)] * 2)
  assert wide.shape == (2, decode.MIN_BLOCKED)


def test_blocked_nodes_match_the_dense_definition_on_a_random_tree():
  """Against a dense NumPy reference: a node is blocked when every item under it is excluded."""
  rng = np.random.default_rng(0)
  gids = GidTable.from_codes(random_codes(300, branching=4, depth=5, seed=1), 4)
  exclude = [rng.choice(np.arange(1, 301), n, replace=False) for n in (0, 1, 7, 60, 299)]
  blocked = decode.blocked_nodes(gids, exclude)
  nodes = len(gids.children)
  under = [set() for _ in range(nodes)]
  for item in range(1, 301):
    for node in [0, *gids.item_paths[item]]:
      under[node].add(item)
  longest = 0
  for row, items in zip(blocked, exclude):
    expected = [n for n in range(nodes) if under[n] and under[n] <= set(items.tolist())]
    assert row[row != decode.NO_NODE].tolist() == expected
    longest = max(longest, len(expected))
  assert longest > decode.MIN_BLOCKED and blocked.shape[1] == 1 << (longest - 1).bit_length()


def test_excluded_items_are_skipped_inside_the_search(setup):
  """With a full beam the search returns every other item in exhaustive order; with a narrow one
  it still fills all its beams with items that are not excluded."""
  gids, inputs, params = setup
  b = inputs["mask"].shape[0]
  exclude = np.zeros((b, NUM_ITEMS + 1), bool)
  rng = np.random.default_rng(3)
  for row in range(b):
    exclude[row, rng.choice(np.arange(1, NUM_ITEMS + 1), 3 + 4 * row, replace=False)] = True
  reference = exhaustive_scores(params, inputs, gids, renormalize=False)
  blocked = jnp.asarray(decode.blocked_nodes(gids, [np.flatnonzero(r) for r in exclude]))
  items, scores, _ = map(np.asarray, decode.beam_search(
      MODEL, params, inputs, decode.Trie.build(gids, 32), blocked=blocked))
  for row in range(b):
    allowed = np.flatnonzero(~exclude[row][1:]) + 1
    expected = allowed[np.argsort(-reference[row][allowed], kind="stable")]
    np.testing.assert_array_equal(items[row][:len(allowed)], expected)
    np.testing.assert_allclose(scores[row][:len(allowed)], reference[row][expected], atol=1e-4)
    assert np.all(items[row][len(allowed):] == 0)
  narrow, _, _ = map(np.asarray, decode.beam_search(
      MODEL, params, inputs, decode.Trie.build(gids, 5), blocked=blocked))
  for row in range(b):
    assert np.all(narrow[row] > 0) and not exclude[row][narrow[row]].any()


@pytest.mark.parametrize("steps", [1, 2])
def test_a_search_stopped_early_holds_the_best_prefixes(setup, steps):
  """With a beam wider than the tree, the beams after `steps` steps are every valid prefix of that
  length, ordered by their summed log-probabilities from teacher forcing."""
  gids, inputs, params = setup
  trie = decode.Trie.build(gids, 32)
  items, scores, codes = map(np.asarray, decode.beam_search(MODEL, params, inputs, trie,
                                                            steps=steps))
  prefixes = sorted({tuple(c[:steps]) for c in gids.codes[1:].tolist()})
  encoded = MODEL.apply({"params": params}, inputs, method=ColaRec.encode)
  b = encoded.shape[0]
  expected = np.zeros((b, len(prefixes)))
  for n, prefix in enumerate(prefixes):
    full = np.zeros((b, DEPTH), np.int32)
    full[:, :steps] = prefix
    logits = np.asarray(MODEL.apply({"params": params}, encoded, inputs["mask"],
                                    jnp.asarray(full), method=ColaRec.decode_codes), np.float64)
    for t in range(steps):
      row = logits[:, t]
      top = row.max(1, keepdims=True)
      expected[:, n] += (row - top - np.log(np.exp(row - top).sum(1, keepdims=True)))[:, prefix[t]]
  assert np.all(items == 0)  # prefixes, not items
  for row in range(b):
    found = [tuple(c[:steps]) for c in codes[row][:len(prefixes)]]
    assert sorted(found) == prefixes and np.all(codes[row][:, steps:] == 0)
    order = np.argsort(-expected[row], kind="stable")
    np.testing.assert_allclose(scores[row][:len(prefixes)], expected[row][order], atol=1e-4)
    assert np.all(np.isneginf(scores[row][len(prefixes):]))


# Each model variant's parameters, changed so that its own term reorders items.
VARIANT_PARAMS = {
    "pooled_start": lambda p: p,
    "tie_last_level": lambda p: {**p, "item_embed": {
        "embedding": p["item_embed"]["embedding"] * 4}},
    "prefix_embed": lambda p: {**p, "prefix_embed": 2 * jax.random.normal(
        jax.random.key(3), (dataclasses.replace(MODEL.config, prefix_embed=True).prefix_rows,
                            TC.d_model))},
}


@pytest.mark.parametrize("flag", sorted(VARIANT_PARAMS))
def test_a_model_variants_search_equals_its_exhaustive_ranking(setup, flag):
  """The cached search scores every item as teacher forcing does, per model variant:
  model.pooled_start (h(X) added at the first step, per beam), model.tie_last_level (the last
  step scores each code's item, from the trie's leaves per beam, as the targets' last-level items
  do), model.prefix_embed (each step reads its beam's prefix row as the target's prefix)."""
  gids, inputs, params = setup
  model = ColaRec(dataclasses.replace(MODEL.config, **{flag: True}))
  params = VARIANT_PARAMS[flag](params)
  items, scores, _ = map(np.asarray, decode.beam_search(model, params, inputs,
                                                        decode.Trie.build(gids, 32)))
  reference = exhaustive_scores(params, inputs, gids, False, model=model)
  plain = exhaustive_scores(params, inputs, gids, False)
  assert any(not np.array_equal(np.argsort(-reference[r][1:]), np.argsort(-plain[r][1:]))
             for r in range(len(items)))
  for row in range(len(items)):
    np.testing.assert_array_equal(items[row][:NUM_ITEMS],
                                  np.argsort(-reference[row][1:], kind="stable") + 1)
    np.testing.assert_allclose(scores[row][:NUM_ITEMS], np.sort(reference[row][1:])[::-1],
                               atol=1e-4)


@pytest.mark.parametrize("beam", [1, 2, 5, 7])
def test_every_returned_gid_is_an_items_gid(setup, beam):
  gids, inputs, params = setup
  trie = decode.Trie.build(gids, beam)
  items, scores, codes = map(np.asarray,
                             decode.beam_search(MODEL, params, inputs, trie))
  assert items.shape == (4, beam) and codes.shape == (4, beam, DEPTH)
  assert np.all(items > 0)
  for row in range(len(items)):
    assert len(set(items[row].tolist())) == beam
    for item, gid in zip(items[row], codes[row]):
      assert gids.item_of(gid.tolist()) == item
    assert np.all(np.diff(scores[row]) <= 1e-6)  # best first


def test_beam_one_is_greedy(setup):
  gids, inputs, params = setup
  trie = decode.Trie.build(gids, 1)
  items, _, _ = map(np.asarray, decode.beam_search(MODEL, params, inputs, trie))
  encoded = MODEL.apply({"params": params}, inputs, method=ColaRec.encode)
  b = encoded.shape[0]
  prefix = np.zeros((b, DEPTH), np.int32)
  for t in range(DEPTH):
    # Full (uncached) decoder on the greedy prefix; positions after t do not affect position t.
    logits = np.asarray(MODEL.apply({"params": params}, encoded, inputs["mask"],
                                    jnp.asarray(prefix), method=ColaRec.decode_codes))[:, t]
    for row in range(b):
      valid = gids.valid_next(prefix[row, :t].tolist())
      prefix[row, t] = int(np.argmax(np.where(valid, logits[row], -np.inf)))
  expected = [gids.item_of(p.tolist()) for p in prefix]
  assert items[:, 0].tolist() == expected


def test_widths_follow_the_tree():
  gids = GidTable.from_codes(random_codes(NUM_ITEMS, branching=K, depth=DEPTH, seed=1), K)
  per_depth = np.bincount(gids.node_depth)
  assert decode.Trie.build(gids, 100).widths == (1, per_depth[1], per_depth[2], NUM_ITEMS)
  assert decode.Trie.build(gids, 4).widths == (1, min(4, per_depth[1]), 4, 4)


def test_search_compiles_once_per_shape(setup):
  """The library's own jitted search: new inputs and a rebuilt trie of the same shapes reuse it."""
  gids, _, params = setup
  run = lambda seed: decode.beam_search(MODEL, params, make_inputs(seed=seed),
                                       decode.Trie.build(gids, 6))
  run(0)
  compiled = decode._search._cache_size()  # whether or not an earlier test compiled this shape
  for seed in (1, 2):
    run(seed)
  assert decode._search._cache_size() == compiled


def test_items_with_a_long_beam_on_a_small_catalogue_pad_with_zero(setup):
  gids, inputs, params = setup
  trie = decode.Trie.build(gids, 50)
  items, scores, _ = map(np.asarray, decode.beam_search(MODEL, params, inputs, trie))
  assert items.shape == (4, 50)
  assert np.all(items[:, NUM_ITEMS:] == 0) and np.all(np.isneginf(scores[:, NUM_ITEMS:]))


@pytest.mark.parametrize("rows, length, token_bytes, shards, platform, expected", [
    (20, 256, 8192, 1, "cpu", 5),   # t5-small f32: 1024 tokens (4 rows) per chunk
    (20, 256, 4096, 1, "cpu", 4),   # bf16: 2048 tokens, and 3 chunks would not divide 20 rows
    (16, 256, 8192, 1, "cpu", 4),
    (13, 256, 8192, 1, "cpu", 13),  # a prime number of rows: one row per chunk
    (4, 256, 8192, 1, "cpu", 1),    # fits in one chunk
    (20, 256, 2048, 1, "cpu", 2),   # the default size (d_ff 512): 4096 tokens per chunk
    (8, 2000, 8192, 1, "cpu", 8),   # rows longer than a chunk: still one row each
    (20, 256, 8192, 2, "cpu", 5),   # 10 rows per device -> chunks of 2 rows that divide them
    (20, 256, 8192, 1, "gpu", 1),
    (20, 256, 8192, 1, "tpu", 1),
])
def test_encoder_chunks(rows, length, token_bytes, shards, platform, expected):
  assert decode.encoder_chunks(rows, length, token_bytes, shards=shards,
                               platform=platform) == expected


def test_chunked_encoder_equals_the_whole_batch(setup):
  _, _, params = setup
  inputs = make_inputs(b=6, length=10, seed=3)
  whole = np.asarray(decode._encode(MODEL, params, inputs, 1))
  for chunks in (2, 3, 6):
    np.testing.assert_allclose(np.asarray(decode._encode(MODEL, params, inputs, chunks)), whole,
                               rtol=1e-5, atol=1e-5)


def test_search_with_a_chunked_encoder_equals_the_unchunked_search(setup, monkeypatch):
  """12 rows of 200 tokens, with chunks of at most 1000 tokens: on CPU the search encodes them
  in 3 chunks on one device, and in 2 when the rows are sharded over 2 devices."""
  gids, _, params = setup
  monkeypatch.setattr(decode, "CPU_CHUNK_BYTES", 1000 * TC.d_ff * 4)
  inputs = make_inputs(b=12, length=200, seed=4)
  trie = decode.Trie.build(gids, 8)
  assert decode.encoder_chunks(12, 200, TC.d_ff * 4) == 3
  assert decode.encoder_chunks(12, 200, TC.d_ff * 4, shards=2) == 2
  whole = decode._search(params, inputs, trie.children, trie.leaf_item, model=MODEL,
                         widths=trie.widths, beam_size=8, renormalize=False, chunks=1,
                         steps=DEPTH)
  traced = []  # the chunk counts the search is traced with
  encode = decode._encode
  monkeypatch.setattr(decode, "_encode", lambda *args: traced.append(args[-1]) or encode(*args))
  decode._search.clear_cache()  # so both calls below trace, whatever ran before in this process
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:2]), ("data",))
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  for placed in (inputs, jax.device_put(inputs, rows)):
    chunked = decode.beam_search(MODEL, params, placed, trie)
    np.testing.assert_array_equal(np.asarray(chunked[0]), np.asarray(whole[0]))
    np.testing.assert_allclose(np.asarray(chunked[1]), np.asarray(whole[1]), rtol=1e-5)
  assert traced == [3, 2]


def test_a_trie_built_on_the_mesh_is_not_copied_on_each_search(setup):
  """Sharded rows: the trie's arrays are on every device already, so a search moves no data
  between devices (the guard raises on any), and it ranks as the single-device search."""
  gids, _, params = setup
  mesh = sharding.make_mesh(2)
  trie = decode.Trie.build(gids, 8, mesh)
  assert trie.children.sharding.is_fully_replicated
  assert trie.children.sharding.device_set == trie.leaf_item.sharding.device_set == set(
      mesh.devices.flat)
  inputs = make_inputs(b=4, length=10, seed=5)
  whole = decode.beam_search(MODEL, params, inputs, decode.Trie.build(gids, 8))
  sharded, replicated = sharding.shard_rows(inputs, mesh), sharding.replicate(params, mesh)
  decode.beam_search(MODEL, replicated, sharded, trie)  # compiled outside the guard
  with jax.transfer_guard("disallow"):
    items, scores, _ = decode.beam_search(MODEL, replicated, sharded, trie)
  np.testing.assert_array_equal(np.asarray(items), np.asarray(whole[0]))
  np.testing.assert_allclose(np.asarray(scores), np.asarray(whole[1]), rtol=1e-5)


@pytest.mark.parametrize("how", ["sibling_mean", "sibling_max"])
def test_unseen_leaves_score_as_their_trained_siblings_mean_or_best(setup, how):
  """Items 17..20 play items added after training (known_items=16): each new item's score is the
  log of the mean probability of its trained siblings' GIDs ('sibling_mean'), or the best of
  their log-probabilities ('sibling_max'); every trained item keeps its score."""
  gids, inputs, params = setup
  exact = exhaustive_scores(params, inputs, gids, renormalize=False)
  items, scores, _ = map(np.asarray, decode.beam_search(
      MODEL, params, inputs, decode.Trie.build(gids, 32, known_items=16, new_leaf=how)))
  pool = {"sibling_mean": lambda x: np.log(np.mean(np.exp(x))), "sibling_max": np.max}[how]
  checked = 0
  for b in range(len(items)):
    got = dict(zip(items[b].tolist(), scores[b].tolist()))
    for item in range(1, NUM_ITEMS + 1):
      siblings = [s for s in range(1, 17)
                  if (gids.codes[s][:-1] == gids.codes[item][:-1]).all()]
      if item <= 16:
        expected = exact[b, item]
      elif siblings:
        expected = pool(exact[b, siblings])
        checked += len(siblings) > 1
      else:  # a parent with only new items keeps the decoder's own score
        expected = exact[b, item]
      np.testing.assert_allclose(got[item], expected, rtol=1e-4, atol=1e-4)
  assert checked  # some new item has several trained siblings, where mean and best differ


def test_a_search_width_past_the_prefixes_makes_a_narrow_beam_exact(setup):
  """Keeping every depth-(l-1) prefix, the last step's beam of 4 is the exhaustive top 4, which
  the plain beam of 4 (pruning at every step) misses for some inputs."""
  gids, _, params = setup
  inputs = make_inputs(b=16, seed=5)
  reference = exhaustive_scores(params, inputs, gids, renormalize=False)
  prefixes = int((gids.node_depth == DEPTH - 1).sum())
  exact = decode.Trie.build(gids, 4, search_width=K ** (DEPTH - 1))
  assert exact.widths == (1, K, prefixes, 4)
  assert decode.Trie.build(gids, 4).widths == (1, K, 4, 4)
  items, scores, _ = map(np.asarray, decode.beam_search(MODEL, params, inputs, exact))
  plain, _, _ = map(np.asarray, decode.beam_search(MODEL, params, inputs,
                                                   decode.Trie.build(gids, 4)))
  expected = np.argsort(-reference[:, 1:], axis=1, kind="stable")[:, :4] + 1
  np.testing.assert_array_equal(items, expected)
  np.testing.assert_allclose(scores, np.take_along_axis(reference, expected, 1), atol=1e-4)
  assert (plain != expected).any(axis=1).any()


@pytest.mark.parametrize("renormalize,tied,known", [(False, False, 16), (True, False, 16),
                                                      (False, True, 16), (False, False, 0)])
def test_added_candidates_are_the_best_by_encoder_score_and_scored_as_the_search_would(
    setup, renormalize, tied, known):
  """Items 17..20 play added items with given encodings: each input's candidates are its best 2
  by h(X_u).h(X_i) (NumPy), and each scores what teacher forcing gives its GID (the sibling mean
  at the last step when known_items says they are new), as a full search would score it."""
  gids, inputs, params = setup
  model = ColaRec(dataclasses.replace(MODEL.config, tie_last_level=tied))
  if tied:
    params = {**params, "item_embed": {"embedding": params["item_embed"]["embedding"] * 4}}
  ids = np.arange(17, 21, dtype=np.int32)
  encodings = np.random.default_rng(3).normal(size=(4, TC.d_model)).astype(np.float32)
  trie = decode.Trie.build(gids, 2, known_items=known)  # a beam of 2: candidates reach past it
  out = decode.beam_search(model, params, inputs, trie, renormalize=renormalize,
                           added=(ids, gids.codes[ids].astype(np.int32), encodings),
                           added_count=2, pooled=True)
  assert len(out) == 6
  items, _, _, extra, extra_scores, users = map(np.asarray, out)
  expected_users = np.asarray(ColaRec.pool(model.apply({"params": params}, inputs,
                                                       method=ColaRec.encode), inputs["mask"]))
  np.testing.assert_allclose(users, expected_users, rtol=1e-5, atol=1e-6)
  best = ids[np.argsort(-(expected_users @ encodings.T), axis=1, kind="stable")[:, :2]]
  np.testing.assert_array_equal(extra, best)
  exact = exhaustive_scores(params, inputs, gids, renormalize, model=model)
  full_items, full_scores, _ = map(np.asarray, decode.beam_search(
      model, params, inputs, decode.Trie.build(gids, 32, known_items=known),
      renormalize=renormalize))
  for b in range(len(items)):
    searched = dict(zip(full_items[b].tolist(), full_scores[b].tolist()))
    for item, score in zip(extra[b].tolist(), extra_scores[b].tolist()):
      siblings = [s for s in range(1, 17) if (gids.codes[s][:-1] == gids.codes[item][:-1]).all()]
      expected = (np.log(np.mean(np.exp(exact[b, siblings]))) if known and siblings
                  else exact[b, item])
      np.testing.assert_allclose(score, expected, rtol=1e-4, atol=1e-4)
      np.testing.assert_allclose(score, searched[item], rtol=1e-4, atol=1e-4)


def test_added_candidates_on_a_mesh_equal_the_single_device_search(setup):
  """Rows sharded over 2 devices, the added items' arrays replicated: the candidates and their
  scores are those of the single-device search, and the search moves no data between devices."""
  gids, _, params = setup
  mesh = sharding.make_mesh(2)
  inputs = make_inputs(b=4, length=10, seed=7)
  ids = np.arange(17, 21, dtype=np.int32)
  added = (ids, gids.codes[ids].astype(np.int32),
           np.random.default_rng(4).normal(size=(4, TC.d_model)).astype(np.float32))
  whole = decode.beam_search(MODEL, params, inputs, decode.Trie.build(gids, 2, known_items=16),
                             added=added, added_count=2)
  trie = decode.Trie.build(gids, 2, mesh, known_items=16)
  sharded, replicated = sharding.shard_rows(inputs, mesh), sharding.replicate(params, mesh)
  on_mesh = sharding.replicate(added, mesh)
  decode.beam_search(MODEL, replicated, sharded, trie, added=on_mesh, added_count=2)
  with jax.transfer_guard("disallow"):
    out = decode.beam_search(MODEL, replicated, sharded, trie, added=on_mesh, added_count=2)
  np.testing.assert_array_equal(np.asarray(out[3]), np.asarray(whole[3]))
  np.testing.assert_allclose(np.asarray(out[4]), np.asarray(whole[4]), rtol=1e-5, atol=1e-5)
