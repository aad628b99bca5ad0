"""The four losses against hand computation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from colarec_jax.training import losses


def test_generation_loss_hand_computed():
  logits = jnp.array([[[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]],
                      [[5.0, 0.0, 0.0], [0.0, 0.0, 9.0]]])
  codes = jnp.array([[2, 1], [0, 2]])
  lse = lambda row: math.log(sum(math.exp(v) for v in row))
  ex0 = -(2 - lse([0, 1, 2])) - (1 - lse([1, 1, 1]))
  ex1 = -(5 - lse([5, 0, 0])) - (9 - lse([0, 0, 9]))
  # 'sum' over the 2 code positions, averaged over examples.
  got = losses.generation(logits=logits, codes=codes, mask=jnp.array([1.0, 1.0]), total=2,
                          reduction="sum")
  assert float(got) == pytest.approx((ex0 + ex1) / 2, rel=1e-6)
  masked = losses.generation(logits=logits, codes=codes, mask=jnp.array([1.0, 0.0]), total=1,
                             reduction="sum")
  assert float(masked) == pytest.approx(ex0, rel=1e-6)
  # The default, 'mean' over batch x positions (the authors' CrossEntropyLoss).
  got = losses.generation(logits=logits, codes=codes, mask=jnp.array([1.0, 1.0]), total=2)
  assert float(got) == pytest.approx((ex0 + ex1) / 4, rel=1e-6)


def test_pairwise_loss_hand_computed():
  a = jnp.array([[1.0, 0.0], [0.5, 2.0]])
  p = jnp.array([[2.0, 1.0], [0.0, 1.0]])
  n = jnp.array([[1.0, 3.0], [1.0, 0.0]])
  margins = [1 * (2 - 1) + 0, 0.5 * (0 - 1) + 2 * (1 - 0)]
  expected = [math.log1p(math.exp(-m)) for m in margins]
  got = losses.pairwise(anchor=a, positive=p, negative=n, mask=jnp.ones(2), total=2)
  assert float(got) == pytest.approx(np.mean(expected), rel=1e-6)
  got = losses.pairwise(anchor=a, positive=p, negative=n, mask=jnp.array([0.0, 1.0]), total=1)
  assert float(got) == pytest.approx(expected[1], rel=1e-6)


def test_total_weights():
  parts = {"rec": jnp.array(2.0), "index": jnp.array(3.0), "bpr": jnp.array(0.5),
           "contrastive": jnp.array(4.0)}
  weights = {"rec": 0.08, "index": 0.08, "bpr": 1.0, "contrastive": 0.1}
  assert float(losses.total_loss(parts, weights)) == pytest.approx(0.08 * 5 + 0.5 + 0.4)
  del parts["index"]  # a term not computed (weight 0) adds nothing
  assert float(losses.total_loss(parts, weights)) == pytest.approx(0.08 * 2 + 0.5 + 0.4)


def test_pairwise_loss_with_a_temperature_scores_by_cosine():
  a = jnp.array([[3.0, 4.0], [0.0, -2.0]])
  p = jnp.array([[1.0, 0.0], [1.0, 1.0]])
  n = jnp.array([[0.0, 5.0], [-3.0, 0.0]])
  cos = lambda x, y: float(np.dot(x, y) / np.linalg.norm(x) / np.linalg.norm(y))
  t = 0.2
  margins = [(cos(a[r], p[r]) - cos(a[r], n[r])) / t for r in range(2)]
  expected = np.mean([math.log1p(math.exp(-m)) for m in margins])
  got = losses.pairwise(anchor=a, positive=p, negative=n, mask=jnp.ones(2), total=2,
                        temperature=t)
  assert float(got) == pytest.approx(expected, rel=1e-5)
  # Scaling the encodings changes nothing: cosine scores are bounded.
  scaled = losses.pairwise(anchor=10 * a, positive=7 * p, negative=3 * n, mask=jnp.ones(2),
                           total=2, temperature=t)
  assert float(scaled) == pytest.approx(expected, rel=1e-5)


def test_mean_reduction_divides_the_generation_loss_by_the_code_positions():
  """The authors' CrossEntropyLoss averages over batch x positions: with l = 2 positions their
  value is exactly half of the per-example sum, on any logits."""
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(4, 2, 5)), jnp.float32)
  codes = jnp.asarray(rng.integers(0, 5, size=(4, 2)))
  mask = jnp.array([1.0, 1.0, 1.0, 0.0])
  logp = np.log(np.exp(np.asarray(logits)) / np.exp(np.asarray(logits)).sum(-1, keepdims=True))
  picked = np.take_along_axis(logp, np.asarray(codes)[..., None], -1)[..., 0]
  official = -picked[:3].mean()  # PyTorch's CrossEntropyLoss(mean) over the 3 x 2 real targets
  got = losses.generation(logits=logits, codes=codes, mask=mask, total=3, reduction="mean")
  assert float(got) == pytest.approx(official, rel=1e-5)
  summed = losses.generation(logits=logits, codes=codes, mask=mask, total=3, reduction="sum")
  assert float(summed) == pytest.approx(2 * official, rel=1e-5)


def test_the_official_pair_form_is_log_of_epsilon_plus_sigmoid():
  a = jnp.array([[1.0, 0.0], [30.0, 0.0]])
  p = jnp.array([[2.0, 1.0], [0.0, 0.0]])
  n = jnp.array([[1.0, 3.0], [1.0, 0.0]])  # margins 1 and -30
  sigmoid = lambda m: 1 / (1 + math.exp(-m))
  expected = np.mean([-math.log(1e-10 + sigmoid(m)) for m in (1.0, -30.0)])
  got = losses.pairwise(anchor=a, positive=p, negative=n, mask=jnp.ones(2), total=2,
                        form="official")
  assert float(got) == pytest.approx(expected, rel=1e-5)
  # Past a margin of about -23 the epsilon dominates: the official form caps at -log(1e-10),
  # where log-sigmoid keeps growing.
  assert expected < 12 < float(losses.pairwise(anchor=a, positive=p, negative=n,
                                               mask=jnp.ones(2), total=2))


def test_in_batch_softmax_against_numpy_with_padding_rows():
  """loss.pair_negatives='in_batch': each anchor's positive against every real row's positive
  and negative; a padding row is neither an anchor nor a candidate, and its gradient is 0."""
  rng = np.random.default_rng(0)
  a, p, n = (rng.normal(size=(4, 3)) for _ in range(3))
  mask = np.array([1.0, 1.0, 0.0, 1.0])
  real = mask > 0
  expected = []
  for r in np.flatnonzero(real):
    candidates = np.concatenate([p[real], n[real]]) @ a[r]
    own = p[r] @ a[r]
    expected.append(-(own - np.log(np.exp(candidates).sum())))
  got = losses.in_batch(anchor=jnp.asarray(a), positive=jnp.asarray(p), negative=jnp.asarray(n),
                        mask=jnp.asarray(mask), total=3)
  assert float(got) == pytest.approx(np.mean(expected), rel=1e-5)
  grads = jax.grad(lambda x: losses.in_batch(anchor=x, positive=jnp.asarray(p),
                                             negative=jnp.asarray(n), mask=jnp.asarray(mask),
                                             total=3))(jnp.asarray(a))
  assert np.all(np.isfinite(grads)) and not np.asarray(grads)[2].any()
  # With a temperature: cosine similarities / t, as `pairwise` scores them.
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  t = 0.5
  scores = unit(a) @ np.concatenate([unit(p), unit(n)]).T / t
  scores[:, ~np.concatenate([real, real])] = -np.inf
  rows = np.flatnonzero(real)
  want = -np.mean([scores[r, r] - np.log(np.exp(scores[r]).sum()) for r in rows])
  got = losses.in_batch(anchor=jnp.asarray(a), positive=jnp.asarray(p), negative=jnp.asarray(n),
                        mask=jnp.asarray(mask), total=3, temperature=t)
  assert float(got) == pytest.approx(want, rel=1e-5)
