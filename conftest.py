"""Run the code blocks of the documentation as tests (issue 16).

Every ```` ```python ```` block of ``README.md`` and ``docs/*.md`` is executed by
sybil, page by page: the blocks of one page share one namespace, in the order a
reader pastes them, in a fresh temporary working directory (so ``jobs.db`` and
the like land there). A block that cannot run as written (a settings excerpt, a
sketch with ``...``, code that needs a production host) carries a visible marker
with its reason just above it::

    <!-- skip: next "a settings excerpt: the full file is django_project/jobsite/settings.py" -->

tests/test_docs.py fails on a ```` ```python ```` block that is neither run nor
marked so, and on a marker without a reason.

Two things are adapted to the test machine, and only these:

- a page that needs a framework, driver or metrics library that is not
  installed (the ``noframework`` tox env) is skipped from that block on, the
  way ``pytest.importorskip`` would;
- the Redis and PostgreSQL URLs the pages show (``redis://localhost:6379/0``,
  ``postgresql://...``) are pointed at the test servers of
  ``JOBCREDITS_TEST_REDIS_URL`` / ``JOBCREDITS_TEST_POSTGRES_URL`` (see
  tests/stores/conftest.py: skip off CI when the server does not answer, fail on
  CI).
"""

from __future__ import annotations

import doctest
import gc
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sybil import Example, Sybil
from sybil.integration.pytest import SybilItem
from sybil.parsers.myst import CodeBlockParser, SkipParser

if TYPE_CHECKING:
    from _pytest._code.code import Traceback

#: pytester: tests/test_pytest_plugin.py runs users' test files with the
#: library's pytest plugin (which pytest loads through its entry point).
pytest_plugins = ["pytester"]


#: Packages the pages import that the core does not need: their absence skips
#: the rest of a page instead of failing it (importorskip semantics).
OPTIONAL = frozenset(
    {
        "flask",
        "werkzeug",
        "django",
        "asgiref",
        "rest_framework",
        "fastapi",
        "starlette",
        "pydantic",
        "httpx",
        "redis",
        "psycopg",
        "psycopg_pool",
        "prometheus_client",
        "opentelemetry",
        "structlog",
        "uvicorn",
        "gunicorn",
    }
)

#: How the package's ImportErrors name the extra to install.
_EXTRA = re.compile(r'pip install "jobcredits-plugin\[(\w+)\]"')
_SKIP = "_docs_skip_reason"
_STATE = "_docs_saved_state"
# Scheme, host and database; the page's query string (?prefix=..., ?schema=...) stays.
# Only the production hosts the pages make up (cache.internal, db.internal): a
# localhost URL is one the page means as written (an error example's closed port).
_REDIS_URL = re.compile(r"redis://(?![^\"'\s?]*@?(?:localhost|127\.0\.0\.1)[:/])[^\"'\s?]*")
_POSTGRES_URL = re.compile(
    r"postgres(?:ql)?://(?![^\"'\s?]*@?(?:localhost|127\.0\.0\.1)[:/])[^\"'\s?]*"
)


def _server(source: str) -> str:
    """The block's source with the pages' server URLs pointed at the test servers."""
    from tests.stores.conftest import (
        POSTGRES_DEFAULT,
        POSTGRES_URL_ENV,
        REDIS_DEFAULT,
        REDIS_URL_ENV,
        _server_url,
    )

    if _REDIS_URL.search(source):
        url = _server_url(REDIS_URL_ENV, REDIS_DEFAULT, "Redis")
        source = _REDIS_URL.sub(url, source)
    if _POSTGRES_URL.search(source):
        url = _server_url(POSTGRES_URL_ENV, POSTGRES_DEFAULT, "PostgreSQL")
        source = _POSTGRES_URL.sub(url, source)
    return source


def _missing_optional(error: BaseException) -> str | None:
    """The optional package whose absence caused ``error``, if that is what it is.
    The package's own modules re-raise it as an ImportError naming the extra."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ModuleNotFoundError):
            top = (seen.name or "").partition(".")[0]
            if top in OPTIONAL:
                return top
        extra = _EXTRA.search(str(seen))
        if isinstance(seen, ImportError) and extra:
            return f"the {extra[1]} extra"
        seen = seen.__cause__ or seen.__context__
    return None


class _PageEvaluator:
    """Runs one python block in its page's namespace (see the module docstring)."""

    def __call__(self, example: Example) -> None:
        __tracebackhide__ = True
        reason = example.namespace.get(_SKIP)
        if reason:
            raise unittest.SkipTest(reason)
        source = _server(str(example.parsed))
        # Padded with blank lines so that tracebacks name the page's own line numbers.
        source = "\n" * (example.line + example.parsed.line_offset) + source
        try:
            # exec: running the pages' own code is this module's whole purpose.
            code = compile(source, example.path, "exec", dont_inherit=True)
            with warnings.catch_warnings():
                # What the block dropped unclosed (a page rebinds `ledger` to
                # show another setup; a reader's process would simply exit) is
                # collected here, in the block. Left to the collector's own
                # time, Python 3.13's warning about its SQLite connection
                # would fail whichever test runs then, on any worker.
                warnings.simplefilter("ignore", ResourceWarning)
                exec(code, example.namespace)  # noqa: S102
                gc.collect()
        except ImportError as error:
            top = _missing_optional(error)
            if top is None:
                raise
            example.namespace[_SKIP] = f"{top} is not installed: the rest of the page needs it"
            raise unittest.SkipTest(example.namespace[_SKIP]) from error
        finally:
            example.namespace.pop("__builtins__", None)


#: A console block runs when each of its commands is one of these: the CLI, and
#: the environment it reads. (pip, curl and servers are the reader's to run;
#: tests/test_docs_quickstarts.py runs the quickstarts' servers.)
_CONSOLE_COMMAND = re.compile(r"^(jobcredits( |$)|export JOBCREDITS_\w+=|unset JOBCREDITS_\w+$)")
_BASH = shutil.which("bash") or "/bin/sh"
_OUTPUT_VARIES = re.compile(r'^<!--\s*output:\s*varies\s+"(?P<reason>[^"]+)"\s*-->$')


class _ConsoleEvaluator:
    """Runs a console block's ``jobcredits`` commands in the page's directory and
    compares what they print (stdout and stderr, as a terminal shows them) with
    the page, ``...`` matching anything as in doctest. A block whose output
    cannot repeat (fresh job ids, the time) says so above it with
    ``<!-- output: varies "reason" -->``: its commands must then succeed."""

    def __call__(self, example: Example) -> None:
        __tracebackhide__ = True
        reason = example.namespace.get(_SKIP)
        if reason:
            raise unittest.SkipTest(reason)
        steps = re.split(r"^\$ (.*)\n", str(example.parsed), flags=re.MULTILINE)[1:]
        commands = steps[0::2]
        if not commands or not all(_CONSOLE_COMMAND.match(c) for c in commands):
            return  # a shell session for the reader (installs, servers, curl)
        before = example.document.text[: example.start].rstrip().rpartition("\n")[2].strip()
        varies = _OUTPUT_VARIES.match(before)
        checker = doctest.OutputChecker()
        flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
        for command, expected in zip(commands, steps[1::2], strict=True):
            command = _server(command)
            if command.startswith(("export ", "unset ")):
                name, _, value = command.partition(" ")[2].partition("=")
                if command.startswith("export "):
                    os.environ[name] = value
                else:
                    os.environ.pop(name, None)
                continue
            shell = f'jobcredits() {{ "{sys.executable}" -m jobcredits_plugin "$@"; }}\n{command}'
            # S603: the commands are the page's own, checked against _CONSOLE_COMMAND.
            done = subprocess.run(  # noqa: S603
                [_BASH, "-c", shell], capture_output=True, text=True, timeout=120, check=False
            )
            printed = done.stdout + done.stderr
            extra = _EXTRA.search(printed)
            if extra and not _EXTRA.search(expected):
                raise unittest.SkipTest(f"the {extra[1]} extra is not installed")
            if varies:
                assert done.returncode == 0, f"$ {command}\n{printed}"
            elif not checker.check_output(expected, printed, flags):
                raise AssertionError(
                    f"$ {command}\nthe page shows:\n{expected}\nit printed:\n{printed}"
                )


def _setup(namespace: dict[str, Any]) -> None:
    """A page runs in a fresh directory; what it changes in the process (the
    environment, the root logger) is put back after it."""
    root = logging.getLogger()
    namespace[_STATE] = (os.getcwd(), dict(os.environ), root.level, list(root.handlers))
    # Not "__main__": a page's `if __name__ == "__main__":` would start a server.
    namespace["__name__"] = "docs_page"
    namespace["_docs_directory"] = directory = tempfile.mkdtemp(prefix="jobcredits-docs-")
    os.chdir(directory)


def _close_ledgers(namespace: dict[str, Any]) -> None:
    """Close what the page opened and left open, as a reader's process would at
    exit: a ledger (and its store) bound to a name of the page. Python 3.13
    warns about a SQLite connection that is garbage-collected unclosed, and
    that warning surfaces in whichever later test happens to collect it."""
    from jobcredits_plugin import Ledger

    # A page's OpenTelemetry metric reader (docs/opentelemetry.md) exports from a
    # thread of its own every minute, to the page's captured output long closed.
    otel = sys.modules.get("opentelemetry.sdk.metrics.export")
    readers = otel.MetricReader if otel is not None else ()
    for value in list(namespace.values()):
        if isinstance(value, Ledger):
            value.close()
        elif isinstance(value, readers):
            value.shutdown()
    with warnings.catch_warnings():
        # what is unreachable now but held a connection (a ledger built inside
        # an app factory the page called): collected here, not in a later test
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def _teardown(namespace: dict[str, Any]) -> None:
    _close_ledgers(namespace)
    cwd, environ, level, handlers = namespace[_STATE]
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(environ)
    root = logging.getLogger()
    root.setLevel(level)
    root.handlers[:] = handlers
    shutil.rmtree(namespace["_docs_directory"], ignore_errors=True)


# The reader's own modules the pages name ("myapp.audit:AuditTrail", ...).
sys.path.append(str(Path(__file__).parent / "tests" / "_docs"))


#: The pages and how their blocks are run; tests/test_docs.py checks it against the pages.
DOCS = Sybil(
    parsers=[
        CodeBlockParser(language="python", evaluator=_PageEvaluator()),
        CodeBlockParser(language="console", evaluator=_ConsoleEvaluator()),
        SkipParser(),
    ],
    patterns=["README.md", "docs/*.md"],
    setup=_setup,
    teardown=_teardown,
)
pytest_collect_file = DOCS.pytest()

_sybil_traceback_filter = SybilItem._traceback_filter


def _traceback_filter(self: SybilItem, excinfo: pytest.ExceptionInfo[BaseException]) -> Traceback:
    """sybil (10.1) trims a failure's traceback to the frames below the block's
    evaluation, and assumes there are some. A failure pytest raises around the
    block has none: its report of an unraisable exception, which is how Python
    3.13's ResourceWarning for a SQLite connection collected unclosed reaches
    whichever test is running when the collector runs. sybil's IndexError then
    made pytest stop the whole run with INTERNALERROR, hiding which page failed
    and why (a CI run on py313 ended so). Such a traceback is shown whole: the
    page fails like any test, with its report. tests/test_docs.py checks it."""
    try:
        return _sybil_traceback_filter(self, excinfo)
    except IndexError:
        return excinfo.traceback


SybilItem._traceback_filter = _traceback_filter  # type: ignore[method-assign]


def pytest_configure(config: pytest.Config) -> None:
    # A page's blocks share one namespace and run in order, so they must run in
    # one process: under pytest-xdist, plain `-n 2` (--dist load) becomes
    # loadscope, which sends each page (and each test module or class) to one
    # worker. (loadgroup would too, but its "@group" node id suffix breaks
    # sybil's items.)
    if getattr(config.option, "dist", "no") == "load":
        config.option.dist = "loadscope"
    # The library's pytest plugin, whose marker the docs' examples use
    # (docs/testing.md), comes through the pytest11 entry point of the
    # installed package. A checkout run without installing it (PYTHONPATH=src)
    # has no entry points: load the plugin as pytest would have.
    # tests/test_pytest_plugin.py checks the entry point itself.
    if not config.pluginmanager.has_plugin("jobcredits"):
        config.pluginmanager.import_plugin("_jobcredits_pytestplugin")
