"""The PostgreSQL store: the ledger's operations, each one statement.

Each operation calls one function of ``functions.sql`` (see the package's
docstring) through :mod:`._connection`, and turns the answer into the
ledger's result through :mod:`._answers`. This module decides what each
operation sends, and which may be retried after a failure that may have come
after its commit (see "Failures" in :class:`PostgresStore`).
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from ..._errors import ConfigurationError, InvalidArgument
from ..._records import JobRecord, JournalEntry
from ..._validation import (
    MAX_BATCH,
    MAX_WAIT_SECONDS,
    check_int_option,
    check_optional_seconds,
    check_positive_seconds,
)
from .._base import BaseStore
from .._rows import entry_from_row
from .._rules import (
    GRANT_ID_RETENTION,
    ClaimRequest,
    ClaimResult,
    Event,
    Key,
    balance_cap_error,
    grant_conflict_error,
    with_settled,
)
from .._urls import JOURNAL_OPTIONS, check_url_text, parse_bool, redact_text, redact_url
from ._answers import Answers, Row
from ._connection import Connections, connection_options, parse_conninfo, redact_conninfo
from ._schema import Schema, render
from ._statements import Statements

#: The most connections one pool may open.
MAX_POOL_SIZE = 1000

#: The SQLSTATE ``grant_credits`` raises (having written nothing) for a grant
#: that would take a balance past MAX_CREDITS; the store turns it into the
#: same InvalidArgument every store raises. Class "JC" is no class PostgreSQL
#: uses, so no server error can be mistaken for it.
_CAP_SQLSTATE = "JC001"

#: Seconds (by the ledger's clock) the answer of a claim, refund or prune
#: batch is kept for a retry of the same call (see version 6 and
#: ``PostgresStore``); at least twice the store's deadline.
REPLY_RETENTION = 300.0

#: How many tries, all within one deadline, a claim, refund or prune batch
#: gets when a failure may have come after its commit (its answer lost).
_REPLAY_ATTEMPTS = 3

#: How many expired replies prune deletes per statement.
_FORGET_BATCH = 5000

#: How many journal rows one read numbers at most (at least its ``limit``),
#: so that one statement's work stays bounded however large the backlog.
_SEQUENCE_BATCH = 1000

#: How many journal rows one trim statement deletes at most.
_TRIM_BATCH = 5000

#: What a schema name may be: an unquoted identifier (ASCII, so its length in
#: characters is its length in bytes, at most the server's 63).
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

#: Query options of a store URL that configure the store; every other query
#: option goes to libpq.
_URL_OPTIONS: dict[str, Callable[[str], Any]] = {
    "schema": str,
    "min_size": int,
    "max_size": int,
    "connect_timeout": float,
    "timeout": float,
    "statement_timeout": float,
    "prune_batch": int,
    "auto_migrate": parse_bool,
    "server_clock": parse_bool,
    **JOURNAL_OPTIONS,
}


def _op_id() -> str:
    """A fresh operation id: 128 random bits (in hex), so that no two calls
    on any host ever share one while their replies are kept. Its first digit
    also picks the writes that clean up (``keep_reply``)."""
    # secrets.token_hex's own source, without its three calls per claim
    return os.urandom(16).hex()


def _check_schema(schema: Any) -> None:
    if not isinstance(schema, str) or _SCHEMA_NAME.fullmatch(schema) is None:
        # The name is spliced (quoted) into the migration's function
        # bodies, so only a plain identifier: no quote, no ``$fn$``, no
        # case games. Longer names are silently truncated by the server:
        # two stores could end up sharing one schema.
        raise ConfigurationError(
            "schema must be a plain identifier: a letter or _, then up to 62 letters, "
            f"digits or _ ([A-Za-z_][A-Za-z0-9_]{{0,62}}), not {schema!r}"
        )
    if schema.lower().startswith("pg_"):
        raise ConfigurationError(
            f"schema must not start with pg_ (reserved for PostgreSQL's own), not {schema!r}"
        )


def _check_pool(min_size: Any, max_size: Any) -> None:
    if not (isinstance(min_size, int) and isinstance(max_size, int)):
        raise InvalidArgument("min_size and max_size must be integers")
    if min_size < 0 or max_size < 1 or max_size < min_size:
        raise InvalidArgument(
            f"need 0 <= min_size <= max_size and max_size >= 1, got {min_size}, {max_size}"
        )
    check_int_option("max_size", max_size, 1, MAX_POOL_SIZE)


def _check_flags(**flags: Any) -> None:
    for name, flag in flags.items():
        if not isinstance(flag, bool):
            raise InvalidArgument(f"{name} must be True or False, not {flag!r}")


class PostgresStore(BaseStore):
    """Jobs and balances in a PostgreSQL schema, shared by every host.

    :param conninfo: a libpq connection string or URL
        (``postgresql://user:password@host:5432/dbname``).
    :param schema: the schema holding the tables and functions (created by
        :meth:`migrate`). Several ledgers or apps can keep separate stores in
        one database under different schemas.
    :param min_size: connections each pool keeps open.
    :param max_size: connections each pool may open; with several worker
        processes, mind the server's ``max_connections``.
    :param connect_timeout: seconds to wait for a new connection (libpq
        enforces at least 2).
    :param timeout: seconds to wait for a free connection from the pool before
        :class:`~jobcredits_plugin.StoreUnavailable`; also what a request waits
        while the server is down.
    :param statement_timeout: seconds the server lets one operation run
        (a claim waits for a row lock only while another call of the same job
        finishes its own short statement, so a long wait means trouble).

    **The deadline.** Every statement the store sends (one per operation;
    a prune, one per batch) is bounded on the client too, by
    ``timeout + connect_timeout + statement_timeout`` (:attr:`deadline`,
    9 s by default), its retry included: a frozen server (``SIGSTOP``, a hung
    host) acknowledges packets, so none of the timeouts above would fire.
    When the deadline passes, the connection is shut down and discarded and
    the call raises :class:`~jobcredits_plugin.StoreUnavailable`; like a lost
    answer, the operation may or may not have been applied. The schema check
    or migration of the first use runs its statements on a connection of its
    own, each bounded by ``statement_timeout + connect_timeout``.
    :param prune_batch: how many records one prune statement settles, so that a
        large backlog never holds many row locks for long.
    :param auto_migrate: create or upgrade the schema on first use. With
        ``False`` the first use checks that ``jobcredits migrate`` has been run.
    :param configure: called with every new pooled connection (sync and
        async), e.g. to set session parameters or to trace the protocol.
    :param journal: write a journal entry with every committed change, in the
        same function call (so the same transaction) as the change.
    :param journal_reuses: journal reuses too (off: one job can have many,
        and no balance moves).
    :param journal_max_age: seconds an entry is kept by a trim with no bound
        (``jobcredits prune``), unless a cursor has not read it; None keeps
        entries until trimmed explicitly.
    :param server_clock: take ``now`` from the server (``clock_timestamp()``,
        read inside each statement) instead of the ledger's clock, so that
        hosts whose clocks differ still agree on every lease and window; the
        ledger's ``clock=`` then no longer moves this store's time. Off by
        default; see "Clocks" in the PostgreSQL docs. Needs no migration.

    The three journal settings travel with every call as function arguments,
    so stores with different settings can share one schema.

    **The journal.** Writers append rows to ``journal`` with ``seq`` NULL;
    :meth:`read_journal` numbers them before it reads. One reader at a time
    (an advisory lock of the schema's journal) gives the next numbers, from a
    counter kept in ``journal_state``, to the rows it can see, i.e. those of
    committed transactions, in id order. A bigserial id alone would not do: a
    transaction can take id 5 and commit after the one that took 6, and a
    reader already past 6 would skip 5 forever. Numbered this way, an entry
    still in flight is numbered after it commits, above every seq handed out
    before, and a rolled-back one is never numbered, so a reader never skips
    an entry, and no other transaction on the server delays one.

    **Async twins.** The ``a*`` methods run the sync operation on the same
    pool in a worker thread, so they never block the event loop and work from
    any loop. They do not use :class:`~psycopg_pool.AsyncConnectionPool`: its
    workers catch the cancellation of a connection attempt in flight when the
    loop shuts down (psycopg_pool 3.3 treats ``CancelledError`` as a client
    error), so ``asyncio.run`` could hang forever at exit; the store suite
    caught it under load. The ledger shields the thread's call, so a
    cancelled caller still gets its hooks.

    **Failures.** Connection refused, a pool checkout timeout, a killed
    connection or a statement timeout raise
    :class:`~jobcredits_plugin.StoreUnavailable` naming the server without its
    password. Before a statement is sent, a connection the server has already
    dropped is detected (see ``_connection._dead``) and replaced, so killed idle
    connections cost nothing. Once a statement has been sent, a failure may
    have come before or after its commit (its answer lost). The claim,
    refund and each prune batch therefore carry an operation id, drawn per
    call, and the server keeps what it answered to that id in ``replies``
    (schema version 6), in the same transaction as the change, for
    :attr:`reply_retention` seconds of the ledger's clock: the store retries
    them (up to three tries, all within :attr:`deadline`, each on another
    connection), the server answers a retry with the original's reply and
    does nothing again, and the ledger fires the hooks of what committed
    exactly once. A grant with an id is retried the same way (the server
    remembers grant ids, version 4; the ledger always sends one). When no
    retry reaches the server within the deadline, the call raises
    StoreUnavailable, and what it did is unknown to the caller (in the books
    and the journal, without its hooks). Reads and ``confirm`` (idempotent:
    confirming twice reports the same record) are retried once, and so are
    ``read_journal`` (its numbering is idempotent), ``set_cursor``
    (storing a position again changes nothing) and the deletes of replies
    and grant ids past their retention that end a prune (tried as often as
    a batch: a retry deletes what is left, and their counts only decide
    whether to go on), so a lost answer there does not fail a prune whose
    batches committed; ``trim_journal`` and
    ``delete_cursor`` are not (doing them again is harmless, but their
    answer would be wrong). A client that retries a charge that got
    StoreUnavailable is still safe: its job is pending (``JobInProgress``)
    or, once the lease ends, refunded and charged anew, never charged twice.
    """

    schemes = ("postgresql", "postgres")

    def __init__(
        self,
        conninfo: str = "",
        *,
        schema: str = "jobcredits",
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 2.0,
        timeout: float = 2.0,
        statement_timeout: float = 5.0,
        prune_batch: int = 500,
        auto_migrate: bool = True,
        configure: Callable[[Any], None] | None = None,
        journal: bool = True,
        journal_reuses: bool = False,
        journal_max_age: float | None = 7 * 86400.0,
        server_clock: bool = False,
    ) -> None:
        # Long for its parameters only: each is checked, then kept.
        if not isinstance(conninfo, str):
            raise InvalidArgument(f"conninfo must be a string, not {type(conninfo).__name__}")
        check_url_text(conninfo, "conninfo")
        params = parse_conninfo(conninfo)
        _check_schema(schema)
        _check_pool(min_size, max_size)
        # Bounded so that libpq's and the server's integer milliseconds (and
        # tcp_user_timeout, their sum) can hold them.
        connect_timeout = check_positive_seconds(
            "connect_timeout", connect_timeout, most=MAX_WAIT_SECONDS
        )
        timeout = check_positive_seconds("timeout", timeout, most=MAX_WAIT_SECONDS)
        statement_timeout = check_positive_seconds(
            "statement_timeout", statement_timeout, most=MAX_WAIT_SECONDS
        )
        check_int_option("prune_batch", prune_batch, 1, MAX_BATCH)
        _check_flags(journal=journal, journal_reuses=journal_reuses, server_clock=server_clock)
        journal_max_age = check_optional_seconds("journal_max_age", journal_max_age)
        self.conninfo = conninfo
        self.schema = schema
        self.min_size = min_size
        self.max_size = max_size
        self.connect_timeout = float(connect_timeout)
        self.timeout = float(timeout)
        self.statement_timeout = float(statement_timeout)
        #: Seconds one statement may take, from asking the pool for a
        #: connection to the last row of the answer, retry included.
        self.deadline = self.timeout + self.connect_timeout + self.statement_timeout
        #: Seconds (of the operation's clock) a claim's, refund's or prune
        #: batch's answer is kept for its retry: far longer than any retry
        #: within :attr:`deadline` can take.
        self.reply_retention = max(REPLY_RETENTION, 2 * self.deadline)
        self.prune_batch = prune_batch
        self.auto_migrate = bool(auto_migrate)
        self.journal = journal
        self.journal_reuses = journal_reuses
        self.journal_max_age = None if journal_max_age is None else float(journal_max_age)
        self.server_clock = server_clock
        self._where = redact_conninfo(conninfo) or "<default libpq connection>"
        self._db = self._connections(params, configure)
        self._schema = Schema(self._db, schema)
        self._sql = Statements(schema, server_clock)
        self._answers = Answers(server_clock, self._where)

    def _connections(
        self, params: dict[str, Any], configure: Callable[[Any], None] | None
    ) -> Connections:
        options = connection_options(
            params, connect_timeout=self.connect_timeout, statement_timeout=self.statement_timeout
        )
        return Connections(
            self.conninfo,
            options,
            min_size=self.min_size,
            max_size=self.max_size,
            timeout=self.timeout,
            connect_timeout=self.connect_timeout,
            statement_timeout=self.statement_timeout,
            configure=configure,
            name=f"jobcredits-{self.schema}",
            where=self._where,
            prepare=self._ensure_ready,
        )

    @classmethod
    def from_url(cls, url: str, **options: Any) -> PostgresStore:
        """A store from ``postgresql://user:password@host:port/dbname?...``.

        Query options named like this class's parameters (``schema``,
        ``max_size``, ``timeout``, ...) configure the store; every other one
        (``sslmode``, ``application_name``, ...) is passed to libpq, which
        rejects names it does not know. Keyword ``options`` win over the URL's.
        """
        if not isinstance(url, str):
            raise InvalidArgument(f"store URL must be a string, not {type(url).__name__}")
        check_url_text(url)
        try:
            parts = urllib.parse.urlsplit(url)
        except ValueError as exc:
            raise InvalidArgument(f"store URL {redact_url(url)!r} cannot be parsed: {exc}") from exc
        if parts.scheme.lower() not in cls.schemes:
            raise InvalidArgument(
                f"not a PostgreSQL URL: {redact_url(url)!r} (postgresql://user@host:port/dbname)"
            )
        store_opts: dict[str, Any] = {}
        libpq: list[tuple[str, str]] = []
        for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
            if name in _URL_OPTIONS:
                try:
                    store_opts[name] = _URL_OPTIONS[name](value)
                except ValueError as exc:
                    raise InvalidArgument(
                        f"bad value for {name!r} in store URL {redact_url(url)!r}: {exc}"
                    ) from exc
            else:
                libpq.append((name, value))
        conninfo = urllib.parse.urlunsplit(
            parts._replace(scheme="postgresql", query=urllib.parse.urlencode(libpq))
        )
        try:
            conninfo_to_dict(conninfo)
        except psycopg.Error as exc:
            raise InvalidArgument(
                f"bad PostgreSQL URL {redact_url(url)!r}: {redact_text(str(exc), url)}; "
                f"store options: {', '.join(sorted(_URL_OPTIONS))}; "
                "other query options go to libpq"
            ) from exc
        store_opts.update(options)
        return cls(conninfo, **store_opts)

    def __repr__(self) -> str:
        return f"PostgresStore({self._where!r}, schema={self.schema!r})"

    # -- schema --------------------------------------------------------------------------

    def _format(self, text: str) -> sql.Composed:
        """SQL with the package files' placeholders, for this store's schema."""
        return render(text, self.schema)

    def schema_version(self) -> int:
        """The version recorded in the database (0 when the schema is absent)."""
        return self._schema.version()

    def migrate(self) -> int:
        """Create the schema or bring it up to this version; returns the version.

        Applies the schema steps the database is missing, then re-creates
        every function (``functions.sql``), all in one transaction: a failed
        step leaves the previous version intact, and a schema upgraded from
        any version ends with the functions of a fresh one. Idempotent, and
        safe to run from several processes at once: a transaction-scoped
        advisory lock on the schema name makes them take turns.
        """
        return self._schema.migrate()

    def _ensure_ready(self) -> None:
        """On first use, migrate (``auto_migrate``) or check that someone has."""
        self._schema.ensure(self.auto_migrate)

    def drop(self) -> None:
        """Drop the schema and everything in it (tests, uninstalling)."""
        self._schema.drop()

    # -- statements ----------------------------------------------------------------------

    def _run(
        self, query: sql.Composed | bytes, params: Any, *, retry: bool, attempts: int = 2
    ) -> list[Row]:
        """Run one statement within the store's deadline (see
        :meth:`._connection.Connections.run`); the class docstring says which
        are retried."""
        return self._db.run(query, params, retry=retry, attempts=attempts)

    def _replayable(self, query: sql.Composed | bytes, params: Any) -> list[Row]:
        """Run a claim, refund or prune batch whose last two parameters are
        a fresh operation id and the reply retention: retried (up to
        ``_REPLAY_ATTEMPTS`` tries within the deadline) after a failure that
        may have come after its commit, since the server answers a retry
        with the original's reply (see "replies" in functions.sql)."""
        return self._run(query, params, retry=True, attempts=_REPLAY_ATTEMPTS)

    def _now(self, now: float) -> tuple[float, ...]:
        """The ``now`` parameter of a statement: none on the server's clock
        (the statement reads it, see _statements._SERVER_NOW)."""
        return () if self.server_clock else (now,)

    def _claim_params(self, req: ClaimRequest) -> tuple[Any, ...]:
        r = req
        # The claim function's arguments in its order; ``now`` only on the
        # ledger's clock (_now's test, inline: the statement reads the server's).
        head = (r.account, r.scope, r.job_id, r.charge_id, r.cost, r.tier, r.backend)
        tail = (
            r.ttl,
            r.lease,
            r.max_uses,
            r.balances,
            self.journal,
            self.journal_reuses,
            _op_id(),
            self.reply_retention,
        )
        return (*head, *tail) if self.server_clock else (*head, r.now, *tail)

    def _claim_result(self, req: ClaimRequest, rows: list[Row]) -> ClaimResult:
        return self._answers.claim(req, rows)

    # -- the store protocol --------------------------------------------------------------

    def claim(self, req: ClaimRequest) -> ClaimResult:
        rows = self._replayable(self._sql.claim, self._claim_params(req))
        return self._claim_result(req, rows)

    def confirm(self, key: Key, charge_id: str | None, now: float) -> JobRecord | None:
        rows = self._run(self._sql.confirm, (*key, charge_id), retry=True)
        return self._answers.confirm(key, charge_id, now, rows)

    def refund(self, key: Key, charge_id: str | None, now: float) -> Event | None:
        rows = self._replayable(
            self._sql.refund,
            (*key, charge_id, *self._now(now), self.journal, _op_id(), self.reply_retention),
        )
        return self._answers.refund(key, charge_id, now, rows)

    def lookup(self, key: Key, now: float) -> JobRecord | None:
        return self._answers.lookup(self._run(self._sql.lookup, key, retry=True), now)

    def _batches(self, limit: int | None, done: int) -> int:
        return self.prune_batch if limit is None else min(self.prune_batch, limit - done)

    def prune(self, now: float, limit: int | None = None) -> list[Event]:
        events: list[Event] = []
        try:
            while limit is None or len(events) < limit:
                batch = self._batches(limit, len(events))
                rows = self._replayable(
                    self._sql.prune,
                    (*self._now(now), batch, self.journal, _op_id(), self.reply_retention),
                )
                events.extend(self._answers.settled(rows, now))
                if len(rows) < batch:
                    break
            self._forget_grants(now)
            self._forget_replies(now)
        except BaseException as exc:
            # Each batch committed on its own: the ledger still fires theirs.
            with_settled(exc, events)
            raise
        return events

    def snapshot(self, now: float) -> list[JobRecord]:
        rows = self._run(self._sql.snapshot, self._now(now), retry=True)
        return self._answers.snapshot(rows, now)

    def grant(self, account: str, amount: int, now: float = 0.0, grant_id: str = "") -> int:
        # A grant with an id (the ledger always sends one: the caller's, or
        # a fresh one) is retried like a claim: the server remembers the id
        # and answers a repeat with the first grant's balance, writing
        # nothing (version 4). Without an id it is never retried: a grant
        # whose answer was lost may have committed.
        params = (account, amount, *self._now(now), grant_id, self.journal, GRANT_ID_RETENTION)
        try:
            rows = self._run(
                self._sql.grant, params, retry=bool(grant_id), attempts=_REPLAY_ATTEMPTS
            )
        except psycopg.Error as exc:
            if exc.sqlstate == _CAP_SQLSTATE:
                before = int(exc.diag.message_detail or 0)
                raise balance_cap_error(before, amount) from None
            raise
        status, figure = rows[0][0], int(rows[0][1])
        if status == "conflict":
            raise grant_conflict_error(figure, amount)
        return figure

    def _forget_grants(self, now: float) -> None:
        """Delete the grant ids past their retention, a batch per statement."""
        while True:
            rows = self._run(
                self._sql.forget_grants,
                (*self._now(now), GRANT_ID_RETENTION, self.prune_batch),
                retry=True,  # idempotent: see the class docstring
                attempts=_REPLAY_ATTEMPTS,
            )
            if int(rows[0][0]) < self.prune_batch:
                break

    def _forget_replies(self, now: float) -> None:
        """Delete the replies past their retention, a batch per statement
        (replies written delete some too, see keep_reply: this empties a
        backlog)."""
        while True:
            rows = self._run(
                self._sql.forget_replies,
                (*self._now(now), self.reply_retention, _FORGET_BATCH),
                retry=True,  # idempotent: see the class docstring
                attempts=_REPLAY_ATTEMPTS,
            )
            if int(rows[0][0]) < _FORGET_BATCH:
                break

    def balance(self, account: str) -> int:
        rows = self._run(self._sql.balance, (account,), retry=True)
        return int(rows[0][0]) if rows else 0

    # -- the journal ---------------------------------------------------------------------

    def read_journal(self, after: int, limit: int) -> list[JournalEntry]:
        """Up to ``limit`` entries with ``seq > after``, in order, after
        numbering the entries of transactions that have ended (see the class
        docstring). Retried once like a read: numbering is idempotent."""
        if limit <= 0:
            return []
        batch = max(limit, _SEQUENCE_BATCH)
        rows = self._run(self._sql.read_journal, (after, limit, batch), retry=True)
        return [entry_from_row(row[0], row[1:]) for row in rows]

    def trim_journal(self, through: int | None, cutoff: float | None) -> int:
        """Delete numbered entries up to ``through`` and older than ``cutoff``
        (see :meth:`JournalStore.trim_journal`), never one above the lowest
        cursor, in statements of at most ``_TRIM_BATCH`` rows. Not retried: a
        statement that committed before its answer was lost would be counted
        twice (deleting again is harmless, but the count would lie)."""
        if through is None and cutoff is None:
            return 0
        total = 0
        while True:
            rows = self._run(self._sql.trim_journal, (through, cutoff, _TRIM_BATCH), retry=False)
            done = int(rows[0][0])
            total += done
            if done < _TRIM_BATCH:
                return total

    def get_cursor(self, name: str) -> int | None:
        rows = self._run(self._sql.get_cursor, (name,), retry=True)
        return int(rows[0][0]) if rows else None

    def set_cursor(self, name: str, position: int, force: bool = False) -> int:
        # Retried: storing the same position again changes nothing.
        rows = self._run(self._sql.set_cursor, (name, position, force), retry=True)
        return int(rows[0][0])

    def delete_cursor(self, name: str) -> bool:
        return bool(self._run(self._sql.delete_cursor, (name,), retry=False))

    def cursors(self) -> dict[str, int]:
        return {str(n): int(p) for n, p in self._run(self._sql.cursors, (), retry=True)}

    def close(self) -> None:
        """Close the pool (never one inherited across fork())."""
        self._db.close()
