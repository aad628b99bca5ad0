"""A study's arms: the paper's suites, and the studies a user writes as --sweep or --arm.

A `Variant` is a name and config overrides; `SUITES` holds the paper's three questions (`main`:
MostPop, LightGCN, ColaRec; `ablation`: without L_index, L_bpr, L_c or item content; `gid`: GIDs
from LightGCN, item text, random, or the dataset's file column), `REFERENCE` the arm each suite's
others are tested against. Every override is checked against the config's keys and types before
any run starts (`sweep_variants`, `arm_variants`).
"""

from __future__ import annotations

import dataclasses
import itertools
import os

from colarec_jax.runtime.errors import ConfigError, UsageError


@dataclasses.dataclass(frozen=True)
class Variant:
  """One arm of a study: a name, the config overrides, and the model it trains."""

  name: str
  overrides: tuple[tuple[str, object], ...] = ()

  @property
  def slug(self) -> str:
    return slug(self.name)


def slug(name: str) -> str:
  """An arm's name as a folder or file name."""
  return "".join(c if c.isalnum() or c in "._=-" else "_" for c in name)


SUITES = {
    "main": (Variant("MostPop", (("model.name", "mostpop"),)),
             Variant("LightGCN", (("model.name", "lightgcn"),)),
             Variant("ColaRec", (("model.name", "colarec"),))),
    "ablation": (Variant("ColaRec (full)"),
                 Variant("w/o L_index", (("loss.index_weight", 0.0),)),
                 Variant("w/o L_bpr", (("loss.bpr_weight", 0.0),)),
                 Variant("w/o L_c", (("loss.contrastive_weight", 0.0),)),
                 Variant("w/o item content", (("inputs.use_content", False),))),
    "gid": (Variant("GIDs from LightGCN", (("gid.source", "lightgcn"),)),
            Variant("GIDs from text (TF-IDF + SVD)", (("gid.source", "content"),)),
            Variant("random GIDs", (("gid.source", "random"),)),
            Variant("the dataset's GIDs (file)", (("gid.source", "file"),))),
}
REFERENCE = {"main": "ColaRec", "ablation": "ColaRec (full)", "gid": "GIDs from LightGCN"}


def _parse_value(text: str, current):
  """A --sweep value, typed like the config key's current value."""
  if isinstance(current, bool):
    if text.lower() not in ("true", "false", "1", "0"):
      raise ValueError(text)
    return text.lower() in ("true", "1")
  return type(current)(text) if current is not None else text


def sweep_variants(config, sweeps: list[str]) -> tuple[Variant, ...]:
  """`key=v1,v2` strings -> one variant per combination of values.

  Raises:
    ConfigError: an unknown key or a value of the wrong type.
  """
  axes = []
  for sweep in sweeps:
    key, sep, values = sweep.partition("=")
    if not sep or not values:
      raise UsageError("sweep", f"got {sweep!r}, expected key=value1,value2,...")
    axes.append([(key, _typed(config, key, v.strip(), values)) for v in values.split(",")])
  return tuple(Variant(", ".join(f"{k}={v}" for k, v in combo), tuple(combo))
               for combo in itertools.product(*axes))


def arm_variants(config, arms: list[str]) -> tuple[Variant, ...]:
  """`NAME:key=value;key=value` strings -> one variant each, with all its overrides at once
  (`NAME` alone: the config as it is). A lever that moves several keys together is one arm.

  Raises:
    ConfigError: an unknown key or a value of the wrong type.
    UsageError: an arm without a name, or two arms of one name.
  """
  variants = []
  for arm in arms:
    name, _, body = arm.partition(":")
    if not name.strip():
      raise UsageError("arm", f"got {arm!r}, expected NAME:key=value;key=value")
    overrides = []
    for item in filter(None, (part.strip() for part in body.split(";"))):
      key, sep, value = item.partition("=")
      if not sep or not value:
        raise UsageError("arm", f"got {item!r} in arm {name!r}, expected key=value")
      overrides.append((key.strip(), _typed(config, key.strip(), value.strip(), value)))
    variants.append(Variant(name.strip(), tuple(overrides)))
  names = [v.name for v in variants]
  if len(set(names)) != len(names):
    raise UsageError("arm", f"two arms share a name in {names}; expected distinct names")
  return tuple(variants)


def _typed(config, key: str, text: str, shown: str):
  """`text` as a value of config key `key`, typed like its current value."""
  section, name = _section(config, key)
  if section is None or name not in section:
    raise ConfigError(key, "there is no such config key")
  try:
    return _parse_value(text, section[name])
  except ValueError:
    raise ConfigError(key, f"cannot set it to {shown!r}: expected values of type "
                      f"{type(section[name]).__name__}") from None


def _section(config, key: str):
  """('a.b.c' -> (config.a.b or None when there is no such section, 'c'))."""
  section = config
  for part in key.split(".")[:-1]:
    section = section.get(part) if hasattr(section, "get") else None
  return section, key.split(".")[-1]


def suite_variants(suite: str, config) -> tuple[Variant, ...]:
  """The suite's variants that apply to the dataset (the file GIDs need their column)."""
  if suite not in SUITES:
    raise UsageError("suite", f"got {suite!r}, expected one of {', '.join(SUITES)} (or --sweep)")
  variants = SUITES[suite]
  if suite == "gid" and not _has_gid_column(config):
    variants = tuple(v for v in variants if dict(v.overrides).get("gid.source") != "file")
  return variants


def _has_gid_column(config) -> bool:
  if config.data.source != "atomic":
    return False
  path = os.path.join(config.data.dir, f"{config.data.name}.item")
  try:
    with open(path, encoding="utf-8-sig") as f:
      header = f.readline()
  except OSError:
    return False
  return any(field.split(":")[0] == config.gid.file_column for field in header.split("\t"))


def variant_config(config, variant: Variant, seed: int):
  """`config` with the variant's overrides and `seed` (a copy; the config is not changed)."""
  out = config.copy_and_resolve_references()
  for key, value in variant.overrides:
    section, name = _section(out, key)
    section[name] = value
  out.seed = seed
  return out
