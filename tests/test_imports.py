"""The package's import graph, read from the source with `ast` (nothing is imported): no import circles, and the
DAG-time modules (pipeline.wiring, read by snakemake at parse time) do not pull torch in.

Circles make import order matter (a half-initialised module, an ImportError that depends on which entry point ran
first) and blur the layers: a low module importing a stage is how one ends up needing the whole package.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "pipeline"

@dataclass(frozen=True)
class Import:
    target: str  # a module of the package
    line: int
    top_level: bool  # executed when the importing module is imported (not inside a function)


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    imports: list[Import] = field(default_factory=list)


def module_name(path: Path) -> tuple[str, bool]:
    """pipeline/a/b.py -> ("pipeline.a.b", False); pipeline/a/__init__.py -> ("pipeline.a", True)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, top_level: bool) -> Iterator[tuple[ast.AST, bool]]:
    """Every import statement under `node` with whether it runs at import time; `if TYPE_CHECKING:` bodies are
    skipped (their `else:` is not)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, top_level
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.orelse:
                yield from _walk(ast.Module(body=[stmt], type_ignores=[]), top_level)
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _walk(child, False)
        else:
            yield from _walk(child, top_level)


class Graph:
    """Modules of the package and the package modules each one imports."""

    def __init__(self, root: Path = ROOT / PACKAGE):
        self.modules: dict[str, Module] = {}
        for path in sorted(root.rglob("*.py")):
            name, is_package = module_name(path)
            self.modules[name] = Module(name, path, is_package)
        for module in self.modules.values():
            module.imports = list(self._imports_of(module))

    def _resolve_relative(self, module: Module, level: int, name: str | None) -> str:
        package = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
        base = package[: len(package) - (level - 1)]
        return ".".join(base + ([name] if name else []))

    def _imports_of(self, module: Module) -> Iterator[Import]:
        tree = ast.parse(module.path.read_text(encoding="utf-8"), str(module.path))
        for node, top in _walk(tree, True):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = self._resolve_relative(module, node.level, node.module) if node.level else node.module or ""
                targets = []
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in self.modules else base)
            for target in targets:
                if target == PACKAGE or target.startswith(PACKAGE + "."):
                    yield Import(self._known(target), node.lineno, top)

    def _known(self, name: str) -> str:
        """The module itself, or (for `import pipeline.a.b.attr`-like names) its nearest known parent."""
        while name not in self.modules and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    def edges(self, *, top_level_only: bool = False, with_parents: bool = False) -> dict[str, set[str]]:
        """module -> modules it imports. `with_parents`: importing a.b.c also runs a/__init__ and a/b/__init__."""
        out: dict[str, set[str]] = {name: set() for name in self.modules}
        for module in self.modules.values():
            for imp in module.imports:
                if top_level_only and not imp.top_level:
                    continue
                out[module.name].add(imp.target)
                if with_parents:
                    parts = imp.target.split(".")
                    out[module.name].update(".".join(parts[:i]) for i in range(1, len(parts))
                                            if ".".join(parts[:i]) in self.modules)
            out[module.name].discard(module.name)
        return out


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (iterative: no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def one_cycle(component: list[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest circle through the component's first module, as a path a -> b -> ... -> a (breadth first)."""
    members = set(component)
    start = component[0]
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(edges[node] & members):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if child not in parent:
                    parent[child] = node
                    nxt.append(child)
        frontier = nxt
    return component


def describe(graph: Graph, components: list[list[str]], edges: dict[str, set[str]]) -> str:
    lines = []
    for component in components:
        cycle = one_cycle(component, edges)
        steps = []
        for a, b in zip(cycle, cycle[1:]):
            where = [i.line for i in graph.modules[a].imports if i.target == b]
            steps.append(f"{a} (line {where[0] if where else '?'})")
        lines.append(f"{len(component)} modules in a circle: {component}\n    e.g. " + " -> ".join(steps)
                     + f" -> {cycle[-1]}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def graph() -> Graph:
    return Graph()


def test_the_graph_reader_resolves_imports(graph):
    # relative, package-as-__init__ and from-package-import-submodule forms all land on a module of the package
    assert graph.modules["pipeline"].is_package
    targets = {i.target for module in graph.modules.values() for i in module.imports}
    assert targets <= set(graph.modules)
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert one_cycle(["a", "b", "c"], {"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_circles(graph):
    edges = graph.edges()
    components = strongly_connected(edges)
    assert not components, "import circles:\n" + describe(graph, components, edges)


def test_wiring_modules_do_not_import_torch_at_module_level(graph):
    """snakemake imports pipeline.wiring while it builds the DAG (in the base env, on the login node): nothing it
    imports at module level, following every module and package __init__ that runs, may import torch."""
    edges = graph.edges(top_level_only=True, with_parents=True)
    torch_at_top = {m.name for m in graph.modules.values() if _imports_torch_at_top(m.path)}
    wiring = [name for name in graph.modules if name.startswith("pipeline.wiring")]
    assert wiring
    bad = {}
    for start in wiring:
        seen, parent, frontier = {start}, {}, [start]
        while frontier:
            node = frontier.pop()
            if node in torch_at_top:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                bad[start] = " -> ".join(reversed(path)) + " -> torch"
                break
            for child in sorted(edges[node] - seen):
                seen.add(child)
                parent[child] = node
                frontier.append(child)
    assert not bad, "torch imported while the workflow is parsed:\n" + "\n".join(bad.values())


def _imports_torch_at_top(path: Path) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node, top in _walk(tree, True):
        if not top:
            continue
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        if isinstance(node, ast.ImportFrom) and node.level:
            continue
        if any(n == "torch" or n.startswith("torch.") for n in names):
            return True
    return False
