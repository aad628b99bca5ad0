"""A T5 (v1.0) encoder-decoder stack in Flax linen: relative position bias, pre-norm RMSNorm,
ReLU feed-forward, no attention scaling (folded into the initialisation), dropout.

The layout follows Hugging Face's T5 so pretrained t5-small weights map one to one: the relative
bias lives in the first layer of each stack and is shared by the others; cross-attention has no
position bias. Embedding lookups are left to the caller (ColaRec writes item/user/task embeddings
into slots), so the stacks take embedded inputs.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Sizes of the encoder-decoder (t5-small: 512 / 2048 / 8 heads / 6 + 6 layers)."""

  vocab_size: int = 32128
  d_model: int = 512
  d_ff: int = 2048
  num_heads: int = 8
  d_kv: int = 64
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  dropout_rate: float = 0.1
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  dtype: jnp.dtype = jnp.float32  # compute dtype; parameters stay float32
  # The relative-position tables' initial std; 0: d_model^-0.5, Hugging Face's T5 init, which the
  # authors' random-init model used (`model.init='official'`, the default); 'colarec' passes 1.
  relative_init_std: float = 0.0


def relative_position_bucket(relative_position: jax.Array, *, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> jax.Array:
  """T5's bucketing of key - query offsets: exact for small offsets, logarithmic beyond."""
  bucket = jnp.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    bucket = bucket + (relative_position > 0).astype(jnp.int32) * num_buckets
    relative_position = jnp.abs(relative_position)
  else:
    relative_position = -jnp.minimum(relative_position, 0)
  max_exact = num_buckets // 2
  is_small = relative_position < max_exact
  large = max_exact + (
      jnp.log(jnp.maximum(relative_position, 1).astype(jnp.float32) / max_exact)
      / math.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(jnp.int32)
  large = jnp.minimum(large, num_buckets - 1)
  return bucket + jnp.where(is_small, relative_position, large)


class RMSNorm(nn.Module):
  """T5's layer norm: scale only, no mean subtraction, no bias."""

  epsilon: float = 1e-6
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.epsilon)
    return (x32 * scale).astype(self.dtype)


def _mix32(h: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finaliser: a bijection on uint32 with full avalanche."""
  h = (h ^ (h >> 16)) * jnp.uint32(0x85EBCA6B)
  h = (h ^ (h >> 13)) * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


class Dropout(nn.Module):
  """Inverted dropout whose keep mask is a counter-based hash of (element index, rng).

  Same semantics as `nn.Dropout` (keep with probability 1 - rate, scale by 1 / (1 - rate)), but
  the mask costs a few integer ops per element that XLA fuses into the consumer, instead of a
  Threefry stream materialised per site: on CPU that halves the cost of dropout, which was 40% of
  the default-size train step. Each call site draws two seed words from the 'dropout' rng.
  """

  rate: float

  @nn.compact
  def __call__(self, x, *, deterministic: bool):
    if deterministic or self.rate == 0.0:
      return x
    seeds = jax.random.bits(self.make_rng("dropout"), (2,), jnp.uint32)
    index = jax.lax.iota(jnp.uint32, x.size).reshape(x.shape)
    bits = _mix32(_mix32(index + seeds[0]) ^ seeds[1])
    threshold = jnp.uint32(min(int((1.0 - self.rate) * 2.0 ** 32), 2 ** 32 - 1))
    return jnp.where(bits < threshold, x / (1.0 - self.rate), 0).astype(x.dtype)


class RelativeBias(nn.Module):
  """[1, heads, q_len, k_len] bias from bucketed relative positions (one table per stack)."""

  config: TransformerConfig
  bidirectional: bool

  @nn.compact
  def __call__(self, q_positions: jax.Array, k_positions: jax.Array) -> jax.Array:
    cfg = self.config
    std = cfg.relative_init_std or cfg.d_model ** -0.5
    table = self.param("rel_embedding", nn.initializers.normal(std),
                       (cfg.relative_attention_num_buckets, cfg.num_heads))
    buckets = relative_position_bucket(
        k_positions[None, :] - q_positions[:, None], bidirectional=self.bidirectional,
        num_buckets=cfg.relative_attention_num_buckets,
        max_distance=cfg.relative_attention_max_distance)
    return jnp.transpose(table[buckets], (2, 0, 1))[None].astype(cfg.dtype)


class Projection(nn.Module):
  """A bias-free dense layer [..., in] -> [..., features] (T5's q/k/v/o and FFN weights).

  Its kernel is also reachable on its own (`kernel()`), so attention can fold a projection into
  a cheaper matmul order; the parameter tree is that of `nn.Dense(use_bias=False)`.
  """

  features: int
  in_features: int
  dtype: jnp.dtype = jnp.float32
  fan_in: int = 0  # the initialiser's std is fan_in ** -0.5 (T5's scaling); 0: in_features

  def setup(self):
    std = (self.fan_in or self.in_features) ** -0.5
    self.weight = self.param("kernel", nn.initializers.normal(std),
                             (self.in_features, self.features))

  def kernel(self) -> jax.Array:
    return self.weight.astype(self.dtype)

  def __call__(self, x):
    # A 2-D matmul, so that autodiff's weight gradient contracts one axis. Over [b, L, in] it
    # contracted two, and XLA:CPU then transposed the cotangent with the dropout mask fused in,
    # unvectorised: 88 ms of a 490 ms t5-small feed-forward forward + backward ([16, 256]).
    y = matmul(x.reshape(-1, x.shape[-1]).astype(self.dtype), self.kernel())
    return y.reshape(x.shape[:-1] + (self.features,))


@jax.custom_vjp
def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """x [n, in] @ w [in, out], whose weight gradient x^T g runs as a plain matmul when in < out.

  Autodiff writes the weight gradient as one dot contracting the rows of both operands. XLA:CPU
  hands that form to Eigen, which ran it at 60-80 GFLOP/s for the feed-forward's widening kernel
  ([4096, 512]^T [4096, 2048]); transposing x first (kept by an optimisation barrier, else XLA
  folds it back into the dot) lets YNNPACK run it at ~125. For square or narrowing kernels Eigen
  was as fast (~100), so they keep autodiff's form. In seven paired runs the t5-small train step
  ran 0.6-11% faster (about 5% typically). The same rule as a custom JVP (the transpose then
  happens in the forward pass and stays alive until the backward) measured -1 to 3%.

  Under `shard_map` w must be device-varying like x (the train step casts its parameters), so
  that the gradient returned has w's type; the cast's transpose then sums it over devices.
  """
  return jnp.dot(x, w)


def _matmul_fwd(x, w):
  return jnp.dot(x, w), (x, w)


def _matmul_bwd(residuals, g):
  x, w = residuals
  rows = jax.lax.optimization_barrier(x.T) if w.shape[0] < w.shape[1] else x.T
  return jnp.dot(g, w.T), jnp.dot(rows, g)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def batch_broadcast(batch: int, shared: jax.Array) -> jax.Array:
  """[1, ...] -> [batch, ...]; the gradient sums over the batch with a matrix-vector product.

  XLA:CPU reduced the leading axis of a [16, 8, 256, 256] cotangent (the relative position bias
  shared by every example and layer) 9x slower than the equivalent dot: 75 vs 8 ms.
  """
  return jnp.broadcast_to(shared, (batch,) + shared.shape[1:])


def _batch_broadcast_fwd(batch, shared):
  return batch_broadcast(batch, shared), None


def _batch_broadcast_bwd(batch, _, g):
  return (jnp.einsum("b,b...->...", jnp.ones((batch,), g.dtype), g)[None],)


batch_broadcast.defvjp(_batch_broadcast_fwd, _batch_broadcast_bwd)


class Attention(nn.Module):
  """Multi-head attention without bias terms or 1/sqrt(d) scaling (T5).

  With `decode=True` keys and values are appended to a cache collection ('cache') one step at a
  time; cross-attention computes its keys/values once and keeps them in the cache. Queries may have
  a multiple of the keys' batch (beams of one input, user-major): they then share its keys.

  Teacher-forced cross-attention with few queries (ColaRec's decoder has l = 3) never projects
  the encoder states to keys and values: per head, q (x W_k)^T = (q W_k^T) x^T and
  w (x W_v) = (w x) W_v, which costs O(q (d_kv + k) d) instead of O(k d d_kv). Same parameters,
  same function; at t5-small that removes the 2 x [256, 512] x [512, 512] projections per layer
  and example, about a tenth of the training step's FLOPs.
  """

  config: TransformerConfig
  is_cross: bool = False
  decode: bool = False

  @nn.compact
  def __call__(self, x, kv_input, bias, *, deterministic: bool):
    """Args: x [b, q, d]; kv_input [b, k, d]; bias broadcastable to [b, h, q, k] (0 or -inf)."""
    cfg = self.config
    inner, heads = cfg.num_heads * cfg.d_kv, cfg.num_heads
    # T5 folds attention's 1 / sqrt(d_kv) into the query weights' initialisation.
    q = Projection(inner, cfg.d_model, cfg.dtype, fan_in=cfg.d_model * cfg.d_kv, name="q")(x)
    k_proj = Projection(inner, cfg.d_model, cfg.dtype, name="k")
    v_proj = Projection(inner, cfg.d_model, cfg.dtype, name="v")
    o_proj = Projection(cfg.d_model, inner, cfg.dtype, name="o")
    # Heads go before positions ([b, h, L, d]): XLA's CPU batched matmuls ran 2x faster in that
    # layout than on [b, L, h, d] operands (t5-small encoder attention, 20 x 256 tokens).
    heads_first = lambda t: jnp.swapaxes(t.reshape(t.shape[:2] + (heads, cfg.d_kv)), 1, 2)
    dropout = Dropout(cfg.dropout_rate)

    def attend(scores):  # softmax in float32, then dropout on the attention weights
      weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(cfg.dtype)
      return dropout(weights, deterministic=deterministic)

    if self.is_cross and not self.decode and self._fold_projections(x.shape[1],
                                                                    kv_input.shape[1]):
      kv = kv_input.astype(cfg.dtype)
      w_k = k_proj.kernel().reshape(cfg.d_model, heads, cfg.d_kv)
      w_v = v_proj.kernel().reshape(cfg.d_model, heads, cfg.d_kv)
      q_k = jnp.einsum("bhqc,dhc->bhqd", heads_first(q), w_k)  # q W_k^T per head
      weights = attend(jnp.einsum("bhqd,bkd->bhqk", q_k, kv) + bias)
      mixed = jnp.einsum("bhqk,bkd->bhqd", weights, kv)  # w x per head
      out = jnp.einsum("bhqd,dhc->bqhc", mixed, w_v)
      return o_proj(out.reshape(x.shape[:2] + (inner,)))
    if self.decode and self.is_cross:
      # Encoder keys/values are computed once, when the cache is created, and reused every step.
      k = self.variable("cache", "cross_key", lambda: heads_first(k_proj(kv_input))).value
      v = self.variable("cache", "cross_value", lambda: heads_first(v_proj(kv_input))).value
    else:
      k, v = heads_first(k_proj(kv_input)), heads_first(v_proj(kv_input))
      if self.decode:
        k, v = self._append_to_cache(k, v)
    if q.shape[0] != k.shape[0]:
      # Beam search: the rows of q are (user, beam) pairs, user-major, and all beams of a user
      # share that user's cross keys/values, so fold the beams into the query axis.
      q = q.reshape((k.shape[0], -1) + q.shape[2:])
    q = heads_first(q)
    weights = attend(jnp.einsum("bhqd,bhkd->bhqk", q, k) + bias)
    out = jnp.swapaxes(jnp.einsum("bhqk,bhkd->bhqd", weights, v), 1, 2)
    return o_proj(out.reshape(x.shape[:2] + (inner,)))

  def _fold_projections(self, q_len: int, k_len: int) -> bool:
    """Whether folding W_k, W_v into the queries' side costs fewer FLOPs (see the docstring)."""
    cfg = self.config
    folded = q_len * (cfg.d_kv + k_len) * cfg.d_model
    projected = k_len * cfg.d_model * cfg.d_kv + q_len * k_len * cfg.d_kv
    return folded < projected

  def _append_to_cache(self, k, v):
    """Writes this step's key/value ([b, h, 1, d]) at the cache index; returns the whole (masked
    later) cache, [b, h, max_length, d]."""
    is_init = not self.has_variable("cache", "cached_key")
    cached_k = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
    cached_v = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
    index = self.variable("cache", "index", lambda: jnp.array(0, jnp.int32))
    if is_init:
      return k, v
    i = index.value
    cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k, (0, 0, i, 0))
    cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v, (0, 0, i, 0))
    index.value = i + k.shape[2]
    return cached_k.value, cached_v.value


class FeedForward(nn.Module):
  config: TransformerConfig

  @nn.compact
  def __call__(self, x, *, deterministic: bool):
    cfg = self.config
    h = Projection(cfg.d_ff, cfg.d_model, cfg.dtype, name="wi")(x)
    h = Dropout(cfg.dropout_rate)(nn.relu(h), deterministic=deterministic)
    return Projection(cfg.d_model, cfg.d_ff, cfg.dtype, name="wo")(h)


class EncoderLayer(nn.Module):
  config: TransformerConfig

  @nn.compact
  def __call__(self, x, bias, *, deterministic: bool):
    cfg = self.config
    drop = lambda t: Dropout(cfg.dropout_rate)(t, deterministic=deterministic)
    h = RMSNorm(cfg.layer_norm_epsilon, cfg.dtype, name="pre_attention_norm")(x)
    x = x + drop(Attention(cfg, name="attention")(h, h, bias, deterministic=deterministic))
    h = RMSNorm(cfg.layer_norm_epsilon, cfg.dtype, name="pre_mlp_norm")(x)
    return x + drop(FeedForward(cfg, name="mlp")(h, deterministic=deterministic))


class DecoderLayer(nn.Module):
  config: TransformerConfig
  decode: bool = False

  @nn.compact
  def __call__(self, y, encoded, self_bias, cross_bias, *, deterministic: bool):
    cfg = self.config
    drop = lambda t: Dropout(cfg.dropout_rate)(t, deterministic=deterministic)
    h = RMSNorm(cfg.layer_norm_epsilon, cfg.dtype, name="pre_self_attention_norm")(y)
    y = y + drop(Attention(cfg, decode=self.decode, name="self_attention")(
        h, h, self_bias, deterministic=deterministic))
    h = RMSNorm(cfg.layer_norm_epsilon, cfg.dtype, name="pre_cross_attention_norm")(y)
    y = y + drop(Attention(cfg, is_cross=True, decode=self.decode, name="cross_attention")(
        h, encoded, cross_bias, deterministic=deterministic))
    h = RMSNorm(cfg.layer_norm_epsilon, cfg.dtype, name="pre_mlp_norm")(y)
    return y + drop(FeedForward(cfg, name="mlp")(h, deterministic=deterministic))


def padding_bias(mask: jax.Array, dtype) -> jax.Array:
  """[b, k] bool key mask -> [b, 1, 1, k] additive bias (0 or a large negative)."""
  return jnp.where(mask, 0.0, jnp.finfo(dtype).min)[:, None, None, :].astype(dtype)


class Encoder(nn.Module):
  """[b, L, d] embedded inputs + [b, L] mask -> [b, L, d] encodings."""

  config: TransformerConfig

  @nn.compact
  def __call__(self, x, mask, *, deterministic: bool):
    cfg = self.config
    positions = jnp.arange(x.shape[1])
    bias = RelativeBias(cfg, bidirectional=True, name="relative_bias")(positions, positions)
    bias = batch_broadcast(x.shape[0], bias) + padding_bias(mask, cfg.dtype)
    x = Dropout(cfg.dropout_rate)(x.astype(cfg.dtype), deterministic=deterministic)
    for n in range(cfg.num_encoder_layers):
      x = EncoderLayer(cfg, name=f"layer_{n}")(x, bias, deterministic=deterministic)
    x = RMSNorm(cfg.layer_norm_epsilon, cfg.dtype, name="final_norm")(x)
    return Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


class Decoder(nn.Module):
  """[b, T, d] embedded decoder inputs attending to encodings -> [b, T, d] hidden states.

  With `decode=True`, first call on [b, max_length, d] with position=None to create the 'cache'
  collection, then once per step on [b, 1, d] with that step's `position`: self-attention keys and
  values accumulate in the cache, cross-attention keys and values are computed only once.
  """

  config: TransformerConfig
  decode: bool = False
  max_length: int = 0  # decode: the cache length (number of decoder positions)

  @nn.compact
  def __call__(self, y, encoded, encoder_mask, *, deterministic: bool, position=None):
    cfg = self.config
    length = y.shape[1]
    rel = RelativeBias(cfg, bidirectional=False, name="relative_bias")
    if self.decode and position is not None:
      max_len = self.max_length
      q_positions = jnp.reshape(position, (1,))
      k_positions = jnp.arange(max_len)
      self_bias = rel(q_positions, k_positions) + jnp.where(
          k_positions <= position, 0.0, jnp.finfo(cfg.dtype).min)[None, None, None, :]
    else:
      positions = jnp.arange(length)
      causal = jnp.where(positions[None, :] <= positions[:, None], 0.0,
                         jnp.finfo(cfg.dtype).min)
      self_bias = rel(positions, positions) + causal[None, None].astype(cfg.dtype)
    cross_bias = padding_bias(encoder_mask, cfg.dtype)
    y = Dropout(cfg.dropout_rate)(y.astype(cfg.dtype), deterministic=deterministic)
    for n in range(cfg.num_decoder_layers):
      y = DecoderLayer(cfg, decode=self.decode, name=f"layer_{n}")(
          y, encoded, self_bias, cross_bias, deterministic=deterministic)
    y = RMSNorm(cfg.layer_norm_epsilon, cfg.dtype, name="final_norm")(y)
    return Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
