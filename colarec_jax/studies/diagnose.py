"""Why a trained ColaRec ranks as it does: where beam search loses the held-out items, and what
the generation head reaches against the encoder's own ranking signal (bench/quality.py).

- `prefix_survival`: after each beam step t, the share of (user, held-out item) pairs whose item's
  GID prefix of length t is still among the beams. A drop at step t means the decoder's level-t
  codes, not the later ones, lose the item.
- `greedy_report`: the generation head at beam 1 (one item per user).
- `level_nll` / `popularity_level_nll`: how well each GID level of the held-out item is
  predicted, from the user's own input, from another user's (does the level use the user?), and
  by code popularity alone.
- `encoder_report`: the ranking signal L_bpr trains, h(X_u) . h(X_i) over every item (X_i the
  item's indexing input, one training user sampled with a fixed seed), ranked in full like the
  collaborative baselines. When it ranks far better than beam search, the encoder has learned the
  preference and the decoder has not learned to spell it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from colarec_jax import evaluate
from colarec_jax.data.dataset import TRAIN
from colarec_jax.data.sampling import padded_batches
from colarec_jax.evaluate import EvalSplit
from colarec_jax.model.colarec import ColaRec
from colarec_jax.model.inputs import stack
from colarec_jax.ranking import decode
from colarec_jax.ranking.ranker import Ranker
from colarec_jax.run.parts import RunParts
from colarec_jax.runtime import sharding


def prefix_survival(parts: RunParts, params, split: EvalSplit, inputs: dict) -> list[float]:
  """[l] share of the split's (user, held-out item) pairs whose GID prefix of length t is among
  the beams after step t (t = 1..l), at the configured beam size."""
  trie, codes = parts.trie, parts.gids.codes
  depth = codes.shape[1]
  kept = np.zeros(depth)
  pairs = 0
  batch_size = parts.ranker(params).batch_size
  for rows, real in padded_batches(np.arange(len(split.users)), batch_size):
    batch = sharding.shard_rows({k: jnp.asarray(v[rows]) for k, v in inputs.items()}, parts.mesh)
    for t in range(1, depth + 1):
      _, scores, beams = map(sharding.to_host, decode.beam_search(
          parts.model, params, batch, trie, renormalize=parts.eval.renormalize, steps=t))
      for r in range(real):
        live = {tuple(b[:t]) for b, s in zip(beams[r], scores[r]) if np.isfinite(s)}
        held = split.heldout.row(split.users[rows[r]])
        kept[t - 1] += sum(tuple(codes[i][:t]) in live for i in held)
        if t == 1:
          pairs += len(held)
  return (kept / max(pairs, 1)).tolist()


def greedy_report(parts: RunParts, params, split: EvalSplit, inputs: dict) -> evaluate.Report:
  """The split's metrics from beam search at beam 1: the decoder's single best item (excluded
  items blocked inside the search, so every user gets one), a list of one at every cut-off."""
  trie = decode.Trie.build(parts.gids, 1, parts.mesh)
  ranker = Ranker(parts.model, params, trie, parts.builder, parts.eval, parts.mesh)
  ranked, _ = ranker.ranked(inputs, [split.exclude.row(u) for u in split.users], 1,
                            in_search=True)
  ks = parts.eval.ks
  ranked = np.pad(ranked, ((0, 0), (0, max(ks) - 1)))
  return evaluate.evaluate_ranking(ranked, split.users, split.heldout, split.train_counts, ks,
                                   parts.eval.long_tail_fraction)


def encoder_report(parts: RunParts, params, split: EvalSplit, inputs: dict,
                   seed: int = 0) -> evaluate.Report:
  """The split's metrics when every item is ranked by h(X_u) . h(X_i)."""
  builder, num_items = parts.builder, parts.prepared.dataset.num_items
  rng = np.random.default_rng(seed)
  items = stack([builder.index_input(i, builder.sample_users(i, rng))
                 for i in range(1, num_items + 1)])
  ranker = parts.ranker(params)
  h_items = np.concatenate([np.zeros((1, parts.model.config.transformer.d_model), np.float32),
                            ranker.encode(items, batch_size=256)])
  h_users = np.zeros((parts.prepared.dataset.num_users + 1, h_items.shape[1]), np.float32)
  h_users[split.users] = ranker.encode(inputs, batch_size=256)
  table_u, table_i = jnp.asarray(h_users), jnp.asarray(h_items)
  score = jax.jit(lambda users: table_u[users] @ table_i.T)
  return evaluate.evaluate_scores(score, split, num_items, parts.eval)


def level_nll(parts: RunParts, params, split: EvalSplit, inputs: dict,
              shuffle_seed: int | None = None) -> list[float]:
  """[l] mean negative log-likelihood of each GID level of every user's first held-out item, by
  teacher forcing (no beam). With `shuffle_seed`, each user reads another user's input (a fixed
  permutation): a level whose NLL does not rise then does not use the user at all."""
  targets = np.asarray([split.heldout.row(u)[0] for u in split.users])
  codes = jnp.asarray(parts.gids.codes[targets])
  last = jnp.asarray(parts.gids.last_level_items(targets))  # read with model.tie_last_level only
  if shuffle_seed is not None:
    order = np.random.default_rng(shuffle_seed).permutation(len(targets))
    inputs = {k: v[order] for k, v in inputs.items()}

  @jax.jit
  def nll(batch, target, last_items):
    encoded = parts.model.apply({"params": params}, batch, method=ColaRec.encode)
    logits = parts.model.apply({"params": params}, encoded, batch["mask"], target, last_items,
                            method=ColaRec.decode_codes)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]

  total = np.zeros(codes.shape[1])
  for rows, real in padded_batches(np.arange(len(targets)), 256):
    out = nll({k: jnp.asarray(v[rows]) for k, v in inputs.items()}, codes[rows], last[rows])
    total += np.asarray(out)[:real].sum(0)
  return (total / len(targets)).tolist()


def popularity_level_nll(parts: RunParts, split: EvalSplit) -> list[float]:
  """[l] the same NLL for a model of code popularity: level t's code given the prefix before it,
  with the frequencies of the training interactions' GIDs (the item-popularity baseline of the
  generation task; a prefix never trained counts once)."""
  codes = parts.gids.codes
  train = codes[parts.prepared.rows(TRAIN)[1]]
  targets = codes[[split.heldout.row(u)[0] for u in split.users]]
  out = []
  for t in range(codes.shape[1]):
    prefix, joint = _counts(train[:, :t]), _counts(train[:, :t + 1])
    out.append(float(np.mean([-np.log(max(joint.get(tuple(g[:t + 1]), 0), 1)
                                      / max(prefix.get(tuple(g[:t]), 0), 1))
                              for g in targets])))
  return out


def _counts(rows: np.ndarray) -> dict[tuple, int]:
  """{row as a tuple: how many times it occurs}."""
  if rows.shape[1] == 0:
    return {(): len(rows)}
  unique, counts = np.unique(rows, axis=0, return_counts=True)
  return {tuple(u.tolist()): int(c) for u, c in zip(unique, counts)}
