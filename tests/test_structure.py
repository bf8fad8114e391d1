"""The package's shape: imports flow one way (no cycles, function-level imports included) and
train/ never imports the objective plug-ins."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "maelite_jax"


def module_imports() -> dict[str, set[str]]:
  """{module: package modules it imports anywhere in its source} by walking the ast."""
  paths = {}
  for folder, _, files in os.walk(os.path.join(ROOT, PACKAGE)):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        paths[module.removesuffix(".__init__")] = path
  graph = {}
  for module, path in paths.items():
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          parts = package.split(".")
          base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in paths else base for a in node.names]
      else:
        continue
      for name in names:
        while name and name not in paths:
          name = name.rpartition(".")[0]
        if name and name != module:
          found.add(name)
    graph[module] = found
  return graph


def cycles(graph) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in graph:
    if v not in index:
      visit(v)
  return out


def test_package_imports_have_no_cycle():
  graph = module_imports()
  assert len(graph) > 40  # the walk found the package
  assert cycles(graph) == []


def test_the_walk_finds_a_cycle_when_there_is_one():
  assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_train_does_not_import_the_objectives():
  graph = module_imports()
  bad = {m: sorted(d for d in deps if d.startswith(f"{PACKAGE}.tasks"))
         for m, deps in graph.items() if m.startswith(f"{PACKAGE}.train")}
  assert {m: d for m, d in bad.items() if d} == {}
