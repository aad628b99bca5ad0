"""What each CLI mode runs, as library functions (so a notebook can run them too)."""

from __future__ import annotations

import json
import os

from colarec_jax import evaluate
from colarec_jax.cf import train as cf_train
from colarec_jax.data import prepare as prepare_lib
from colarec_jax.errors import ConfigError
from colarec_jax.gid import sources as gid_sources

MODELS = ("lightgcn", "mostpop")


def train_models(config, workdir: str, names, *, log=print) -> dict[str, dict]:
  """Trains and evaluates each named model; returns {name: {'valid': Report, 'test': Report}}."""
  prepared = prepare_lib.prepare(config, workdir, log=log)
  ev = cf_train.EvalConfig.from_config(config.eval)
  results = {}
  for name in names:
    if name == "mostpop":
      results[name] = cf_train.mostpop(prepared, ev)
    elif name == "lightgcn":
      run = cf_train.train_lightgcn(config, prepared, workdir, log=log)
      results[name] = {"valid": run.valid, "test": run.test}
    else:
      raise ConfigError("model.name", f"got {name!r}, expected one of {', '.join(MODELS)}")
  return results


def report(results: dict[str, dict], workdir: str, ks) -> str:
  """Writes `<workdir>/results.json` and returns the test-metrics table."""
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump({name: {part: r.to_json() for part, r in parts.items()}
               for name, parts in results.items()}, f, indent=1)
  return "test metrics\n" + evaluate.format_table(
      {name: parts["test"] for name, parts in results.items()}, ks)


def build_gids(config, prepared, workdir: str, *, log=print):
  """The GID table of config.gid (LightGCN is trained, or reused, when the source needs it)."""
  def lightgcn_items():
    return cf_train.train_lightgcn(config, prepared, workdir, log=log).item_embeddings
  return gid_sources.build_gid_table(config, prepared, workdir, lightgcn_items, log=log)


def run(mode: str, config, workdir: str, *, log=print) -> None:
  """Runs one CLI mode: prepare | stats | gid | train | all (prepare, stats, GIDs, baselines)."""
  prepared = prepare_lib.prepare(config, workdir, log=log)
  if mode in ("stats", "all"):
    log(prepare_lib.format_stats(prepared))
  if mode in ("gid", "all"):
    build_gids(config, prepared, workdir, log=log)
  if mode in ("train", "all"):
    names = MODELS[::-1] if mode == "all" else (config.model.name,)
    results = train_models(config, workdir, names, log=log)
    log(report(results, workdir, tuple(config.eval.ks)))
