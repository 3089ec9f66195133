"""The operator commands, defined once: a table every command line is built from.

``jobcredits`` (argparse, the store named by ``--url``), ``flask jobcredits``
(click, the app's ledger) and ``manage.py jobcredits`` (Django, the ledger of
``settings.JOBCREDITS``) all offer the commands of :data:`COMMANDS`, with the
same names, arguments, help, output and exit statuses. Each surface only
turns its framework's command line into an :class:`argparse.Namespace`,
supplies a :class:`~jobcredits_plugin._operations.Target` and presents a
failure its own way; what a command does is in
:mod:`jobcredits_plugin._operations`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import attrs

from ._operations import (
    TRACEBACK_HELP,
    Target,
    balance,
    cursors,
    demo,
    export,
    grant,
    migrate,
    prune,
    snapshot,
    stats,
)

__all__ = ["BY_NAME", "COMMANDS", "Arg", "Command", "add_subcommands"]


# -- argument types -------------------------------------------------------------------------


def _bounded(
    low: float, high: float, kind: Callable[[str], Any], name: str
) -> Callable[[str], Any]:
    """A parser type: ``kind`` from ``low`` to ``high``; ``name`` is what a
    parser says a rejected value is not."""

    def parse(text: str) -> Any:
        value = kind(text)
        if not low <= value <= high:
            raise ValueError(text)
        return value

    parse.__name__ = name  # what argparse names in its error (click too)
    return parse


#: The demo's largest run: about seven seconds. Its simulated clock starts
#: far enough back for every job, so a run of 10**11 jobs asked for a clock
#: before 1970 (and was refused as a broken clock, which misled).
DEMO_JOBS_MAX = 100_000

#: A whole number >= 0 (rows to show).
non_negative = _bounded(0, float("inf"), int, "non-negative int")
_demo_jobs = _bounded(1, DEMO_JOBS_MAX, int, f"int from 1 to {DEMO_JOBS_MAX}")
_batch = _bounded(1, 10_000, int, "int from 1 to 10000")
_poll_seconds = _bounded(0.05, 3600, float, "number of seconds from 0.05 to 3600")


# -- the table ------------------------------------------------------------------------------


@attrs.frozen
class Arg:
    """One argument of a command, in argparse's terms; click's are derived."""

    name: str  # "--json" for an option, "account" for a positional argument
    help: str | None = None
    dest: str | None = None
    metavar: str | None = None
    type: Callable[[str], Any] | None = None
    default: Any = None
    flag: bool = False  # an option without a value (store_true)
    repeat: bool = False  # an option given several times (append)
    required: bool = False

    @property
    def positional(self) -> bool:
        return not self.name.startswith("-")

    @property
    def key(self) -> str:
        """The name of its value in the command's namespace."""
        return self.dest or self.name.lstrip("-").replace("-", "_")

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        kwargs: dict[str, Any] = {"help": self.help}
        if self.flag:
            kwargs["action"] = "store_true"
        else:
            kwargs.update(type=self.type, metavar=self.metavar, default=self.default)
            if self.repeat:
                kwargs["action"] = "append"
        if not self.positional:
            kwargs.update(dest=self.key, required=self.required)
        parser.add_argument(self.name, **{k: v for k, v in kwargs.items() if v is not None})


Run = Callable[[Target, argparse.Namespace], int]


@attrs.frozen
class Command:
    """One command: its name, its help, its arguments and what runs it.

    ``run`` gets the surface's :class:`Target` and the parsed arguments, and
    returns the exit status. ``uses_store``: the command works on the app's
    store (``jobcredits`` adds ``--url`` to name it); the demo brings its own.
    """

    name: str
    help: str
    description: str
    run: Run
    args: tuple[Arg, ...] = ()
    uses_store: bool = True


_JSON = "print all of them as a JSON array"
_ACCOUNT = Arg("account", metavar="ACCOUNT", help="the account, as the app names it")

COMMANDS: tuple[Command, ...] = (
    Command(
        "demo",
        "simulate clients against a small WSGI app and print what was charged",
        "Run simulated clients against an in-process WSGI app on a fake clock "
        "and print what each account was charged, reused, refunded and rejected; "
        "with --trace, follow a few calls of one account step by step.",
        demo,
        (
            Arg(
                "--store",
                default="memory://",
                metavar="URL",
                help="store URL (default: memory://); e.g. sqlite:///demo.db",
            ),
            Arg("--seed", type=int, default=1, help="random seed (default: 1)"),
            Arg(
                "--jobs",
                type=_demo_jobs,
                default=40,
                metavar="N",
                help=f"jobs to run, 1 to {DEMO_JOBS_MAX} (default: 40)",
            ),
            Arg(
                "--trace",
                flag=True,
                help="instead, follow one account's calls step by step: the request, the "
                "ledger's decision, the hooks fired, the headers and the balance (on its own "
                "memory store and fake clock, so the same every run)",
            ),
        ),
        uses_store=False,
    ),
    Command(
        "snapshot",
        "list the live jobs",
        "List the live jobs.",
        snapshot,
        (
            Arg("--json", flag=True, help=_JSON),
            Arg(
                "--limit",
                type=non_negative,
                default=50,
                metavar="N",
                help="rows of the table (default: 50)",
            ),
        ),
    ),
    Command(
        "stats",
        "count the live jobs by state and scope",
        "Count the live jobs by state and scope, the credits they hold and "
        "the oldest one. Reads the whole store: an operator's command.",
        stats,
        (Arg("--json", flag=True, help="print the figures as a JSON object"),),
    ),
    Command(
        "prune",
        "remove expired jobs, refund stale first calls",
        "Remove expired jobs and refund first calls whose lease ran out.",
        prune,
    ),
    Command(
        "export",
        "print the journal as JSON lines, for billing",
        "Print the journal entries after a named cursor as JSON lines (one "
        "entry a line, with its idempotency_key) and advance the cursor once they are "
        "written. Entries are never skipped; after a crash at most one batch is printed "
        "again, so receivers must deduplicate on idempotency_key.",
        export,
        (
            Arg(
                "--cursor",
                required=True,
                metavar="NAME",
                help="the cursor to read from and advance, stored in the store (created at "
                "the start of the journal if new)",
            ),
            Arg(
                "--follow",
                flag=True,
                help="keep waiting for new entries (until interrupted or SIGTERM)",
            ),
            Arg(
                "--batch",
                type=_batch,
                default=500,
                metavar="N",
                help="entries per read, 1 to 10000 (default: 500)",
            ),
            Arg(
                "--poll",
                type=_poll_seconds,
                default=1.0,
                metavar="SECONDS",
                help="with --follow, how long to wait when there is nothing new (0.05 to "
                "3600, default: 1)",
            ),
        ),
    ),
    Command(
        "cursors",
        "list or delete the journal's named cursors",
        "List the journal cursors stored in the store and their positions "
        "(the last seq each exporter finished with), or delete the cursor of a retired "
        "exporter: a cursor holds back the trimming of every entry it has not read.",
        cursors,
        (
            Arg("--json", flag=True, help="print them as a JSON object"),
            Arg("--delete", repeat=True, metavar="NAME", help="delete this cursor (repeatable)"),
        ),
    ),
    Command(
        "grant",
        "add credits to an account",
        "Add credits to an account (negative to take some away) and print "
        "the new balance. With --id, safe to retry: the same ID for the same account is "
        "applied once (for at least 7 days), and a repeat prints the balance the first "
        "one printed.",
        grant,
        (
            Arg(
                "--id",
                dest="grant_id",
                metavar="ID",
                help="the grant's idempotency key (1-128 characters of A-Z a-z 0-9 . _ : -): "
                "rerunning the command with the same ID grants nothing more",
            ),
            _ACCOUNT,
            Arg("amount", metavar="N", type=int, help="credits to add (negative: take)"),
        ),
    ),
    Command(
        "balance",
        "print an account's balance",
        "Print an account's balance.",
        balance,
        (_ACCOUNT,),
    ),
    Command(
        "migrate",
        "create or update a store's schema (PostgreSQL)",
        "Create or update the store's schema and print its version. "
        "Safe to run again and from several hosts at once.",
        migrate,
    ),
)

#: The commands by name, for a surface that parsed one.
BY_NAME = {command.name: command for command in COMMANDS}


def add_subcommands(
    parser: argparse.ArgumentParser, *, dest: str, store_option: Arg | None = None
) -> None:
    """Add every command of :data:`COMMANDS` to an argparse parser (the
    ``jobcredits`` command's, or a Django management command's): each with
    ``store_option`` (``--url``) when it works on a store, and with
    ``--traceback`` after its name."""
    sub = parser.add_subparsers(dest=dest, metavar="COMMAND", required=True)
    for command in COMMANDS:
        cmd = sub.add_parser(command.name, help=command.help, description=command.description)
        if store_option is not None and command.uses_store:
            store_option.add_to(cmd)
        for arg in command.args:
            arg.add_to(cmd)
        # SUPPRESS keeps a --traceback given before the command's name from
        # being reset.
        cmd.add_argument(
            "--traceback", action="store_true", default=argparse.SUPPRESS, help=TRACEBACK_HELP
        )
