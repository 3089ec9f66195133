"""``manage.py jobcredits``: the operator's view of the project's ledger.

The same four operations as the ``jobcredits`` command line, but on the
ledger ``settings.JOBCREDITS`` describes, so an operator never has to copy a
store URL (and its password) out of the settings to a shell.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import (  # type: ignore[import-untyped]
    BaseCommand,
    CommandError,
    CommandParser,
)

from ...._errors import JobCreditsError
from ...._ledger import Ledger
from ....cli import balance_lines, non_negative, prune_lines, snapshot_lines
from ....stores._urls import redact_text
from ..._conf import get_ledger


class Command(BaseCommand):  # type: ignore[misc]
    help = (
        "Inspect and settle the job credits ledger of settings.JOBCREDITS: list the live "
        "jobs, prune expired ones, grant credits, print a balance."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
        snap = sub.add_parser("snapshot", help="list the live jobs")
        snap.add_argument("--json", action="store_true", help="print all of them as JSON")
        snap.add_argument(
            "--limit",
            type=non_negative,
            default=50,
            metavar="N",
            help="rows of the table (default: 50)",
        )
        sub.add_parser("prune", help="remove expired jobs, refund stale first calls")
        grant = sub.add_parser("grant", help="add credits to an account; prints the balance")
        grant.add_argument("account", metavar="ACCOUNT")
        grant.add_argument("amount", metavar="N", type=int, help="credits to add (negative: take)")
        grant.add_argument(
            "--id",
            dest="grant_id",
            metavar="ID",
            default=None,
            help="the grant's idempotency key: rerunning with the same ID grants nothing more",
        )
        balance = sub.add_parser("balance", help="print an account's balance")
        balance.add_argument("account", metavar="ACCOUNT")

    def handle(self, *args: Any, **options: Any) -> None:
        ledger = get_ledger()
        action = options["action"]
        try:
            if action == "snapshot":
                self._snapshot(ledger, as_json=options["json"], limit=options["limit"])
            elif action == "prune":
                for line in prune_lines(ledger):
                    self.stdout.write(line)
            elif action == "grant":
                granted = ledger.grant(
                    options["account"], options["amount"], grant_id=options["grant_id"]
                )
                self.stdout.write(str(granted))
            else:
                self._balance(ledger, options["account"])
        except JobCreditsError as exc:
            raise CommandError(redact_text(str(exc))) from exc

    def _snapshot(self, ledger: Ledger, *, as_json: bool, limit: int) -> None:
        for line in snapshot_lines(ledger.snapshot(), as_json=as_json, limit=limit):
            self.stdout.write(line)

    def _balance(self, ledger: Ledger, account: str) -> None:
        balance, note = balance_lines(ledger, account, "JOBCREDITS['BALANCES']")
        self.stdout.write(balance)
        if note is not None:
            self.stderr.write(note)
