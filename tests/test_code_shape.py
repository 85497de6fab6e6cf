"""Code shape of the installed package: no function longer than MAX_FUNCTION_LINES, no import cycles.

Both checks read the source (AST) only; nothing is imported. The folders ``decoders/``, ``losses/`` and
``datasets/`` install as ``padt.decoders``, ``padt.losses`` and ``padt.datasets`` (see pyproject.toml).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Source folder -> the package it installs as.
PACKAGES = {"padt": "padt", "decoders": "padt.decoders", "losses": "padt.losses", "datasets": "padt.datasets"}
#: Longest function or method allowed, from its ``def`` line to its last line (decorators not counted).
MAX_FUNCTION_LINES = 80


@dataclass(frozen=True)
class Module:
    name: str  # dotted name once installed, e.g. "padt.decoders.vrt_decoder"
    path: Path
    is_package: bool  # an __init__.py

    @property
    def package(self) -> str:
        """The package relative imports start from."""
        return self.name if self.is_package else self.name.rpartition(".")[0]

    @property
    def where(self) -> str:
        return self.path.relative_to(REPO).as_posix()


def source_modules() -> dict[str, Module]:
    """Every .py file of the installed package, by its dotted name."""
    modules: dict[str, Module] = {}
    for folder, package in PACKAGES.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            name = ".".join([package, *parts])
            modules[name] = Module(name, path, is_package)
    return modules


def parse(module: Module) -> ast.Module:
    return ast.parse(module.path.read_text(encoding="utf-8"), filename=str(module.path))


# ---- (a) function length ----


def functions(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """(qualified name, node) of every function and method, nested ones included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, node
            yield from functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from functions(node, f"{prefix}{node.name}.")
        else:
            yield from functions(node, prefix)


def long_functions(modules: dict[str, Module]) -> list[str]:
    """``file:function:lines`` of every function longer than MAX_FUNCTION_LINES, longest first."""
    found = []
    for module in modules.values():
        for name, node in functions(parse(module)):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                found.append((lines, f"{module.where}:{name}:{lines}"))
    return [entry for _, entry in sorted(found, key=lambda item: (-item[0], item[1]))]


def test_no_function_is_longer_than_the_limit():
    offenders = long_functions(source_modules())
    if offenders:
        pytest.fail(
            f"{len(offenders)} function(s) longer than {MAX_FUNCTION_LINES} lines (file:function:lines); "
            "split them into helpers:\n  " + "\n  ".join(offenders),
            pytrace=False,
        )


# ---- (b) import cycles ----


def resolve(module: Module, node: ast.ImportFrom) -> str:
    """The absolute module name ``from ... import`` reads from (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = module.package.split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def known(name: str, modules: dict[str, Module]) -> str | None:
    """``name`` if it is one of our modules, else its longest prefix that is; None outside the package."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def imported(module: Module, modules: dict[str, Module]) -> Iterator[tuple[str, int]]:
    """(our module, line) for every import statement of ``module``, at any depth (functions, TYPE_CHECKING)."""
    for node in ast.walk(parse(module)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = resolve(module, node)
            # `from x import y` imports the module x.y when there is one, else it reads the name y of x.
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names]
        else:
            continue
        for target in targets:
            ours = known(target, modules)
            if ours is not None and ours != module.name:
                yield ours, node.lineno


def import_graph(modules: dict[str, Module]) -> dict[str, dict[str, int]]:
    """module -> {imported module: line of the first such import}."""
    graph: dict[str, dict[str, int]] = {name: {} for name in modules}
    for name, module in modules.items():
        for target, line in imported(module, modules):
            graph[name].setdefault(target, line)
    return graph


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
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
                components.append(sorted(component))
    return components


def import_cycles(modules: dict[str, Module]) -> list[str]:
    """One description per cycle (component of more than one module), with the imports that close it."""
    graph = import_graph(modules)
    described = []
    for component in sorted(c for c in strongly_connected(graph) if len(c) > 1):
        members = set(component)
        edges = [
            f"    {source} -> {target}  ({modules[source].where}:{line})"
            for source in component
            for target, line in sorted(graph[source].items())
            if target in members
        ]
        described.append(f"  cycle of {len(component)}: {', '.join(component)}\n" + "\n".join(edges))
    return described


def test_no_import_cycles():
    cycles = import_cycles(source_modules())
    if cycles:
        pytest.fail(f"{len(cycles)} import cycle(s) among padt modules:\n" + "\n".join(cycles), pytrace=False)


# ---- the checks themselves ----


def test_the_checks_see_the_whole_package():
    modules = source_modules()
    assert {"padt", "padt.decoders", "padt.losses", "padt.datasets", "padt.decoders.vrt_decoder"} <= set(modules)
    assert modules["padt.decoders.vrt_decoder"].package == "padt.decoders"
    assert modules["padt.decoders"].package == "padt.decoders"


def test_relative_imports_and_cycles_are_found():
    decoder = Module("padt.decoders.vrt_decoder", REPO / "decoders" / "vrt_decoder.py", False)
    package = Module("padt.decoders", REPO / "decoders" / "__init__.py", True)
    first, second = ast.parse("from .attention import x\nfrom .. import losses").body
    assert resolve(decoder, first) == "padt.decoders.attention" and resolve(decoder, second) == "padt"
    assert resolve(package, first) == "padt.decoders.attention"
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3, "d": 4}, "d": {}, "e": {"e": 5}}
    assert sorted(strongly_connected(graph)) == [["a", "b", "c"], ["d"], ["e"]]
