"""Journal entries as rows: what a store writes in the step that makes a change.

Every store keeps its journal as rows of the same eleven fields (see
:data:`JournalRow`) and hands them back as
:class:`~jobcredits_plugin.JournalEntry` values; the functions here build those
rows from the events one atomic step committed, so that every store journals
the same entries with the same balances.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .._records import JournalEntry, JournalKind
from ._rules import Event

__all__ = ["JournalRow", "entry_delta", "entry_from_row", "grant_row", "journal_rows"]

#: One journal entry before the store gives it its sequence number: kind,
#: account, scope, job_id, charge_id, cost, tier, backend, delta, balance, at
#: (the fields of :class:`~jobcredits_plugin.JournalEntry` after ``seq``, in order).
JournalRow = tuple[
    JournalKind,
    str,
    "str | None",
    "str | None",
    str,
    int,
    "str | None",
    "str | None",
    int,
    int,
    float,
]


def entry_delta(event: Event) -> int:
    """What an event did to its account's stored balance: a charge took what it
    debited, a refund gave that back, reuses and expiries move nothing."""
    if event.kind == "charge":
        return -event.record.debited
    if event.kind == "refund":
        return event.record.debited
    return 0


def journal_rows(
    events: Iterable[Event],
    balance_before: Callable[[str], int],
    now: float,
    reuses: bool,
) -> list[JournalRow]:
    """The journal rows for events committed in one atomic step, in order.

    ``balance_before`` gives an account's balance before the step; each row's
    balance is that plus the deltas of the rows before it (a claim that takes
    over a stale charge refunds, then charges: two rows, two balances). No
    clamping is needed: a charge only debits what the balance holds, and
    refunds only add. Reuses are left out unless ``reuses``.
    """
    running: dict[str, int] = {}
    rows: list[JournalRow] = []
    for event in events:
        if event.kind == "reuse" and not reuses:
            continue
        r = event.record
        delta = entry_delta(event)
        balance = running.get(r.account)
        if balance is None:
            balance = balance_before(r.account)
        balance += delta
        running[r.account] = balance
        rows.append(
            (
                event.kind,
                r.account,
                r.scope,
                r.job_id,
                r.charge_id,
                r.cost,
                r.tier,
                r.backend,
                delta,
                balance,
                now,
            )
        )
    return rows


def grant_row(
    account: str, amount: int, grant_id: str, before: int, after: int, now: float
) -> JournalRow:
    """The journal row of a grant: ``cost`` is the amount asked for, ``delta``
    what the (never negative) balance really moved."""
    return ("grant", account, None, None, grant_id, amount, None, None, after - before, after, now)


def entry_from_row(seq: int, row: Sequence[Any]) -> JournalEntry:
    """A :class:`~jobcredits_plugin.JournalEntry` from its sequence number and
    a row laid out as :data:`JournalRow` (stores that keep rows as tuples read
    them back so)."""
    return JournalEntry(
        seq=int(seq),
        kind=row[0],
        account=row[1],
        scope=row[2],
        job_id=row[3],
        charge_id=row[4],
        cost=int(row[5]),
        tier=row[6],
        backend=row[7],
        delta=int(row[8]),
        balance=int(row[9]),
        at=float(row[10]),
    )
