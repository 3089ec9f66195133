"""What each operator command does, whichever command line runs it.

Every command of the table in :mod:`jobcredits_plugin._commands` runs one
function here with a :class:`Target` (where the ledger comes from, where its
lines go) and the parsed arguments, and returns the exit status. The
stand-alone ``jobcredits`` opens the store a URL names; ``flask jobcredits``
and ``manage.py jobcredits`` hand over the app's own ledger
(:class:`AppTarget`). Failures: :func:`describe_error` is the one mapping
from an exception to the line to print and the exit status (2 for a command
line the parser rejects, 1 for an error the ledger or the store reports, 70
for a bug, 130 for Ctrl-C), and :func:`failure` masks the secrets in it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import IO, Protocol, runtime_checkable

from ._errors import JobCreditsError
from ._ledger import Ledger
from ._report import balance_lines, dumps, prune_lines, snapshot_lines, stats_lines, stats_of
from ._report import table as text_table
from .stores._urls import redact_text

__all__ = [
    "AppTarget",
    "CliError",
    "Target",
    "describe_error",
    "export_journal",
    "failure",
    "want_traceback",
]

PROG = "jobcredits"
#: Set to 1 (or true/yes/on) to print the traceback of an error, as --traceback does.
TRACEBACK_ENV = "JOBCREDITS_TRACEBACK"
TRACEBACK_HELP = f"on an error, print its traceback too (or set {TRACEBACK_ENV}=1)"

#: Exit statuses: a mistake in what the operator asked for (or a store that
#: cannot be reached), a command line the parser rejects, a bug (sysexits.h's
#: EX_SOFTWARE), and an interrupt (128 + SIGINT, as shells report it).
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_SOFTWARE = 70
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A failure to report as one line on stderr, with the exit status to use."""

    def __init__(self, message: str, status: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.status = status


# -- failures -------------------------------------------------------------------------------


def describe_error(exc: BaseException) -> tuple[str, int]:
    """The one line to print for an error that ended a command, and the exit
    status: the mapping every command shares.

    - the command line the parser rejects (``CliError`` with status 2): 2;
    - what the operator asked for is wrong, or the store cannot be reached
      (``CliError``, every :class:`~jobcredits_plugin.JobCreditsError`:
      ``InvalidArgument``, ``ConfigurationError``, ``StoreUnavailable``...; an
      ``ImportError`` naming the extra a URL needs; an ``OSError`` of the
      machine): 1, with the error's own message;
    - Ctrl-C: 130;
    - anything else is a bug, in this package or in a store driver: 70
      (``EX_SOFTWARE``), as ``internal error: <type>: <message>`` and how to
      get the traceback for a report.
    """
    if isinstance(exc, CliError):
        return str(exc), exc.status
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", EXIT_INTERRUPTED
    if isinstance(exc, (JobCreditsError, ImportError, OSError)):
        return str(exc) or type(exc).__name__, EXIT_ERROR
    text = str(exc)
    name = type(exc).__name__
    return (f"internal error: {name}: {text} " if text else f"internal error: {name} ") + (
        # (No NAME=value here: the line goes through the redactor, which
        # masks the value of any name containing "cred", as JOBCREDITS_ does.)
        "(a bug in jobcredits-plugin or a store driver; for the traceback, run again "
        f"with --traceback or with {TRACEBACK_ENV} set to 1, and report it)"
    ), EXIT_SOFTWARE


def want_traceback(asked: bool = False) -> bool:
    """Whether to print an error's traceback: ``--traceback`` or the environment."""
    return asked or os.environ.get(TRACEBACK_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def failure(
    exc: BaseException, *, show_traceback: bool = False, urls: Iterable[str | None] = ()
) -> tuple[str, int, str]:
    """What every surface reports for a command that raised: the line (one
    line, every secret masked, also the secrets of ``urls``), the exit status,
    and the traceback text when asked for ("" otherwise; never for a
    ``CliError``, whose line says all)."""
    message, status = describe_error(exc)
    secrets = sorted({u for u in urls if isinstance(u, str) and u})
    text = ""
    if show_traceback and not isinstance(exc, CliError):
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        text = redact_text(text, *secrets)
    line = redact_text(" ".join(redact_text(message, *secrets).split()))
    return line, status, text


# -- where a command's ledger comes from ------------------------------------------------------


@runtime_checkable
class Migratable(Protocol):
    """A store with a server-side schema (PostgreSQL)."""

    @property
    def schema(self) -> str: ...

    def migrate(self) -> int: ...


class Target:
    """Where a command finds its ledger, and where it writes its lines.

    Subclasses say where the ledger comes from: a store URL
    (``jobcredits``), or the app's own ledger (:class:`AppTarget`).
    """

    def __init__(self, out: IO[str], err: IO[str]) -> None:
        self.out = out
        self.err = err

    def say(self, *lines: str) -> None:
        """Write lines to the command's output."""
        for line in lines:
            self.out.write(line + "\n")

    def note(self, line: str) -> None:
        """Write a line to the command's error stream (a warning, a note)."""
        self.err.write(line + "\n")

    def ledger(
        self, *, create: bool = False, balances: bool = False
    ) -> AbstractContextManager[Ledger]:
        """The ledger to work on. ``create``: the command may create the store
        (a grant); ``balances``: the command reads balances as stored."""
        raise NotImplementedError

    def store_to_migrate(self) -> AbstractContextManager[tuple[Migratable | None, str]]:
        """The store whose schema ``migrate`` updates, or None with the kind
        of store (``"sqlite://"``) that has none."""
        raise NotImplementedError

    def setting(self, key: str) -> str:
        """How the app spells setting ``key`` (``BALANCES``), for a note."""
        return key


class AppTarget(Target):
    """An app's own ledger, as a web framework's command sees it: taken from
    ``ledger_of`` (the app's extension, the project's settings) and never
    closed, since the app owns it."""

    def __init__(
        self,
        ledger_of: Callable[[], Ledger],
        spell: Callable[[str], str],
        out: IO[str],
        err: IO[str],
    ) -> None:
        super().__init__(out, err)
        self._ledger_of = ledger_of
        self._spell = spell

    @contextlib.contextmanager
    def ledger(self, *, create: bool = False, balances: bool = False) -> Iterator[Ledger]:
        # The app's ledger as configured: its store exists or is created as
        # the app creates it, and balance_lines reads balances that are off.
        yield self._ledger_of()

    @contextlib.contextmanager
    def store_to_migrate(self) -> Iterator[tuple[Migratable | None, str]]:
        store = self._ledger_of().store
        if isinstance(store, Migratable):
            yield store, ""
            return
        schemes: Sequence[str] = getattr(type(store), "schemes", ())
        yield None, f"{schemes[0]}://" if schemes else type(store).__name__

    def setting(self, key: str) -> str:
        return self._spell(key)


# -- the operations -------------------------------------------------------------------------


def snapshot(target: Target, args: argparse.Namespace) -> int:
    with target.ledger() as ledger:
        records = ledger.snapshot()
    target.say(*snapshot_lines(records, as_json=args.json, limit=args.limit))
    return 0


def stats(target: Target, args: argparse.Namespace) -> int:
    with target.ledger() as ledger:
        records = ledger.snapshot()
        now = ledger.now()
    target.say(*stats_lines(stats_of(records, now), as_json=args.json))
    return 0


def prune(target: Target, args: argparse.Namespace) -> int:
    with target.ledger() as ledger:
        target.say(*prune_lines(ledger))
    return 0


def export_journal(
    ledger: Ledger,
    cursor_name: str,
    out: IO[str],
    *,
    batch: int = 500,
    follow: bool = False,
    poll: float = 1.0,
    stop: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], object] = time.sleep,
) -> int:
    """Write the journal after the named cursor to ``out`` as JSON lines and
    advance the cursor; returns how many entries were written.

    The cursor moves only after a page's lines are written and flushed, so a
    crash (or a closed pipe) re-sends at most one page on the next run and
    never skips one: receivers deduplicate on ``idempotency_key``. With
    ``follow``, an empty read waits ``poll`` seconds before asking again
    (never a busy loop) until ``stop()`` says so.
    """
    cursor = ledger.cursor(cursor_name)
    written = 0
    while not stop():
        page = cursor.read(limit=batch)
        if page:
            for entry in page:
                out.write(dumps(entry.to_dict(), separators=(",", ":")) + "\n")
            out.flush()
            cursor.advance(page[-1])
            written += len(page)
            if len(page) == batch:
                continue  # more may be waiting: no pause
        if not follow:
            break
        sleep(poll)
    return written


def export(target: Target, args: argparse.Namespace) -> int:
    stopping = threading.Event()
    previous = None
    if args.follow and threading.current_thread() is threading.main_thread():
        # SIGTERM (a deploy, systemd stop) ends the loop between pages, after
        # the cursor has caught up with what was written.
        def _stop(signum: int, frame: object) -> None:
            stopping.set()

        previous = signal.signal(signal.SIGTERM, _stop)
    try:
        with target.ledger() as ledger:
            if not getattr(ledger.store, "journal", True):
                target.note(
                    f"{PROG}: warning: this store's journal is off; nothing new will appear"
                )
            export_journal(
                ledger,
                args.cursor,
                target.out,
                batch=args.batch,
                follow=args.follow,
                poll=args.poll,
                stop=stopping.is_set,
                sleep=stopping.wait,
            )
    except KeyboardInterrupt:
        if not args.follow:
            raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def cursors(target: Target, args: argparse.Namespace) -> int:
    with target.ledger() as ledger:
        if args.delete:
            for name in args.delete:
                if not ledger.cursor_exists(name):
                    raise CliError(f"no journal cursor named {name!r}")
                ledger.delete_cursor(name)
                target.say(f"deleted {name}")
            return 0
        cursors = ledger.cursors()
    if args.json:
        target.say(dumps(cursors, sort_keys=True))
    elif not cursors:
        target.say("no journal cursors")
    else:
        target.say(*text_table(("cursor", "position"), sorted(cursors.items())))
    return 0


def grant(target: Target, args: argparse.Namespace) -> int:
    # A grant may create the store: loading balances is how one starts.
    with target.ledger(create=True) as ledger:
        target.say(str(ledger.grant(args.account, args.amount, grant_id=args.grant_id)))
    return 0


def balance(target: Target, args: argparse.Namespace) -> int:
    with target.ledger(balances=True) as ledger:
        figure, note = balance_lines(ledger, args.account, target.setting("BALANCES"))
    if note is not None:
        target.note(note)
    target.say(figure)
    return 0


def migrate(target: Target, args: argparse.Namespace) -> int:
    # Only stores with a server-side schema have anything to migrate; the
    # others create their tables themselves (SQLite) or keep none (memory).
    with target.store_to_migrate() as (store, kind):
        if store is None and kind == "django://":
            # Its tables are a Django app's, created by Django's migrations.
            target.say(
                "nothing to migrate here: django:// stores keep their tables in the Django "
                "app jobcredits_plugin.django; run `manage.py migrate jobcredits`"
            )
            return 0
        if store is None:
            target.say(f"nothing to migrate: {kind} stores need no schema migration")
            return 0
        version = store.migrate()
        target.say(f"schema {store.schema!r} is at version {version}")
    return 0


def demo(target: Target, args: argparse.Namespace) -> int:
    # Imported here: the demo loads the WSGI middleware and the test helpers,
    # which an app that only imports an adapter (and its commands) should not.
    from ._demo import render_demo, run_demo

    if args.trace:
        from ._demo_trace import render_trace

        if args.store != "memory://":
            raise CliError(
                "--trace runs on its own memory store, so that its steps are the same "
                "every run: leave out --store",
                EXIT_USAGE,
            )
        target.say(*render_trace())
        return 0
    result = run_demo(args.store, seed=args.seed, jobs=args.jobs)
    lines, ok = render_demo(result, url=args.store, seed=args.seed, jobs=args.jobs)
    target.say(*lines)
    return 0 if ok else EXIT_ERROR
