"""Draw the package's layers and their imports: docs/_static/architecture.svg.

The picture is read off the source, never drawn by hand: every module of
``src/jobcredits_plugin`` is a box in the layer its name puts it in (the
``LAYERS`` table below), and every module-level import of one of the
package's modules by another is an arrow. Imports made inside a function (the
lazy imports of optional extras) and those under ``if TYPE_CHECKING:`` are not
arrows: they do not run when the module is imported. Arrows implied by others
are left out (graphviz's ``tred``), so what remains reads as "who builds on
whom".

Run ``tox -e pictures`` (or ``python docs/_pictures/architecture.py``) after
moving modules; ``tests/test_architecture.py`` fails while the committed
``docs/_static/architecture.dot`` disagrees with the source. The SVG needs
graphviz (``dot`` and ``tred``, Debian package ``graphviz``); the check of
the ``.dot`` text needs nothing but Python.
"""

from __future__ import annotations

import ast
import itertools
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "jobcredits_plugin"
DOT = ROOT / "docs" / "_static" / "architecture.dot"
SVG = ROOT / "docs" / "_static" / "architecture.svg"

#: (layer title, colour, the module-name prefixes that belong to it), from the
#: outside of the package in. A module takes the first layer a prefix of its
#: dotted name (relative to the package) matches; "" matches everything.
LAYERS: list[tuple[str, str, tuple[str, ...]]] = [
    (
        "adapters: a framework's request and response",
        "#dbeafe",
        ("flask", "fastapi", "django", "wsgi", "asgi"),
    ),
    (
        "tools: the command line, helpers for users' tests",
        "#fef3c7",
        (
            "cli",
            "__main__",
            "testing",
            "_demo",
            "_commands",
            "_operations",
            "_report",
            "_flask_cli",
        ),
    ),
    ("contrib: ready plugins", "#fce7f3", ("contrib",)),
    (
        "web layer: one call path for every adapter",
        "#dcfce7",
        (
            "_web",
            "_call",
            "_decorator",
            "_settings",
            "_openapi",
            "_asgi",
            "_middleware",
            "_headers",
            "_problems",
        ),
    ),
    (
        "the ledger: the rules applied, hooks fired once",
        "#fee2e2",
        (
            "__init__",
            "_ledger",
            "_plugins",
            "hookspecs",
            "_journal",
            "_cursor",
            "_hooks",
            "_store_calls",
        ),
    ),
    ("stores: one contract, four backends", "#ede9fe", ("stores",)),
    ("foundation: records, rules, errors, validation", "#f3f4f6", ("",)),
]

#: Packages drawn as one box (their modules' imports merged into it).
COLLAPSE = ("django", "stores._redis", "stores._postgres", "contrib._buckets")


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name relative to it."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1] or ["__init__"]
        found[".".join(parts)] = path
    return found


def box(name: str) -> str:
    """The box a module is drawn in (a collapsed package, or itself)."""
    for prefix in COLLAPSE:
        if name == prefix or name.startswith(prefix + "."):
            return prefix
    return name


def _runtime_statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Module-level statements that run on import, ``try``/``if`` bodies
    included, ``if TYPE_CHECKING:`` bodies left out."""
    for node in body:
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", "")
            if name == "TYPE_CHECKING":
                yield from _runtime_statements(node.orelse)
                continue
            yield from _runtime_statements(node.body)
            yield from _runtime_statements(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                yield from _runtime_statements(block)
            for handler in node.handlers:
                yield from _runtime_statements(handler.body)
        else:
            yield node


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports when it is imported."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    here = name.split(".") if name != "__init__" else []
    base = here if is_package else here[:-1]
    found: set[str] = set()
    for node in _runtime_statements(tree.body):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                stem = ".".join([*anchor, *(node.module or "").split(".")]).strip(".")
            elif (node.module or "").startswith("jobcredits_plugin"):
                stem = (node.module or "").removeprefix("jobcredits_plugin").strip(".")
            else:
                continue
            # ``from . import hookspecs`` imports the module hookspecs, not the
            # package's __init__ (which ran before any of its modules anyway).
            if node.module:
                targets.append(stem)
            targets += [f"{stem}.{alias.name}".strip(".") for alias in node.names]
        elif isinstance(node, ast.Import):
            targets += [
                alias.name.removeprefix("jobcredits_plugin").strip(".")
                for alias in node.names
                if alias.name.startswith("jobcredits_plugin")
            ]
        for target in targets:
            target = target or "__init__"
            if target in known and target != name:
                found.add(target)
    return found


def layer_of(name: str) -> int:
    for index, (_title, _colour, prefixes) in enumerate(LAYERS):
        if any(name.startswith(prefix) for prefix in prefixes):
            return index
    raise AssertionError(name)


def dot_source() -> str:
    """The graph in graphviz's language, deterministic for a given source."""
    found = modules()
    known = set(found)
    edges: set[tuple[str, str]] = set()
    boxes: set[str] = set()
    for name, path in found.items():
        if name in ("__main__",):
            continue
        source = box(name)
        boxes.add(source)
        for target in imports(name, path, known):
            target_box = box(target)
            # The package's __init__ re-exports the public names: an import
            # of ``jobcredits_plugin`` itself is an edge to the façade.
            if target_box != source:
                edges.add((source, target_box))
    lines = [
        "// Generated by docs/_pictures/architecture.py: do not edit.",
        "digraph architecture {",
        '  graph [rankdir=TB, fontname="Helvetica", fontsize=11, nodesep=0.25, ranksep=0.45];',
        '  node [shape=box, style="rounded,filled", fillcolor=white, '
        'fontname="Helvetica", fontsize=10, height=0.3];',
        '  edge [color="#6b7280", arrowsize=0.6];',
    ]
    for index, (title, colour, _prefixes) in enumerate(LAYERS):
        members = sorted(b for b in boxes if layer_of(b) == index)
        if not members:
            continue
        lines.append(f"  subgraph cluster_{index} {{")
        lines.append(
            f'    label="{title}"; labeljust=l; margin=14; style="rounded,filled"; '
            f'fillcolor="{colour}"; color="#9ca3af"; fontsize=11;'
        )
        for member in members:
            label = "jobcredits_plugin" if member == "__init__" else member
            lines.append(f'    "{member}" [label="{label}"];')
        lines.append("  }")
    # Stack the layers top to bottom in the table's order (contrib and the
    # tools beside the adapters): an invisible edge from one member of each
    # layer to one of the next keeps graphviz from spreading them sideways.
    firsts = [min((b for b in boxes if layer_of(b) == i), default=None) for i in range(len(LAYERS))]
    chain = [f for i, f in enumerate(firsts) if f is not None and i not in (1, 2)]
    for upper, lower in itertools.pairwise(chain):
        lines.append(f'  "{upper}" -> "{lower}" [style=invis];')
    for source, target in sorted(edges):
        lines.append(f'  "{source}" -> "{target}";')
    lines.append("}")
    return "\n".join(lines) + "\n"


def main() -> int:
    text = dot_source()
    DOT.parent.mkdir(parents=True, exist_ok=True)
    DOT.write_text(text, encoding="utf-8")
    dot, tred = shutil.which("dot"), shutil.which("tred")
    if dot is None or tred is None:
        print("wrote", DOT, "- graphviz (dot, tred) is not installed: SVG not rebuilt")
        return 1
    reduced = subprocess.run([tred], input=text, capture_output=True, text=True, check=True)
    svg = subprocess.run(
        [dot, "-Tsvg"], input=reduced.stdout, capture_output=True, text=True, check=True
    ).stdout
    # graphviz stamps its version in a comment: drop it, so that rebuilding on
    # another machine changes nothing when the graph did not change.
    svg = re.sub(r"<!-- Generated by .*?-->\n", "", svg, flags=re.DOTALL)
    SVG.write_text(svg, encoding="utf-8")
    print("wrote", DOT, "and", SVG)
    return 0


if __name__ == "__main__":
    sys.exit(main())
