"""The cold-start protocol (`data.cold_item_fraction`): items held out before anything trained are
indexed from their text after training (`newitems.index_items`) and ranked with the rest.

Test interactions are the test split's plus every interaction with a held-out item. Rows:
  overall      every test interaction; the catalogue is the trained items and the held-out ones
  cold items   only the interactions with held-out items (the same ranked lists)
Models: ColaRec (best checkpoint; held-out items read the unknown-item token), MostPop (a
held-out item has no training interaction, so its popularity is 0), LightGCN (it has no
embedding for an item it never saw: it ranks the trained items only, and has no cold-items row),
and a content baseline: TF-IDF cosine between a candidate's text and the centroid of the texts of
the user's history (the history ColaRec reads: the `inputs.eval_history` most recent training
items). Metrics and the long-tail split are the main table's; the cold-items rows use the overall
rows' long-tail threshold. Held-out items without text cannot be indexed: they stay misses.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import scipy.sparse

from colarec_jax import evaluate
from colarec_jax.cf import train as cf_train
from colarec_jax.config.settings import Settings
from colarec_jax.data import prepare as prepare_lib
from colarec_jax.data.dataset import TEST, Csr, content_string
from colarec_jax.data.prepare import Prepared
from colarec_jax.data.tfidf import Tfidf
from colarec_jax.gid import overlay
from colarec_jax.gid.table import GidTable
from colarec_jax.newitems import catalogue
from colarec_jax.newitems.indexing import index_items
from colarec_jax.run import parts as parts_lib
from colarec_jax.run import stages
from colarec_jax.run.parts import RunParts
from colarec_jax.runtime import checkpoint, sharding
from colarec_jax.runtime.errors import ConfigError

COLD = " cold items"
CONTENT = "content (tf-idf)"
CANNOT_RANK = "cannot rank items it never saw (no embedding): no score"
RESULTS = "cold_results.json"


def held_out_as_new(parts: RunParts, params, data_cfg) -> tuple[overlay.NewItems, np.ndarray]:
  """The workdir's held-out items with text, indexed as new items (in memory, not the overlay).

  Returns:
    (the indexed items, [m] the item id each held-out item has in the extended catalogue; ids
    past the catalogue for those without text, which no model can return).
  """
  held, ds = parts.prepared.held_out, parts.prepared.dataset
  texts = [content_string(ds.text_fields, row) for row in held.item_text.tolist()]
  tokens, lengths = prepare_lib.encode_new_texts(parts.prepared, data_cfg, texts)
  keep = lengths > 0
  codes = index_items(parts, params, tokens[keep], where="data.cold_item_fraction")
  new = overlay.NewItems(held.item_ids[keep], held.item_text[keep], tokens[keep], lengths[keep],
                         codes)
  ids = np.empty(len(held), np.int64)
  ids[keep] = ds.num_items + 1 + np.arange(keep.sum())
  ids[~keep] = ds.num_items + len(new) + 1 + np.arange((~keep).sum())
  return new, ids


def content_ranking(texts: list[str], histories: list[np.ndarray], exclude: list[np.ndarray],
                    k: int, batch_size: int = 1024) -> np.ndarray:
  """The content baseline's top-k items per user.

  Args:
    texts: [num_items + 1] content string of each item id (id 0: padding, never returned).
    histories: per user, the history items whose texts make the profile.
    exclude: per user, items never returned.
    k: list length.
    batch_size: users scored at once.

  Returns:
    [n, k] int32 item ids, best first by cosine(tf-idf(candidate), mean of tf-idf(history)).
  """
  items = Tfidf.fit(texts).matrix()
  rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
  cols = np.concatenate([np.zeros(0, np.int64), *histories])
  profile = scipy.sparse.csr_matrix((np.ones(len(rows)), (rows, cols)),
                                    shape=(len(histories), len(texts))) @ items
  norms = np.sqrt(np.asarray(profile.multiply(profile).sum(1))).ravel()
  profile = scipy.sparse.diags(1 / np.maximum(norms, 1e-12)) @ profile
  out = np.zeros((len(histories), k), np.int32)
  for start in range(0, len(histories), batch_size):
    part = slice(start, start + batch_size)
    scores = np.asarray((profile[part] @ items.T).todense())
    scores[:, 0] = -np.inf
    for n, drop in enumerate(exclude[part]):
      scores[n, np.asarray(drop, np.int64)] = -np.inf
    # The k best (argpartition), then best first; equal scores in item id order.
    top = np.sort(np.argpartition(-scores, k - 1, axis=1)[:, :k], axis=1)
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    out[part] = np.take_along_axis(top, order, axis=1)
  return out


@dataclasses.dataclass(frozen=True)
class ColdTest:
  """The protocol's test, set up once: the run with its held-out items indexed, and who is ranked.

  Attributes:
    parts: the run's parts with the held-out items added (`catalogue.with_new_items`).
    params: the best checkpoint's parameters.
    users: every user with a test interaction (the split's or a held-out item's).
    exclude: per user, the items the main table's ranking leaves out.
    everything: each user's test items, the held-out ones included.
    cold: each user's held-out test items.
    split: the main table's test split (its exclusions and training counts).
    indexed, held_out: held-out items indexed from their text, and all of them.
    interactions: the held-out items' interactions.
  """

  parts: RunParts
  params: object
  users: np.ndarray
  exclude: list
  everything: Csr
  cold: Csr
  split: evaluate.EvalSplit
  indexed: int
  held_out: int
  interactions: int

  def rows(self, name: str, lists: np.ndarray, ev=None, items: np.ndarray | None = None) -> dict:
    """{name: overall Report, name + ' cold items': the held-out interactions' Report} of ranked
    `lists` [len(users), k] (`ev`: the metrics' config, default the run's; `items`: the cold row
    counts only the interactions with these held-out items, default all)."""
    ev = ev or self.parts.eval
    overall = evaluate.evaluate_ranking(lists, self.users, self.everything,
                                        self.split.train_counts, ev.ks, ev.long_tail_fraction)
    cold = self.cold
    if items is not None:
      users = np.repeat(np.arange(len(cold.indptr) - 1), cold.lengths())
      keep = np.isin(cold.items, items)
      cold = Csr.from_pairs(users[keep], cold.items[keep], len(cold.indptr) - 2)
    who = np.flatnonzero(cold.lengths())
    report = evaluate.evaluate_ranking(
        lists[np.isin(self.users, who)], who, cold, self.split.train_counts, ev.ks,
        ev.long_tail_fraction, long_tail_threshold=overall.long_tail_threshold)
    return {name: overall, name + COLD: report}

  def halves(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The held-out items with interactions, split in two at random (`seed`): (selection,
    report) item ids. The held-out items have no validation interactions; a setting for added
    items is chosen on the selection half's interactions and reported on the other's."""
    items = np.unique(self.cold.items)
    order = np.random.default_rng(seed).permutation(len(items))
    return np.sort(items[order[:len(items) // 2]]), np.sort(items[order[len(items) // 2:]])


def cold_test(settings: Settings, workdir: str, *, prepared: Prepared | None = None,
              gids: GidTable | None = None, log=print) -> ColdTest:
  """Indexes the held-out items with the best ColaRec checkpoint (in memory) and sets up the test.

  Raises:
    ConfigError: the protocol is off (data.cold_item_fraction = 0).
    UsageError: ColaRec has no best checkpoint yet.
  """
  parts = parts_lib.build(settings, workdir, log=log, prepared=prepared, gids=gids)
  held = parts.prepared.held_out
  if not len(held):
    raise ConfigError("data.cold_item_fraction", "no items are held out; expected a share > 0")
  params, _ = parts_lib.checkpoints(parts, settings, workdir).load_params(
      checkpoint.BEST, parts.abstract_params())
  new, held_ids = held_out_as_new(parts, params, settings.data)
  extended = catalogue.with_new_items(parts, new)
  ds = parts.prepared.dataset
  log(f"cold start: indexed {len(new)} of {len(held)} held-out items from their text "
      f"({len(held) - len(new)} have none and stay misses)")
  # The test interactions, and the same users' exclusions as the main table's.
  test_users, test_items = parts.prepared.rows(TEST)
  split = evaluate.EvalSplit.build(parts.prepared, TEST, settings.eval)
  users = np.unique(np.concatenate([test_users, held.users]))
  return ColdTest(
      extended, params, users, [split.exclude.row(u) for u in users],
      Csr.from_pairs(np.concatenate([test_users, held.users]),
                     np.concatenate([test_items, held_ids[held.items]]), ds.num_users),
      Csr.from_pairs(held.users, held_ids[held.items], ds.num_users),
      split, len(new), len(held), len(held.users))


def cold_start_report(settings: Settings, workdir: str, *, prepared: Prepared | None = None,
                      gids: GidTable | None = None, log=print) -> str:
  """Indexes the held-out items with the best ColaRec checkpoint, ranks the test users with every
  model, writes `<workdir>/cold_results.json` and returns the table.

  Raises:
    ConfigError: the protocol is off (data.cold_item_fraction = 0).
    UsageError: ColaRec has no best checkpoint yet.
  """
  test = cold_test(settings, workdir, prepared=prepared, gids=gids, log=log)
  extended, users, ev = test.parts, test.users, settings.eval
  ds = extended.prepared.dataset
  trained = extended.model.config.num_items  # LightGCN's items
  k = max(ev.ks)

  # Each model's ranked lists over the extended catalogue (LightGCN: the trained items only).
  popularity = cf_train.popularity_scores(extended.prepared, extended.gids.num_items)
  lightgcn = sharding.main_first("colarec-lightgcn", lambda: stages.lightgcn(
      settings, extended.prepared, workdir, log=log))
  embeddings = cf_train.embedding_scores(lightgcn.user_embeddings, lightgcn.item_embeddings)
  histories = [np.asarray(extended.builder.eval_history(u), np.int64) for u in users]
  ranked = {
      "mostpop": evaluate.top_k_items(popularity, users, test.split.exclude,
                                      extended.gids.num_items, k, ev.batch_size),
      "lightgcn": evaluate.top_k_items(embeddings, users, test.split.exclude, trained, k,
                                       ev.batch_size),
      CONTENT: content_ranking([ds.content(i) for i in range(extended.gids.num_items + 1)],
                               histories, test.exclude, k, ev.batch_size),
      "colarec": extended.ranker(test.params).ranked(extended.builder.eval_inputs(users),
                                                     test.exclude, k)[0],
  }

  rows: dict[str, evaluate.Report | str] = {}
  for name, lists in ranked.items():
    rows.update(test.rows(name, lists))
    if name == "lightgcn":
      rows[name + COLD] = CANNOT_RANK
  if sharding.is_main_process():
    with open(os.path.join(workdir, RESULTS), "w") as f:
      json.dump({"held_out_items": test.held_out, "indexed": test.indexed,
                 "held_out_interactions": test.interactions,
                 "rows": {n: r if isinstance(r, str) else r.to_json() for n, r in rows.items()}},
                f, indent=1)
  return (f"test metrics with held-out items (data.cold_item_fraction="
          f"{settings.data.cold_item_fraction}: {test.held_out} items, "
          f"{test.interactions} interactions; '{COLD.strip()}' rows: only those "
          "interactions)\n"
          + evaluate.format_table(rows, ev.ks)
          + "\nlightgcn ranks only the items it trained on: held-out items are misses in its "
          "overall row")
