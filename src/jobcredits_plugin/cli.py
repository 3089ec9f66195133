"""The ``jobcredits`` command: a demo of the whole flow, and the operator's tools.

An operator needs to see and settle a store without writing Python: the live
jobs (``snapshot``), the clean-up a cron job runs (``prune``) and the balances
(``grant``, ``balance``). A newcomer needs to see the semantics work before
reading about them: ``demo`` drives a small WSGI app with simulated clients on
a fake clock, so an hour-long window passes in a moment and the printed
figures are the same for the same seed.

The commands themselves are defined once, in
:mod:`jobcredits_plugin._commands`, and offered by ``flask jobcredits`` and
``manage.py jobcredits`` too; this module is the stand-alone surface: the
store comes from ``--url`` (or ``JOBCREDITS_URL``) instead of an app.

Only :mod:`argparse`: the core depends on attrs and pluggy alone, and a command
line for a billing store must not add more. Errors come out as one
``jobcredits: error: ...`` line on stderr, never a traceback (unless asked
for with ``--traceback`` or ``JOBCREDITS_TRACEBACK=1``), with a URL's
password masked: exit status 2 for a command line argparse rejects, 1 for an
error the ledger or the store reports (a bad value, a store that cannot be
reached), 70 (``EX_SOFTWARE``) for an unexpected one (a bug: the line says
so), 130 for Ctrl-C (:func:`~jobcredits_plugin._commands.describe_error`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import urllib.parse
from collections.abc import Iterator
from typing import NoReturn

from ._commands import BY_NAME, Arg, add_subcommands
from ._ledger import Ledger
from ._operations import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    PROG,
    TRACEBACK_HELP,
    CliError,
    Migratable,
    Target,
    failure,
    want_traceback,
)
from ._version import __version__
from ._warnings import is_in_process_default
from .stores import from_url, redact_url

__all__ = ["main"]

URL_ENV = "JOBCREDITS_URL"

#: Stores without a server-side schema: ``migrate`` has nothing to do for them.
_NO_SCHEMA = ("memory", "sqlite", "redis", "rediss", "redis+unix")


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, not usage plus a message.

    ``jobcredits`` is run from scripts and cron, where one greppable line is
    what gets read; the hint points at ``--help`` for the usage.
    """

    def error(self, message: str) -> NoReturn:
        raise CliError(f"{message} (see '{self.prog} --help')", status=EXIT_USAGE)


def _check_exists(url: str) -> None:
    """Refuse a read of a SQLite file that is not there.

    Opening one creates it, so a mistyped path would otherwise show an empty
    store ("no live jobs", balance 0) instead of the operator's mistake.
    """
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # "Invalid IPv6 URL": from_url gives the error that says so
        return
    if parts.scheme.lower() != "sqlite" or parts.netloc:
        return  # other stores, and malformed URLs: from_url gives the error
    path = urllib.parse.unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    if path and path != ":memory:" and not os.path.exists(path):
        raise CliError(f"no SQLite database at {path!r}; check --url")


class UrlTarget(Target):
    """The store a URL names (``--url``, else ``JOBCREDITS_URL``), opened for
    one command and closed after it."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(sys.stdout, sys.stderr)
        self._given: str | None = getattr(args, "url", None)

    @property
    def url(self) -> str:
        url = self._given or os.environ.get(URL_ENV) or None
        if url is None:
            raise CliError(f"no store URL: pass --url or set {URL_ENV}", status=EXIT_USAGE)
        return url

    @contextlib.contextmanager
    def ledger(self, *, create: bool = False, balances: bool = False) -> Iterator[Ledger]:
        url = self.url
        if not create:
            _check_exists(url)
        # balances=True only so that balance() reports the stored figure;
        # these ledgers charge nothing.
        ledger = Ledger.from_url(url, balances=True) if balances else Ledger.from_url(url)
        if is_in_process_default(ledger.store):
            # memory:// or an in-memory SQLite database lives and dies with this
            # command: a grant would print its new balance and be lost, a
            # snapshot would show an empty store instead of the app's.
            ledger.close()
            raise CliError(
                f"{redact_url(url)!r} is a store inside this command's own process, gone when "
                "it exits; name the app's store (sqlite:///path.db, redis://..., "
                "postgresql://...)"
            )
        with ledger:
            yield ledger

    @contextlib.contextmanager
    def store_to_migrate(self) -> Iterator[tuple[Migratable | None, str]]:
        url = self.url
        try:
            scheme = urllib.parse.urlsplit(url).scheme.lower() if "://" in url else ""
        except ValueError as exc:  # e.g. "Invalid IPv6 URL"
            raise CliError(f"store URL {redact_url(url)!r} cannot be parsed ({exc})") from None
        if scheme in _NO_SCHEMA:
            yield None, f"{scheme}://"
            return
        if scheme not in ("postgresql", "postgres"):
            from_url(url)  # not a store URL: from_url raises the error that says so
        from .stores import PostgresStore

        # Not through a Ledger, which would migrate on opening the store.
        store = PostgresStore.from_url(url, auto_migrate=False)
        try:
            yield store, ""
        finally:
            store.close()


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand; public so docs and tests can print it."""
    parser = _Parser(
        prog=PROG,
        description="Per-job credits: run the demo, or inspect and settle a store.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--traceback", action="store_true", help=TRACEBACK_HELP)
    url = Arg("--url", help=f"store URL, e.g. sqlite:///jobs.db (default: ${URL_ENV})")
    add_subcommands(parser, dest="command", store_option=url)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``jobcredits`` command; returns the exit status instead of
    exiting, so tests and other tools can call it."""
    parser = build_parser()
    args: argparse.Namespace | None = None
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help and --version
            return exc.code if isinstance(exc.code, int) else 0
        return BY_NAME[args.command].run(UrlTarget(args), args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader (``| head``) went away: stop quietly, and keep Python
        # from complaining again when it flushes stdout at exit.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 - every error ends as one line, never a traceback
        # The secrets of the store URLs the command was given are masked
        # wherever a driver echoes them.
        urls = (os.environ.get(URL_ENV), getattr(args, "url", None), getattr(args, "store", None))
        asked = bool(getattr(args, "traceback", False))
        line, status, text = failure(exc, show_traceback=want_traceback(asked), urls=urls)
        sys.stderr.write(text)
        print(f"{PROG}: error: {line}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
