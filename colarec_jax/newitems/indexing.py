"""Indexing items that arrive after training, from their text alone (no retraining).

A new item's indexing input is [task_index, unknown-item token + content, EOS] (no users: it has
none). Its first l-1 codes, a leaf parent that still has a free leaf, come from
`eval.new_item_placement`: 'indexing', ColaRec's constrained beam search over those parents (the
indexing task), or 'neighbours', a vote of its nearest trained items by the encoder's item score
h(X_new).h(X_j) (`neighbour_parents`); the item takes that parent's lowest free last code (see
`gid.overlay`). `--mode=add_items --items_file=FILE` reads the items from a file in the dataset's
own item format (an atomic `.item` file with `data.item_field` and the `data.text_fields`
columns) and adds them to the workdir's overlay, after which `evaluate` and `recommend` rank them.
"""

from __future__ import annotations

import os

import numpy as np

from colarec_jax.data import atomic, fileio
from colarec_jax.data import prepare as prepare_lib
from colarec_jax.data.config import DataConfig
from colarec_jax.data.dataset import content_string
from colarec_jax.data.prepare import Prepared
from colarec_jax.gid import overlay
from colarec_jax.gid.table import GidTable
from colarec_jax.model.inputs import stack
from colarec_jax.newitems import catalogue
from colarec_jax.ranking.decode import Trie
from colarec_jax.ranking.ranker import Ranker
from colarec_jax.run.parts import RunParts
from colarec_jax.runtime import sharding
from colarec_jax.runtime.errors import ConfigError, DataError


def read_items_file(path: str, data_cfg: DataConfig, known_ids: np.ndarray, *,
                    log=print) -> tuple[np.ndarray, np.ndarray, list[int]]:
  """New items from an atomic item file: (ids [m], text [m, len(text_fields)] (an object array,
  each field cut to `overlay.MAX_FIELD_CHARS`), file lines).

  Raises:
    DataError: naming the file and line: unreadable, no rows, a column missing, an id given twice,
      longer than `overlay.MAX_ID_CHARS`, or already one of `known_ids` (the workdir's items,
      trained or added before).
  """
  cfg = data_cfg
  table = atomic.read_atomic(path)
  if not table.rows:
    raise DataError(path, "no items; expected one row per new item after the header", 1)
  items = atomic.item_table_from_atomic(table, item_field=cfg.item_field,
                                        text_fields=list(cfg.text_fields))
  known = set(known_ids[1:].tolist())
  for item, line in zip(items.order, table.lines):
    if len(item) > overlay.MAX_ID_CHARS:
      raise DataError(path, f"item id {item[:40]!r}... has {len(item)} characters; expected at "
                      f"most {overlay.MAX_ID_CHARS}", line)
    if item in known:
      raise DataError(path, f"item {item!r} is already an item of this workdir "
                      "(trained or added before); expected new item ids", line)
  cap = overlay.MAX_FIELD_CHARS
  rows = [items.text[i] for i in items.order]
  cut = sum(any(len(field) > cap for field in row) for row in rows)
  if cut:
    log(f"{path}: {cut} item(s) have a text field longer than {cap} characters; kept the first "
        f"{cap} of each (the tokenizer reads only data.max_item_tokens tokens)")
  text = fileio.text_array([tuple(field[:cap] for field in row) for row in rows])
  return np.array(items.order, dtype=str), text, list(table.lines)


def tokenise(prepared: Prepared, data_cfg: DataConfig, use_content: bool, text: np.ndarray,
             ids: np.ndarray, *, path: str = "",
             lines: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Content tokens of new items' text rows, as data preparation tokenised the dataset's.

  Raises:
    DataError: an item whose text tokenises to nothing (named by file and line when `path` is
      given): the model could not tell it from any other.
    ConfigError: the run reads no item text (inputs.use_content=False).
  """
  if not use_content:
    raise ConfigError("inputs.use_content", "new items are indexed from their text, and this run "
                      "reads none; expected True")
  ds = prepared.dataset
  texts = [content_string(ds.text_fields, row) for row in text.tolist()]
  tokens, lengths = prepare_lib.encode_new_texts(prepared, data_cfg, texts)
  empty = np.flatnonzero(lengths == 0)
  if len(empty):
    n = int(empty[0])
    columns = ", ".join(c for c, _ in data_cfg.text_fields)
    raise DataError(path or "new items", f"item {str(ids[n])!r} has no text in data.text_fields "
                    f"({columns}); expected some words to index it by",
                    lines[n] if lines else None)
  return tokens, lengths


def check_room(gids: GidTable, count: int, where: str) -> None:
  """Raises DataError when the tree's leaf parents have fewer free leaves than `count`."""
  prefixes, free = overlay.leaf_parents(gids)
  if free.sum() < count:
    raise DataError(where, f"{count} new items, but the GID tree (K={gids.branching}, "
                    f"l={gids.depth}) has only {int(free.sum())} free leaves under its "
                    f"{len(prefixes)} leaf parents; expected at most that many (a larger "
                    "gid.branching leaves more room, and needs retraining)")


def neighbour_parents(new: np.ndarray, trained: np.ndarray, item_parent: np.ndarray,
                      allowed: np.ndarray, k: int, count: int = 256,
                      batch_elements: int = 1 << 25) -> np.ndarray:
  """Leaf parents ranked for each new item by a vote of its k nearest trained items.

  A trained item j among new item i's k best by s_ij = h_i.h_j votes exp(s_ij - max_j s_ij) for
  its leaf parent; the allowed parents are ranked by their votes, then (those no neighbour is
  under) by the best score of an item under them, then by index.

  Args:
    new: [m, d] the new items' pooled encodings.
    trained: [n, d] the trained items' (item j + 1 at row j).
    item_parent: [n] each trained item's leaf parent, in 0..P-1.
    allowed: [P] bool, the parents that may be returned.
    k: neighbours voting (at most n).
    count: parents returned per item, at most (fewer when fewer are allowed).
    batch_elements: new items scored at once times n, at most (bounds the [rows, n] scores).

  Returns:
    [m, min(count, allowed.sum())] int64 parent indices, best first.
  """
  k, width = min(k, len(trained)), min(count, int(allowed.sum()))
  out = np.zeros((len(new), width), np.int64)
  order = np.argsort(item_parent, kind="stable")
  present, starts = np.unique(item_parent[order], return_index=True)
  rows = max(1, batch_elements // max(len(trained), 1))
  for start in range(0, len(new), rows):
    scores = new[start:start + rows] @ trained.T  # [b, n]
    b = len(scores)
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    near = np.take_along_axis(scores, top, axis=1)
    votes = np.zeros((b, len(allowed)))
    np.add.at(votes, (np.repeat(np.arange(b), k), item_parent[top].ravel()),
              np.exp(near - near.max(axis=1, keepdims=True)).ravel())
    best = np.full((b, len(allowed)), -np.inf)
    best[:, present] = np.maximum.reduceat(scores[:, order], starts, axis=1)
    votes[:, ~allowed] = -np.inf
    for n in range(b):
      # lexsort: the last key is the primary one; stable, so equal keys keep parent order.
      out[start + n] = np.lexsort((-best[n], -votes[n]))[:width]
  return out


def index_items(parts: RunParts, params, tokens: np.ndarray, where: str = "new items") -> np.ndarray:
  """GIDs for new items (ids after the parts' items) from their content tokens.

  Each round ranks the leaf parents that have a free leaf (by constrained beam search over their
  first l-1 codes, or by `neighbour_parents`: eval.new_item_placement); items in order take their
  best parent with a leaf still free, and those whose every candidate filled up in the round rank
  again among the parents left.

  Args:
    parts: the run's parts (with the items added before, `catalogue.with_new_items`).
    params: the model's parameters.
    tokens: [m, T] content tokens.
    where: what the items came from, for the error.

  Returns:
    [m, l] int32 GIDs, unique, each under an existing leaf parent.

  Raises:
    DataError: the tree has fewer free leaves than items.
  """
  check_room(parts.gids, len(tokens), where)
  builder = parts.builder.with_items(tokens, parts.prepared.pad_id)
  first = parts.gids.num_items + 1
  inputs = stack([builder.index_input(first + n, []) for n in range(len(tokens))])
  prefixes, free = overlay.leaf_parents(parts.gids)
  chosen = np.full(len(tokens), -1, np.int64)
  if parts.eval.new_item_placement == "neighbours":
    ranker = parts.ranker(params)
    trained = parts.model.config.num_items
    # Each trained item's leaf parent as an index into `prefixes` (its sorted distinct rows).
    _, inverse = np.unique(np.concatenate([prefixes, parts.gids.codes[1:trained + 1, :-1]]),
                           axis=0, return_inverse=True)
    item_parent = inverse.ravel()[len(prefixes):]
    new_h, trained_h = ranker.encode(inputs), ranker.item_encodings()[1:trained + 1]

    def rank(todo):
      return neighbour_parents(new_h[todo], trained_h, item_parent, free > 0,
                               parts.eval.placement_neighbours)
  else:
    def rank(todo):
      open_parents = np.flatnonzero(free > 0)
      # The parents with room as a depth l-1 "GID table": its items 1..P' are those parents.
      trie_table = GidTable.from_codes(prefixes[open_parents], parts.gids.branching)
      trie = Trie.build(trie_table, parts.eval.beam_size, parts.mesh)
      ranker = Ranker(parts.model, params, trie, builder, parts.eval, parts.mesh)
      ranked, _ = ranker.ranked({k: v[todo] for k, v in inputs.items()},
                                [np.zeros(0)] * len(todo), trie.beam_size)
      return np.where(ranked > 0, open_parents[np.maximum(ranked - 1, 0)], -1)

  while (chosen < 0).any():
    todo = np.flatnonzero(chosen < 0)
    chosen[todo] = overlay.take_leaves(rank(todo), free)
  parent_codes = prefixes[chosen]
  return np.concatenate([parent_codes, overlay.last_codes(parts.gids, parent_codes)[:, None]],
                        axis=1).astype(np.int32)


def add_items(parts: RunParts, params, workdir: str, items_file: str, *, data_cfg: DataConfig,
              use_content: bool, log=print) -> overlay.NewItems:
  """Indexes the items of `items_file` and adds them to `<workdir>/new_items.npz`.

  Args:
    parts: the workdir's run parts, as trained (without the items added before).
    params: the parameters of the checkpoint that indexes them.
    workdir: the run's folder.
    items_file: an atomic item file of new items.
    data_cfg: how the dataset's text was read and tokenised (`settings.data`).
    use_content: whether the run reads item text (`inputs.use_content`).
    log: where the summary goes.

  Returns:
    The items added by this call.

  Raises:
    DataError / ConfigError: a bad file, an id already known, text that tokenises to nothing, a
      tree without room; nothing is written then.
  """
  staging = overlay.staging_path(workdir)
  if os.path.exists(staging):
    os.unlink(staging)
    log(f"removed {staging}, left by an add_items that was killed")
  before = catalogue.load(parts, workdir)
  current = catalogue.with_new_items(parts, before)
  ids, text, lines = read_items_file(items_file, data_cfg, current.prepared.dataset.item_ids,
                                     log=log)
  tokens, lengths = tokenise(current.prepared, data_cfg, use_content, text, ids, path=items_file,
                             lines=lines)
  codes = index_items(current, params, tokens, where=items_file)
  added = overlay.NewItems(ids, text, tokens, lengths, codes)
  everything = added if before is None else before + added
  path = os.path.join(workdir, overlay.FILE)
  if sharding.is_main_process():  # every process indexed the same items; one writes them
    everything.save(workdir, parts.fingerprint)
  log(f"added {len(added)} items to {path} ({len(everything)} added in all); their GIDs:")
  for item, gid in zip(ids.tolist(), added.codes.tolist()):
    log(f"  {item}  {'-'.join(map(str, gid))}")
  return added
