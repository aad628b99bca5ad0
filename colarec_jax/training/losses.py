"""ColaRec's four losses, keyword-only, masked.

Each loss sums over the real examples of the (local) batch and divides by `total`, the number of
real examples in the global batch, so per-device values add up to the global mean under `psum`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def generation(*, logits: jax.Array, codes: jax.Array, mask: jax.Array, total,
               reduction: str = "mean") -> jax.Array:
  """-sum_t log p(code_t | X, code_<t), averaged over examples ('sum'), or that divided by the l
  positions ('mean': the authors' CrossEntropyLoss over batch x positions).

  Args:
    logits: [b, l, K + 1] decoder logits.
    codes: [b, l] target GIDs.
    mask: [b] 1.0 for real examples, 0.0 for padding.
    total: number of real examples in the global batch.
    reduction: 'sum' or 'mean' over the code positions.
  """
  # float32 whatever the model's dtype: a bfloat16 log-softmax loses the small probabilities.
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(log_probs, codes[..., None], axis=-1)[..., 0]
  # Summed over the l code positions, then over real examples; dividing by the global count (not
  # the local one) makes per-device values add up to the global mean under psum.
  per_example = jnp.sum(picked, axis=1) / (codes.shape[1] if reduction == "mean" else 1)
  return -jnp.sum(per_example * mask) / total


def _scaled(anchor, positive, negative, temperature: float):
  """The three encodings in float32; with a temperature t > 0, unit vectors with the anchor
  divided by t (so every dot product is a cosine similarity / t)."""
  anchor, positive, negative = (x.astype(jnp.float32) for x in (anchor, positive, negative))
  if temperature:
    unit = lambda x: x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)
    anchor, positive, negative = unit(anchor) / temperature, unit(positive), unit(negative)
  return anchor, positive, negative


def pairwise(*, anchor: jax.Array, positive: jax.Array, negative: jax.Array, mask: jax.Array,
             total, temperature: float = 0.0, form: str = "log_sigmoid") -> jax.Array:
  """-log sigmoid(a.p - a.n), averaged over examples; L_bpr with (h(X_u), h(X_i), h(X_i-)) and
  L_c with (h(X_i), h(X_i+), h(X_i-)).

  Args:
    anchor, positive, negative: [b, d] pooled encodings.
    mask: [b]; total: as in `generation`.
    temperature: 0 scores by dot product (official); t > 0 by cosine similarity / t, so the
      margin is bounded by 2 / t and the term cannot be lowered by growing the encodings.
    form: 'log_sigmoid', or 'official': -log(1e-10 + sigmoid(margin)), the authors' form.
  """
  anchor, positive, negative = _scaled(anchor, positive, negative, temperature)
  margin = jnp.sum(anchor * (positive - negative), axis=-1)
  if form == "official":  # its gradient vanishes once sigmoid(margin) is far below 1e-10
    return -jnp.sum(jnp.log(1e-10 + jax.nn.sigmoid(margin)) * mask) / total
  # log_sigmoid, not log(sigmoid): stable for large negative margins.
  return -jnp.sum(jax.nn.log_sigmoid(margin) * mask) / total


def in_batch(*, anchor: jax.Array, positive: jax.Array, negative: jax.Array, mask: jax.Array,
             total, temperature: float = 0.0) -> jax.Array:
  """-log softmax of a_r.p_r among a_r's scores against every real row's positive and sampled
  negative (in-batch negatives: each anchor's softmax has 2b - 1 negatives), averaged over
  examples; `loss.pair_negatives='in_batch'` for L_bpr and L_c. Arguments as `pairwise`."""
  anchor, positive, negative = _scaled(anchor, positive, negative, temperature)
  scores = anchor @ jnp.concatenate([positive, negative]).T  # [b, 2b]
  # Padding rows are no candidates (a large negative, not -inf: no inf - inf in the gradient).
  scores = jnp.where(jnp.concatenate([mask, mask])[None] > 0, scores, -1e9)
  own = jnp.diagonal(scores[:, :anchor.shape[0]])
  return -jnp.sum((own - jax.nn.logsumexp(scores, axis=-1)) * mask) / total


def total_loss(parts: dict[str, jax.Array], weights: dict[str, float]) -> jax.Array:
  """sum of weights[name] * parts[name] over the terms computed (official: 0.08 L_rec +
  0.08 L_index + L_bpr + 0.1 L_c)."""
  return sum(weights[name] * value for name, value in parts.items())
