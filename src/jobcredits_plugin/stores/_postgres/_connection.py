"""The PostgreSQL store's connections: the pool, the client-side deadline,
and which failures are StoreUnavailable and which are retried.

Everything here gets one statement to the server and its answer back within
the store's deadline, or fails with :class:`~jobcredits_plugin.StoreUnavailable`;
nothing here knows the ledger's rules or the schema's functions (see
:class:`._store.PostgresStore` for which operations are retried and why).
"""

from __future__ import annotations

import heapq
import itertools
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg_pool
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ..._errors import InvalidArgument, StoreUnavailable
from .._urls import MASK, is_secret_option, redact_text, redact_url

Row = tuple[Any, ...]
Pool = psycopg_pool.ConnectionPool[psycopg.Connection[Any]]


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
UNAVAILABLE: tuple[type[BaseException], ...] = (
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


def is_unavailable(exc: BaseException) -> bool:
    """Whether a driver error means the server could not be reached or could
    not serve right now (StoreUnavailable, which fail_open may let through),
    rather than a bug (raised as it is)."""
    if not isinstance(exc, UNAVAILABLE):
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


def parse_conninfo(conninfo: str) -> dict[str, Any]:
    """The options of a libpq connection string or URL; InvalidArgument
    (without the password) when libpq cannot parse it."""
    try:
        return conninfo_to_dict(conninfo)
    except psycopg.Error as exc:
        raise InvalidArgument(
            f"bad PostgreSQL connection string {redact_conninfo(conninfo)!r}: "
            f"{redact_text(str(exc), conninfo)}"
        ) from exc


def connection_options(
    params: dict[str, Any], *, connect_timeout: float, statement_timeout: float
) -> dict[str, Any]:
    """What every connection of a store is opened with, besides ``params``
    (the connection string's own options, which win where they name one)."""
    options = str(params.get("options") or "")
    options = f"{options} -c statement_timeout={max(1, int(statement_timeout * 1000))}"
    kwargs: dict[str, Any] = {
        "autocommit": True,
        # No client-side prepared statements: psycopg prepares with an
        # extra round trip, and poolers in transaction mode may not keep
        # them. The functions' own plans are cached by plpgsql anyway.
        "prepare_threshold": None,
        # libpq counts whole seconds and never waits less than 2
        "connect_timeout": max(2, int(connect_timeout + 0.999)),
        "options": options.strip(),
    }
    if "application_name" not in params:
        kwargs["application_name"] = "jobcredits"
    # A server that vanishes without a FIN or RST (a partition, a dead
    # host) is only noticed by TCP: bound that too, unless the URL says
    # otherwise. Sent data unacknowledged this long kills the connection
    # (Linux; libpq ignores it elsewhere), and keepalives find an idle
    # connection's peer gone before a request waits on it.
    for name, value in _TCP_DEFAULTS.items():
        if name not in params:
            kwargs[name] = value
    if "tcp_user_timeout" not in params:
        kwargs["tcp_user_timeout"] = int((statement_timeout + connect_timeout) * 1000)
    return kwargs


class Connections:
    """One store's pool of connections, opened on first use, and the
    deadline every statement it runs is held to.

    ``prepare`` runs once before the pool opens (the store's schema check or
    migration). The pool is never shared across ``fork()``: a process that
    inherits one opens its own.
    """

    def __init__(
        self,
        conninfo: str,
        kwargs: dict[str, Any],
        *,
        min_size: int,
        max_size: int,
        timeout: float,
        connect_timeout: float,
        statement_timeout: float,
        configure: Callable[[Any], None] | None,
        name: str,
        where: str,
        prepare: Callable[[], None],
    ) -> None:
        self.conninfo = conninfo
        self.kwargs = kwargs
        self.min_size = min_size
        self.max_size = max_size
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout
        #: Seconds one statement may take, from asking the pool for a
        #: connection to the last row of the answer, retry included.
        self.deadline = timeout + connect_timeout + statement_timeout
        #: The server, without its password, for messages.
        self.where = where
        self._configure = configure
        self._name = name
        self._prepare = prepare
        self._lock = threading.Lock()
        self._closed = False
        self._pid = os.getpid()
        self._pool: Pool | None = None
        self._watchdog = _Watchdog()
        # Pools inherited across fork(): never used again, only kept referenced.
        self._orphans: list[Any] = []

    # -- outside the pool: schema checks and migrations ---------------------------------

    def direct(self) -> psycopg.Connection[Any]:
        """One connection outside the pools, for migrations: its errors
        (wrong password, no such database) reach the caller as they are."""
        try:
            return psycopg.connect(self.conninfo, **self.kwargs)
        except psycopg.Error as exc:
            text = redact_text(" ".join(str(exc).split()), self.conninfo)
            raise StoreUnavailable(
                f"PostgreSQL store {self.where}: cannot connect: {text}"
            ) from exc

    def watched(
        self, conn: psycopg.Connection[Any], query: Any, params: Sequence[Any] | None = None
    ) -> psycopg.Cursor[Any]:
        """``conn.execute`` on a connection of :meth:`direct` (schema checks
        and migrations), bounded on the client by ``statement_timeout +
        connect_timeout`` (see _Watchdog): past it, the socket is shut down
        and StoreUnavailable raised; the connection is closed on the way out."""
        bound = self.statement_timeout + self.connect_timeout
        entry = self._watchdog.arm(time.monotonic() + bound, conn.pgconn.socket)
        try:
            cursor = conn.execute(query, params)
        except BaseException as exc:
            if self._watchdog.disarm(entry):
                raise self.late(bound, "statement_timeout + connect_timeout") from exc
            raise
        if self._watchdog.disarm(entry):
            raise self.late(bound, "statement_timeout + connect_timeout")
        return cursor

    # -- the pool -----------------------------------------------------------------------

    def unavailable(self, exc: BaseException) -> StoreUnavailable:
        """``exc`` as the StoreUnavailable the caller sees (no password)."""
        if isinstance(exc, StoreUnavailable):
            return exc
        # libpq's messages may echo parts of the connection string.
        text = redact_text(" ".join(str(exc).split()), self.conninfo) or type(exc).__name__
        return StoreUnavailable(f"PostgreSQL store {self.where} unavailable: {text}")

    def pool(self) -> Pool:
        """The pool, opened (after ``prepare``) on first use."""
        if self._closed:
            raise StoreUnavailable(f"PostgreSQL store {self.where} is closed")
        if self._pid != os.getpid():
            self._after_fork()
        pool = self._pool
        if pool is not None:
            return pool
        self._prepare()
        with self._lock:
            if self._pool is None:
                pool = psycopg_pool.ConnectionPool(
                    self.conninfo,
                    min_size=self.min_size,
                    max_size=self.max_size,
                    kwargs=self.kwargs,
                    timeout=self.timeout,
                    configure=self._configure,
                    name=self._name,
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
    def connection(self, deadline: float) -> Iterator[psycopg.Connection[Any]]:
        """A live connection from the pool, waited for until ``deadline`` at
        most (and ``timeout``); connections the server has dropped are
        replaced before anything is sent on them."""
        pool = self.pool()
        for _ in range(self.max_size + 1):
            conn = pool.getconn(timeout=self.remaining(deadline, self.timeout))
            if not _dead(conn):
                break
            conn.close()  # the pool replaces closed connections
            pool.putconn(conn)
        else:
            raise StoreUnavailable(f"PostgreSQL store {self.where}: no live connection")
        try:
            yield conn
        finally:
            pool.putconn(conn)

    def remaining(self, deadline: float, most: float) -> float:
        """Seconds left before ``deadline``, at most ``most``; past it,
        StoreUnavailable."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise self.late()
        return min(left, most)

    def late(
        self,
        bound: float | None = None,
        rule: str = "timeout + connect_timeout + statement_timeout",
    ) -> StoreUnavailable:
        """The StoreUnavailable of a statement past its deadline."""
        return StoreUnavailable(
            f"PostgreSQL store {self.where}: no answer within the store's deadline of "
            f"{self.deadline if bound is None else bound:g} s ({rule}); the "
            "connection was closed, and the operation may or may not have been applied "
            "(its answer is lost)"
        )

    def execute(
        self,
        conn: psycopg.Connection[Any],
        query: sql.Composed | bytes,
        params: Sequence[Any],
        deadline: float,
    ) -> list[Row]:
        """Run the statement, shutting the connection down if it outlives
        ``deadline`` (see _Watchdog); such a connection is closed here, so
        the pool discards it, and the call raises StoreUnavailable."""
        self.remaining(deadline, 0.0)
        try:
            fd = conn.pgconn.socket
        except psycopg.OperationalError as exc:
            raise self.unavailable(exc) from exc
        entry = self._watchdog.arm(deadline, fd)
        try:
            rows: list[Row] = conn.execute(query, params).fetchall()
        except BaseException as exc:
            if self._watchdog.disarm(entry):
                conn.close()
                raise self.late() from exc
            raise
        if self._watchdog.disarm(entry):
            conn.close()  # answered just in time, but the socket is shut: never reuse it
        return rows

    def run(
        self, query: sql.Composed | bytes, params: Sequence[Any], *, retry: bool, attempts: int = 2
    ) -> list[Row]:
        """Run one statement (one round trip) within the store's deadline.
        ``retry`` allows up to ``attempts`` tries in all, every one within the
        same deadline, each on another connection (the failed one is
        discarded by the pool); the store decides which statements may be
        retried (see PostgresStore)."""
        deadline = time.monotonic() + self.deadline
        tries = attempts if retry else 1
        for attempt in range(tries):
            try:
                with self.connection(deadline) as conn:
                    return self.execute(conn, query, params, deadline)
            except psycopg.errors.QueryCanceled as exc:
                raise self.unavailable(exc) from exc
            except UNAVAILABLE as exc:
                if not is_unavailable(exc):
                    raise
                if attempt + 1 >= tries or isinstance(exc, psycopg_pool.PoolTimeout):
                    raise self.unavailable(exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

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
