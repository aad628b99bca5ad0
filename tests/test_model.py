"""The T5 stack and the ColaRec model: shapes, bucketing, slots, pooling, cached decoding, bf16."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from colarec_jax.model.colarec import (UNKNOWN_ITEM, ColaRec, ColaRecConfig, ModelConfig,
                                       create_model, prefix_index)
from colarec_jax.runtime.errors import ConfigError
from colarec_jax.model import t5
from colarec_jax.model.t5 import TransformerConfig, relative_position_bucket

TC = TransformerConfig(vocab_size=50, d_model=32, d_ff=64, num_heads=4, d_kv=8,
                       num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0)
CFG = ColaRecConfig(TC, num_items=20, num_users=10, branching=4, depth=3)


def bucket_reference(rel, bidirectional, num_buckets=32, max_distance=128):
  """T5's bucketing, written from the paper's description with Python integers."""
  bucket = 0
  if bidirectional:
    num_buckets //= 2
    bucket += num_buckets if rel > 0 else 0
    n = abs(rel)
  else:
    n = max(-rel, 0)
  max_exact = num_buckets // 2
  if n < max_exact:
    return bucket + n
  large = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact)
                          * (num_buckets - max_exact))
  return bucket + min(large, num_buckets - 1)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_position_buckets(bidirectional):
  rel = np.arange(-300, 300)
  got = relative_position_bucket(jnp.asarray(rel), bidirectional=bidirectional, num_buckets=32,
                                 max_distance=128)
  assert np.asarray(got).tolist() == [bucket_reference(int(r), bidirectional) for r in rel]


def example_inputs(b=3, length=12, seed=0):
  rng = np.random.default_rng(seed)
  mask = np.ones((b, length), bool)
  mask[0, 9:] = False
  return {"tokens": jnp.asarray(rng.integers(3, 50, (b, length)), jnp.int32),
          "items": jnp.zeros((b, length), jnp.int32).at[:, 1].set(5),
          "users": jnp.zeros((b, length), jnp.int32).at[:, 6].set(2),
          "mask": jnp.asarray(mask), "task": jnp.array([0, 1, 0])}, \
      jnp.asarray(rng.integers(1, 5, (b, 3)), jnp.int32)


@pytest.fixture(scope="module")
def params():
  inputs, codes = example_inputs()
  return ColaRec(CFG).init(jax.random.key(0), inputs, codes)["params"]


def test_prefix_index_numbers_every_prefix_once_in_lexicographic_order():
  """K=3, l=3: the root is row 0, codes (1), (2), (3) rows 1-3, (1, 1) ... (3, 3) rows 4-12."""
  prefixes = [()] + [(a,) for a in (1, 2, 3)] + [(a, b) for a in (1, 2, 3) for b in (1, 2, 3)]
  codes = jnp.asarray([list(p) + [1] * (3 - len(p)) for p in prefixes], jnp.int32)
  lengths = jnp.asarray([len(p) for p in prefixes])
  assert np.asarray(prefix_index(codes, lengths, 3)).tolist() == list(range(13))
  assert dataclasses.replace(CFG, branching=3).prefix_rows == 13


def test_prefix_embed_row_acts_as_the_code_row_for_every_gid_under_that_prefix(params):
  """model.prefix_embed: a delta in the row of prefix (c) changes the decoder input at level 2
  exactly as adding it to level 2's code row of c would, for GIDs starting with c only; a zero
  table is the plain model."""
  inputs, codes = example_inputs(seed=2)
  codes = codes.at[:2, 0].set(2).at[2:, 0].set(3)
  plain, prefixed = ColaRec(CFG), ColaRec(dataclasses.replace(CFG, prefix_embed=True))
  rows = prefixed.config.prefix_rows
  encoded = plain.apply({"params": params}, inputs, method=ColaRec.encode)
  decode = lambda model, p: np.asarray(model.apply({"params": p}, encoded, inputs["mask"], codes,
                                                   method=ColaRec.decode_codes))
  zero = {**params, "prefix_embed": jnp.zeros((rows, TC.d_model))}
  np.testing.assert_allclose(decode(prefixed, zero), decode(plain, params), atol=1e-6)
  delta = jax.random.normal(jax.random.key(1), (TC.d_model,))
  row = 1 + (2 - 1)  # prefix (2): after the root's row 0, codes 1..K in order
  moved = decode(prefixed, {**zero, "prefix_embed": zero["prefix_embed"].at[row].set(delta)})
  shifted = decode(plain, {**params, "code_embed": params["code_embed"].at[1, 2].add(delta)})
  np.testing.assert_allclose(moved[:2], shifted[:2], atol=1e-5)
  np.testing.assert_allclose(moved[2:], decode(plain, params)[2:], atol=1e-6)
  assert not np.allclose(moved[:2], decode(plain, params)[:2])


def test_prefix_embed_on_too_many_prefixes_names_the_key():
  cfg = ModelConfig(prefix_embed=True)
  with pytest.raises(ConfigError, match="model.prefix_embed.*K=2048, l=3"):
    create_model(cfg, vocab_size=10, num_items=5, num_users=3, branching=2048, depth=3)
  assert create_model(cfg, vocab_size=10, num_items=5, num_users=3, branching=32,
                      depth=4).config.prefix_rows == 1 + 32 + 32 ** 2 + 32 ** 3


def test_tied_last_level_adds_each_codes_item_against_the_decoder_state(params):
  """model.tie_last_level: with item a's ID row set to the last level's codebook row of code c',
  the tied term of a code leading to a equals code c''s untied logit less its bias; codes that
  lead to no item, or to an item after the trained ones, and earlier levels are unchanged."""
  inputs, codes = example_inputs()
  plain, tied = ColaRec(CFG), ColaRec(dataclasses.replace(CFG, tie_last_level=True))
  a, c_prime = 7, 3
  table = params["item_embed"]["embedding"].at[a].set(params["codebook"][-1, c_prime])
  p = {**params, "item_embed": {"embedding": table}}
  last_items = jnp.asarray([[0, a, 0, CFG.num_items + 1, 0]] * 3, jnp.int32)  # codes 1 and 3
  encoded = plain.apply({"params": p}, inputs, method=ColaRec.encode)
  before = plain.apply({"params": p}, encoded, inputs["mask"], codes, method=ColaRec.decode_codes)
  after = tied.apply({"params": p}, encoded, inputs["mask"], codes, last_items,
                     method=ColaRec.decode_codes)
  expected = before[:, -1, c_prime] - p["codebook_bias"][-1, c_prime]
  np.testing.assert_allclose(after[:, -1, 1] - before[:, -1, 1], expected, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.delete(after[:, -1], 1, axis=1),
                             np.delete(before[:, -1], 1, axis=1), atol=1e-6)
  np.testing.assert_allclose(after[:, :-1], before[:, :-1], atol=1e-6)


def test_shapes_and_parameter_tree(params):
  inputs, codes = example_inputs()
  logits, pooled = ColaRec(CFG).apply({"params": params}, inputs, codes)
  assert logits.shape == (3, 3, 5) and pooled.shape == (3, 32)
  assert params["codebook"].shape == (3, 5, 32) and params["codebook_bias"].shape == (3, 5)
  assert params["item_embed"]["embedding"].shape == (21, 32)
  assert "relative_bias" in params["encoder"] and "relative_bias" in params["decoder"]
  assert "relative_bias" not in params["encoder"]["layer_1"]


def test_pool_takes_the_last_real_position(params):
  inputs, _ = example_inputs()
  model = ColaRec(CFG)
  encoded = model.apply({"params": params}, inputs, method=ColaRec.encode)
  pooled = ColaRec.pool(encoded, inputs["mask"])
  np.testing.assert_allclose(pooled[0], encoded[0, 8])
  np.testing.assert_allclose(pooled[1], encoded[1, 11])


def test_slots_use_atomic_embeddings(params):
  inputs, _ = example_inputs()
  model = ColaRec(CFG)
  x = model.apply({"params": params}, inputs, method=ColaRec.embed_inputs)
  np.testing.assert_allclose(x[:, 1], params["item_embed"]["embedding"][5][None].repeat(3, 0))
  np.testing.assert_allclose(x[:, 6], params["user_embed"]["embedding"][2][None].repeat(3, 0))
  np.testing.assert_allclose(x[:, 0], params["task_embed"]["embedding"][np.array([0, 1, 0])])
  np.testing.assert_allclose(x[:, 3], params["shared"]["embedding"][inputs["tokens"][:, 3]])


def test_padding_does_not_change_real_positions(params):
  inputs, codes = example_inputs()
  model = ColaRec(CFG)
  changed = dict(inputs, tokens=inputs["tokens"].at[0, 10].set(7))  # row 0 is padded from 9
  a, _ = model.apply({"params": params}, inputs, codes)
  b, _ = model.apply({"params": params}, changed, codes)
  np.testing.assert_allclose(a, b, atol=1e-6)


def test_cached_decoding_equals_full_decoder(params):
  inputs, codes = example_inputs()
  logits, _ = ColaRec(CFG).apply({"params": params}, inputs, codes)
  encoded = ColaRec(CFG).apply({"params": params}, inputs, method=ColaRec.encode)
  decoder = ColaRec(CFG, decode=True)
  _, state = decoder.apply({"params": params}, encoded, inputs["mask"],
                           method=ColaRec.init_cache, mutable=["cache"])
  previous = jnp.zeros(3, jnp.int32)
  for t in range(3):
    step, state = decoder.apply({"params": params, **state}, encoded, inputs["mask"], previous, t,
                                method=ColaRec.decode_step, mutable=["cache"])
    np.testing.assert_allclose(step, logits[:, t], atol=1e-5)
    previous = codes[:, t]


def test_bfloat16_compute_keeps_float32_parameters():
  cfg = ColaRecConfig(TransformerConfig(**{**TC.__dict__, "dtype": jnp.bfloat16}), 20, 10, 4, 3)
  inputs, codes = example_inputs()
  params = ColaRec(cfg).init(jax.random.key(0), inputs, codes)["params"]
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  logits, pooled = ColaRec(cfg).apply({"params": params}, inputs, codes)
  assert logits.dtype == jnp.float32 and bool(jnp.isfinite(logits).all())
  full, _ = ColaRec(CFG).apply({"params": params}, inputs, codes)
  np.testing.assert_allclose(logits, full, atol=0.1)


def test_dropout_keeps_the_right_share_and_scales():
  from colarec_jax.model.t5 import Dropout
  x = jnp.ones((64, 8, 128))
  layer = Dropout(0.1)
  out = np.asarray(layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(3)}))
  kept = out != 0
  assert kept.mean() == pytest.approx(0.9, abs=0.005)  # 65,536 draws: sd 0.0012
  np.testing.assert_allclose(out[kept], 1 / 0.9, rtol=1e-6)
  again = layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(3)})
  other = layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(4)})
  np.testing.assert_array_equal(out, again)  # a function of the rng
  agree = (np.asarray(other) != 0) == kept
  assert agree.mean() == pytest.approx(0.9 * 0.9 + 0.1 * 0.1, abs=0.005)  # independent masks
  # Neighbouring elements are independent too (no stripes from the element counter).
  flat = kept.reshape(-1).astype(float)
  assert abs(np.corrcoef(flat[:-1], flat[1:])[0, 1]) < 0.02
  np.testing.assert_array_equal(layer.apply({}, x, deterministic=True), x)


def attention_reference(params, x, kv, bias, heads, xp=np):
  """Textbook multi-head attention (NumPy float64, or jnp for gradients): project keys and
  values, then attend."""
  p = {k: v["kernel"] if xp is jnp else np.asarray(v["kernel"], np.float64)
       for k, v in params.items()}
  split = lambda t: t.reshape(t.shape[:2] + (heads, -1)).transpose(0, 2, 1, 3)
  q, k, v = split(x @ p["q"]), split(kv @ p["k"]), split(kv @ p["v"])
  scores = q @ k.transpose(0, 1, 3, 2) + bias
  w = xp.exp(scores - scores.max(-1, keepdims=True))
  w = w / w.sum(-1, keepdims=True)
  out = (w @ v).transpose(0, 2, 1, 3).reshape(x.shape[:2] + (-1,))
  return out @ p["o"]


@pytest.mark.parametrize("q_len,k_len", [(3, 40), (30, 6)])
def test_cross_attention_folded_or_projected_equals_reference(q_len, k_len):
  """Few queries fold W_k, W_v into the query side; many project the keys. Both are attention."""
  attention = t5.Attention(TC, is_cross=True)
  assert attention._fold_projections(q_len, k_len) == (q_len == 3)
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, q_len, TC.d_model)).astype(np.float32)
  kv = rng.normal(size=(2, k_len, TC.d_model)).astype(np.float32)
  mask = np.ones((2, k_len), bool)
  mask[1, k_len // 2:] = False
  bias = np.asarray(t5.padding_bias(jnp.asarray(mask), jnp.float32))
  params = attention.init(jax.random.key(2), x, kv, bias, deterministic=True)["params"]
  got = attention.apply({"params": params}, x, kv, bias, deterministic=True)
  ref_bias = np.where(mask, 0.0, -1e30)[:, None, None]
  want = attention_reference(params, x, kv, ref_bias, TC.num_heads)
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=2e-5)
  # Gradients with respect to the weights and both inputs, against autodiff of the textbook form.
  cot = rng.normal(size=got.shape).astype(np.float32)
  ours = jax.grad(lambda p, a, b: jnp.sum(attention.apply({"params": p}, a, b, bias,
                                                          deterministic=True) * cot),
                  argnums=(0, 1, 2))(params, x, kv)
  theirs = jax.grad(lambda p, a, b: jnp.sum(attention_reference(p, a, b, ref_bias.astype(
      np.float32), TC.num_heads, xp=jnp) * cot), argnums=(0, 1, 2))(params, x, kv)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_batch_broadcast_gradient_is_the_sum_over_the_batch():
  shared = jnp.asarray(np.random.default_rng(0).normal(size=(1, 2, 3, 4)), jnp.float32)
  weights = np.random.default_rng(1).normal(size=(5, 2, 3, 4)).astype(np.float32)
  out = t5.batch_broadcast(5, shared)
  np.testing.assert_array_equal(np.asarray(out), np.broadcast_to(np.asarray(shared), (5, 2, 3, 4)))
  grad = jax.grad(lambda s: jnp.sum(t5.batch_broadcast(5, s) * weights))(shared)
  np.testing.assert_allclose(np.asarray(grad), weights.sum(0, keepdims=True), rtol=1e-6)


@pytest.mark.parametrize("shape", [(7, 3, 5), (7, 5, 3), (4, 6, 6)])
def test_matmul_gradients_match_numpy(shape):
  """Both weight-gradient forms (widening kernels transpose x first) give x^T g and g w^T."""
  n, d_in, d_out = shape
  rng = np.random.default_rng(2)
  x, w = rng.normal(size=(n, d_in)), rng.normal(size=(d_in, d_out))
  cot = rng.normal(size=(n, d_out))
  out = t5.matmul(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32))
  np.testing.assert_allclose(np.asarray(out), x @ w, rtol=1e-5, atol=1e-5)
  dx, dw = jax.jit(jax.grad(lambda a, b: jnp.sum(t5.matmul(a, b) * cot), argnums=(0, 1)))(
      jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32))
  np.testing.assert_allclose(np.asarray(dx), cot @ w.T, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(dw), x.T @ cot, rtol=1e-5, atol=1e-5)


def test_history_codes_add_their_codebook_rows_at_item_slots(params):
  inputs, _ = example_inputs()
  model = ColaRec(CFG)
  b, length = inputs["items"].shape
  rng = np.random.default_rng(5)
  codes = rng.integers(1, CFG.branching + 1, (b, length, CFG.depth))
  codes = np.where((np.asarray(inputs["items"]) > 0)[..., None], codes, 0)
  embed = lambda x: np.asarray(model.apply({"params": params}, x,
                                           method=ColaRec.embed_inputs))
  plain, coded = embed(inputs), embed({**inputs, "codes": jnp.asarray(codes, jnp.int32)})
  book = np.asarray(params["codebook"])
  expected = plain.copy()
  for r in range(b):
    for p in range(1, length):  # position 0 holds the task embedding
      if codes[r, p].any():
        expected[r, p] += sum(book[t, codes[r, p, t]] for t in range(CFG.depth))
  np.testing.assert_allclose(coded, expected, rtol=1e-5, atol=1e-5)
  assert not np.allclose(coded, plain)


def test_unknown_item_slots_read_row_zero_of_the_item_table(params):
  inputs, _ = example_inputs()
  items = inputs["items"].at[:, 1].set(jnp.array([UNKNOWN_ITEM, 5, UNKNOWN_ITEM]))
  x = ColaRec(CFG).apply({"params": params}, dict(inputs, items=items),
                         method=ColaRec.embed_inputs)
  table = params["item_embed"]["embedding"]
  np.testing.assert_allclose(x[:, 1], table[np.array([0, 5, 0])])
  assert not np.allclose(table[0], table[5])


def test_the_official_init_starts_heads_and_position_tables_as_the_authors():
  """model.init='official': code heads (weight and bias) U(+-1/sqrt(d)) as PyTorch's nn.Linear,
  relative-position tables N(0, d^-0.5) as Hugging Face's T5; the default keeps N(0, 1) heads
  with a zero bias and N(0, 1) tables."""
  from colarec_jax.model.colarec import ModelConfig
  d = 64
  model_cfg = lambda init: dataclasses.replace(ModelConfig(), d_model=d, d_ff=128, init=init)
  inputs, codes = example_inputs()
  found = {}
  for init in ("colarec", "official"):
    cfg = ColaRecConfig(model_cfg(init).transformer(50), num_items=20, num_users=10, branching=32,
                        depth=3, official_heads=init == "official")
    params = ColaRec(cfg).init(jax.random.key(0), inputs, codes)["params"]
    rel = np.concatenate([np.asarray(v).ravel() for k, v in jax.tree_util.tree_leaves_with_path(
        params) if "rel_embedding" in jax.tree_util.keystr(k)])
    found[init] = (np.asarray(params["codebook"]), np.asarray(params["codebook_bias"]), rel)
  head, bias, rel = found["official"]
  bound = d ** -0.5
  for values in (head, bias):
    assert np.abs(values).max() <= bound and values.std() == pytest.approx(bound / 3 ** 0.5,
                                                                           rel=0.1)
  assert rel.std() == pytest.approx(bound, rel=0.25)
  head, bias, rel = found["colarec"]
  assert head.std() == pytest.approx(1.0, rel=0.05) and not bias.any()
  assert rel.std() == pytest.approx(1.0, rel=0.25)


def test_official_heads_start_the_code_loss_near_uniform():
  """With U(+-1/sqrt(d)) heads the first code's loss starts near ln(K + 1), the entropy of a
  uniform choice (the authors' 3.50 for K = 32); N(0, 1) heads start well above it."""
  from colarec_jax.model.colarec import ModelConfig
  from colarec_jax.training import losses
  one, _ = example_inputs()
  inputs = {k: jnp.concatenate([v] * 32) for k, v in one.items()}  # 96 rows
  codes = jnp.asarray(np.random.default_rng(0).integers(1, 33, size=(96, 3)))
  first = {}
  for init in ("colarec", "official"):
    m = dataclasses.replace(ModelConfig(), d_model=64, d_ff=128, init=init)
    cfg = ColaRecConfig(m.transformer(50), num_items=20, num_users=10, branching=32, depth=3,
                        official_heads=init == "official")
    model = ColaRec(cfg)
    params = model.init(jax.random.key(1), inputs, codes)["params"]
    logits, _ = model.apply({"params": params}, inputs, codes)
    first[init] = float(losses.generation(logits=logits[:, :1], codes=codes[:, :1],
                                          mask=jnp.ones(96), total=96))
  assert first["official"] == pytest.approx(math.log(33), abs=0.1)
  assert first["colarec"] > math.log(33) + 0.3
