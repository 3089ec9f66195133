"""What a PostgreSQL store's statements answer, turned into the ledger's
results.

The functions hand back the records *as they found them* (and the balance as
they read it, under the same lock); these replay the pure ``plan_*`` rules of
:mod:`.._base` on those inputs to build the results and their events, so every
store reports events built by the same code. Should the server and the rules
ever disagree, what the server committed is the truth (see
:func:`.._base.claim_from_server`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from ..._records import CHARGED, PENDING, REFUNDED, JobRecord, JobState
from .._rules import (
    ClaimRequest,
    ClaimResult,
    Event,
    Key,
    charge_from_server,
    claim_from_server,
    plan_confirm,
    plan_refund,
    plan_settle,
    reuse_from_server,
)

Row = tuple[Any, ...]


def record(
    key: Key, row: Sequence[Any], more_uses: int = 0, state: JobState | None = None
) -> JobRecord:
    """A record from the ten ``o_*`` columns a function returns for ``key``
    (with ``more_uses`` calls more served, or in ``state``: a reuse's or a
    confirm's record, built at once). Positional, in JobRecord's field
    order: this runs on every call."""
    return JobRecord(
        key[0],
        key[1],
        key[2],
        row[0],  # charge_id
        row[1] if state is None else state,
        row[2],  # cost
        row[3],  # tier
        row[4],  # backend
        row[5],  # charged_at
        row[6],  # expires_at
        row[8] + more_uses,  # uses
        row[7],  # lease_until
        row[9],  # debited
    )


def full_record(row: Sequence[Any]) -> JobRecord:
    """A record from a row of ``jobs`` in ``_statements.COLUMNS`` order."""
    return record((row[0], row[1], row[2]), row[3:13])


class Answers:
    """The results of one store's statements: on the ledger's clock, or on
    the server's (``server_clock``: the statements return the now they
    decided on as their last column)."""

    def __init__(self, server_clock: bool, where: str) -> None:
        self.server_clock = server_clock
        self._who = f"PostgreSQL store {where}"

    def now(self, rows: list[Row], now: float) -> float:
        """The ``now`` an operation was decided on: the server's, returned
        as the last column on the server's clock, else the ledger's."""
        if self.server_clock and rows:
            return float(rows[0][-1])
        return now

    def claim(self, req: ClaimRequest, rows: list[Row]) -> ClaimResult:
        if self.server_clock:
            # The rules replay on the server's now: the records they build
            # are then the ones the function stored, to the bit.
            req = attrs.evolve(req, now=self.now(rows, req.now))
        row = rows[0]
        status, balance = row[0], int(row[1] or 0)
        if not self.server_clock:
            # The usual answers without the replay (see _rules.reuse_from_server).
            usual = None
            if status == "reused" and row[2] is not None:
                reused = record((req.account, req.scope, req.job_id), row[2:12], 1)
                usual = reuse_from_server(reused, balance, req)
            elif status == "charged" and row[2] is None:
                usual = charge_from_server(balance, req)
            if usual is not None:
                return usual
        found = row[2:]
        existing = None if found[0] is None else record(req.key, found)
        # The server's committed decision is the truth, should the rules
        # disagree (see claim_from_server).
        return claim_from_server(self._who, status, existing, balance, req)

    def confirm(
        self, key: Key, charge_id: str | None, now: float, rows: list[Row]
    ) -> JobRecord | None:
        row = rows[0]
        if row[0] and row[2] == PENDING and (charge_id is None or row[1] == charge_id):
            # The usual answer, this charge found pending, confirmed: built
            # in its new state at once (plan_confirm's first row, which no
            # clock changes) instead of as found and then again.
            return record(key, row[1:], 0, CHARGED)
        now = self.now(rows, now)
        found, *cols = row
        existing = record(key, cols) if found else None
        return plan_confirm(existing, charge_id, now)[0]

    def refund(self, key: Key, charge_id: str | None, now: float, rows: list[Row]) -> Event | None:
        now = self.now(rows, now)
        found, *cols = rows[0]
        if not found:
            return None
        existing = record(key, cols)
        event = plan_refund(existing, charge_id, now)
        return event or Event("refund", existing.with_state(REFUNDED))

    def settled(self, rows: list[Row], now: float) -> list[Event]:
        """The events of one prune batch's records."""
        now = self.now(rows, now)
        events = []
        for row in rows:
            event = plan_settle(full_record(row), now)
            if event is not None:
                events.append(event)
        return events

    def lookup(self, rows: list[Row], now: float) -> JobRecord | None:
        if not rows:
            return None
        now = self.now(rows, now)
        found = full_record(rows[0])
        return found if found.is_live(now) else None

    def snapshot(self, rows: list[Row], now: float) -> list[JobRecord]:
        now = self.now(rows, now)
        return [r for r in map(full_record, rows) if r.is_live(now)]
