"""The multi-task train step: 4 fake devices equal 1, one compile, finite, and it overfits.

The module shares one model, batch and compiled step per mesh: compiling the step is the slow part.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from colarec_jax.runtime import sharding
from colarec_jax.training import losses
from colarec_jax.training import step as step_lib
from colarec_jax.data import prepare as prepare_lib
from colarec_jax.data.dataset import TRAIN
from colarec_jax.gid import builder
from colarec_jax.gid.table import GidTable
from colarec_jax.model.inputs import InputBuilder, InputConfig, epoch_order
from colarec_jax.model.colarec import ColaRec, create_model
from colarec_jax.config.settings import LossWeights, Settings
from colarec_jax.training.state import init_state
from colarec_jax.runtime.errors import ConfigError
from configs import tiny

BATCH = 32


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  config = tiny.get_config()
  config.model.update({"d_model": 32, "d_ff": 64, "num_heads": 4, "dropout_rate": 0.0})
  config.gid.branching = 4
  settings = Settings.parse(config)
  prepared = prepare_lib.prepare(settings.data, str(tmp_path_factory.mktemp("step")),
                                 log=lambda *_: 0)
  gids = GidTable.from_codes(builder.random_codes(prepared.dataset.num_items, branching=4,
                                                  depth=3, seed=0), 4)
  inputs = InputBuilder(prepared, gids, InputConfig(max_item_tokens=12, max_length=64))
  users, items = prepared.rows(TRAIN)
  rng = np.random.default_rng(0)
  # Batch 32 (8 per device). With fewer rows some weight's gradient can be almost zero: float noise
  # that differs between reduction orders, which Adam's m / sqrt(v) turns into a sizeable share of
  # lr, so parameters would differ by more than 1e-5 for reasons unrelated to sharding (batch 16
  # did, on one attention output weight, once its projections changed matmul order).
  batch_users, batch_items, real = next(epoch_order(users, items, BATCH, rng))
  batch = inputs.training_batch(batch_users, batch_items, real, rng)
  model = create_model(settings.model, vocab_size=prepared.vocab_size,
                       num_items=prepared.dataset.num_items, num_users=prepared.dataset.num_users,
                       branching=gids.branching, depth=gids.depth)
  mesh = sharding.make_mesh(4)
  steps = {None: step_lib.make_train_step(model, LossWeights(), None),
           mesh: step_lib.make_train_step(model, LossWeights(), mesh)}
  return settings, model, batch, mesh, steps


def run(setup, mesh, steps=3, learning_rate=None):
  settings, model, batch, _, step_fns = setup
  state = init_state(model, step_lib.create_optimizer(settings.optim), batch, jax.random.key(0),
                     mesh)
  if learning_rate is not None:  # a hyper-parameter in the optimizer state: no recompile
    old = state.opt_state[1].hyperparams["learning_rate"]
    state.opt_state[1].hyperparams["learning_rate"] = jnp.full_like(old, learning_rate)
  step = step_fns[mesh]
  compiled_before = step._cache_size()
  history = []
  for _ in range(steps):
    state, metrics = step(state, sharding.shard_rows(batch, mesh), jax.random.key(1))
    history.append({k: float(v) for k, v in metrics.items()})
  assert step._cache_size() <= compiled_before + 1  # at most one compile for all the steps
  return state, history


def test_four_devices_match_one_and_metrics_are_finite(setup):
  one, h1 = run(setup, None)
  four, h4 = run(setup, setup[3])
  diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()),
                                       one.params, four.params))
  assert max(diffs) < 1e-5
  assert h4[-1]["loss"] == pytest.approx(h1[-1]["loss"], rel=1e-5)
  assert set(h1[-1]) == {"loss", "rec", "index", "bpr", "contrastive", "grad_norm",
                         "learning_rate"}
  assert all(np.isfinite(v) for step in h1 for v in step.values())
  assert h1[-1]["learning_rate"] == pytest.approx(5e-4)


def greedy(model, params, inputs, depth):
  encoded = model.apply({"params": params}, inputs, method=ColaRec.encode)
  decoder = ColaRec(model.config, decode=True)
  _, cache = decoder.apply({"params": params}, encoded, inputs["mask"],
                           method=ColaRec.init_cache, mutable=["cache"])
  previous, out = jnp.zeros(encoded.shape[0], jnp.int32), []
  for t in range(depth):
    logits, cache = decoder.apply({"params": params, **cache}, encoded, inputs["mask"], previous,
                                  t, method=ColaRec.decode_step, mutable=["cache"])
    previous = jnp.argmax(logits[:, 1:], axis=-1) + 1
    out.append(previous)
  return np.stack(out, axis=1)


def test_tiny_model_overfits_a_handful_of_interactions(setup):
  """The wiring test: L_rec goes to ~0 and greedy decoding returns the right GIDs."""
  _, model, batch, _, _ = setup
  state, history = run(setup, None, steps=200, learning_rate=3e-3)
  assert history[-1]["rec"] < 0.05, history[-1]
  np.testing.assert_array_equal(greedy(model, state.params, batch["user"], 3),
                                batch["item_codes"])


@pytest.mark.parametrize("removed", ["rec", "index", "bpr", "contrastive"])
def test_a_zero_weight_removes_the_term_and_its_work(setup, removed):
  """The ablated step's loss is the full step's other terms, weighted; it compiles once, and
  computes less (fewer FLOPs: the passes only the removed term read are gone)."""
  settings, model, batch, _, step_fns = setup
  full_weights = LossWeights()
  ablated = LossWeights(**{**full_weights.as_dict(), removed: 0.0})
  state = lambda: init_state(model, step_lib.create_optimizer(settings.optim), batch,
                             jax.random.key(0))
  _, full = step_fns[None](state(), batch, jax.random.key(1))
  step = step_lib.make_train_step(model, ablated, None)
  _, got = step(state(), batch, jax.random.key(1))
  assert removed not in got
  expected = sum(w * float(full[name]) for name, w in ablated.as_dict().items() if w)
  assert float(got["loss"]) == pytest.approx(expected, rel=1e-5)
  for name in set(full_weights.as_dict()) - {removed}:
    assert float(got[name]) == pytest.approx(float(full[name]), rel=1e-5), name
  compiled = step._cache_size()
  step(state(), batch, jax.random.key(2))
  assert step._cache_size() == compiled == 1
  flops = lambda fn: fn.lower(state(), batch, jax.random.key(1)).compile().cost_analysis()["flops"]
  assert flops(step) < flops(step_fns[None])


def test_tied_last_level_step_reads_each_targets_last_level_items(setup):
  """model.tie_last_level: the step's L_rec is the generation loss of the tied decoder given the
  batch's last-level items (recomputed here from the GIDs), and differs from the untied one."""
  settings, model, batch, _, step_fns = setup
  gids = GidTable.from_codes(builder.random_codes(model.config.num_items, branching=4, depth=3,
                                                  seed=0), 4)  # the setup's GIDs
  last = lambda codes: gids.last_level_items([gids.item_of(c) for c in codes.tolist()])
  tied_batch = {**batch, "item_last_items": last(batch["item_codes"]),
                "neg_last_items": last(batch["neg_codes"])}
  tied = ColaRec(dataclasses.replace(model.config, tie_last_level=True))
  state = init_state(tied, step_lib.create_optimizer(settings.optim), batch, jax.random.key(0))
  params = state.params  # the step donates the state: the reference first
  encoded = tied.apply({"params": params}, batch["user"], method=ColaRec.encode)
  logits = tied.apply({"params": params}, encoded, batch["user"]["mask"], batch["item_codes"],
                      tied_batch["item_last_items"], method=ColaRec.decode_codes)
  expected = losses.generation(logits=logits, codes=batch["item_codes"], mask=batch["mask"],
                               total=batch["mask"].sum())
  _, got = step_lib.make_train_step(tied, LossWeights(), None)(state, tied_batch,
                                                                 jax.random.key(1))
  assert float(got["rec"]) == pytest.approx(float(expected), rel=1e-5)
  plain = init_state(model, step_lib.create_optimizer(settings.optim), batch, jax.random.key(0))
  _, untied = step_fns[None](plain, batch, jax.random.key(1))
  assert float(untied["rec"]) != pytest.approx(float(got["rec"]), rel=1e-3)


def test_id_tables_from_lightgcn_keep_its_geometry():
  """LightGCN's embeddings become ID tables of unit variance whose Gram matrix is LightGCN's up to
  one scale (the projection is orthogonal), row 0 (padding) zero; shapes must match the model."""
  from colarec_jax.training.state import id_embeddings
  rng = np.random.default_rng(0)
  cf = np.concatenate([np.zeros((1, 8)), rng.normal(0.3, 2.0, (30, 8))])
  for d_model in (8, 16):
    table = id_embeddings(cf, d_model, seed=1)
    assert table.shape == (31, d_model) and np.all(table[0] == 0)
    assert np.std(table[1:]) == pytest.approx(1.0, rel=1e-5)
    centred = cf[1:] - cf[1:].mean(0)
    gram, expected = table[1:] @ table[1:].T, centred @ centred.T
    np.testing.assert_allclose(gram / gram[0, 0], expected / expected[0, 0], rtol=1e-4,
                               atol=1e-4)


def test_frozen_parameters_keep_their_values_and_the_rest_trains(setup):
  settings, model, batch, _, _ = setup
  step = step_lib.make_train_step(model, LossWeights(), None, ("item_embed", "user_embed"))
  state = init_state(model, step_lib.create_optimizer(settings.optim), batch, jax.random.key(0))
  before = jax.tree.map(np.asarray, state.params)
  for _ in range(2):
    state, _ = step(state, batch, jax.random.key(1))
  for name in ("item_embed", "user_embed"):
    np.testing.assert_array_equal(np.asarray(state.params[name]["embedding"]),
                                  before[name]["embedding"])
  # The shared token table and the codebooks move (and would the ID tables, unfrozen).
  assert not np.allclose(np.asarray(state.params["shared"]["embedding"]),
                         before["shared"]["embedding"])
  assert not np.allclose(np.asarray(state.params["codebook"]), before["codebook"])
  moving, _ = run(setup, None, steps=2)
  assert not np.allclose(np.asarray(moving.params["item_embed"]["embedding"]),
                         before["item_embed"]["embedding"])


def test_freezing_random_id_tables_is_refused():
  from colarec_jax.runtime.errors import ConfigError
  config = tiny.get_config()
  config.model.freeze_ids = True
  with pytest.raises(ConfigError, match=r"model\.freeze_ids: got True with "
                     r"model\.id_init='random'; expected id_init='lightgcn'"):
    Settings.parse(config)
  config.model.id_init = "lightgcn"
  assert Settings.parse(config).model.freeze_ids


def test_the_authors_reduction_reaches_the_step(setup):
  """loss.generation_reduction='mean' (the default, the authors'): the step's L_rec and L_index
  are the 'sum' step's divided by the l = 3 code positions, L_bpr and L_c unchanged, and the
  total reweighted."""
  settings, model, batch, _, step_fns = setup
  state = lambda: init_state(model, step_lib.create_optimizer(settings.optim), batch,
                             jax.random.key(0))
  summed = dataclasses.replace(LossWeights(), generation_reduction="sum")
  _, full = step_lib.make_train_step(model, summed, None)(state(), batch, jax.random.key(1))
  mean = LossWeights()
  assert mean.generation_reduction == "mean"
  _, got = step_fns[None](state(), batch, jax.random.key(1))
  depth = batch["item_codes"].shape[1]
  for name in ("rec", "index"):
    assert float(got[name]) == pytest.approx(float(full[name]) / depth, rel=1e-5)
  for name in ("bpr", "contrastive"):
    assert float(got[name]) == pytest.approx(float(full[name]), rel=1e-6)
  expected = sum(w * float(got[name]) for name, w in mean.as_dict().items())
  assert float(got["loss"]) == pytest.approx(expected, rel=1e-5)


def test_sharded_id_tables_match_one_device_and_stay_split(setup, tmp_path):
  """model.shard_ids on 4 devices: the ID tables and their Adam moments are split by rows (each
  device holds a quarter of the padded rows, the rest of the state is replicated); 3 steps give
  one device's losses and parameters (the same padded model, unsplit) to float rounding; the
  state stays split; a checkpoint restores split; beam search over the split tables returns one
  device's lists."""
  from colarec_jax.ranking import decode
  from colarec_jax.run.store import state_arrays
  from colarec_jax.runtime import checkpoint

  settings, model, batch, mesh, _ = setup
  split_model = ColaRec(dataclasses.replace(model.config, shard_ids=True))
  cfg = split_model.config
  rows, d = cfg.id_rows(cfg.num_items), cfg.transformer.d_model
  assert rows == 1024 and cfg.id_rows(cfg.num_users) == 1024  # padded to the row multiple
  optimizer = step_lib.create_optimizer(settings.optim)
  one = init_state(split_model, optimizer, batch, jax.random.key(0))
  four = init_state(split_model, optimizer, batch, jax.random.key(0), mesh)

  def placements(state):
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state_arrays(state))[0]:
      name = jax.tree_util.keystr(path)
      out[name] = (leaf.sharding.spec, {s.data.shape for s in leaf.addressable_shards})
    return out

  def check_split(state):
    placed = placements(state)
    tables = {k: v for k, v in placed.items() if "item_embed" in k or "user_embed" in k}
    assert len(tables) == 6  # each table, and its two Adam moments
    for spec, shapes in tables.values():  # P('data', None), which JAX may write P('data',)
      assert tuple(spec)[:1] == ("data",) and not any(tuple(spec)[1:])
      assert shapes == {(rows // 4, d)}
    for name, (spec, _) in placed.items():
      if name not in tables:
        assert not any(tuple(spec)), name

  check_split(four)
  step_one = step_lib.make_train_step(split_model, LossWeights(), None)
  step_four = step_lib.make_train_step(split_model, LossWeights(), mesh)
  # No device ever holds a whole table, not even inside the step (partitioning a plain gather,
  # XLA all-gathered both tables there).
  hlo = step_four.lower(four, sharding.shard_rows(batch, mesh), jax.random.key(1))
  assert f"f32[{rows},{d}]" not in hlo.compile().as_text()
  for _ in range(3):
    one, m1 = step_one(one, batch, jax.random.key(1))
    four, m4 = step_four(four, sharding.shard_rows(batch, mesh), jax.random.key(1))
    for name in ("loss", "rec", "index", "bpr", "contrastive", "grad_norm"):
      assert float(m4[name]) == pytest.approx(float(m1[name]), rel=1e-5), name
  check_split(four)
  diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()),
                                       one.params, four.params))
  assert max(diffs) < 1e-5

  manager = checkpoint.create_manager(str(tmp_path / "ckpt"), checkpoint.BEST)
  checkpoint.save(manager, 1, state_arrays(four), {}, score=0.0)
  manager.wait_until_finished()
  shapes = jax.eval_shape(lambda: four.params)
  target = jax.tree.map(lambda s, p: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=p), shapes,
                        sharding.state_shardings(shapes, mesh, True))
  reader = checkpoint.create_manager(str(tmp_path / "ckpt"), checkpoint.BEST)  # as readers do
  restored = checkpoint.restore_params(reader, 1, target)
  table = restored["item_embed"]["embedding"]
  assert table.sharding.is_equivalent_to(four.params["item_embed"]["embedding"].sharding, 2)
  assert {s.data.shape for s in table.addressable_shards} == {(rows // 4, d)}
  np.testing.assert_array_equal(np.asarray(table), np.asarray(four.params["item_embed"]["embedding"]))

  gids = GidTable.from_codes(builder.random_codes(cfg.num_items, branching=4, depth=3, seed=0), 4)
  single = decode.beam_search(split_model, one.params, batch["user"], decode.Trie.build(gids, 8))
  split = decode.beam_search(split_model, restored, sharding.shard_rows(batch["user"], mesh),
                             decode.Trie.build(gids, 8, mesh))
  np.testing.assert_array_equal(np.asarray(split[0]), np.asarray(single[0]))
  np.testing.assert_allclose(np.asarray(split[1]), np.asarray(single[1]), atol=1e-4)


def test_in_batch_negatives_reach_the_step(setup):
  """loss.pair_negatives='in_batch': the step's L_bpr and L_c are the in-batch softmax of the
  batch's pooled encodings (each pooled here on its own), L_rec and L_index unchanged."""
  settings, model, batch, _, _ = setup
  state = init_state(model, step_lib.create_optimizer(settings.optim), batch, jax.random.key(0))
  weights = dataclasses.replace(LossWeights(), pair_negatives="in_batch")
  _, single = step_lib.loss_terms(model, LossWeights(), state.params, batch)
  _, got = step_lib.loss_terms(model, weights, state.params, batch)
  pool = lambda x: ColaRec.pool(model.apply({"params": state.params}, x, method=ColaRec.encode),
                                x["mask"])
  h = {k: pool(batch[k]) for k in ("user", "item", "neg", "pos")}
  mask, total = batch["mask"], np.sum(batch["mask"])
  want = {"bpr": losses.in_batch(anchor=h["user"], positive=h["item"], negative=h["neg"],
                                 mask=mask, total=total),
          "contrastive": losses.in_batch(anchor=h["item"], positive=h["pos"], negative=h["neg"],
                                         mask=mask, total=total)}
  for name in ("bpr", "contrastive"):
    assert float(got[name]) == pytest.approx(float(want[name]), rel=1e-4)
    assert float(got[name]) != pytest.approx(float(single[name]), rel=1e-2)
  for name in ("rec", "index"):
    assert float(got[name]) == pytest.approx(float(single[name]), rel=1e-6)


def test_warmup_cosine_follows_its_formula():
  """optim.schedule='warmup_cosine': update t (from 0) uses a learning rate rising linearly from 0
  to the peak over warmup_steps, then half a cosine down towards 0 at the run's step count."""
  optim = Settings.parse(tiny.get_config()).optim
  optim = dataclasses.replace(optim, learning_rate=2e-3, schedule="warmup_cosine", warmup_steps=4)
  total = 12
  tx = step_lib.create_optimizer(optim, total)
  params = {"w": jnp.ones(3)}
  state = tx.init(params)
  used = []
  for _ in range(total):
    _, state = tx.update({"w": jnp.full(3, 0.1)}, state, params)
    used.append(float(state[1].hyperparams["learning_rate"]))  # what this update used
  expected = [2e-3 * t / 4 if t < 4 else 1e-3 * (1 + np.cos(np.pi * (t - 4) / (total - 4)))
              for t in range(total)]
  np.testing.assert_allclose(used, expected, rtol=1e-5, atol=1e-9)
  assert used[4] == pytest.approx(2e-3) and 0 < used[-1] < 1e-4
  with pytest.raises(ConfigError, match="optim.warmup_steps.*fewer than the 4 training"):
    step_lib.create_optimizer(optim, 4)
