"""Where a dataset comes from: `config.data.source` picks the reader, all produce a `Dataset`."""

from __future__ import annotations

import os

from colarec_jax.data import amazon, atomic, foodcom, movielens
from colarec_jax.data.config import DataConfig
from colarec_jax.data.dataset import Dataset, ItemTable, build_dataset
from colarec_jax.runtime.errors import ConfigError, DataError

# Raw sources are 5-core filtered unless config.data.kcore says otherwise.
RAW_SOURCE_KCORE = {"amazon": 5, "foodcom": 5}


def source_files(cfg: DataConfig, log=print) -> list[str]:
  """The input files of the configured source (downloading the embedded dataset if needed).

  These are what the preparation manifest checksums; a missing one is reported here.
  """
  if cfg.source == "movielens":
    folder = movielens.ensure_ml100k(cfg.cache_dir, log=log)
    return [os.path.join(folder, name) for name in sorted(movielens.FILES_SHA256)]
  if not os.path.isdir(cfg.dir):
    raise DataError(cfg.dir, "data folder not found; set config.data.dir")
  if cfg.source == "atomic":
    paths = atomic.atomic_paths(cfg.dir, cfg.name)
    if not cfg.text_fields and not os.path.exists(paths["item"]):
      del paths["item"]
    files = list(paths.values())
  elif cfg.source == "amazon":
    files = list(amazon.amazon_paths(cfg.dir, cfg.name).values())
  else:  # foodcom
    files = [os.path.join(cfg.dir, f) for f in ("RAW_interactions.csv", "RAW_recipes.csv")]
  for path in files:
    if not os.path.isfile(path):
      raise DataError(path, f"file not found (source {cfg.source!r}, name {cfg.name!r})")
  return files


def load_dataset(cfg: DataConfig, log=print) -> Dataset:
  """Reads the configured source and builds the filtered, re-indexed `Dataset`."""
  if cfg.source in ("movielens", "atomic"):
    directory = os.path.dirname(source_files(cfg, log)[0])
    raw, items = atomic.load_atomic(
        directory, cfg.name, user_field=cfg.user_field, item_field=cfg.item_field,
        time_field=cfg.time_field, rating_field=cfg.rating_field,
        text_fields=list(cfg.text_fields), use_given_split=cfg.split != "ratio")
  elif cfg.source == "amazon":
    raw, items = amazon.load_amazon(cfg.dir, cfg.name)
  else:
    raw, items = foodcom.load_foodcom(cfg.dir)
  if cfg.source in ("amazon", "foodcom"):
    items = _select_fields(items, cfg.text_fields)
  kcore = cfg.kcore if cfg.kcore >= 0 else RAW_SOURCE_KCORE.get(cfg.source, 0)
  return build_dataset(cfg.name, raw, items, kcore=kcore, min_rating=cfg.min_rating,
                       cold_users=cfg.cold_users, cold_items=cfg.cold_items,
                       time_ties=cfg.time_ties)


def _select_fields(items: ItemTable, wanted: tuple[tuple[str, str], ...]) -> ItemTable:
  """Keeps (and relabels) the converter's fields named in config.data.text_fields."""
  if not wanted:
    return items
  index = []
  for column, _ in wanted:
    if column not in items.fields:
      raise ConfigError("data.text_fields", f"{column!r} is not a field of this source; "
                        f"expected some of {', '.join(items.fields)}")
    index.append(items.fields.index(column))
  text = {item: tuple(values[i] for i in index) for item, values in items.text.items()}
  return ItemTable(items.path, tuple(label for _, label in wanted), text, items.order)
