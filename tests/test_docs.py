"""The documentation's code blocks are all tested, or say why not (issue 16).

The root conftest.py runs every ```` ```python ```` block of README.md and
docs/*.md with sybil. These tests keep it that way as pages are added and
edited: every page is collected, every python block is one sybil runs, a block
that is not run carries ``<!-- skip: next "the reason" -->`` right above it, and
no fence leaves its language out (a Python snippet in a bare fence would be
shown to readers and never run). Console blocks of ``jobcredits`` commands run
too, their output compared with the page unless ``<!-- output: varies
"the reason" -->`` stands above them.
"""

from __future__ import annotations

import ast
import os
import re
import sys
from pathlib import Path

import pytest

sybil = pytest.importorskip("sybil")

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^[ \t]*(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_PYTHON = re.compile(r"^(python|\{(code-block|code|sourcecode)\}[ \t]+python)[ \t]*$")
_VARIES = re.compile(r'^[ \t]*<!--[ \t]*output:[ \t]*varies[ \t]+"[^"]+"[ \t]*-->[ \t]*$')
_SKIP = re.compile(r"^[ \t]*(<!--|%)[ \t]*skip:(?P<arguments>.*?)(-->)?[ \t]*$")


def _docs(config: pytest.Config) -> sybil.Sybil:
    """The Sybil object of the root conftest.py (a plugin of the run)."""
    for plugin in config.pluginmanager.get_plugins():
        docs = getattr(plugin, "DOCS", None)
        if isinstance(docs, sybil.Sybil):
            return docs
    pytest.fail("the root conftest.py defines no DOCS = Sybil(...)")


def _fences(page: Path) -> list[tuple[int, str]]:
    """(line, info string) of each fence that opens a block, line numbers from 1."""
    opened: str | None = None
    found = []
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        match = _FENCE.match(line)
        if match is None:
            continue
        fence, info = match["fence"], match["info"].strip()
        if opened is None:
            opened = fence
            found.append((number, info))
        elif fence[0] == opened[0] and len(fence) >= len(opened) and not info:
            opened = None
    return found


def _marker_above(lines: list[str], number: int) -> str | None:
    """The skip marker on the last non-blank line above line ``number``, if any."""
    for line in reversed(lines[: number - 1]):
        if line.strip():
            match = _SKIP.match(line)
            return match["arguments"].strip() if match else None
    return None


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_page_is_collected(page: Path, pytestconfig: pytest.Config) -> None:
    assert _docs(pytestconfig).should_parse(page), f"conftest.py's DOCS does not run {page.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_fence_names_its_language(page: Path) -> None:
    bare = [number for number, info in _fences(page) if not info]
    assert not bare, f"{page.name}: fences without a language (python, text, console...) at {bare}"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_python_blocks_run_or_say_why(page: Path, pytestconfig: pytest.Config) -> None:
    lines = page.read_text(encoding="utf-8").splitlines()
    run = {example.line for example in _docs(pytestconfig).parse(page)}
    for number, info in _fences(page):
        if not _PYTHON.match(info):
            continue
        assert number in run, f"{page.name}:{number}: a python block the docs tests do not run"
        arguments = _marker_above(lines, number)
        if arguments is None:
            continue
        action, _, reason = arguments.partition(" ")
        assert action == "next", (
            f"{page.name}:{number}: mark each block that is not run on its own: "
            f'skip: next "the reason", not skip: {action}'
        )
        try:
            text = ast.literal_eval(reason.strip()) if reason.strip() else ""
        except (ValueError, SyntaxError):
            text = ""
        assert isinstance(text, str), f"{page.name}:{number}: the reason is a string"
        assert text.strip(), (
            f'{page.name}:{number}: a skipped block says why: skip: next "the reason"'
        )


def test_markers_stand_above_their_blocks() -> None:
    """A marker that no longer stands right above its kind of block (the block was
    moved or removed) would apply to whatever block comes next: refuse it. A skip
    stands above a python or console block, an ``output: varies`` above a console
    block."""
    stray = []
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        fences = dict(_fences(page))
        for number, line in enumerate(lines, 1):
            skip, varies = _SKIP.match(line), _VARIES.match(line)
            if not (skip or varies):
                continue
            following = next(
                (n for n in range(number + 1, len(lines) + 1) if lines[n - 1].strip()), None
            )
            info = fences.get(following, "") if following else ""
            fits = _PYTHON.match(info) or info == "console" if skip else info == "console"
            if not fits:
                stray.append(f"{page.name}:{number}")
    assert not stray, f"markers not right above a block they apply to: {stray}"


_FAILS_AROUND_THE_BLOCK = '''\
# A page

```python
import gc


class Closes:
    """Like a SQLite connection that Python 3.13 warns about when it is collected
    unclosed: its complaint is raised from the collector, outside the block's code."""

    def __del__(self):
        raise ResourceWarning("unclosed resource")


held = Closes()
held.cycle = held
del held
gc.collect()
```
'''


def test_a_failure_raised_around_a_block_is_reported_not_an_internal_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sybil's report of a failure assumes that its traceback passes through the
    block's code. An exception pytest raises around the block (its report of an
    unraisable exception, such as Python 3.13's warning about a SQLite connection
    collected unclosed) made sybil's report itself fail: pytest then stopped the
    whole run with INTERNALERROR and hid which page and which warning it was. The
    page must fail like any test, with its report."""
    pytester.makeconftest((ROOT / "conftest.py").read_text(encoding="utf-8"))
    pytester.mkdir("docs")
    (pytester.path / "docs" / "leaky.md").write_text(_FAILS_AROUND_THE_BLOCK, encoding="utf-8")
    # the conftest imports the test servers' settings from tests.stores.conftest
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), *sys.path])))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error", "docs")
    assert "INTERNALERROR" not in result.stdout.str()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["FAILED docs/leaky.md::line:3,column:1 - *Unraisable*"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED
