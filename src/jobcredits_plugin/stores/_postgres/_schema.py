"""The PostgreSQL store's schema: its version, its migrations and its
functions, kept as SQL files in this package.

``migrations/000N_<name>.sql`` takes a schema from version N - 1 to N, with
tables, columns, indexes and types only; ``functions.sql`` holds every
function, each written once. :meth:`Schema.migrate` applies the steps a
database is missing, then re-creates every function from ``functions.sql``
(``CREATE OR REPLACE``), all in one transaction, so a schema upgraded from any
version ends with exactly the functions and tables of a fresh one. The files
name the schema and a few constants as ``{schema}``-style placeholders,
filled in by :func:`render`.
"""

from __future__ import annotations

import functools
import threading
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql

from ..._errors import StoreUnavailable
from ._connection import UNAVAILABLE, Connections, is_unavailable

#: The schema version this code reads and writes. ``migrate()`` brings a
#: database up to it, one step of ``migrations/`` at a time.
SCHEMA_VERSION = 6

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
    folder = resources.files(__package__ or __name__).joinpath("migrations")
    steps = sorted((f.name, f) for f in folder.iterdir() if f.name.endswith(".sql"))
    numbers = [int(name.split("_", 1)[0]) for name, _ in steps]
    if numbers != list(range(1, SCHEMA_VERSION + 1)):  # pragma: no cover - a packaging bug
        raise RuntimeError(f"PostgreSQL migrations 1..{SCHEMA_VERSION} expected, found {numbers}")
    return tuple(f.read_text(encoding="utf-8") for _, f in steps)


@functools.cache
def _functions() -> str:
    """``functions.sql``: every function of the schema, (re)created by each
    migrate after the schema steps (see its header)."""
    folder = resources.files(__package__ or __name__)
    return folder.joinpath("functions.sql").read_text(encoding="utf-8")


def render(text: str, schema: str) -> sql.Composed:
    """``text`` (SQL with placeholders, like the package's files) for ``schema``:
    ``{schema}`` the quoted identifier, ``{schema_name}`` the name as a
    literal, ``{lock_class}`` and ``{reply_lock}`` the advisory lock keys."""
    return sql.SQL(text).format(
        schema=sql.Identifier(schema),
        schema_name=sql.Literal(schema),
        lock_class=sql.Literal(_JOURNAL_LOCK_CLASS),
        reply_lock=sql.Literal(_REPLY_LOCK_CLASS),
    )


class Schema:
    """One store's schema: its version, its migration, and the check on
    first use that it is ready (``auto_migrate`` migrates instead)."""

    def __init__(self, connections: Connections, schema: str) -> None:
        self._db = connections
        self.name = schema
        self._lock = threading.Lock()
        self._ready = False

    def version(self) -> int:
        """The version recorded in the database (0 when the schema is absent)."""
        with self._db.direct() as conn:
            return self._version(conn)

    def _version(self, conn: psycopg.Connection[Any]) -> int:
        row = self._db.watched(
            conn,
            "SELECT to_regclass(%s) IS NOT NULL",
            (sql.Identifier(self.name).as_string(conn) + ".schema_version",),
        ).fetchone()
        if row is None or not row[0]:
            return 0
        got = self._db.watched(
            conn, self._render("SELECT coalesce(max(version), 0) FROM {schema}.schema_version")
        ).fetchone()
        return int(got[0]) if got else 0

    def _render(self, text: str) -> sql.Composed:
        return render(text, self.name)

    def migrate(self) -> int:
        """Create the schema or bring it up to this version, then (re)create
        every function; returns the version. See PostgresStore.migrate."""
        db = self._db
        try:
            with db.direct() as conn, conn.transaction():
                db.watched(
                    conn,
                    "SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                    (_LOCK_CLASS, self.name),
                )
                db.watched(conn, self._render(_VERSION_TABLE))
                current = self._version(conn)
                if current > SCHEMA_VERSION:
                    raise StoreUnavailable(
                        f"PostgreSQL store {db.where}: schema {self.name!r} is at version "
                        f"{current}, newer than this jobcredits-plugin knows ({SCHEMA_VERSION}); "
                        "upgrade jobcredits-plugin"
                    )
                for version in range(current, SCHEMA_VERSION):
                    db.watched(conn, self._render(_migrations()[version]))
                    db.watched(
                        conn,
                        self._render("INSERT INTO {schema}.schema_version (version) VALUES (%s)"),
                        (version + 1,),
                    )
                db.watched(conn, self._render(_functions()))
        except UNAVAILABLE as exc:
            if not is_unavailable(exc):
                raise
            raise db.unavailable(exc) from exc
        with self._lock:
            self._ready = True
        return SCHEMA_VERSION

    def ensure(self, auto_migrate: bool) -> None:
        """On first use, migrate (``auto_migrate``) or check that someone has."""
        if self._ready:
            return
        if auto_migrate:
            self.migrate()
            return
        try:
            version = self.version()
        except UNAVAILABLE as exc:
            if not is_unavailable(exc):
                raise
            raise self._db.unavailable(exc) from exc
        if version != SCHEMA_VERSION:
            raise StoreUnavailable(
                f"PostgreSQL store {self._db.where}: schema {self.name!r} is at version "
                f"{version}, this code needs {SCHEMA_VERSION}: run `jobcredits migrate --url ...`"
            )
        with self._lock:
            self._ready = True

    def drop(self) -> None:
        """Drop the schema and everything in it (tests, uninstalling)."""
        with self._db.direct() as conn:
            self._db.watched(conn, self._render("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        with self._lock:
            self._ready = False
