"""Host-side input pipeline for ColaRec (NumPy): encoder inputs, sampled negatives and positives.

Layout of one encoder input (length fixed by the config, padded with 0 and masked):
  recommendation  [task_rec] [iad_j, content_j ...] for each history item j ... [EOS]
  indexing        [task_index] [iad_i, content_i ...] [uad_u] for up to `index_users` users ... [EOS]
Position 0 carries the task embedding, an iad slot the item's atomic embedding, a uad slot the
user's. Histories that do not fit the length budget lose their last items (`history_cut='item'`)
or are cut mid-item before the EOS (`'token'`, the authors' layout). All randomness comes
from the `numpy.random.Generator` passed in, seeded per epoch by the trainer.

Items the model has no trained ID for (ids above `known_items`, added after training) fill their
ID slot with the shared unknown-item token (`UNKNOWN_ITEM`); with `item_id_dropout` > 0 training
inputs do the same to each item slot with that probability, so the model learns to read content.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np

from colarec_jax.data.dataset import TRAIN, Csr
from colarec_jax.data.prepare import Prepared
from colarec_jax.data.sampling import NegativeSampler, shuffled_batches
from colarec_jax.gid.table import GidTable
from colarec_jax.model.colarec import TASK_INDEX, TASK_REC, UNKNOWN_ITEM
from colarec_jax.runtime.errors import ConfigError


HISTORY_CUTS = ("item", "token")


@dataclasses.dataclass(frozen=True)
class InputConfig:
  """Input shapes and sampling: config.inputs, with data.max_item_tokens (the content tokens
  prepared per item, all of which an input uses)."""

  max_history: int = 10  # training: other training items sampled per user (official 10)
  eval_history: int = 20  # evaluation: most recent training items, newest first (official 20)
  max_item_tokens: int = 30  # content tokens per item (official 30): data.max_item_tokens
  max_length: int = 256  # recommendation input length (official 256)
  index_users: int = 1  # user-ID slots on an indexing input (official samples 1)
  uad_on_item_inputs: bool = True  # paper; False = official code (uad only on the i+ input)
  use_content: bool = True  # False: items are their ID slot alone (the w/o-content ablation)
  history_cut: str = "item"  # item: drop what does not fit whole; token: cut mid-item (official)
  history_codes: bool = False  # history items also carry their GID codes (see the config)
  item_id_dropout: float = 0.0  # training: chance an item slot reads the unknown-item token

  @classmethod
  def from_config(cls, cfg, max_item_tokens: int) -> "InputConfig":
    out = cls(int(cfg.max_history), int(cfg.eval_history), int(max_item_tokens),
              int(cfg.max_length), int(cfg.index_users), bool(cfg.uad_on_item_inputs),
              bool(cfg.use_content), str(cfg.history_cut), bool(cfg.history_codes),
              float(cfg.item_id_dropout))
    if out.history_cut not in HISTORY_CUTS:
      raise ConfigError("inputs.history_cut", f"got {out.history_cut!r}, expected one of "
                        f"{', '.join(map(repr, HISTORY_CUTS))}")
    if not 0 <= out.item_id_dropout <= 1:
      raise ConfigError("inputs.item_id_dropout", f"got {out.item_id_dropout}, expected a "
                        "probability in [0, 1]")
    for key in ("max_history", "index_users"):
      if getattr(out, key) < 0:
        raise ConfigError(f"inputs.{key}", f"got {getattr(out, key)}, expected >= 0")
    if out.eval_history < 1:
      raise ConfigError("inputs.eval_history", f"got {out.eval_history}, expected >= 1")
    if out.max_length < out.max_item_tokens + 3:
      raise ConfigError("inputs.max_length", f"got {out.max_length}, expected room for one item "
                        f"(>= max_item_tokens + 3 = {out.max_item_tokens + 3})")
    return out

  @property
  def index_length(self) -> int:
    return 1 + 1 + self.max_item_tokens + self.index_users + 1


class InputBuilder:
  """Builds fixed-shape encoder inputs and training batches from a prepared dataset and GIDs."""

  def __init__(self, prepared: Prepared, gids: GidTable, cfg: InputConfig, *,
               last_level_items: bool = False):
    """`last_level_items`: training batches also carry each target's last-level items (for
    model.tie_last_level)."""
    self.cfg = cfg
    self.last_level_items = last_level_items
    self.gids = gids
    ds = prepared.dataset
    self.num_items = ds.num_items
    self.known_items = ds.num_items  # items with a trained ID embedding; later ones are unknown
    self.eos = prepared.eos_id
    self.train = prepared.csr(TRAIN)  # each user's training items in time order
    users, items = prepared.rows(TRAIN)
    self.item_users = Csr.from_pairs(items, users, ds.num_items)
    self.negatives = NegativeSampler(users, items, ds.num_items)
    tokens = prepared.item_tokens[:, :cfg.max_item_tokens]
    self.content = [row[row != prepared.pad_id] if cfg.use_content else row[:0] for row in tokens]
    self.siblings = gids.siblings()
    self.leaf_parent = gids.item_leaf_parent

  # Encoder inputs -------------------------------------------------------------------------------

  def _row(self, task: int, items: list[int], users: list[int], length: int) -> dict:
    tokens = np.zeros(length, np.int32)
    item_slots = np.zeros(length, np.int32)
    user_slots = np.zeros(length, np.int32)
    pos = 1
    for item in items:
      content = self.content[item]
      if pos + 1 + len(content) + 1 > length:  # keep room for EOS
        if self.cfg.history_cut == "token" and pos < length - 1:
          content = content[:length - 2 - pos]  # the slot and what fits before the EOS
        else:
          break
      item_slots[pos] = item if item <= self.known_items else UNKNOWN_ITEM
      tokens[pos + 1:pos + 1 + len(content)] = content
      pos += 1 + len(content)
    for user in users:
      if pos + 2 > length:
        break
      user_slots[pos] = user
      pos += 1
    tokens[pos] = self.eos
    mask = np.arange(length) <= pos
    row = {"tokens": tokens, "items": item_slots, "users": user_slots, "mask": mask,
           "task": np.int32(task)}
    if self.cfg.history_codes and task == TASK_REC:
      # The GIDs of the history's items ([L, l], 0 elsewhere); never on an indexing input,
      # whose item's GID is the target.
      known = (item_slots > 0) & (item_slots <= self.gids.num_items)
      row["codes"] = np.where(known[:, None], self.gids.codes[np.where(known, item_slots, 0)], 0)
    return row

  def with_items(self, tokens: np.ndarray, pad_id: int, gids: GidTable | None = None
                 ) -> InputBuilder:
    """A copy that also writes items num_items + 1, ... (added after training) from their content
    tokens [m, T] (`pad_id` padded), with the unknown-item token in their ID slot; `gids`, when
    given, is the GID table that covers them. Training inputs stay those of the known items."""
    out = copy.copy(self)
    out.content = self.content + [row[row != pad_id] if self.cfg.use_content else row[:0]
                                  for row in tokens[:, :self.cfg.max_item_tokens]]
    out.num_items = self.num_items + len(tokens)
    out.gids = gids if gids is not None else self.gids
    return out

  def rec_input(self, history: list[int]) -> dict:
    """X_u for a history (item ids, in the order they are written)."""
    return self._row(TASK_REC, history, [], self.cfg.max_length)

  def index_input(self, item: int, users: list[int]) -> dict:
    """X_i: the item's ID and content, then user-ID slots."""
    return self._row(TASK_INDEX, [item], users, self.cfg.index_length)

  def eval_history(self, user: int) -> list[int]:
    """The user's most recent `eval_history` training items, newest first (official)."""
    return self.train.row(user)[::-1][:self.cfg.eval_history].tolist()

  def eval_inputs(self, users: np.ndarray) -> dict:
    """Stacked recommendation inputs for evaluation, [n, max_length]."""
    return stack([self.rec_input(self.eval_history(u)) for u in users])

  # Sampling -------------------------------------------------------------------------------------

  def train_history(self, user: int, item: int, rng: np.random.Generator) -> list[int]:
    """Up to `max_history` of the user's other training items, sampled at random (official)."""
    others = self.train.row(user)
    others = others[others != item]
    if len(others) > self.cfg.max_history:
      others = rng.choice(others, self.cfg.max_history, replace=False)
    else:
      others = rng.permutation(others)
    return others.tolist()

  def sample_users(self, item: int, rng: np.random.Generator) -> list[int]:
    users = self.item_users.row(item)
    if not len(users):
      return []
    take = min(self.cfg.index_users, len(users))
    return rng.choice(users, take, replace=False).tolist()

  def sample_negatives(self, users: np.ndarray, items: np.ndarray,
                       rng: np.random.Generator) -> np.ndarray:
    """i-: uniform over items outside u's training history and outside i's leaf-parent prefix."""
    same_leaf = lambda rows, cand: self.leaf_parent[cand] == self.leaf_parent[items[rows]]
    return self.negatives(users, rng, reject=same_leaf)

  def sample_positives(self, items: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """i+: an item sharing i's first l-1 codes (other than i when there is one)."""
    out = items.copy()
    for n, item in enumerate(items.tolist()):
      others = self.siblings.row(item)
      others = others[others != item]
      if len(others):
        out[n] = others[rng.integers(len(others))]
    return out

  def training_batch(self, users: np.ndarray, items: np.ndarray, mask: np.ndarray,
                     rng: np.random.Generator, share: slice | None = None) -> dict:
    """Everything one train step needs for interactions (u, i); padding rows have mask 0.

    Sampling always covers the whole batch, so the generator advances the same way in every
    process; only the `share` slice of rows (this process's share of a global batch) is built.

    Returns:
      {'user': X_u, 'item': X_i, 'neg': X_i-, 'pos': X_i+ (each a dict of [b, L] arrays),
       'item_codes': [b, l], 'neg_codes': [b, l], 'mask': [b] float32}; with
      `last_level_items` also 'item_last_items' and 'neg_last_items' ([b, K + 1], the item each
      last code leads to under the target's leaf parent).
    """
    neg = self.sample_negatives(users, items, rng)
    pos = self.sample_positives(items, rng)
    uad = self.cfg.uad_on_item_inputs
    share = share or slice(0, len(users))
    batch = {"user": [], "item": [], "neg": [], "pos": []}
    for row, (u, i, n, p) in enumerate(zip(users.tolist(), items.tolist(), neg.tolist(),
                                           pos.tolist())):
      history = self.train_history(u, i, rng)
      sampled = [self.sample_users(i, rng) if uad else [],
                 self.sample_users(n, rng) if uad else [], self.sample_users(p, rng)]
      if share.start <= row < share.stop:
        batch["user"].append(self.rec_input(history))
        for key, item, slot_users in zip(("item", "neg", "pos"), (i, n, p), sampled):
          batch[key].append(self.index_input(item, slot_users))
    out = {k: stack(v) for k, v in batch.items()}
    if self.cfg.item_id_dropout > 0:
      # Drawn for the whole batch (every process alike), applied to this process's rows.
      for key in ("user", "item", "neg", "pos"):
        hidden = rng.random((len(users), out[key]["items"].shape[1])) < self.cfg.item_id_dropout
        slots = out[key]["items"]
        out[key]["items"] = np.where(hidden[share] & (slots != 0), UNKNOWN_ITEM, slots)
    out["item_codes"] = self.gids.codes[items[share]]
    out["neg_codes"] = self.gids.codes[neg[share]]
    if self.last_level_items:
      out["item_last_items"] = self.gids.last_level_items(items[share])
      out["neg_last_items"] = self.gids.last_level_items(neg[share])
    out["mask"] = mask[share].astype(np.float32)
    return out


def stack(rows: list[dict]) -> dict:
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def epoch_order(users: np.ndarray, items: np.ndarray, batch_size: int,
                rng: np.random.Generator):
  """Shuffled fixed-size (users, items, mask) batches of the training interactions."""
  _, batches = shuffled_batches(len(users), batch_size, rng)
  for rows, real in batches:
    yield users[rows], items[rows], real
