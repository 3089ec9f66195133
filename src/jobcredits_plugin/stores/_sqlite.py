"""A durable store in one SQLite file, shared by every process on the host.

Atomicity comes from ``BEGIN IMMEDIATE``: the transaction takes the file's
write lock before it reads, so the read-decide-write of a claim cannot
interleave with another writer's, in this process or any other. WAL mode lets
readers (``lookup``, ``snapshot``) run beside that writer, and the busy timeout
turns lock waits into a bounded wait followed by :class:`StoreUnavailable`
rather than an error on the first contention or a hang.

Connections come from a small pool, each lent to one operation at a time,
and a process that forks gets fresh ones: a connection inherited across
``fork()`` must never be used.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from .._errors import ConfigurationError, InvalidArgument, JobCreditsError, StoreUnavailable
from .._records import JobRecord, JournalEntry
from .._validation import (
    MAX_BATCH,
    check_int_option,
    check_optional_seconds,
    check_positive_seconds,
)
from ._base import (
    GRANT_ID_RETENTION,
    BaseStore,
    ClaimRequest,
    ClaimResult,
    Event,
    JournalRow,
    Key,
    balance_cap_error,
    deadline,
    entry_from_row,
    grant_conflict_error,
    grant_exceeds_cap,
    grant_id_live,
    grant_row,
    journal_rows,
    plan_claim,
    plan_confirm,
    plan_refund,
    plan_settle,
    with_settled,
)

__all__ = ["SQLiteStore"]

SCHEMA_VERSION = 1

#: The longest busy timeout SQLite takes: a C int of milliseconds (2**31 - 1).
MAX_SQLITE_TIMEOUT = 2_147_483.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobcredits_jobs (
    account     TEXT    NOT NULL,
    scope       TEXT    NOT NULL,
    job_id      TEXT    NOT NULL,
    charge_id   TEXT    NOT NULL,
    state       TEXT    NOT NULL,
    cost        INTEGER NOT NULL,
    tier        TEXT,
    backend     TEXT,
    charged_at  REAL    NOT NULL,
    expires_at  REAL    NOT NULL,
    lease_until REAL    NOT NULL,
    uses        INTEGER NOT NULL,
    debited     INTEGER NOT NULL,
    deadline    REAL    NOT NULL,
    PRIMARY KEY (account, scope, job_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS jobcredits_jobs_deadline ON jobcredits_jobs (deadline);
CREATE TABLE IF NOT EXISTS jobcredits_balances (
    account TEXT    NOT NULL PRIMARY KEY,
    credits INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS jobcredits_journal (
    seq       INTEGER PRIMARY KEY,
    kind      TEXT    NOT NULL,
    account   TEXT    NOT NULL,
    scope     TEXT,
    job_id    TEXT,
    charge_id TEXT    NOT NULL,
    cost      INTEGER NOT NULL,
    tier      TEXT,
    backend   TEXT,
    delta     INTEGER NOT NULL,
    balance   INTEGER NOT NULL,
    at        REAL    NOT NULL
);
CREATE TABLE IF NOT EXISTS jobcredits_cursors (
    name       TEXT    NOT NULL PRIMARY KEY,
    position   INTEGER NOT NULL,
    updated_at REAL    NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS jobcredits_grants (
    account  TEXT    NOT NULL,
    grant_id TEXT    NOT NULL,
    amount   INTEGER NOT NULL,
    balance  INTEGER NOT NULL,
    at       REAL    NOT NULL,
    PRIMARY KEY (account, grant_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS jobcredits_grants_at ON jobcredits_grants (at);
CREATE TABLE IF NOT EXISTS jobcredits_meta (
    name  TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
"""

_COLUMNS = (
    "account, scope, job_id, charge_id, state, cost, tier, backend, "
    "charged_at, expires_at, lease_until, uses, debited"
)
_SELECT = f"SELECT {_COLUMNS} FROM jobcredits_jobs"
_WHERE_KEY = " WHERE account = ? AND scope = ? AND job_id = ?"
_UPSERT = (
    f"INSERT OR REPLACE INTO jobcredits_jobs ({_COLUMNS}, deadline) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_DELETE = "DELETE FROM jobcredits_jobs" + _WHERE_KEY
# Upsert without RETURNING, which older SQLite builds (before 3.35) lack; the
# raw amount is bound twice because excluded.credits would be the clamped one.
# SQLite turns an integer sum past 2**63 - 1 into a REAL, silently: the WHERE
# leaves such a balance alone (no row changed), and _credit raises instead.
_CREDIT = (
    "INSERT INTO jobcredits_balances (account, credits) VALUES (?, MAX(0, ?)) "
    "ON CONFLICT (account) DO UPDATE SET credits = MAX(0, credits + ?) "
    "WHERE ? <= 0 OR credits <= 9223372036854775807 - ?"
)
_BALANCE = "SELECT credits FROM jobcredits_balances WHERE account = ?"
# Grant ids, remembered for GRANT_ID_RETENTION (see Store.grant).
_GRANT_SEEN = "SELECT at, amount, balance FROM jobcredits_grants WHERE account = ? AND grant_id = ?"
_GRANT_REMEMBER = (
    "INSERT OR REPLACE INTO jobcredits_grants (account, grant_id, amount, balance, at) "
    "VALUES (?, ?, ?, ?, ?)"
)
# Expired as grant_id_live says (at + retention <= now, computed the same way
# in doubles); the first bound only lets the index narrow the scan.
_GRANT_FORGET = (
    "DELETE FROM jobcredits_grants WHERE (account, grant_id) IN "
    "(SELECT account, grant_id FROM jobcredits_grants WHERE at <= ? AND at + ? <= ? LIMIT ?)"
)
_JOURNAL_COLUMNS = (
    "kind, account, scope, job_id, charge_id, cost, tier, backend, delta, balance, at"
)
_JOURNAL_INSERT = (
    f"INSERT INTO jobcredits_journal ({_JOURNAL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# The same, with the balance read from the balances table (a change that
# moved no credits records the account's balance as it stands).
_JOURNAL_INSERT_READING_BALANCE = (
    f"INSERT INTO jobcredits_journal ({_JOURNAL_COLUMNS}) "
    "SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, "
    "COALESCE((SELECT credits FROM jobcredits_balances WHERE account = ?), 0), ?"
)
_JOURNAL_READ = (
    f"SELECT seq, {_JOURNAL_COLUMNS} FROM jobcredits_journal WHERE seq > ? ORDER BY seq LIMIT ?"
)
# A cursor only moves forward unless forced: two exporters racing on one
# cursor cannot move it back over entries one of them already sent.
_CURSOR_SET = (
    "INSERT INTO jobcredits_cursors (name, position, updated_at) VALUES (?, ?, ?) "
    "ON CONFLICT (name) DO UPDATE SET position = MAX(position, excluded.position), "
    "updated_at = excluded.updated_at"
)
_CURSOR_FORCE = (
    "INSERT INTO jobcredits_cursors (name, position, updated_at) VALUES (?, ?, ?) "
    "ON CONFLICT (name) DO UPDATE SET position = excluded.position, "
    "updated_at = excluded.updated_at"
)

# SQLite's primary result codes that mean "could not get to the data right
# now" (another writer held the lock past the busy timeout, the file could not
# be opened, the disk failed or is full): these, and only these, become
# StoreUnavailable, the 503 that fail_open may let through. Anything else (a
# constraint, a type mismatch, a malformed statement, a corrupt file) is a bug
# or a broken deployment and is raised as it is: fail_open must never turn a
# bug into free service.
_UNAVAILABLE_CODES = frozenset(
    {
        5,  # SQLITE_BUSY
        6,  # SQLITE_LOCKED
        7,  # SQLITE_NOMEM
        10,  # SQLITE_IOERR (and its extended codes)
        13,  # SQLITE_FULL
        14,  # SQLITE_CANTOPEN
        15,  # SQLITE_PROTOCOL (a WAL lock race)
    }
)
_NOTADB = 26  # SQLITE_NOTADB: the file is something else
# The same, by message, for Pythons before 3.11 (no ``sqlite_errorcode``).
_UNAVAILABLE_MESSAGES = (
    "database is locked",
    "database table is locked",
    "database schema is locked",
    "out of memory",
    "disk i/o error",
    "database or disk is full",
    "unable to open database file",
    "locking protocol",
)


def is_unavailable(exc: BaseException) -> bool:
    """Whether a driver error means the database could not be reached right
    now (StoreUnavailable), rather than a bug (raised as it is)."""
    if not isinstance(exc, sqlite3.Error):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return (code & 0xFF) in _UNAVAILABLE_CODES
    text = str(exc).lower()
    return any(text.startswith(m) for m in _UNAVAILABLE_MESSAGES)


def _row_to_record(row: tuple[Any, ...]) -> JobRecord:
    return JobRecord(
        account=row[0],
        scope=row[1],
        job_id=row[2],
        charge_id=row[3],
        state=row[4],
        cost=row[5],
        tier=row[6],
        backend=row[7],
        charged_at=row[8],
        expires_at=row[9],
        lease_until=row[10],
        uses=row[11],
        debited=row[12],
    )


def _record_params(r: JobRecord) -> tuple[Any, ...]:
    return (
        r.account,
        r.scope,
        r.job_id,
        r.charge_id,
        r.state,
        r.cost,
        r.tier,
        r.backend,
        r.charged_at,
        r.expires_at,
        r.lease_until,
        r.uses,
        r.debited,
        deadline(r),
    )


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
        timeout = check_positive_seconds("timeout", timeout, most=MAX_SQLITE_TIMEOUT)
        path = os.fspath(path)
        if "\x00" in str(path):
            # sqlite3 would raise a bare ValueError ("embedded null byte").
            raise ConfigurationError(f"SQLite path {path!r} holds a NUL character")
        if path != ":memory:" and (
            str(path).startswith("file:") or os.path.basename(path) == ":memory:"
        ):
            # The store opens plain file names, not SQLite URI filenames:
            # sqlite:///file::memory: (SQLAlchemy's shared in-memory spelling)
            # silently created a file named "file::memory:", and
            # sqlite:////:memory: a file named ":memory:" in /.
            raise ConfigurationError(
                f"SQLite path {path!r} looks like an in-memory database but names a file; "
                "write sqlite:///:memory: (or sqlite://) for memory, or a real file path"
            )
        # Resolved now: connections open later (in other threads, after a
        # fork), and a relative path must keep naming this file even if the
        # process changes directory in between, as daemons do.
        self.path = path if path in ("", ":memory:") else os.path.abspath(path)
        self.timeout = float(timeout)
        self.synchronous = synchronous.upper()
        self.prune_batch = int(prune_batch)
        self._memory = self.path == ":memory:"
        self.max_idle = 8
        self._guard = threading.Lock()
        # Idle connections, each used by one operation at a time. A pool rather
        # than one connection per thread: servers that start a thread per
        # request would otherwise open a connection per request and keep it.
        self._idle: list[sqlite3.Connection] = []
        self._pid = os.getpid()
        # Connections inherited across fork(): never used, never closed (closing
        # one in the child could checkpoint and remove the parent's WAL), only
        # kept referenced so the garbage collector does not close them either.
        self._orphans: list[sqlite3.Connection] = []
        # ":memory:" must be one connection (each would see its own database),
        # shared under this lock.
        self._memory_lock = threading.Lock()
        self._memory_conn: sqlite3.Connection | None = None
        self._closed = False
        # Create the schema now, so a bad path fails at construction.
        with self._transaction():
            pass

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    # -- connections -------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if not self._memory:
            parent = Path(self.path).parent
            if not parent.is_dir():
                raise StoreUnavailable(f"SQLite store: directory {str(parent)!r} does not exist")
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.timeout,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,  # pooled: any thread may use it, one at a time
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            if not self._memory:
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.executescript(_SCHEMA)
            conn.execute(
                "INSERT OR IGNORE INTO jobcredits_meta (name, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            if is_unavailable(exc):
                raise StoreUnavailable(f"SQLite store {self.path!r}: {exc}") from exc
            if getattr(exc, "sqlite_errorcode", None) == _NOTADB or "not a database" in str(exc):
                # The path names some other file: the app's setup mistake,
                # not an outage to wait out (or to fail open through).
                raise ConfigurationError(
                    f"SQLite store {self.path!r}: the file is not a SQLite database ({exc})"
                ) from exc
            raise
        return conn

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """Lend a connection to one operation, then take it back."""
        if self._closed:
            raise StoreUnavailable(f"SQLite store {self.path!r} is closed")
        if self._memory:
            with self._memory_lock:
                if self._memory_conn is None:
                    self._memory_conn = self._connect()
                yield self._memory_conn
            return
        conn = None
        with self._guard:
            if self._pid != os.getpid():  # we are a forked child
                self._orphans.extend(self._idle)
                self._idle = []
                self._pid = os.getpid()
            if self._idle:
                conn = self._idle.pop()
        if conn is None:
            conn = self._connect()
        try:
            yield conn
        finally:
            with self._guard:
                keep = not self._closed and len(self._idle) < self.max_idle
                keep = keep and self._pid == os.getpid()
                if keep:
                    self._idle.append(conn)
            if not keep:
                conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` ... ``COMMIT``; rolled back on any error.

        SQLite's "cannot get to the data" errors (locked past the busy
        timeout, disk full, I/O, cannot open) surface as
        :class:`StoreUnavailable`: the transaction did not commit. Other
        errors (constraints, type mismatches) are bugs, raised as they are,
        also rolled back.
        """
        with self._connection() as conn:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                if is_unavailable(exc):
                    raise StoreUnavailable(f"SQLite store {self.path!r}: {exc}") from exc
                raise
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                # A failed COMMIT may already have rolled back by itself.
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if is_unavailable(exc):
                    raise StoreUnavailable(f"SQLite store {self.path!r}: {exc}") from exc
                raise

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._connection() as conn:
                return conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            if is_unavailable(exc):
                raise StoreUnavailable(f"SQLite store {self.path!r}: {exc}") from exc
            raise

    # -- helpers inside a transaction ------------------------------------------

    @staticmethod
    def _get(conn: sqlite3.Connection, key: Key) -> JobRecord | None:
        row = conn.execute(_SELECT + _WHERE_KEY, key).fetchone()
        return None if row is None else _row_to_record(row)

    @staticmethod
    def _balance(conn: sqlite3.Connection, account: str) -> int:
        row = conn.execute(_BALANCE, (account,)).fetchone()
        return 0 if row is None else int(row[0])

    @staticmethod
    def _credit(conn: sqlite3.Connection, account: str, amount: int) -> None:
        if conn.execute(_CREDIT, (account, amount, amount, amount, amount)).rowcount != 1:
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
            conn.execute(_JOURNAL_INSERT, rows[0])
        elif rows:
            conn.executemany(_JOURNAL_INSERT, rows)

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
                conn.execute(_UPSERT, _record_params(plan.write))
            elif plan.delete:
                conn.execute(_DELETE, key)
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
                            _JOURNAL_INSERT_READING_BALANCE,
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
                conn.execute(_UPSERT, _record_params(record))
        return record

    def refund(self, key: Key, charge_id: str | None, now: float) -> Event | None:
        with self._transaction() as conn:
            existing = self._get(conn, key)
            event = plan_refund(existing, charge_id, now)
            if event is not None and existing is not None:
                conn.execute(_DELETE, key)
                if self.journal:
                    before = self._balance(conn, existing.account)
                    self._journal(conn, [event], before, now)
                if existing.debited:
                    self._credit(conn, existing.account, existing.debited)
        return event

    def lookup(self, key: Key, now: float) -> JobRecord | None:
        rows = self._read(_SELECT + _WHERE_KEY, key)
        if not rows:
            return None
        record = _row_to_record(rows[0])
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
                gone = conn.execute(_GRANT_FORGET, params).rowcount
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
                    _SELECT + " WHERE deadline <= ? ORDER BY deadline LIMIT ?", (now, batch)
                ).fetchall()
                found = 0
                for row in rows:
                    record = _row_to_record(row)
                    event = plan_settle(record, now)
                    if event is None:  # not due after all (cannot happen: the
                        continue  # deadline column is what plan_settle checks)
                    found += 1
                    conn.execute(_DELETE, record.key)
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
        rows = self._read(_SELECT + " ORDER BY charged_at, account, scope, job_id")
        return [r for r in map(_row_to_record, rows) if r.is_live(now)]

    def grant(self, account: str, amount: int, now: float = 0.0, grant_id: str = "") -> int:
        with self._transaction() as conn:
            if grant_id:
                seen = conn.execute(_GRANT_SEEN, (account, grant_id)).fetchone()
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
                conn.execute(_JOURNAL_INSERT, row)
            if grant_id:
                conn.execute(_GRANT_REMEMBER, (account, grant_id, amount, after, now))
            return after

    def balance(self, account: str) -> int:
        rows = self._read(_BALANCE, (account,))
        return int(rows[0][0]) if rows else 0

    # -- the journal -------------------------------------------------------------

    def read_journal(self, after: int, limit: int) -> list[JournalEntry]:
        rows = self._read(_JOURNAL_READ, (after, limit))
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
            conn.execute(_CURSOR_FORCE if force else _CURSOR_SET, (name, position, time.time()))
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
        with self._guard:
            self._closed = True
            conns, self._idle = self._idle, []
            if self._pid != os.getpid():
                return  # inherited across fork: not ours to close
        with self._memory_lock:
            if self._memory_conn is not None:
                conns.append(self._memory_conn)
                self._memory_conn = None
        for conn in conns:
            with suppress(sqlite3.Error):
                conn.close()
