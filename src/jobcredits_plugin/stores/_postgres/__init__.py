"""A store in PostgreSQL, shared by every process on every host that reaches it.

Each ledger operation is **one statement and one round trip**: the migration
creates plpgsql functions (``claim``, ``confirm``, ``refund``, ``prune``,
``grant_credits``, ..., all in ``functions.sql``) in the store's schema, and an
operation is a single
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

The package's modules, in the order a statement passes them:
:mod:`._store` (the store, what each operation sends and what is retried),
:mod:`._statements` (the statements), :mod:`._connection` (the pool, the
deadline, which failures are StoreUnavailable), :mod:`._answers` (answers to
results, through the shared rules) and :mod:`._schema` (versions and
migrations). The SQL itself is in the package's files: ``migrations/`` (one
schema step per version) and ``functions.sql`` (every function, once).
"""

# The driver first: without it, importing this package (PostgresStore from
# jobcredits_plugin.stores) names the extra to install, whichever submodule
# is already loaded.
try:
    import psycopg  # noqa: F401
    import psycopg_pool  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        'PostgresStore needs psycopg 3 and psycopg_pool: pip install "jobcredits-plugin[postgres]"'
    ) from exc

from ._connection import is_unavailable
from ._schema import SCHEMA_VERSION
from ._store import REPLY_RETENTION, PostgresStore

__all__ = ["REPLY_RETENTION", "SCHEMA_VERSION", "PostgresStore", "is_unavailable"]
