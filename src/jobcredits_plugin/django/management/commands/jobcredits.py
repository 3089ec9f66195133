"""``manage.py jobcredits``: the operator's commands on the project's ledger.

The commands of ``jobcredits`` (the table in :mod:`jobcredits_plugin._commands`:
the same names, arguments, output and exit statuses), on the ledger
``settings.JOBCREDITS`` describes, so an operator never has to copy a store
URL (and its password) out of the settings to a shell.
"""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import (  # type: ignore[import-untyped]
    BaseCommand,
    CommandError,
    CommandParser,
)

from ...._commands import BY_NAME, add_subcommands
from ...._operations import AppTarget, failure, want_traceback
from ..._conf import get_ledger


def _spell(key: str) -> str:
    return f"JOBCREDITS[{key!r}]"


class Command(BaseCommand):  # type: ignore[misc]
    help = (
        "Inspect and settle the job credits ledger of settings.JOBCREDITS: the commands of "
        "the jobcredits command line (snapshot, stats, prune, export, cursors, grant, "
        "balance, migrate, demo)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add_subcommands(parser, dest="action")

    def handle(self, *args: Any, **options: Any) -> None:
        command = BY_NAME[options["action"]]
        target = AppTarget(get_ledger, _spell, self.stdout, self.stderr)
        try:
            status = command.run(target, argparse.Namespace(**options))
        except (Exception, KeyboardInterrupt) as exc:
            # Django's own --traceback re-raises the CommandError, with this
            # exception chained; the environment variable works as elsewhere.
            line, status, text = failure(exc, show_traceback=want_traceback())
            if text:
                self.stderr.write(text)
            raise CommandError(line, returncode=status) from exc
        if status:
            raise CommandError(f"{command.name} failed", returncode=status)
