"""The cached stages before ColaRec trains, wired together: prepared data, LightGCN, GIDs.

Each is a folder of the workdir, reused while what it depends on is unchanged
(`data.fileio.cached_stage`); GIDs from LightGCN train (or reuse) LightGCN first. In a
multi-process run the main process builds them and the others then reuse them
(`sharding.main_first`).
"""

from __future__ import annotations

from colarec_jax.cf import train as cf_train
from colarec_jax.config.settings import Settings
from colarec_jax.data import prepare as prepare_lib
from colarec_jax.data.dataset import TEST, VALID
from colarec_jax.data.prepare import Prepared
from colarec_jax.data.sources import source_files
from colarec_jax.gid import sources as gid_sources
from colarec_jax.gid.table import GidTable
from colarec_jax.runtime import sharding
from colarec_jax.runtime.errors import ConfigError


def prepared_data(settings: Settings, workdir: str, *, log=print,
                  read_only: bool = False) -> Prepared:
  """The prepared dataset of `settings.data` in `<workdir>/data/`."""
  return prepare_lib.prepare(settings.data, workdir, log=log, read_only=read_only)


def check_evaluable(prepared: Prepared) -> None:
  """Training selects models on the validation part and tests on the test part: both must hold
  interactions.

  Raises:
    ConfigError: one of them is empty.
  """
  for part, name in ((VALID, "validation"), (TEST, "test")):
    if not len(prepared.users_with(part)):
      raise ConfigError("data.split_ratios", f"{prepared.dataset.name} has no {name} "
                        "interactions after the split; expected some in both the validation and "
                        "the test part (model selection and testing need them)")


def lightgcn(settings: Settings, prepared: Prepared, workdir: str, *,
             log=print) -> cf_train.CFResult:
  """LightGCN trained (or reused) in `<workdir>/lightgcn/`."""
  check_evaluable(prepared)
  return cf_train.train_lightgcn(prepared, workdir, settings.cf, settings.eval,
                                 seed=settings.seed, num_devices=settings.num_devices, log=log)


def gid_table(settings: Settings, prepared: Prepared, workdir: str, *, log=print,
              read_only: bool = False) -> GidTable:
  """The GIDs of `settings.gid` in `<workdir>/gid/`, LightGCN's item embeddings first when they
  are the source."""
  return gid_sources.build_gid_table(
      prepared, workdir, settings.gid,
      lightgcn_items=lambda: lightgcn(settings, prepared, workdir, log=log).item_embeddings,
      lightgcn_key=cf_train.result_key(prepared.manifest["key"], settings.cf, settings.eval,
                                       settings.seed),
      data_dir=settings.data.dir, log=log, read_only=read_only)


def data_and_gids(settings: Settings, workdir: str, *, log=print, prepared: Prepared | None = None,
                  gids: GidTable | None = None,
                  read_only: bool = False) -> tuple[Prepared, GidTable]:
  """Both stages ColaRec needs, built by the main process first; given ones are used as they are."""
  def build():
    data = prepared or prepared_data(settings, workdir, log=log, read_only=read_only)
    return data, gids or gid_table(settings, data, workdir, log=log, read_only=read_only)
  return sharding.main_first("colarec-stages", build)


def stage_keys(settings: Settings, *, log=print) -> dict[str, dict]:
  """The keys the data, LightGCN and GID stages of `settings` have, without building any (the
  data key checksums the input files): runs whose stages have equal keys can share them."""
  data_key = prepare_lib.manifest_key(settings.data, source_files(settings.data, log))
  lightgcn_key = cf_train.result_key(data_key, settings.cf, settings.eval, settings.seed)
  return {"data": data_key, "lightgcn": lightgcn_key,
          "gid": gid_sources.stage_key(data_key, settings.gid, lightgcn_key)}

