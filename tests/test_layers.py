"""The package's imports point down its layers: runtime -> data -> evaluate -> cf -> gid ->
model -> ranking -> config -> run -> training -> newitems -> serving -> cli -> studies -> main.
Each sub-package is one layer; a module may import its own layer and the ones below."""

import ast
import os

from conftest import REPO

PACKAGE = os.path.join(REPO, "colarec_jax")
# Rank of each module (or package): a module may import only modules of a lower or equal rank.
RANKS = {
    "runtime": 0, "data": 1, "evaluate": 2, "cf": 3, "gid": 4, "model": 5, "ranking": 6,
    "config": 7, "run": 8, "training": 9, "newitems": 10, "official": 10, "serving": 11,
    "cli": 12, "studies": 13, "main": 14,
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
  apart = {"gid": ("cf",), "ranking": ("cf", "training"), "evaluate": ("cf", "training"),
           "serving": ("cf", "training")}
  crossing = [f"{module} imports {imported}" for module, path in modules()
              for imported in internal_imports(path)
              if imported.split(".")[0] in apart.get(module.split(".")[0], ())]
  assert not crossing, crossing


def _resolve(imported: str, module_names: set[str]) -> str | None:
  """The package module an import names: 'runtime.sharding', or 'runtime' for a package import
  ('from colarec_jax.runtime import sharding' gives 'runtime.sharding' through `internal_imports`
  when sharding is a module)."""
  return imported if imported in module_names else (
      f"{imported}.__init__" if f"{imported}.__init__" in module_names else None)


def import_graph() -> dict[str, set[str]]:
  """module -> the package modules it imports (including 'pkg.name' from 'from pkg import name')."""
  found = dict(modules())
  names = set(found)
  graph = {}
  for module, path in found.items():
    edges = set()
    with open(path) as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("colarec_jax"):
        base = node.module[len("colarec_jax."):] if node.module != "colarec_jax" else ""
        for alias in node.names:
          target = _resolve(f"{base}.{alias.name}".strip("."), names) or _resolve(base, names)
          if target and target != module:
            edges.add(target)
    graph[module] = edges
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle of `graph` (as a path that comes back to its start), or None."""
  state: dict[str, int] = {}
  stack: list[str] = []

  def visit(node):
    state[node] = 1
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 1:
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state and (found := visit(nxt)):
        return found
    state[node] = 2
    stack.pop()
    return None

  for node in sorted(graph):
    if node not in state and (found := visit(node)):
      return found
  return None


def test_no_import_cycle():
  """Within a layer too, the modules' imports form no cycle (lazy imports inside functions
  included: a cycle there is one the reader has to untangle all the same)."""
  cycle = find_cycle(import_graph())
  assert cycle is None, " -> ".join(cycle)


def test_the_cycle_check_finds_one():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": set()}) is None
