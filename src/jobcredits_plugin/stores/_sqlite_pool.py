"""The SQLite store's connections: a small pool, safe across ``fork()``.

Each connection is lent to one operation at a time. A pool rather than one
connection per thread: servers that start a thread per request would otherwise
open a connection per request and keep it. A process that forks gets fresh
connections: one inherited across ``fork()`` must never be used.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from .._errors import ConfigurationError, StoreUnavailable
from . import _sqlite_sql as sql

__all__ = ["Connections", "resolve_path"]


def resolve_path(path: str | os.PathLike[str]) -> str:
    """The file a store opens, checked, and absolute: connections open later
    (in other threads, after a fork), and a relative path must keep naming
    this file even if the process changes directory in between, as daemons
    do. ``":memory:"`` (and ``""``) stay as they are."""
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
    return path if path in ("", ":memory:") else os.path.abspath(path)


class Connections:
    """The connections to one database file (see the module docstring)."""

    #: Idle connections kept for the next operations.
    max_idle = 8

    def __init__(self, path: str, timeout: float, synchronous: str) -> None:
        self.path = path
        self.timeout = timeout
        self.synchronous = synchronous
        self._memory = path == ":memory:"
        self._guard = threading.Lock()
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

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        return StoreUnavailable(f"SQLite store {self.path!r}: {exc}")

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
            conn.executescript(sql.SCHEMA)
            conn.execute(
                "INSERT OR IGNORE INTO jobcredits_meta (name, value) VALUES ('schema_version', ?)",
                (str(sql.SCHEMA_VERSION),),
            )
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            if sql.is_unavailable(exc):
                raise self._unavailable(exc) from exc
            if getattr(exc, "sqlite_errorcode", None) == sql.NOTADB or "not a database" in str(exc):
                # The path names some other file: the app's setup mistake,
                # not an outage to wait out (or to fail open through).
                raise ConfigurationError(
                    f"SQLite store {self.path!r}: the file is not a SQLite database ({exc})"
                ) from exc
            raise
        return conn

    @contextmanager
    def lend(self) -> Iterator[sqlite3.Connection]:
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
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` ... ``COMMIT``; rolled back on any error.

        SQLite's "cannot get to the data" errors (locked past the busy
        timeout, disk full, I/O, cannot open) surface as
        :class:`StoreUnavailable`: the transaction did not commit. Other
        errors (constraints, type mismatches) are bugs, raised as they are,
        also rolled back.
        """
        with self.lend() as conn:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                if sql.is_unavailable(exc):
                    raise self._unavailable(exc) from exc
                raise
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                # A failed COMMIT may already have rolled back by itself.
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if sql.is_unavailable(exc):
                    raise self._unavailable(exc) from exc
                raise

    def read(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """The rows of one read, outside any write transaction (WAL lets it
        run beside a writer)."""
        try:
            with self.lend() as conn:
                return conn.execute(statement, params).fetchall()
        except sqlite3.Error as exc:
            if sql.is_unavailable(exc):
                raise self._unavailable(exc) from exc
            raise

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
