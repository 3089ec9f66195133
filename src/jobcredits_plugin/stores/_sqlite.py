"""A durable store in one SQLite file, shared by every process on the host.

Atomicity comes from ``BEGIN IMMEDIATE``: the transaction takes the file's
write lock before it reads, so the read-decide-write of a claim cannot
interleave with another writer's, in this process or any other. WAL mode lets
readers (``lookup``, ``snapshot``) run beside that writer, and the busy timeout
turns lock waits into a bounded wait followed by :class:`StoreUnavailable`
rather than an error on the first contention or a hang.

The statements are in :mod:`._sqlite_sql`, the connections in
:mod:`._sqlite_pool`; this module holds the transactions.
"""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import AbstractContextManager
from typing import Any

from .._errors import InvalidArgument, JobCreditsError
from .._records import JobRecord, JournalEntry
from .._validation import (
    MAX_BATCH,
    check_int_option,
    check_optional_seconds,
    check_positive_seconds,
)
from . import _sqlite_sql as sql
from ._base import BaseStore
from ._rows import JournalRow, entry_from_row, grant_row, journal_rows
from ._rules import (
    GRANT_ID_RETENTION,
    ClaimRequest,
    ClaimResult,
    Event,
    Key,
    balance_cap_error,
    grant_conflict_error,
    grant_exceeds_cap,
    grant_id_live,
    plan_claim,
    plan_confirm,
    plan_refund,
    plan_settle,
    with_settled,
)
from ._sqlite_pool import Connections, resolve_path
from ._sqlite_sql import is_unavailable

__all__ = ["SQLiteStore", "is_unavailable"]


class SQLiteStore(BaseStore):
    """Jobs and balances in a SQLite file; survives restarts, shared by processes.

    :param path: the database file (created if missing), or ``":memory:"`` for
        a private in-memory database (one connection, this process only).
    :param timeout: seconds to wait for another writer's lock before giving up
        with :class:`~jobcredits_plugin.StoreUnavailable`. Every write holds
        the lock for one short transaction, so a wait this long means the
        file is stuck.
    :param synchronous: SQLite's ``synchronous`` pragma. ``"NORMAL"`` (the
        default) is durable across process crashes in WAL mode; a power cut
        may lose the last transactions. ``"FULL"`` survives that too, slower.
    :param prune_batch: how many records one transaction of
        :meth:`~jobcredits_plugin.Ledger.prune` settles, so that pruning a
        large backlog never holds the write lock for long.
    :param journal: write a :class:`~jobcredits_plugin.JournalEntry` row into
        ``jobcredits_journal`` in the same transaction as each change.
    :param journal_reuses: journal reuses too (one row per follow-up call).
    :param journal_max_age: seconds :meth:`~jobcredits_plugin.Ledger.trim_journal`
        keeps entries when called without bounds (None: until trimmed by
        cursor); entries a stored cursor has not read are always kept.

    The journal's ``seq`` is the table's integer key, assigned inside the
    ``BEGIN IMMEDIATE`` transaction: writers are serialised by the file's write
    lock, so seqs commit in order and a reader can never see seq ``n + 1``
    while ``n`` is still to come. SQLite gives a new row the highest key plus
    one, so a trim never deletes the newest entry: no seq is ever handed out
    twice. (``AUTOINCREMENT`` would guarantee the same by writing a second
    table on every insert, which cost about 20% of a charge.)
    """

    schemes = ("sqlite",)

    def __init__(
        self,
        path: str | os.PathLike[str] = "jobcredits.db",
        *,
        timeout: float = 5.0,
        synchronous: str = "NORMAL",
        prune_batch: int = 500,
        journal: bool = True,
        journal_reuses: bool = False,
        journal_max_age: float | None = 7 * 86400.0,
    ) -> None:
        journal_max_age = check_optional_seconds("journal_max_age", journal_max_age)
        check_int_option("prune_batch", prune_batch, 1, MAX_BATCH)
        self.journal = bool(journal)
        self.journal_reuses = bool(journal_reuses)
        self.journal_max_age = None if journal_max_age is None else float(journal_max_age)
        if not isinstance(synchronous, str) or synchronous.upper() not in {
            "OFF",
            "NORMAL",
            "FULL",
            "EXTRA",
        }:
            raise InvalidArgument(
                f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}"
            )
        # SQLite's busy timeout is a C int of milliseconds.
        timeout = check_positive_seconds("timeout", timeout, most=sql.MAX_SQLITE_TIMEOUT)
        self.path = resolve_path(path)
        self.timeout = float(timeout)
        self.synchronous = synchronous.upper()
        self.prune_batch = int(prune_batch)
        self._pool = Connections(self.path, self.timeout, self.synchronous)
        # Create the schema now, so a bad path fails at construction.
        with self._transaction():
            pass

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction (see :meth:`Connections.transaction`)."""
        return self._pool.transaction()

    def _read(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return self._pool.read(statement, params)

    # -- helpers inside a transaction ------------------------------------------

    @staticmethod
    def _get(conn: sqlite3.Connection, key: Key) -> JobRecord | None:
        row = conn.execute(sql.SELECT + sql.WHERE_KEY, key).fetchone()
        return None if row is None else sql.row_to_record(row)

    @staticmethod
    def _balance(conn: sqlite3.Connection, account: str) -> int:
        row = conn.execute(sql.BALANCE, (account,)).fetchone()
        return 0 if row is None else int(row[0])

    @staticmethod
    def _credit(conn: sqlite3.Connection, account: str, amount: int) -> None:
        if conn.execute(sql.CREDIT, (account, amount, amount, amount, amount)).rowcount != 1:
            # Only refunds can take a balance past MAX_CREDITS (grants are
            # capped), and only ~1000 outstanding charges of 2**53 credits each
            # could take it past 64 bits: refuse (the transaction rolls back)
            # rather than store a rounded balance.
            raise JobCreditsError(
                f"SQLite store: crediting {amount} would overflow the 64-bit balance of "
                f"account {account!r}; nothing was changed"
            )

    def _journal(
        self, conn: sqlite3.Connection, events: list[Event], before: int, now: float
    ) -> None:
        """Journal events of one account whose balance before them was ``before``."""
        rows: list[JournalRow] = journal_rows(events, lambda _a: before, now, self.journal_reuses)
        if len(rows) == 1:  # the common case; executemany costs more for one row
            conn.execute(sql.JOURNAL_INSERT, rows[0])
        elif rows:
            conn.executemany(sql.JOURNAL_INSERT, rows)

    # -- the store protocol ----------------------------------------------------

    def claim(self, req: ClaimRequest) -> ClaimResult:
        key = req.key
        with self._transaction() as conn:
            existing = self._get(conn, key)
            balance = self._balance(conn, req.account) if req.balances else 0
            plan = plan_claim(existing, balance, req)
            events = plan.result.events
            # With balances off the entries' balance is read by the INSERT
            # itself (one statement less on the hot path), unless a takeover
            # refunds credits debited while balances were on.
            fast = not req.balances and not plan.balance_delta
            if self.journal and events and not req.balances and not fast:
                balance = self._balance(conn, req.account)
            if plan.write is not None:
                conn.execute(sql.UPSERT, sql.record_params(plan.write))
            elif plan.delete:
                conn.execute(sql.DELETE, key)
            if plan.balance_delta:
                self._credit(conn, req.account, plan.balance_delta)
            if self.journal and events:
                if fast:
                    # nothing moved the balance: every delta is 0
                    for event in events:
                        if event.kind == "reuse" and not self.journal_reuses:
                            continue
                        r = event.record
                        conn.execute(
                            sql.JOURNAL_INSERT_READING_BALANCE,
                            (event.kind, r.account, r.scope, r.job_id, r.charge_id, r.cost,
                             r.tier, r.backend, 0, r.account, req.now),
                        )  # fmt: skip
                else:
                    self._journal(conn, list(events), balance, req.now)
        return plan.result

    def confirm(self, key: Key, charge_id: str | None, now: float) -> JobRecord | None:
        with self._transaction() as conn:
            record, write = plan_confirm(self._get(conn, key), charge_id, now)
            if write and record is not None:
                conn.execute(sql.UPSERT, sql.record_params(record))
        return record

    def refund(self, key: Key, charge_id: str | None, now: float) -> Event | None:
        with self._transaction() as conn:
            existing = self._get(conn, key)
            event = plan_refund(existing, charge_id, now)
            if event is not None and existing is not None:
                conn.execute(sql.DELETE, key)
                if self.journal:
                    before = self._balance(conn, existing.account)
                    self._journal(conn, [event], before, now)
                if existing.debited:
                    self._credit(conn, existing.account, existing.debited)
        return event

    def lookup(self, key: Key, now: float) -> JobRecord | None:
        rows = self._read(sql.SELECT + sql.WHERE_KEY, key)
        if not rows:
            return None
        record = sql.row_to_record(rows[0])
        return record if record.is_live(now) else None

    def prune(self, now: float, limit: int | None = None) -> list[Event]:
        events: list[Event] = []
        try:
            self._prune_batches(now, limit, events)
            self._forget_grants(now)
        except BaseException as exc:
            # Each batch committed on its own: the ledger still fires theirs.
            with_settled(exc, events)
            raise
        return events

    def _forget_grants(self, now: float) -> None:
        """Delete the grant ids past their retention, a batch per transaction."""
        # (a second of slack in the index bound: the exact test is the second one)
        params = (now - GRANT_ID_RETENTION + 1.0, GRANT_ID_RETENTION, now, self.prune_batch)
        while True:
            with self._transaction() as conn:
                gone = conn.execute(sql.GRANT_FORGET, params).rowcount
            if gone < self.prune_batch:
                break

    def _prune_batches(self, now: float, limit: int | None, events: list[Event]) -> None:
        while limit is None or len(events) < limit:
            batch = (
                self.prune_batch if limit is None else min(self.prune_batch, limit - len(events))
            )
            done: list[Event] = []  # this batch's, reported once it committed
            with self._transaction() as conn:
                rows = conn.execute(
                    sql.SELECT + " WHERE deadline <= ? ORDER BY deadline LIMIT ?", (now, batch)
                ).fetchall()
                found = 0
                for row in rows:
                    record = sql.row_to_record(row)
                    event = plan_settle(record, now)
                    if event is None:  # not due after all (cannot happen: the
                        continue  # deadline column is what plan_settle checks)
                    found += 1
                    conn.execute(sql.DELETE, record.key)
                    if self.journal:
                        before = self._balance(conn, record.account)
                        self._journal(conn, [event], before, now)
                    if event.kind == "refund" and record.debited:
                        self._credit(conn, record.account, record.debited)
                    done.append(event)
            events.extend(done)
            if len(rows) < batch or found == 0:
                break

    def snapshot(self, now: float) -> list[JobRecord]:
        rows = self._read(sql.SELECT + " ORDER BY charged_at, account, scope, job_id")
        return [r for r in map(sql.row_to_record, rows) if r.is_live(now)]

    def grant(self, account: str, amount: int, now: float = 0.0, grant_id: str = "") -> int:
        with self._transaction() as conn:
            if grant_id:
                seen = conn.execute(sql.GRANT_SEEN, (account, grant_id)).fetchone()
                if seen is not None and grant_id_live(float(seen[0]), now):
                    if int(seen[1]) != amount:
                        raise grant_conflict_error(int(seen[1]), amount)
                    return int(seen[2])  # a repeat: nothing written
            before = self._balance(conn, account)
            if grant_exceeds_cap(before, amount):
                raise balance_cap_error(before, amount)  # rolled back: nothing written
            self._credit(conn, account, amount)
            after = self._balance(conn, account)
            if self.journal:
                row = grant_row(account, amount, grant_id, before, after, now)
                conn.execute(sql.JOURNAL_INSERT, row)
            if grant_id:
                conn.execute(sql.GRANT_REMEMBER, (account, grant_id, amount, after, now))
            return after

    def balance(self, account: str) -> int:
        rows = self._read(sql.BALANCE, (account,))
        return int(rows[0][0]) if rows else 0

    # -- the journal -------------------------------------------------------------

    def read_journal(self, after: int, limit: int) -> list[JournalEntry]:
        rows = self._read(sql.JOURNAL_READ, (after, limit))
        return [entry_from_row(row[0], row[1:]) for row in rows]

    def trim_journal(self, through: int | None, cutoff: float | None) -> int:
        if through is None and cutoff is None:
            return 0
        removed = 0
        while True:
            # In batches, so a large trim never holds the write lock for long.
            with self._transaction() as conn:
                row = conn.execute("SELECT MIN(position) FROM jobcredits_cursors").fetchone()
                cap = row[0] if row is not None else None
                if through is not None:
                    cap = through if cap is None else min(cap, through)
                # The newest entry stays: the next seq counts from it.
                newest = conn.execute("SELECT MAX(seq) FROM jobcredits_journal").fetchone()[0]
                if newest is None:
                    return removed
                cap = newest - 1 if cap is None else min(cap, newest - 1)
                where = "seq <= ?"
                params: list[Any] = [cap]
                if cutoff is not None:
                    where += " AND at < ?"
                    params.append(cutoff)
                done = conn.execute(
                    "DELETE FROM jobcredits_journal WHERE seq IN (SELECT seq FROM "
                    f"jobcredits_journal WHERE {where} ORDER BY seq LIMIT ?)",
                    (*params, self.prune_batch),
                ).rowcount
            removed += done
            if done < self.prune_batch:
                return removed

    def get_cursor(self, name: str) -> int | None:
        rows = self._read("SELECT position FROM jobcredits_cursors WHERE name = ?", (name,))
        return int(rows[0][0]) if rows else None

    def set_cursor(self, name: str, position: int, force: bool = False) -> int:
        with self._transaction() as conn:
            conn.execute(
                sql.CURSOR_FORCE if force else sql.CURSOR_SET, (name, position, time.time())
            )
            row = conn.execute(
                "SELECT position FROM jobcredits_cursors WHERE name = ?", (name,)
            ).fetchone()
            return int(row[0])

    def delete_cursor(self, name: str) -> bool:
        with self._transaction() as conn:
            done = conn.execute("DELETE FROM jobcredits_cursors WHERE name = ?", (name,))
            return done.rowcount > 0

    def cursors(self) -> dict[str, int]:
        rows = self._read("SELECT name, position FROM jobcredits_cursors ORDER BY name")
        return {name: int(position) for name, position in rows}

    def close(self) -> None:
        """Close the idle connections; those lent out close when returned."""
        self._pool.close()
