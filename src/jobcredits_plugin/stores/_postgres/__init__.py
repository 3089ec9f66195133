"""A store in PostgreSQL, shared by every process on every host that reaches it.

Each ledger operation is **one statement and one round trip**: the migration
creates plpgsql functions (``claim``, ``confirm``, ``refund``, ``prune``,
``credit``) in the store's schema, and an operation is a single
``SELECT * FROM schema.fn(...)`` on an autocommit connection, so the server
runs the read-decide-write of DESIGN §2 inside one implicit transaction with
the job's row locked. Nothing is decided across a network round trip, which is
what makes the operation atomic across hosts and cheap enough to sit in front
of every API call.

The functions hand back the record *as they found it* (and the balance as
they read it, under the same lock); the Python side then replays the pure
``plan_*`` rules of :mod:`._base` on those inputs to build the
:class:`ClaimResult` and its :class:`Event` objects. The server and the rules
must agree on the outcome, so the events every store reports are built by
the same code; should they ever disagree, what the server committed is the
truth (logged at ERROR, see :func:`._base.claim_from_server`).

Times are ``double precision``. By default they come from the ledger's clock
(a parameter): a float survives the round trip bit for bit, and tests with a
fake clock behave the same on every store. With ``server_clock=True`` the
statement computes the parameter itself from the server's
``clock_timestamp()`` (a one-row CTE, evaluated once, then passed to the
same functions: no schema change) and returns it as a last column, so the
Python side replays the rules on the very ``now`` the server decided with.

A claim, refund or prune batch whose answer was lost (the connection died
after the server committed) is retried within the store's deadline with the
same operation id; the server answers the retry with the reply it kept for
that id (the ``replies`` table, schema version 6), so the caller gets the
original's result and events, and each hook fires once.

Connections come from a :class:`~psycopg_pool.ConnectionPool`, opened on
first use; the async twins run the same operations on it in worker threads
(see :class:`PostgresStore` for why not psycopg's async pool).
"""

from __future__ import annotations

import functools
import heapq
import itertools
import os
import re
import secrets
import select
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from typing import Any, TypeVar

import attrs

from ..._errors import ConfigurationError, InvalidArgument, StoreUnavailable
from ..._records import REFUNDED, JobRecord, JournalEntry
from ..._validation import (
    MAX_BATCH,
    MAX_WAIT_SECONDS,
    check_int_option,
    check_optional_seconds,
    check_positive_seconds,
)
from .._base import (
    GRANT_ID_RETENTION,
    BaseStore,
    ClaimRequest,
    ClaimResult,
    Event,
    Key,
    balance_cap_error,
    claim_from_server,
    entry_from_row,
    grant_conflict_error,
    plan_confirm,
    plan_refund,
    plan_settle,
    with_settled,
)
from .._urls import (
    JOURNAL_OPTIONS,
    MASK,
    check_url_text,
    is_secret_option,
    parse_bool,
    redact_text,
    redact_url,
)

try:
    import psycopg
    import psycopg_pool
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        'PostgresStore needs psycopg 3 and psycopg_pool: pip install "jobcredits-plugin[postgres]"'
    ) from exc

__all__ = ["REPLY_RETENTION", "SCHEMA_VERSION", "PostgresStore", "is_unavailable"]

T = TypeVar("T")
Row = tuple[Any, ...]

#: The schema version this code reads and writes. ``migrate()`` brings a
#: database up to it, one step of ``_migrations()`` at a time.
SCHEMA_VERSION = 6

#: The most connections one pool may open.
MAX_POOL_SIZE = 1000

#: The SQLSTATE ``grant_credits`` raises (having written nothing) for a grant
#: that would take a balance past MAX_CREDITS; the store turns it into the
#: same InvalidArgument every store raises. Class "JC" is no class PostgreSQL
#: uses, so no server error can be mistaken for it.
_CAP_SQLSTATE = "JC001"

#: First key of the advisory lock that serialises migrations (the second is
#: the schema name's hash), so concurrent ``migrate()`` calls take turns.
_LOCK_CLASS = 0x4A43  # "JC"

#: First key of the advisory lock that serialises the journal's sequencers
#: (the second is, again, the schema name's hash).
_JOURNAL_LOCK_CLASS = 0x4A4A  # "JJ"

#: First key of the advisory lock a claim, refund or prune batch takes on its
#: operation id (the second is the id's hash), so that a retry reaching the
#: server while the original still runs waits for it and finds its reply.
_REPLY_LOCK_CLASS = 0x4A52  # "JR"

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

_VERSION_TABLE = """
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.schema_version (
    version    integer     NOT NULL PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""


@functools.cache
def _migrations() -> tuple[str, ...]:
    """The schema steps of ``migrations/``: ``_migrations()[n]`` takes the
    schema from version n to n + 1 (tables, columns, indexes and types only;
    the functions are in ``functions.sql``)."""
    folder = resources.files(__package__).joinpath("migrations")
    steps = sorted((f.name, f) for f in folder.iterdir() if f.name.endswith(".sql"))
    numbers = [int(name.split("_", 1)[0]) for name, _ in steps]
    if numbers != list(range(1, SCHEMA_VERSION + 1)):  # pragma: no cover - a packaging bug
        raise RuntimeError(f"PostgreSQL migrations 1..{SCHEMA_VERSION} expected, found {numbers}")
    return tuple(f.read_text(encoding="utf-8") for _, f in steps)


@functools.cache
def _functions() -> str:
    """``functions.sql``: every function of the schema, (re)created by each
    migrate after the schema steps (see its header)."""
    return resources.files(__package__).joinpath("functions.sql").read_text(encoding="utf-8")


#: The columns of a journal row in :data:`._base.JournalRow` order, after seq.
_JOURNAL_COLUMNS = (
    "seq, kind, account, scope, job_id, charge_id, cost, tier, backend, delta, balance, at"
)

_COLUMNS = (
    "account, scope, job_id, charge_id, state, cost, tier, backend, "
    "charged_at, expires_at, lease_until, uses, debited"
)
_OUT = (
    "o_charge_id, o_state, o_cost, o_tier, o_backend, o_charged_at, "
    "o_expires_at, o_lease_until, o_uses, o_debited"
)

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

#: The server's now, in seconds since the epoch, for ``server_clock=True``:
#: a CTE that reads ``clock_timestamp()`` once (a CTE with a volatile function
#: is never inlined, so every use of ``clock.now`` in the statement is the same
#: value), then handed to the functions in place of the ledger's ``now``.
#: ``clock_timestamp()``, not ``now()``: ``now()`` is the start of the
#: transaction, which is the start of the statement only while every call is
#: its own autocommit transaction; ``clock_timestamp()`` stays "the time the
#: decision is made" whatever transaction the statement runs in, and it is
#: read after the statement has waited for a connection and been parsed.
_SERVER_CLOCK = "extract(epoch FROM clock_timestamp())::float8"
_SERVER_NOW = f"WITH clock AS (SELECT {_SERVER_CLOCK} AS now) "


def redact_conninfo(conninfo: str) -> str:
    """The connection string without its password, fit for errors and logs."""

    if "://" in conninfo:
        return redact_url(conninfo)
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.Error:
        return "<unparsable conninfo>"
    for key in params:
        if is_secret_option(key) and params[key] is not None:
            params[key] = MASK
    return make_conninfo("", **{k: v for k, v in params.items() if v is not None})


def _op_id() -> str:
    """A fresh operation id: 128 random bits (in hex), so that no two calls
    on any host ever share one while their replies are kept. Its first digit
    also picks the writes that clean up (``keep_reply``)."""
    return secrets.token_hex(16)


def _record(key: Key, row: Sequence[Any]) -> JobRecord:
    """A record from the ten ``o_*`` columns a function returns for ``key``."""
    return JobRecord(
        account=key[0],
        scope=key[1],
        job_id=key[2],
        charge_id=row[0],
        state=row[1],
        cost=row[2],
        tier=row[3],
        backend=row[4],
        charged_at=row[5],
        expires_at=row[6],
        lease_until=row[7],
        uses=row[8],
        debited=row[9],
    )


def _full_record(row: Sequence[Any]) -> JobRecord:
    """A record from a row of ``jobs`` in ``_COLUMNS`` order."""
    return _record((row[0], row[1], row[2]), row[3:13])


def _dead(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether an idle connection has already been dropped by the server.

    An idle autocommit connection is never sent anything unprompted in our
    use (no LISTEN, no SET), so a readable socket means the server has closed
    it or sent a termination notice (``pg_terminate_backend``, a restart, an
    idle timeout). Checking costs one non-blocking poll, not a round trip,
    and it happens before anything is sent: taking another connection then
    can never run a statement twice.
    """
    if conn.closed:
        return True
    try:
        fd = conn.pgconn.socket
    except psycopg.OperationalError:
        return True
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLPRI)
        return bool(poller.poll(0))
    readable, _, _ = select.select([fd], [], [], 0)
    return bool(readable)


class _Watchdog:
    """Ends statements that outlive their deadline, for one store.

    A server that is frozen (``SIGSTOP``, a hung host) still has its kernel
    acknowledge every packet, so neither ``statement_timeout`` (the server's
    own), ``tcp_user_timeout`` nor keepalives ever fire, and libpq has no
    client-side query timeout: a statement would wait as long as the freeze.
    Each statement is armed here with its deadline; one thread, started when
    needed and gone after a few idle seconds, shuts the connection's socket
    down when a deadline passes. The blocked call then sees the connection
    closed at once (a query cancel would need the frozen server to answer),
    and the store discards that connection. ``shutdown`` leaves the file
    descriptor open, and an entry fires only while armed, under the lock its
    disarming takes, so a descriptor reused by another connection is never
    touched.
    """

    _IDLE = 5.0  # seconds the thread waits with nothing armed before it ends

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[list[Any]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, deadline: float, fd: int) -> list[Any]:
        """Watch ``fd`` until :meth:`disarm`; shut it down at ``deadline``
        (``time.monotonic()``)."""
        entry: list[Any] = [deadline, next(self._seq), fd, "armed"]
        with self._cond:
            heapq.heappush(self._heap, entry)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="jobcredits-pg-deadline", daemon=True
                )
                self._thread.start()
            self._cond.notify()
        return entry

    def disarm(self, entry: list[Any]) -> bool:
        """Stop watching; whether the deadline had passed (the socket is shut)."""
        with self._cond:
            fired = entry[3] == "fired"
            entry[3] = "done"
            while self._heap and self._heap[0][3] == "done":
                heapq.heappop(self._heap)
        return bool(fired)

    def _loop(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][3] == "done":
                    heapq.heappop(self._heap)
                if not self._heap:
                    if not self._cond.wait(self._IDLE) and not self._heap:
                        self._thread = None
                        return
                    continue
                delay = self._heap[0][0] - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                entry = heapq.heappop(self._heap)
                entry[3] = "fired"
                _shut_down(entry[2])


def _shut_down(fd: int) -> None:
    """Shut a connected socket down both ways without closing its descriptor:
    a thread blocked on it wakes up to a closed connection."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:  # pragma: no cover - not a socket any more
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.detach()


#: Errors after which the operation is known not to have committed, or is
#: unknown; either way the caller sees StoreUnavailable (see PostgresStore):
#: the OperationalError family (SQLSTATE classes 08 connection, 40 rolled
#: back, 53 insufficient resources, 55 lock not available, 57 shutdown or
#: statement timeout, 58 I/O) and the pool's own. Integrity, programming and
#: data errors (classes 23, 42, 22) are bugs and are raised as they are.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    psycopg.errors.TransactionRollback,  # deadlock / serialization: rolled back
    psycopg_pool.PoolTimeout,
    psycopg_pool.PoolClosed,
    psycopg_pool.TooManyRequests,
    OSError,
)
#: OperationalError classes that are bugs all the same: 54, a program limit
#: exceeded (a statement too complex, too many arguments).
_BUG_CLASSES = ("54",)


#: What a schema name may be: an unquoted identifier (ASCII, so its length in
#: characters is its length in bytes, at most the server's 63).
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def is_unavailable(exc: BaseException) -> bool:
    """Whether a driver error means the server could not be reached or could
    not serve right now (StoreUnavailable, which fail_open may let through),
    rather than a bug (raised as it is)."""
    if not isinstance(exc, _UNAVAILABLE):
        return False
    sqlstate = getattr(exc, "sqlstate", None)
    return not (isinstance(sqlstate, str) and sqlstate.startswith(_BUG_CLASSES))


#: libpq's TCP keepalive settings the store uses unless the URL names them.
_TCP_DEFAULTS = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}


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
    dropped is detected (see ``_dead``) and replaced, so killed idle
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
        if not isinstance(conninfo, str):
            raise InvalidArgument(f"conninfo must be a string, not {type(conninfo).__name__}")
        check_url_text(conninfo, "conninfo")
        try:
            params = conninfo_to_dict(conninfo)
        except psycopg.Error as exc:
            raise InvalidArgument(
                f"bad PostgreSQL connection string {redact_conninfo(conninfo)!r}: "
                f"{redact_text(str(exc), conninfo)}"
            ) from exc
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
        if not (isinstance(min_size, int) and isinstance(max_size, int)):
            raise InvalidArgument("min_size and max_size must be integers")
        if min_size < 0 or max_size < 1 or max_size < min_size:
            raise InvalidArgument(
                f"need 0 <= min_size <= max_size and max_size >= 1, got {min_size}, {max_size}"
            )
        check_int_option("max_size", max_size, 1, MAX_POOL_SIZE)
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
        for name, flag in (
            ("journal", journal),
            ("journal_reuses", journal_reuses),
            ("server_clock", server_clock),
        ):
            if not isinstance(flag, bool):
                raise InvalidArgument(f"{name} must be True or False, not {flag!r}")
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
        self._configure = configure
        self._where = redact_conninfo(conninfo) or "<default libpq connection>"

        options = str(params.get("options") or "")
        options = f"{options} -c statement_timeout={max(1, int(self.statement_timeout * 1000))}"
        self._kwargs: dict[str, Any] = {
            "autocommit": True,
            # No client-side prepared statements: psycopg prepares with an
            # extra round trip, and poolers in transaction mode may not keep
            # them. The functions' own plans are cached by plpgsql anyway.
            "prepare_threshold": None,
            # libpq counts whole seconds and never waits less than 2
            "connect_timeout": max(2, int(self.connect_timeout + 0.999)),
            "options": options.strip(),
        }
        if "application_name" not in params:
            self._kwargs["application_name"] = "jobcredits"
        # A server that vanishes without a FIN or RST (a partition, a dead
        # host) is only noticed by TCP: bound that too, unless the URL says
        # otherwise. Sent data unacknowledged this long kills the connection
        # (Linux; libpq ignores it elsewhere), and keepalives find an idle
        # connection's peer gone before a request waits on it.
        for name, value in _TCP_DEFAULTS.items():
            if name not in params:
                self._kwargs[name] = value
        if "tcp_user_timeout" not in params:
            bound = self.statement_timeout + self.connect_timeout
            self._kwargs["tcp_user_timeout"] = int(bound * 1000)

        s = sql.Identifier(schema)
        # The ledger's now is a parameter; the server's (server_clock) is
        # clock.now from _SERVER_NOW, also returned as the last column.
        if server_clock:
            with_, now, col, frm = _SERVER_NOW, "clock.now", ", clock.now", "clock, "
        else:
            with_, now, col, frm = "", "%s::float8", "", ""
        # A claim answers the now it was decided on (o_now: a retry answered
        # from its kept reply gets the original's, not the retry's clock),
        # which the rules must replay on to rebuild the records it stored. So
        # the claim, the hot path, needs no CTE: the server's clock is an
        # argument of the one function call, evaluated once (and a simpler
        # plan than the CTE's join).
        claim_col, claim_now = (", o_now", _SERVER_CLOCK) if server_clock else ("", now)
        self._sql_claim = sql.SQL(
            f"SELECT status, balance, {_OUT}{claim_col} FROM {{}}.claim("
            f"%s, %s, %s, %s, %s::bigint, %s, %s, {claim_now}, %s::float8, %s::float8, "
            "%s::bigint, %s::boolean, %s::boolean, %s::boolean, %s::text, %s::float8)"
        ).format(s)
        self._sql_confirm = sql.SQL(
            f"{with_}SELECT hit, {_OUT}{col} FROM {frm}{{}}.confirm(%s, %s, %s, %s::text)"
        ).format(s)
        self._sql_refund = sql.SQL(
            f"{with_}SELECT hit, {_OUT}{col} FROM {frm}{{}}.refund("
            f"%s, %s, %s, %s::text, {now}, %s::boolean, %s::text, %s::float8)"
        ).format(s)
        self._sql_prune = sql.SQL(
            f"{with_}SELECT {_COLUMNS}{col} FROM {frm}{{}}.prune("
            f"{now}, %s::integer, %s::boolean, %s::text, %s::float8)"
        ).format(s)
        self._sql_forget_replies = sql.SQL(
            f"{with_}SELECT {{}}.forget_replies({now}, %s::float8, %s::integer)"
            + (" FROM clock" if server_clock else "")
        ).format(s)
        # A lookup reads one row: the clock in its select list is read once.
        self._sql_lookup = sql.SQL(
            f"SELECT {_COLUMNS}{f', {_SERVER_CLOCK}' if server_clock else ''} FROM {{}}.jobs "
            "WHERE account = %s AND scope = %s AND job_id = %s"
        ).format(s)
        self._sql_snapshot = sql.SQL(
            f"{with_}SELECT {_COLUMNS}{col} FROM {frm}{{}}.jobs "
            f"WHERE expires_at > {now} ORDER BY charged_at, account, scope, job_id"
        ).format(s)
        self._sql_grant = sql.SQL(
            f"{with_}SELECT status, balance FROM {frm}{{}}.grant_credits("
            f"%s, %s::bigint, {now}, %s, %s::boolean, %s::float8)"
        ).format(s)
        self._sql_forget_grants = sql.SQL(
            f"{with_}SELECT {{}}.forget_grants({now}, %s::float8, %s::integer)"
            + (" FROM clock" if server_clock else "")
        ).format(s)
        self._sql_balance = sql.SQL("SELECT credits FROM {}.balances WHERE account = %s").format(s)
        self._sql_read_journal = sql.SQL(
            "SELECT " + _JOURNAL_COLUMNS + " FROM {}.read_journal(%s::bigint, %s::integer, "
            "%s::integer)"
        ).format(s)
        self._sql_trim_journal = sql.SQL(
            "SELECT {}.trim_journal(%s::bigint, %s::float8, %s::integer)"
        ).format(s)
        self._sql_get_cursor = sql.SQL(
            "SELECT position FROM {}.journal_cursors WHERE name = %s"
        ).format(s)
        # Monotonic unless forced: two exporters racing on one cursor can
        # never move it back over entries one of them already sent.
        self._sql_set_cursor = sql.SQL(
            "INSERT INTO {}.journal_cursors AS c (name, position) VALUES (%s, %s::bigint) "
            "ON CONFLICT (name) DO UPDATE SET position = CASE WHEN %s::boolean "
            "THEN excluded.position ELSE greatest(c.position, excluded.position) END, "
            "updated_at = now() RETURNING position"
        ).format(s)
        self._sql_delete_cursor = sql.SQL(
            "DELETE FROM {}.journal_cursors WHERE name = %s RETURNING 1"
        ).format(s)
        self._sql_cursors = sql.SQL(
            "SELECT name, position FROM {}.journal_cursors ORDER BY name"
        ).format(s)

        self._lock = threading.Lock()
        self._ready = False
        self._closed = False
        self._pid = os.getpid()
        self._pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] | None = None
        self._watchdog = _Watchdog()
        # Pools inherited across fork(): never used again, only kept referenced.
        self._orphans: list[Any] = []

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
        return sql.SQL(text).format(
            schema=sql.Identifier(self.schema),
            schema_name=sql.Literal(self.schema),
            lock_class=sql.Literal(_JOURNAL_LOCK_CLASS),
            reply_lock=sql.Literal(_REPLY_LOCK_CLASS),
        )

    def _direct(self) -> psycopg.Connection[Any]:
        """One connection outside the pools, for migrations: its errors
        (wrong password, no such database) reach the caller as they are."""
        try:
            return psycopg.connect(self.conninfo, **self._kwargs)
        except psycopg.Error as exc:
            text = redact_text(" ".join(str(exc).split()), self.conninfo)
            raise StoreUnavailable(
                f"PostgreSQL store {self._where}: cannot connect: {text}"
            ) from exc

    def _watched(
        self, conn: psycopg.Connection[Any], query: Any, params: Sequence[Any] | None = None
    ) -> psycopg.Cursor[Any]:
        """``conn.execute`` on a connection of :meth:`_direct` (schema checks
        and migrations), bounded on the client by ``statement_timeout +
        connect_timeout`` (see _Watchdog): past it, the socket is shut down
        and StoreUnavailable raised; the connection is closed on the way out."""
        bound = self.statement_timeout + self.connect_timeout
        entry = self._watchdog.arm(time.monotonic() + bound, conn.pgconn.socket)
        try:
            cursor = conn.execute(query, params)
        except BaseException as exc:
            if self._watchdog.disarm(entry):
                raise self._late(bound, "statement_timeout + connect_timeout") from exc
            raise
        if self._watchdog.disarm(entry):
            raise self._late(bound, "statement_timeout + connect_timeout")
        return cursor

    def schema_version(self) -> int:
        """The version recorded in the database (0 when the schema is absent)."""
        with self._direct() as conn:
            return self._version(conn)

    def _version(self, conn: psycopg.Connection[Any]) -> int:
        row = self._watched(
            conn,
            "SELECT to_regclass(%s) IS NOT NULL",
            (sql.Identifier(self.schema).as_string(conn) + ".schema_version",),
        ).fetchone()
        if row is None or not row[0]:
            return 0
        got = self._watched(
            conn, self._format("SELECT coalesce(max(version), 0) FROM {schema}.schema_version")
        ).fetchone()
        return int(got[0]) if got else 0

    def migrate(self) -> int:
        """Create the schema or bring it up to this version; returns the version.

        Idempotent, and safe to run from several processes at once: a
        transaction-scoped advisory lock on the schema name makes them take
        turns, and each step runs in the same transaction as the version it
        records, so a failed step leaves the previous version intact.
        """
        try:
            with self._direct() as conn, conn.transaction():
                self._watched(
                    conn,
                    "SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                    (_LOCK_CLASS, self.schema),
                )
                self._watched(conn, self._format(_VERSION_TABLE))
                current = self._version(conn)
                if current > SCHEMA_VERSION:
                    raise StoreUnavailable(
                        f"PostgreSQL store {self._where}: schema {self.schema!r} is at version "
                        f"{current}, newer than this jobcredits-plugin knows ({SCHEMA_VERSION}); "
                        "upgrade jobcredits-plugin"
                    )
                for version in range(current, SCHEMA_VERSION):
                    self._watched(conn, self._format(_migrations()[version]))
                    self._watched(
                        conn,
                        self._format("INSERT INTO {schema}.schema_version (version) VALUES (%s)"),
                        (version + 1,),
                    )
                self._watched(conn, self._format(_functions()))
        except _UNAVAILABLE as exc:
            if not is_unavailable(exc):
                raise
            raise self._unavailable(exc) from exc
        with self._lock:
            self._ready = True
        return SCHEMA_VERSION

    def _ensure_ready(self) -> None:
        """On first use, migrate (``auto_migrate``) or check that someone has."""
        if self._ready:
            return
        if self.auto_migrate:
            self.migrate()
            return
        try:
            version = self.schema_version()
        except _UNAVAILABLE as exc:
            if not is_unavailable(exc):
                raise
            raise self._unavailable(exc) from exc
        if version != SCHEMA_VERSION:
            raise StoreUnavailable(
                f"PostgreSQL store {self._where}: schema {self.schema!r} is at version {version}, "
                f"this code needs {SCHEMA_VERSION}: run `jobcredits migrate --url ...`"
            )
        with self._lock:
            self._ready = True

    def drop(self) -> None:
        """Drop the schema and everything in it (tests, uninstalling)."""
        with self._direct() as conn:
            self._watched(conn, self._format("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        with self._lock:
            self._ready = False

    # -- connections ---------------------------------------------------------------------

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        if isinstance(exc, StoreUnavailable):
            return exc
        # libpq's messages may echo parts of the connection string.
        text = redact_text(" ".join(str(exc).split()), self.conninfo) or type(exc).__name__
        return StoreUnavailable(f"PostgreSQL store {self._where} unavailable: {text}")

    def _sync_pool(self) -> psycopg_pool.ConnectionPool[psycopg.Connection[Any]]:
        if self._closed:
            raise StoreUnavailable(f"PostgreSQL store {self._where} is closed")
        if self._pid != os.getpid():
            self._after_fork()
        pool = self._pool
        if pool is not None:
            return pool
        self._ensure_ready()
        with self._lock:
            if self._pool is None:
                pool = psycopg_pool.ConnectionPool(
                    self.conninfo,
                    min_size=self.min_size,
                    max_size=self.max_size,
                    kwargs=self._kwargs,
                    timeout=self.timeout,
                    configure=self._configure,
                    name=f"jobcredits-{self.schema}",
                    open=False,
                )
                pool.open(wait=False)
                self._pool = pool
            return self._pool

    def _after_fork(self) -> None:
        # A connection inherited across fork() shares its socket with the
        # parent: using or closing it would break the parent's session.
        with self._lock:
            if self._pool is not None:
                self._orphans.append(self._pool)
            self._pool = None
            self._pid = os.getpid()
            self._watchdog = _Watchdog()  # the parent's thread is not in this process

    @contextmanager
    def _connection(self, deadline: float) -> Iterator[psycopg.Connection[Any]]:
        pool = self._sync_pool()
        for _ in range(self.max_size + 1):
            conn = pool.getconn(timeout=self._remaining(deadline, self.timeout))
            if not _dead(conn):
                break
            conn.close()  # the pool replaces closed connections
            pool.putconn(conn)
        else:
            raise StoreUnavailable(f"PostgreSQL store {self._where}: no live connection")
        try:
            yield conn
        finally:
            pool.putconn(conn)

    def _remaining(self, deadline: float, most: float) -> float:
        """Seconds left before ``deadline``, at most ``most``; past it,
        StoreUnavailable."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise self._late()
        return min(left, most)

    def _late(
        self,
        bound: float | None = None,
        rule: str = "timeout + connect_timeout + statement_timeout",
    ) -> StoreUnavailable:
        return StoreUnavailable(
            f"PostgreSQL store {self._where}: no answer within the store's deadline of "
            f"{self.deadline if bound is None else bound:g} s ({rule}); the "
            "connection was closed, and the operation may or may not have been applied "
            "(its answer is lost)"
        )

    def _execute(
        self,
        conn: psycopg.Connection[Any],
        query: sql.Composed,
        params: Sequence[Any],
        deadline: float,
    ) -> list[Row]:
        """Run the statement, shutting the connection down if it outlives
        ``deadline`` (see _Watchdog); such a connection is closed here, so
        the pool discards it, and the call raises StoreUnavailable."""
        self._remaining(deadline, 0.0)
        try:
            fd = conn.pgconn.socket
        except psycopg.OperationalError as exc:
            raise self._unavailable(exc) from exc
        entry = self._watchdog.arm(deadline, fd)
        try:
            rows: list[Row] = conn.execute(query, params).fetchall()
        except BaseException as exc:
            if self._watchdog.disarm(entry):
                conn.close()
                raise self._late() from exc
            raise
        if self._watchdog.disarm(entry):
            conn.close()  # answered just in time, but the socket is shut: never reuse it
        return rows

    def _run(
        self, query: sql.Composed, params: Sequence[Any], *, retry: bool, attempts: int = 2
    ) -> list[Row]:
        """Run one statement (one round trip) within the store's deadline; see
        the class docstring for when a failure is retried. ``retry`` allows
        up to ``attempts`` tries in all, every one within the same deadline,
        each on another connection (the failed one is discarded by the pool)."""
        deadline = time.monotonic() + self.deadline
        tries = attempts if retry else 1
        for attempt in range(tries):
            try:
                with self._connection(deadline) as conn:
                    return self._execute(conn, query, params, deadline)
            except psycopg.errors.QueryCanceled as exc:
                raise self._unavailable(exc) from exc
            except _UNAVAILABLE as exc:
                if not is_unavailable(exc):
                    raise
                if attempt + 1 >= tries or isinstance(exc, psycopg_pool.PoolTimeout):
                    raise self._unavailable(exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _replayable(self, query: sql.Composed, params: Sequence[Any]) -> list[Row]:
        """Run a claim, refund or prune batch whose last two parameters are
        a fresh operation id and the reply retention: retried (up to
        ``_REPLAY_ATTEMPTS`` tries within the deadline) after a failure that
        may have come after its commit, since the server answers a retry
        with the original's reply (see version 6)."""
        return self._run(query, params, retry=True, attempts=_REPLAY_ATTEMPTS)

    # -- turning rows into results -------------------------------------------------------

    def _now(self, now: float) -> tuple[float, ...]:
        """The ``now`` parameter of a statement: none on the server's clock
        (the statement reads it, see _SERVER_NOW)."""
        return () if self.server_clock else (now,)

    def _server_now(self, rows: list[Row], now: float) -> float:
        """The ``now`` an operation was decided on: the server's, returned
        as the last column on the server's clock, else the ledger's."""
        if self.server_clock and rows:
            return float(rows[0][-1])
        return now

    def _claim_params(self, req: ClaimRequest) -> tuple[Any, ...]:
        return (
            req.account,
            req.scope,
            req.job_id,
            req.charge_id,
            req.cost,
            req.tier,
            req.backend,
            *self._now(req.now),
            req.ttl,
            req.lease,
            req.max_uses,
            req.balances,
            self.journal,
            self.journal_reuses,
            _op_id(),
            self.reply_retention,
        )

    def _claim_result(self, req: ClaimRequest, rows: list[Row]) -> ClaimResult:
        if self.server_clock:
            # The rules replay on the server's now: the records they build
            # are then the ones the function stored, to the bit.
            req = attrs.evolve(req, now=self._server_now(rows, req.now))
        status, balance, *found = rows[0]
        existing = None if found[0] is None else _record(req.key, found)
        # The server's committed decision is the truth, should the rules
        # disagree (see claim_from_server).
        return claim_from_server(
            f"PostgreSQL store {self._where}", status, existing, int(balance or 0), req
        )

    @staticmethod
    def _confirm_result(key: Key, charge_id: str | None, now: float, rows: list[Row]) -> Any:
        found, *cols = rows[0]
        existing = _record(key, cols) if found else None
        return plan_confirm(existing, charge_id, now)[0]

    @staticmethod
    def _refund_result(key: Key, charge_id: str | None, now: float, rows: list[Row]) -> Any:
        found, *cols = rows[0]
        if not found:
            return None
        existing = _record(key, cols)
        event = plan_refund(existing, charge_id, now)
        return event or Event("refund", existing.with_state(REFUNDED))

    @staticmethod
    def _settled(rows: list[Row], now: float) -> list[Event]:
        events = []
        for row in rows:
            record = _full_record(row)
            event = plan_settle(record, now)
            if event is not None:
                events.append(event)
        return events

    def _lookup_result(self, rows: list[Row], now: float) -> JobRecord | None:
        if not rows:
            return None
        now = self._server_now(rows, now)
        record = _full_record(rows[0])
        return record if record.is_live(now) else None

    def _snapshot_result(self, rows: list[Row], now: float) -> list[JobRecord]:
        now = self._server_now(rows, now)
        return [r for r in map(_full_record, rows) if r.is_live(now)]

    # -- the store protocol --------------------------------------------------------------

    def claim(self, req: ClaimRequest) -> ClaimResult:
        rows = self._replayable(self._sql_claim, self._claim_params(req))
        return self._claim_result(req, rows)

    def confirm(self, key: Key, charge_id: str | None, now: float) -> JobRecord | None:
        rows = self._run(self._sql_confirm, (*key, charge_id), retry=True)
        now = self._server_now(rows, now)
        result: JobRecord | None = self._confirm_result(key, charge_id, now, rows)
        return result

    def refund(self, key: Key, charge_id: str | None, now: float) -> Event | None:
        rows = self._replayable(
            self._sql_refund,
            (*key, charge_id, *self._now(now), self.journal, _op_id(), self.reply_retention),
        )
        now = self._server_now(rows, now)
        result: Event | None = self._refund_result(key, charge_id, now, rows)
        return result

    def lookup(self, key: Key, now: float) -> JobRecord | None:
        return self._lookup_result(self._run(self._sql_lookup, key, retry=True), now)

    def _batches(self, limit: int | None, done: int) -> int:
        return self.prune_batch if limit is None else min(self.prune_batch, limit - done)

    def prune(self, now: float, limit: int | None = None) -> list[Event]:
        events: list[Event] = []
        try:
            while limit is None or len(events) < limit:
                batch = self._batches(limit, len(events))
                rows = self._replayable(
                    self._sql_prune,
                    (*self._now(now), batch, self.journal, _op_id(), self.reply_retention),
                )
                events.extend(self._settled(rows, self._server_now(rows, now)))
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
        rows = self._run(self._sql_snapshot, self._now(now), retry=True)
        return self._snapshot_result(rows, now)

    def grant(self, account: str, amount: int, now: float = 0.0, grant_id: str = "") -> int:
        # A grant with an id (the ledger always sends one: the caller's, or
        # a fresh one) is retried like a claim: the server remembers the id
        # and answers a repeat with the first grant's balance, writing
        # nothing (version 4). Without an id it is never retried: a grant
        # whose answer was lost may have committed.
        params = (account, amount, *self._now(now), grant_id, self.journal, GRANT_ID_RETENTION)
        try:
            rows = self._run(
                self._sql_grant, params, retry=bool(grant_id), attempts=_REPLAY_ATTEMPTS
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
                self._sql_forget_grants,
                (*self._now(now), GRANT_ID_RETENTION, self.prune_batch),
                retry=True,  # idempotent: see the class docstring
                attempts=_REPLAY_ATTEMPTS,
            )
            if int(rows[0][0]) < self.prune_batch:
                break

    def _forget_replies(self, now: float) -> None:
        """Delete the replies past their retention, a batch per statement
        (replies written delete some too, see version 6: this empties a
        backlog)."""
        while True:
            rows = self._run(
                self._sql_forget_replies,
                (*self._now(now), self.reply_retention, _FORGET_BATCH),
                retry=True,  # idempotent: see the class docstring
                attempts=_REPLAY_ATTEMPTS,
            )
            if int(rows[0][0]) < _FORGET_BATCH:
                break

    def balance(self, account: str) -> int:
        rows = self._run(self._sql_balance, (account,), retry=True)
        return int(rows[0][0]) if rows else 0

    # -- the journal ---------------------------------------------------------------------

    def read_journal(self, after: int, limit: int) -> list[JournalEntry]:
        """Up to ``limit`` entries with ``seq > after``, in order, after
        numbering the entries of transactions that have ended (see the class
        docstring). Retried once like a read: numbering is idempotent."""
        if limit <= 0:
            return []
        batch = max(limit, _SEQUENCE_BATCH)
        rows = self._run(self._sql_read_journal, (after, limit, batch), retry=True)
        return [entry_from_row(row[0], row[1:]) for row in rows]

    def trim_journal(self, through: int | None, cutoff: float | None) -> int:
        """Delete numbered entries up to ``through`` and older than ``cutoff``
        (see :meth:`BaseStore.trim_journal`), never one above the lowest
        cursor, in statements of at most ``_TRIM_BATCH`` rows. Not retried: a
        statement that committed before its answer was lost would be counted
        twice (deleting again is harmless, but the count would lie)."""
        if through is None and cutoff is None:
            return 0
        total = 0
        while True:
            rows = self._run(self._sql_trim_journal, (through, cutoff, _TRIM_BATCH), retry=False)
            done = int(rows[0][0])
            total += done
            if done < _TRIM_BATCH:
                return total

    def get_cursor(self, name: str) -> int | None:
        rows = self._run(self._sql_get_cursor, (name,), retry=True)
        return int(rows[0][0]) if rows else None

    def set_cursor(self, name: str, position: int, force: bool = False) -> int:
        # Retried: storing the same position again changes nothing.
        rows = self._run(self._sql_set_cursor, (name, position, force), retry=True)
        return int(rows[0][0])

    def delete_cursor(self, name: str) -> bool:
        return bool(self._run(self._sql_delete_cursor, (name,), retry=False))

    def cursors(self) -> dict[str, int]:
        return {str(n): int(p) for n, p in self._run(self._sql_cursors, (), retry=True)}

    def close(self) -> None:
        """Close the pool (never one inherited across fork())."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
            inherited = self._pid != os.getpid()
        if inherited:
            return
        if pool is not None:
            pool.close(timeout=self.timeout)
