"""A trained ColaRec as a Python object: load a workdir once, then ask it for recommendations.

    from colarec_jax import Recommender
    rec = Recommender.load("runs/default")                  # its stored config, best checkpoint
    rec.recommend(user="196", top_n=5)                      # a known user
    rec.recommend(history=["50", "172", "181"])             # a new user's items, most recent first
    rec.recommend_batch(users=["196", "186", "22"])         # many at once

Ids are the dataset's own (strings; ints are read as their digits). A known user gets nothing they
already have (training, validation or test items); a history gets none of its own items. Every
beam-search call has the same shape (`batch_size` rows, padded), so the first call compiles and
later ones, single or batched, reuse that program.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from colarec_jax.config import stored
from colarec_jax.config.settings import Settings
from colarec_jax.data import fileio
from colarec_jax.data.dataset import TEST, TRAIN, VALID
from colarec_jax.data.prepare import Prepared
from colarec_jax.newitems import catalogue
from colarec_jax.run import parts as parts_lib
from colarec_jax.run import store
from colarec_jax.run.parts import RunParts
from colarec_jax.runtime import sharding
from colarec_jax.runtime.errors import ConfigError, RequestError

TOP_N = 10  # list length when a request names none (API, CLI, export, HTTP)
MAX_ECHO = 200  # characters of a request's own value quoted back in an error


def echo(value) -> str:
  """`value` as an error quotes it: its repr, cut to MAX_ECHO characters (a 50 MB id is not sent
  back)."""
  text = repr(value)
  return text if len(text) <= MAX_ECHO else f"{text[:MAX_ECHO]}... ({len(text)} characters)"
# Rows of one beam-search call at most: each row holds beam x tokens activations, and 100,000 rows
# asked for 31 GB at the first call.
MAX_BATCH = 4096


def check_top_n(top_n, max_top_n: int) -> None:
  """Raises RequestError('top_n') unless `top_n` is an int in 1..`max_top_n` (the beam size: a
  search returns that many items at most)."""
  if isinstance(top_n, bool) or not isinstance(top_n, int) or not 1 <= top_n <= max_top_n:
    raise RequestError("top_n", f"got {echo(top_n)}, expected 1 to eval.beam_size = {max_top_n}")


@dataclasses.dataclass(frozen=True)
class Query:
  """One checked request.

  Attributes:
    user: the user's id, or None for an ad-hoc history.
    history: internal item ids the model reads, most recent first.
    exclude: internal item ids never recommended (what the user has, or the history).
    top_n: list length.
  """

  user: str | None
  history: tuple[int, ...]
  exclude: np.ndarray
  top_n: int


def check_batch_size(batch_size) -> None:
  """Raises RequestError('batch_size') unless it is an int in 0..MAX_BATCH (0: the config's)."""
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not (
      0 <= batch_size <= MAX_BATCH):
    raise RequestError("batch_size", f"got {echo(batch_size)}, expected 1 to {MAX_BATCH} rows per "
                       "beam-search call, or 0 for eval.decode_batch_size")


@dataclasses.dataclass(frozen=True)
class Recommendation:
  """Top items, best first: ids, beam scores (the GID's log-probability) and content strings.
  `short` says why the list holds fewer items than asked for (None when it holds them all)."""

  user: str | None
  items: list[str]
  scores: list[float]
  texts: list[str]
  short: str | None = None

  def to_json(self) -> dict:
    out = dataclasses.asdict(self)
    if out["short"] is None:
      del out["short"]
    return out


class Catalog:
  """The ids of a prepared dataset, and the checks that turn a request into a `Query`."""

  def __init__(self, prepared: Prepared, max_top_n: int, eval_history: int):
    """`max_top_n`: the beam size (a search returns that many items at most); `eval_history`:
    how many of a user's newest items the model reads (`inputs.eval_history`)."""
    self.dataset = ds = prepared.dataset
    self.max_top_n = max_top_n
    self.eval_history = eval_history
    self.users = {raw: n for n, raw in enumerate(ds.user_ids.tolist()) if n}
    self.items = {raw: n for n, raw in enumerate(ds.item_ids.tolist()) if n}
    self.known = prepared.csr(TRAIN, VALID, TEST)
    self.train = prepared.csr(TRAIN)

  def _id(self, field: str, value, kind: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
      raise RequestError(field, f"got {echo(value)}, expected {kind} id (a string)")
    return str(value)

  def user_index(self, user, field: str = "user") -> int:
    raw = self._id(field, user, "a user")
    if raw not in self.users:
      ds = self.dataset
      raise RequestError(field, f"{echo(raw)} is not a user of {ds.name} ({ds.num_users} users, "
                         f"e.g. {str(ds.user_ids[1])!r})", not_found=True)
    return self.users[raw]

  def query(self, user=None, history=None, top_n: int = TOP_N) -> Query:
    """A checked request: exactly one of `user` (an id) or `history` (item ids, most recent
    first), and `top_n` in 1..the beam size.

    Raises:
      RequestError: naming the field that is wrong.
    """
    if (user is None) == (history is None):
      raise RequestError("user", "give exactly one of user (a user id) or history (item ids)")
    check_top_n(top_n, self.max_top_n)
    if user is not None:
      index = self.user_index(user)
      newest = self.train.row(index)[::-1][:self.eval_history]
      return Query(str(user), tuple(newest.tolist()), self.known.row(index), top_n)
    if isinstance(history, (str, bytes)) or not isinstance(history, Sequence) or not history:
      raise RequestError("history", f"got {echo(history)}, expected a non-empty list of item ids, "
                         "most recent first")
    items = []
    for value in history:
      raw = self._id("history", value, "an item")
      if raw not in self.items:
        ds = self.dataset
        raise RequestError("history", f"{echo(raw)} is not an item of {ds.name} ({ds.num_items} "
                           f"items, e.g. {str(ds.item_ids[1])!r})", not_found=True)
      if self.items[raw] in items:
        raise RequestError("history", f"{echo(raw)} is listed twice; expected each item once")
      items.append(self.items[raw])
    return Query(None, tuple(items), np.asarray(items, np.int32), top_n)


class Recommender:
  """A ColaRec checkpoint loaded once, ranking by constrained beam search.

  Attributes:
    parts: the run's parts (prepared data, GIDs, model, mesh, trie).
    catalog: the dataset's ids and the request checks.
    epoch: the checkpoint's epoch.
    batch_size: rows per beam-search call.
  """

  def __init__(self, parts: RunParts, params, epoch: int, eval_history: int,
               batch_size: int = 0):
    check_batch_size(batch_size)
    self.parts, self.epoch = parts, epoch
    self.ranker = parts.ranker(params, batch_size)
    self.catalog = Catalog(parts.prepared, parts.trie.beam_size, eval_history)
    self.batch_size = self.ranker.batch_size

  @classmethod
  def load(cls, workdir: str, checkpoint: str = store.BEST, *, overrides: dict | None = None,
           batch_size: int = 0, log=None) -> Recommender:
    """The model trained in `workdir`, from the config training stored there.

    Args:
      workdir: a trained run's folder.
      checkpoint: 'best', 'latest' or an epoch number.
      overrides: {'eval.beam_size': 50, ...}: only eval.*, num_devices and cpu_devices.
      batch_size: rows per beam-search call (0: eval.decode_batch_size).
      log: where loading notes go (default: nowhere).

    Raises:
      ConfigError, UsageError: a key that may not change, no such checkpoint, ...
    """
    check_batch_size(batch_size)  # before anything is read
    config = stored.load(workdir)
    for key, value in (overrides or {}).items():
      try:
        config.update_from_flattened_dict({key: value})
      except (KeyError, AttributeError):
        raise ConfigError(key, "there is no such config key") from None
    settings = Settings.parse(config)
    stored.check_reader(settings.full, workdir)
    log = log or (lambda *_: None)
    with fileio.workdir_lock(workdir, exclusive=False, log=log):  # no trainer writes meanwhile
      return cls.from_settings(settings, workdir, checkpoint, batch_size=batch_size, log=log)

  @classmethod
  def from_settings(cls, settings: Settings, workdir: str, checkpoint: str = store.BEST, *,
                    prepared: Prepared | None = None, batch_size: int = 0,
                    log=print, new_items: bool = True) -> Recommender:
    """As `load`, from settings already parsed (the command line); the workdir's cached stages
    are used as training left them, and nothing is written. With `new_items`, the items added
    after training (`--mode=add_items`) are ranked too."""
    kind, _ = store.parse_which(checkpoint)  # a malformed --checkpoint before any file is read
    check_batch_size(batch_size)
    parts = parts_lib.build(settings, workdir, log=log, prepared=prepared, read_only=True)
    ckpts = parts_lib.checkpoints(parts, settings, workdir)
    params, epoch = ckpts.load_params(checkpoint, parts.abstract_params())
    log(f"using the {kind} checkpoint (epoch {epoch}) in {ckpts.directory}, on "
        f"{sharding.describe(parts.mesh)}")
    if new_items:
      parts = catalogue.with_new_items(parts, catalogue.load(parts, workdir))
    return cls(parts, params, epoch, settings.inputs.eval_history, batch_size)

  @property
  def max_top_n(self) -> int:
    return self.catalog.max_top_n

  def query(self, user=None, history=None, top_n: int = TOP_N) -> Query:
    """See `Catalog.query`."""
    return self.catalog.query(user, history, top_n)

  def rank(self, queries: Sequence[Query], progress=None) -> tuple[np.ndarray, np.ndarray]:
    """([n, k] internal item ids, 0-padded; [n, k] scores) for `queries`, k their largest top_n,
    in beam-search calls of `batch_size` rows (`progress(rows)` after each). What a query
    excludes is blocked inside the search, so its list is full whenever the catalogue holds
    enough other items."""
    k = max(q.top_n for q in queries)
    return self.ranker.for_histories([q.history for q in queries], [q.exclude for q in queries],
                                     k, progress, in_search=True)

  def answer(self, queries: Sequence[Query]) -> list[Recommendation]:
    """`rank` as ids, scores and content strings, each cut to its query's top_n."""
    items, scores = self.rank(queries)
    ds = self.catalog.dataset
    out = []
    for query, row, row_scores in zip(queries, items, scores):
      real = row[:query.top_n] > 0
      ids = row[:query.top_n][real]
      out.append(Recommendation(query.user, [str(ds.item_ids[i]) for i in ids],
                                [float(s) for s in row_scores[:query.top_n][real]],
                                [ds.content(int(i)) for i in ids], self._short(query, len(ids))))
    return out

  def _short(self, query: Query, found: int) -> str | None:
    """Why a list holds fewer than `query.top_n` items, or None."""
    if found >= query.top_n:
      return None
    excluded = len(np.unique(query.exclude))
    left = self.catalog.dataset.num_items - excluded
    if left <= found:
      return f"the catalogue holds {left} items besides the {excluded} this request excludes"
    return f"the beam search reached only {found} of the {left} items left"

  def recommend(self, user=None, history=None, *, top_n: int = TOP_N) -> Recommendation:
    """Top `top_n` items for a known user id, or for a history of item ids (most recent first).

    Raises:
      RequestError: an unknown id, an empty or repeated history, top_n out of range.
    """
    return self.answer([self.query(user, history, top_n)])[0]

  def recommend_batch(self, users: Sequence | None = None, histories: Sequence | None = None, *,
                      top_n: int = TOP_N) -> list[Recommendation]:
    """`recommend` for many users (or many histories), batched into few beam-search calls."""
    if (users is None) == (histories is None):
      raise RequestError("users", "give exactly one of users or histories")
    for name, values in (("users", users), ("histories", histories)):
      if values is not None and (isinstance(values, (str, bytes)) or not isinstance(values,
                                                                                   Sequence)):
        raise RequestError(name, f"got {type(values).__name__} {str(values)[:40]!r}, expected a "
                           "list (one entry per request)")
    queries = ([self.query(user=u, top_n=top_n) for u in users] if users is not None else
               [self.query(history=h, top_n=top_n) for h in histories])
    return self.answer(queries) if queries else []
