"""The data section of a config, checked once and frozen (see configs/default.py for each key)."""

from __future__ import annotations

import dataclasses
import os

from colarec_jax.runtime.errors import ConfigError

SOURCES = ("movielens", "atomic", "amazon", "foodcom")
SPLITS = ("auto", "ratio", "given")
SPLIT_ORDERS = ("random", "temporal")
TIME_TIES = ("file", "quicksort")
COLD_USERS = ("error", "drop")
COLD_ITEMS = ("keep", "drop", "error")


def _choice(key, value, choices):
  if value not in choices:
    raise ConfigError(key, f"got {value!r}, expected one of {', '.join(map(repr, choices))}")
  return value


def cache_root(configured: str = "") -> str:
  """The cache root: the config key, else $COLAREC_CACHE, else ~/.cache/colarec_jax."""
  return os.path.abspath(os.path.expanduser(
      configured or os.environ.get("COLAREC_CACHE") or "~/.cache/colarec_jax"))


def parse_text_fields(spec: str) -> tuple[tuple[str, str], ...]:
  """'movie_title:title,class:genres' -> (('movie_title', 'title'), ('class', 'genres')).

  A field without ':label' is labelled with its own column name; 'column:' (an empty label)
  writes the value alone, for a column that already holds a whole content string.
  """
  fields = []
  for part in filter(None, (p.strip() for p in spec.split(","))):
    column, colon, label = part.partition(":")
    if not column or " " in column or " " in label:
      raise ConfigError("data.text_fields", f"bad entry {part!r}; expected 'column[:label]' "
                        "entries joined by commas")
    fields.append((column, label if colon else column))
  return tuple(fields)


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Frozen, validated copy of `config.data`."""

  source: str
  name: str
  dir: str
  cache_dir: str
  user_field: str
  item_field: str
  time_field: str
  rating_field: str
  text_fields: tuple[tuple[str, str], ...]
  min_rating: float
  kcore: int
  split: str
  split_order: str
  split_ratios: tuple[float, float, float]
  seed: int
  cold_users: str
  cold_items: str
  cold_item_fraction: float
  tokenizer: str
  vocab_size: int
  max_item_tokens: int
  lowercase: bool
  time_ties: str = "file"

  @property
  def cache_root(self) -> str:
    """Where downloads (and the CLI's compiled-program cache) live: `cache_dir`, else
    $COLAREC_CACHE, else ~/.cache/colarec_jax."""
    return cache_root(self.cache_dir)

  @classmethod
  def from_config(cls, data) -> "DataConfig":
    """Validates `config.data` (a ConfigDict or mapping); every error names the key."""
    ratios = tuple(float(r) for r in data.split_ratios)
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1) > 1e-6:
      raise ConfigError("data.split_ratios", f"got {ratios}, expected three non-negative "
                        "numbers (train, valid, test) summing to 1")
    if int(data.kcore) < -1:
      raise ConfigError("data.kcore", f"got {data.kcore}, expected -1 (auto) or >= 0")
    if not 0 <= float(data.cold_item_fraction) < 1:
      raise ConfigError("data.cold_item_fraction", f"got {data.cold_item_fraction}, expected a "
                        "share of the items in [0, 1) (0 = no held-out items)")
    if int(data.max_item_tokens) < 1:
      raise ConfigError("data.max_item_tokens", f"got {data.max_item_tokens}, expected >= 1")
    source = _choice("data.source", data.source, SOURCES)
    if source != "movielens" and not data.dir:
      raise ConfigError("data.dir", f"source {source!r} needs the folder holding its files, e.g. "
                        "--config.data.dir=../shared/data/phones")
    if data.tokenizer and not os.path.isfile(data.tokenizer):
      raise ConfigError("data.tokenizer", f"{data.tokenizer!r} is not a file; expected a "
                        "tokenizer.json, or '' to train one on the item text")
    if not data.tokenizer and int(data.vocab_size) < 64:
      raise ConfigError("data.vocab_size", f"got {data.vocab_size}, expected >= 64")
    return cls(
        source=source, name=str(data.name), dir=str(data.dir), cache_dir=str(data.cache_dir),
        user_field=data.user_field, item_field=data.item_field, time_field=data.time_field,
        rating_field=data.rating_field, text_fields=parse_text_fields(data.text_fields),
        min_rating=float(data.min_rating), kcore=int(data.kcore),
        split=_choice("data.split", data.split, SPLITS),
        split_order=_choice("data.split_order", data.split_order, SPLIT_ORDERS),
        split_ratios=ratios, seed=int(data.seed),
        cold_users=_choice("data.cold_users", data.cold_users, COLD_USERS),
        cold_items=_choice("data.cold_items", data.cold_items, COLD_ITEMS),
        cold_item_fraction=float(data.cold_item_fraction),
        tokenizer=str(data.tokenizer), vocab_size=int(data.vocab_size),
        max_item_tokens=int(data.max_item_tokens), lowercase=bool(data.lowercase),
        time_ties=_choice("data.time_ties", data.time_ties, TIME_TIES))
