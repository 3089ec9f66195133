"""The SQLite store's SQL, and how it reads SQLite's errors.

Every statement the store runs is here, as text, next to the schema it runs
against; :mod:`._sqlite` holds the transactions that run them. Values are
always bound parameters.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from .._records import JobRecord
from ._rules import deadline

SCHEMA_VERSION = 1

#: The longest busy timeout SQLite takes: a C int of milliseconds (2**31 - 1).
MAX_SQLITE_TIMEOUT = 2_147_483.0

SCHEMA = """
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

COLUMNS = (
    "account, scope, job_id, charge_id, state, cost, tier, backend, "
    "charged_at, expires_at, lease_until, uses, debited"
)
SELECT = f"SELECT {COLUMNS} FROM jobcredits_jobs"
WHERE_KEY = " WHERE account = ? AND scope = ? AND job_id = ?"
UPSERT = (
    f"INSERT OR REPLACE INTO jobcredits_jobs ({COLUMNS}, deadline) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
DELETE = "DELETE FROM jobcredits_jobs" + WHERE_KEY
# Upsert without RETURNING, which older SQLite builds (before 3.35) lack; the
# raw amount is bound twice because excluded.credits would be the clamped one.
# SQLite turns an integer sum past 2**63 - 1 into a REAL, silently: the WHERE
# leaves such a balance alone (no row changed), and _credit raises instead.
CREDIT = (
    "INSERT INTO jobcredits_balances (account, credits) VALUES (?, MAX(0, ?)) "
    "ON CONFLICT (account) DO UPDATE SET credits = MAX(0, credits + ?) "
    "WHERE ? <= 0 OR credits <= 9223372036854775807 - ?"
)
BALANCE = "SELECT credits FROM jobcredits_balances WHERE account = ?"
# Grant ids, remembered for GRANT_ID_RETENTION (see Store.grant).
GRANT_SEEN = "SELECT at, amount, balance FROM jobcredits_grants WHERE account = ? AND grant_id = ?"
GRANT_REMEMBER = (
    "INSERT OR REPLACE INTO jobcredits_grants (account, grant_id, amount, balance, at) "
    "VALUES (?, ?, ?, ?, ?)"
)
# Expired as grant_id_live says (at + retention <= now, computed the same way
# in doubles); the first bound only lets the index narrow the scan.
GRANT_FORGET = (
    "DELETE FROM jobcredits_grants WHERE (account, grant_id) IN "
    "(SELECT account, grant_id FROM jobcredits_grants WHERE at <= ? AND at + ? <= ? LIMIT ?)"
)
JOURNAL_COLUMNS = "kind, account, scope, job_id, charge_id, cost, tier, backend, delta, balance, at"
JOURNAL_INSERT = (
    f"INSERT INTO jobcredits_journal ({JOURNAL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# The same, with the balance read from the balances table (a change that
# moved no credits records the account's balance as it stands).
JOURNAL_INSERT_READING_BALANCE = (
    f"INSERT INTO jobcredits_journal ({JOURNAL_COLUMNS}) "
    "SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, "
    "COALESCE((SELECT credits FROM jobcredits_balances WHERE account = ?), 0), ?"
)
JOURNAL_READ = (
    f"SELECT seq, {JOURNAL_COLUMNS} FROM jobcredits_journal WHERE seq > ? ORDER BY seq LIMIT ?"
)
# A cursor only moves forward unless forced: two exporters racing on one
# cursor cannot move it back over entries one of them already sent.
CURSOR_SET = (
    "INSERT INTO jobcredits_cursors (name, position, updated_at) VALUES (?, ?, ?) "
    "ON CONFLICT (name) DO UPDATE SET position = MAX(position, excluded.position), "
    "updated_at = excluded.updated_at"
)
CURSOR_FORCE = (
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
UNAVAILABLE_CODES = frozenset(
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
NOTADB = 26  # SQLITE_NOTADB: the file is something else
# The same, by message, for Pythons before 3.11 (no ``sqlite_errorcode``).
UNAVAILABLE_MESSAGES = (
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
        return (code & 0xFF) in UNAVAILABLE_CODES
    text = str(exc).lower()
    return any(text.startswith(m) for m in UNAVAILABLE_MESSAGES)


def row_to_record(row: tuple[Any, ...]) -> JobRecord:
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


def record_params(r: JobRecord) -> tuple[Any, ...]:
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
