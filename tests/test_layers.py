"""The package's imports point down the pipeline: data -> cf -> gid -> model/inputs ->
decode/ranking -> settings -> stages -> workspace -> train/recommender -> export/serve/pipeline
-> main."""

import ast
import os

from conftest import REPO

PACKAGE = os.path.join(REPO, "colarec_jax")
# Rank of each module (or package): a module may import only modules of a lower or equal rank.
RANKS = {
    "errors": 0, "interrupts": 0, "allocator": 0, "sharding": 0, "checkpoint": 0, "config": 0, "progress": 0,
    "reporting": 1, "data": 2, "evaluate": 3, "cf": 4, "gid": 5, "model": 6, "inputs": 7,
    "decode": 8, "recommend": 9, "losses": 6, "settings": 10, "runconfig": 10, "stages": 11,
    "workspace": 12, "train": 13, "recommender": 13, "diagnose": 13, "newitems": 13,
    "coldstart": 13, "export": 14, "serve": 14, "pipeline": 14, "report": 14, "experiments": 15,
    "main": 16,
}


def modules():
  for root, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(root, name)
        yield os.path.relpath(path, PACKAGE)[:-3].replace(os.sep, "."), path


def rank(module: str) -> int:
  return RANKS[module.split(".")[0]]


def internal_imports(path: str):
  with open(path) as f:
    tree = ast.parse(f.read())
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("colarec_jax"):
      names = [node.module[len("colarec_jax."):]] if node.module != "colarec_jax" else [
          alias.name for alias in node.names]
      yield from names
    elif isinstance(node, ast.Import):
      yield from (a.name[len("colarec_jax."):] for a in node.names
                  if a.name.startswith("colarec_jax."))


def test_every_module_has_a_rank():
  assert {m.split(".")[0] for m, _ in modules() if m != "__init__"} <= set(RANKS)


def test_imports_point_down_the_pipeline():
  upward = []
  for module, path in modules():
    if module == "__init__":
      continue
    for imported in internal_imports(path):
      if rank(imported) > rank(module):
        upward.append(f"{module} imports {imported}")
  assert not upward, upward


def test_the_rule_catches_an_upward_import(tmp_path):
  """The check above can fail: a data module importing the model is reported."""
  path = tmp_path / "bad.py"
  path.write_text("from colarec_jax.model import pretrained\n")
  assert rank(next(internal_imports(str(path)))) > rank("data.prepare")


def test_stages_are_handed_their_inputs():
  """The GID stage gets LightGCN's embeddings from its caller, and ranking uses no trainer."""
  apart = {"gid": ("cf",), "recommend": ("cf", "train"), "decode": ("cf", "train"),
           "evaluate": ("cf", "train"), "recommender": ("cf", "train"),
           "export": ("cf", "train"), "serve": ("cf", "train")}
  crossing = [f"{module} imports {imported}" for module, path in modules()
              for imported in internal_imports(path)
              if imported.split(".")[0] in apart.get(module.split(".")[0], ())]
  assert not crossing, crossing
