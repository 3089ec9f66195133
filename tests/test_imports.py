"""The package's own imports: no module reaches into another's private names,
and the modules import one another without a cycle.

Read from the source with ``ast``, so nothing is imported (an optional extra
missing from the environment hides nothing). A private module is fine to
import from (``from ._call import JobCall``): what a module keeps to itself
is its underscore names. An import inside a function (a lazy import of an
optional extra, or of a module that would otherwise close a cycle) or under
``if TYPE_CHECKING:`` runs after every module has loaded, so it is no edge of
the import graph.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import attrs

import jobcredits_plugin

PACKAGE = "jobcredits_plugin"
SOURCE = Path(jobcredits_plugin.__file__).parent


@attrs.frozen
class Module:
    name: str
    path: Path
    is_package: bool

    def resolve(self, node: ast.ImportFrom) -> str:
        """The absolute name of the module a ``from ... import`` reads."""
        if node.level == 0:
            return node.module or ""
        parts = self.name.split(".")
        if not self.is_package:
            parts = parts[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        return ".".join([*parts, *([node.module] if node.module else [])])


def modules() -> dict[str, Module]:
    found = {}
    for path in sorted(SOURCE.rglob("*.py")):
        parts = [PACKAGE, *path.relative_to(SOURCE).with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        name = ".".join(parts)
        found[name] = Module(name, path, is_package)
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def module_level_imports(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """The imports that run while the module itself is being imported: at
    the top level, or inside an ``if``/``try`` there (``try: import flask``),
    but not under ``if TYPE_CHECKING:`` nor in a function or class body."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node):
                yield from module_level_imports(node.body)
            yield from module_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                yield from module_level_imports(block)
            for handler in node.handlers:
                yield from module_level_imports(handler.body)


def all_imports(tree: ast.AST) -> Iterator[ast.ImportFrom]:
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            yield node


def import_graph(found: dict[str, Module]) -> dict[str, set[str]]:
    """Module name -> the package modules it imports while it loads.

    ``from .stores import from_url`` is an edge to ``stores`` (its
    ``__init__``), ``from . import _call`` an edge to ``_call``, and
    ``from .stores._urls import x`` an edge to ``stores._urls`` and to
    ``stores``, which Python imports first. A module's own parent packages
    are left out: Python imports them before the module in any case, so they
    cannot close a cycle the module's imports open."""
    graph: dict[str, set[str]] = {}
    for module in found.values():
        edges: set[str] = set()
        tree = ast.parse(module.path.read_text(encoding="utf-8"))
        for node in module_level_imports(tree.body):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = module.resolve(node)
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in found else base for a in node.names
                ]
            for target in targets:
                # The module itself and the packages above it: importing
                # stores._urls runs stores/__init__ first.
                while target:
                    if target in found and not (module.name + ".").startswith(target + "."):
                        edges.add(target)
                    target = target.rpartition(".")[0]
        edges.discard(module.name)
        graph[module.name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (or of one
    that imports itself): each is at least one import cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm; the graph has ~50 nodes
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_walk_sees_the_package() -> None:
    """The test reads what it means to: every module, and edges between them
    (an empty graph would pass the cycle test vacuously)."""
    found = modules()
    assert {"jobcredits_plugin", "jobcredits_plugin._call", "jobcredits_plugin.stores"} <= set(
        found
    )
    graph = import_graph(found)
    assert "jobcredits_plugin._ledger" in graph["jobcredits_plugin._call"]
    assert "jobcredits_plugin.stores" in graph["jobcredits_plugin._settings"]


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_the_packages_modules() -> None:
    """A cycle makes the import order matter (whichever module is imported
    first sees the other half-built) and the layers meaningless; an import
    that must go the other way goes inside the function that needs it."""
    assert cycles(import_graph(modules())) == []


def test_no_module_imports_another_modules_private_names() -> None:
    """``from ._x import _name`` across modules ties one module to what another
    keeps to itself; what two modules share is a public name (of a private
    module, if it is not the package's API). Importing a private *module*
    (``from . import _call``) and dunder names (``__version__``) is fine."""
    found = modules()
    offenders = []
    for module in found.values():
        tree = ast.parse(module.path.read_text(encoding="utf-8"))
        for node in all_imports(tree):
            base = module.resolve(node)
            if base != PACKAGE and not base.startswith(PACKAGE + "."):
                continue
            for alias in node.names:
                name = alias.name
                private = name.startswith("_") and not name.startswith("__")
                if private and f"{base}.{name}" not in found:
                    offenders.append(f"{module.path.name}:{node.lineno} from {base} import {name}")
    assert offenders == []


def _shadowing(tree: ast.Module) -> Iterator[tuple[str, int, str]]:
    """(function, line, name) where a comprehension of the function binds a
    name that the module also binds at its top level."""
    top: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            top.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            top.add(node.name)
        elif isinstance(node, ast.Assign):
            top.update(t.id for t in node.targets if isinstance(t, ast.Name))
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for comp in ast.walk(fn):
            if isinstance(comp, ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp):
                for gen in comp.generators:
                    for name in ast.walk(gen.target):
                        if isinstance(name, ast.Name) and name.id in top:
                            yield fn.name, comp.lineno, name.id


def test_no_comprehension_rebinds_a_module_level_name() -> None:
    """CPython 3.12.1 inlines comprehensions (PEP 709) and then raised
    UnboundLocalError in RedisStore's cluster journal merge: one comprehension
    bound ``s`` while another in the same function called the module's ``s()``
    (passed on 3.10, 3.11 and 3.13). A comprehension variable never takes a
    module-level name."""
    found = [
        (str(path.relative_to(SOURCE)), *hit)
        for path in sorted(SOURCE.rglob("*.py"))
        for hit in _shadowing(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert not found, found
