"""`--mode=prepare`: load, filter, split, tokenise, and save under `<workdir>/data/`.

The folder holds `arrays.npz` (no pickles), `tokenizer.json` and `manifest.json`. It is a cached
stage (`fileio.cached_stage`): the manifest's key (input checksums, the data config, the format
version) decides reuse, any change rebuilds, and a build is written to a temporary sibling folder
and renamed into place, so a failed preparation leaves no partial `data/` behind.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from colarec_jax.data import tokenizer as tokenizer_lib
from colarec_jax.data.config import DataConfig
from colarec_jax.data.dataset import TEST, TRAIN, VALID, Csr, Dataset
from colarec_jax.data.fileio import cached_stage, pack_text, sha256_file, unpack_text
from colarec_jax.data.sources import load_dataset, source_files
from colarec_jax.data.split import HeldOutItems, hold_out_items, ratio_split
from colarec_jax.runtime.errors import ConfigError

FORMAT_VERSION = 1
DATA_DIR = "data"


@dataclasses.dataclass(frozen=True)
class Prepared:
  """A prepared dataset: interactions with their split, and tokenised item content.

  Attributes:
    dataset: the `Dataset` (ids, interactions in per-user time order, item text).
    split: [num_interactions] int8 TRAIN / VALID / TEST.
    item_tokens: [num_items + 1, max_item_tokens] int32 content tokens (row 0 padding).
    item_token_len: [num_items + 1] int32 content length before truncation.
    pad_id: the tokenizer's <pad> id.
    eos_id: the tokenizer's </s> id.
    vocab_size: the tokenizer's vocabulary size.
    directory: the `<workdir>/data` folder.
    manifest: the saved manifest (key, counts, report, statistics).
    held_out: the items `data.cold_item_fraction` held out (not in `dataset`), with their
      interactions; empty when the protocol is off.
  """

  dataset: Dataset
  split: np.ndarray
  item_tokens: np.ndarray
  item_token_len: np.ndarray
  pad_id: int
  eos_id: int
  vocab_size: int
  directory: str
  manifest: dict
  held_out: HeldOutItems

  def rows(self, part: int) -> tuple[np.ndarray, np.ndarray]:
    """(users [m], items [m]) of one split part, each user's rows in time order."""
    mask = self.split == part
    return self.dataset.users[mask], self.dataset.items[mask]

  def item_counts(self, part: int, num_items: int = 0) -> np.ndarray:
    """[max(num_items, dataset items) + 1] each item's interactions in one split part."""
    return np.bincount(self.rows(part)[1], minlength=max(num_items, self.dataset.num_items) + 1)

  def csr(self, *parts: int) -> Csr:
    """Each user's items in the given split parts, in time order (part by part)."""
    mask = np.isin(self.split, parts)
    return Csr.from_pairs(self.dataset.users[mask], self.dataset.items[mask],
                          self.dataset.num_users)

  def users_with(self, part: int) -> np.ndarray:
    """[m] sorted ids of the users that have rows in `part`."""
    return np.unique(self.dataset.users[self.split == part])


def manifest_key(cfg: DataConfig, files: list[str]) -> dict:
  """What a prepared folder depends on: format, data config, input checksums."""
  config = dataclasses.asdict(cfg)
  config.pop("cache_dir")  # where the inputs live does not change them; their checksums do
  # Off, a key added later leaves the key (and the folder prepared before it) as they were.
  for key, off in (("cold_item_fraction", 0.0), ("time_ties", "file")):
    if config[key] == off:
      config.pop(key)
  inputs = {os.path.basename(f): sha256_file(f) for f in files}
  if cfg.tokenizer:
    inputs["tokenizer:" + os.path.basename(cfg.tokenizer)] = sha256_file(cfg.tokenizer)
  return {"format": FORMAT_VERSION, "data": json.loads(json.dumps(config)), "inputs": inputs}


def prepare(cfg: DataConfig, workdir: str, *, log=print, read_only: bool = False) -> Prepared:
  """Prepares the data config's dataset into `<workdir>/data/`, reusing it when inputs and config
  match.

  Args:
    cfg: `config.data`, checked (its `tokenizer` is model.init_from's when a pretrained model is
      used: `settings.Settings.parse` resolves it).
    workdir: the run's working directory.
    log: where progress lines go.
    read_only: use the folder as it is or fail (see `fileio.cached_stage`); never build.

  Returns:
    The `Prepared` dataset.
  """
  target = os.path.join(workdir, DATA_DIR)

  return cached_stage(target, manifest_key(cfg, source_files(cfg, log)),
                      lambda staging: _build(cfg, staging, log),
                      lambda directory, _: load_prepared(directory), what="prepared data", log=log,
                      read_only=read_only)


def _build(cfg: DataConfig, out: str, log) -> dict:
  """Writes arrays.npz and tokenizer.json into `out`; returns the manifest's entries."""
  dataset = load_dataset(cfg, log)
  if cfg.split == "given" and dataset.split is None:
    raise ConfigError("data.split", f"'given' needs benchmark files {cfg.name}.train/valid/"
                      "test.inter; this source has none (use 'ratio' or 'auto')")
  if dataset.split is not None:
    split = dataset.split
  else:
    split = ratio_split(dataset.users, ratios=cfg.split_ratios, order=cfg.split_order,
                        seed=cfg.seed)
  # The cold-start protocol takes its items out before the tokenizer or anything else sees them.
  held_out = HeldOutItems.none(len(dataset.text_fields))
  if cfg.cold_item_fraction:
    dataset, split, held_out = hold_out_items(dataset, split, cfg.cold_item_fraction, cfg.seed)
    log(f"held out {len(held_out)} of {dataset.num_items + len(held_out)} items with their "
        f"{len(held_out.users)} interactions (data.cold_item_fraction={cfg.cold_item_fraction})")

  corpus = [dataset.content(i) for i in range(dataset.num_items + 1)]
  if cfg.tokenizer:
    tok = tokenizer_lib.load_tokenizer(cfg.tokenizer)
  else:
    log(f"training a {cfg.vocab_size}-piece tokenizer on {dataset.num_items} item texts")
    tok = tokenizer_lib.train_tokenizer(corpus[1:], vocab_size=cfg.vocab_size,
                                        lowercase=cfg.lowercase)
  tokens, lengths = tokenizer_lib.encode_texts(tok, corpus, cfg.max_item_tokens,
                                               _lowercase_first(cfg))
  textless = int((lengths[1:] == 0).sum())
  if textless:
    log(f"warning: {textless} of {dataset.num_items} items have no text in data.text_fields "
        f"({', '.join(c for c, _ in cfg.text_fields)}); ColaRec knows them by their ID alone")
  tok.save(os.path.join(out, "tokenizer.json"))

  np.savez(
      os.path.join(out, "arrays.npz"), users=dataset.users, items=dataset.items, split=split,
      timestamps=(dataset.timestamps if dataset.timestamps is not None
                  else np.full(dataset.num_interactions, np.nan)),
      has_timestamps=np.array(dataset.timestamps is not None),
      given_split=np.array(dataset.split is not None), user_ids=dataset.user_ids,
      item_ids=dataset.item_ids, **pack_text(dataset.item_text, "item_text"),
      item_tokens=tokens, item_token_len=lengths,
      # Only with the cold-start protocol on: off, the arrays are those prepared before it existed.
      **({"held_out_item_ids": held_out.item_ids, **pack_text(held_out.item_text, "held_out_item_text"),
          "held_out_users": held_out.users, "held_out_items": held_out.items}
         if len(held_out) else {}))
  special = tokenizer_lib.special_ids(tok)
  return {
      "name": dataset.name, "text_fields": list(dataset.text_fields),
      "pad_id": special["pad"], "eos_id": special["eos"], "vocab_size": tok.get_vocab_size(),
      "report": dict(dataset.report),
      "stats": statistics(dataset, split, lengths, cfg.max_item_tokens),
  }


def _lowercase_first(cfg: DataConfig) -> bool:
  """A loaded tokenizer gets lowercased text when asked; a trained one's normaliser lowercases."""
  return cfg.lowercase if cfg.tokenizer else False


def encode_new_texts(prepared: Prepared, cfg: DataConfig,
                     texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
  """Content strings of items that arrive after preparation, tokenised as `prepare` tokenised
  the dataset's own (the saved tokenizer, `cfg.max_item_tokens`): (tokens [n, T], lengths [n])."""
  tok = tokenizer_lib.load_tokenizer(os.path.join(prepared.directory, "tokenizer.json"))
  return tokenizer_lib.encode_texts(tok, texts, cfg.max_item_tokens, _lowercase_first(cfg))


def load_prepared(directory: str) -> Prepared:
  """Loads a folder written by `prepare`."""
  with open(os.path.join(directory, "manifest.json")) as f:
    manifest = json.load(f)
  with np.load(os.path.join(directory, "arrays.npz")) as z:
    arrays = {k: z[k] for k in z.files}
  dataset = Dataset(
      name=manifest["name"], user_ids=arrays["user_ids"], item_ids=arrays["item_ids"],
      users=arrays["users"], items=arrays["items"],
      timestamps=arrays["timestamps"] if arrays["has_timestamps"] else None,
      split=arrays["split"] if arrays["given_split"] else None,
      text_fields=tuple(manifest["text_fields"]),
      item_text=unpack_text(arrays, "item_text", legacy="item_text"),
      report=manifest["report"])
  return Prepared(dataset=dataset, split=arrays["split"], item_tokens=arrays["item_tokens"],
                  item_token_len=arrays["item_token_len"], pad_id=manifest["pad_id"],
                  eos_id=manifest["eos_id"], vocab_size=manifest["vocab_size"],
                  directory=directory, manifest=manifest, held_out=HeldOutItems(
                      arrays["held_out_item_ids"],
                      unpack_text(arrays, "held_out_item_text", legacy="held_out_item_text"),
                      arrays["held_out_users"], arrays["held_out_items"])
                  if "held_out_item_ids" in arrays else HeldOutItems.none(len(dataset.text_fields)))


def statistics(dataset: Dataset, split: np.ndarray, lengths: np.ndarray,
               max_tokens: int) -> dict:
  """Counts and percentiles shown by `--mode=stats` (and saved in the manifest)."""
  per_user = np.bincount(dataset.users, minlength=dataset.num_users + 1)[1:]
  train_per_user = np.bincount(dataset.users[split == TRAIN],
                               minlength=dataset.num_users + 1)[1:]
  item_len = lengths[1:]
  pct = lambda a, q: float(np.percentile(a, q)) if len(a) else 0.0
  return {
      "users": dataset.num_users, "items": dataset.num_items,
      "interactions": dataset.num_interactions,
      "density": dataset.num_interactions / max(1, dataset.num_users * dataset.num_items),
      "train": int((split == TRAIN).sum()), "valid": int((split == VALID).sum()),
      "test": int((split == TEST).sum()),
      "users_without_valid": int(dataset.num_users - len(np.unique(dataset.users[split == VALID]))),
      "users_without_test": int(dataset.num_users - len(np.unique(dataset.users[split == TEST]))),
      "interactions_per_user_p50": pct(per_user, 50), "interactions_per_user_max": int(
          per_user.max(initial=0)),
      "train_per_user_p50": pct(train_per_user, 50),
      "tokens_per_item_p50": pct(item_len, 50), "tokens_per_item_p90": pct(item_len, 90),
      "tokens_per_item_p99": pct(item_len, 99), "tokens_per_item_max": int(item_len.max(initial=0)),
      "items_truncated": int((item_len > max_tokens).sum()),
      "items_without_text": int((item_len == 0).sum()),
  }


def format_stats(prepared: Prepared) -> str:
  """The statistics as an aligned two-column table."""
  stats = prepared.manifest["stats"]
  report = prepared.manifest["report"]
  rows = [("dataset", prepared.dataset.name)]
  for name, value in list(stats.items()) + [(f"[build] {k}", v) for k, v in report.items()]:
    if isinstance(value, float):
      value = f"{value:.3g}" if name == "density" else f"{value:.1f}"
    elif isinstance(value, int):
      value = f"{value:,}"
    rows.append((name, str(value)))
  rows.append(("vocab_size", f"{prepared.vocab_size:,}"))
  width = max(len(n) for n, _ in rows)
  vwidth = max(len(v) for _, v in rows)
  lines = [f"{'statistic':<{width}}  {'value':>{vwidth}}", "-" * (width + vwidth + 2)]
  lines += [f"{n:<{width}}  {v:>{vwidth}}" for n, v in rows]
  return "\n".join(lines)

