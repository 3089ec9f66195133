"""What the ORM costs: DjangoStore beside the store it stands in for.

The same operations through ``DjangoStore`` and through ``PostgresStore`` on
the same PostgreSQL server, in one run, and through ``DjangoStore`` on a SQLite
file beside ``SQLiteStore`` on another file of the same directory (Django's
SQLite set to ``SQLiteStore``'s WAL journal and ``synchronous=NORMAL``). Each
ledger has balances on and its store's defaults (the journal on); Django's
connections are persistent (``CONN_MAX_AGE = None``). Per operation:

- the time ratio DjangoStore / the native store (lower is better; 1 = the
  same cost): a new job's charge (``claim`` of a new job), ``confirm``, the
  follow-up call (``claim`` of the charged job: a reuse), ``refund``, and a
  ``grant``. The two sides take turns in chunks within each repeat, each
  ratio is the median over the repeats;
- the SQL statements DjangoStore sends per operation (counted with
  ``connection.execute_wrapper``, ``BEGIN`` and ``COMMIT`` left out, as in
  the table of ``docs/django.md`` that ``tests/integrations/django/test_store.py``
  pins);
- on PostgreSQL, the round trips on the wire per operation of both stores
  (libpq's protocol trace: each ``Sync`` or simple ``Query`` message the
  client sends is one; ``BEGIN`` and ``COMMIT`` included).

The server is ``JOBCREDITS_BENCH_POSTGRES_URL`` or
``JOBCREDITS_TEST_POSTGRES_URL``, default
``postgresql://postgres@127.0.0.1:5432/test``; the schemas made are dropped.
Django is configured here (``settings.configure``): run it as a script, or
through ``benchmarks/run.py`` (section e), not in a process that configured
Django already.

    python benchmarks/django_store_bench.py           # full sizes
    python benchmarks/django_store_bench.py --quick   # a smoke run
    tox -e bench -- --only stores                     # with the other shared stores
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:  # prefer the installed package ...
    import jobcredits_plugin  # noqa: F401
except ImportError:  # ... but let the script run from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import django
import psycopg
from django.conf import settings

from jobcredits_plugin import Ledger
from jobcredits_plugin.stores import PostgresStore, SQLiteStore

URL = os.environ.get(
    "JOBCREDITS_BENCH_POSTGRES_URL",
    os.environ.get("JOBCREDITS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
)
#: The operations, in the order one job goes through them.
OPS = ("charge new job", "confirm", "follow-up", "refund", "grant")
PG, LITE = "bench_pg", "bench_sqlite"


def _configure(directory: str, schema: str) -> None:
    """Django with two databases: PostgreSQL (tables in ``schema``) and a
    SQLite file; persistent connections, as a deployment runs them."""
    if settings.configured:
        raise ImportError("Django is configured in this process already: run the script alone")
    pg = urllib.parse.urlsplit(URL)
    settings.configure(
        INSTALLED_APPS=["jobcredits_plugin.django"],
        USE_TZ=True,
        DATABASES={
            "default": {},
            PG: {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": urllib.parse.unquote(pg.path.lstrip("/")) or "postgres",
                "USER": urllib.parse.unquote(pg.username or ""),
                "PASSWORD": urllib.parse.unquote(pg.password or ""),
                "HOST": pg.hostname or "",
                "PORT": str(pg.port or ""),
                "CONN_MAX_AGE": None,
                "OPTIONS": {"options": f"-c search_path={schema}"},
            },
            LITE: {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": os.path.join(directory, "django.db"),
                "CONN_MAX_AGE": None,
                # SQLiteStore's own settings (Django 5.1+ runs these), so that
                # the ratio is the ORM's, not a rollback journal's fsyncs.
                "OPTIONS": {"init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL"},
            },
        },
    )
    django.setup()


class Side:
    """One ledger, and fresh job ids for it."""

    def __init__(self, name: str, ledger: Ledger) -> None:
        self.name = name
        self.ledger = ledger
        self.account = f"acct-{uuid.uuid4().hex[:6]}"
        ledger.grant(self.account, 10**12)
        self.seconds = dict.fromkeys(OPS, 0.0)

    def chunk(self, n: int) -> None:
        """``n`` jobs through every operation, each operation timed."""
        ledger, account = self.ledger, self.account
        jobs = [uuid.uuid4().hex[:16] for _ in range(n)]
        steps: list[tuple[str, Callable[[str], Any]]] = [
            ("charge new job", lambda j: ledger.charge(account, j)),
            ("confirm", lambda j: ledger.confirm(account, j)),
            ("follow-up", lambda j: ledger.charge(account, j)),
            ("refund", lambda j: ledger.refund(account, j)),
            ("grant", lambda _j: ledger.grant(account, 1)),
        ]
        for op, fn in steps:
            t0 = time.perf_counter()
            for job in jobs:
                fn(job)
            self.seconds[op] += time.perf_counter() - t0


def _ratios(
    django_ledger: Ledger, native: Ledger, n: int, repeats: int
) -> dict[str, tuple[float, float, float]]:
    """Per operation, the medians over ``repeats`` of DjangoStore's time /
    the native store's time (the sides take turns in four chunks), and of
    each side's microseconds per operation."""
    found: dict[str, list[tuple[float, float, float]]] = {op: [] for op in OPS}
    for _ in range(repeats):
        ours, theirs = Side("django", django_ledger), Side("native", native)
        for _chunk in range(4):
            ours.chunk(n)
            theirs.chunk(n)
        for op in OPS:
            a, b = ours.seconds[op], theirs.seconds[op]
            found[op].append((a / b, a * 1e6 / (4 * n), b * 1e6 / (4 * n)))
    return {
        op: tuple(statistics.median(x[i] for x in v) for i in range(3))  # type: ignore[misc]
        for op, v in found.items()
    }


def _one_of_each(ledger: Ledger, measure: Callable[[], Any]) -> Iterator[tuple[str, float]]:
    """Each operation once on a fresh job, with what ``measure()`` counted
    (a callable returning a running count) for it."""
    account, job = f"acct-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex[:16]
    ledger.grant(account, 100)
    ledger.charge(account, "warm-up")  # connections open, balance row there
    for op, fn in (
        ("charge new job", lambda: ledger.charge(account, job)),
        ("confirm", lambda: ledger.confirm(account, job)),
        ("follow-up", lambda: ledger.charge(account, job)),
        ("refund", lambda: ledger.refund(account, job)),
        ("grant", lambda: ledger.grant(account, 1)),
    ):
        before = measure()
        fn()
        yield op, float(measure() - before)


def query_counts(alias: str, ledger: Ledger) -> dict[str, float]:
    """SQL statements DjangoStore sends per operation on ``alias``."""
    from django.db import connections

    sent = [0]

    def count(execute: Any, sql: Any, params: Any, many: Any, context: Any) -> Any:
        if str(sql).split(None, 1)[0].upper() not in ("BEGIN", "COMMIT"):
            sent[0] += 1
        return execute(sql, params, many, context)

    with connections[alias].execute_wrapper(count):
        return dict(_one_of_each(ledger, lambda: sent[0]))


@contextmanager
def _wire_trace() -> Iterator[tuple[Callable[[Any], None], Callable[[], int]]]:
    """A libpq trace file: (attach it to a psycopg connection, round trips so far)."""
    with tempfile.TemporaryFile(mode="w+") as trace:

        def attach(conn: Any) -> None:
            conn.pgconn.trace(trace.fileno())
            conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)

        def trips() -> int:
            trace.flush()
            trace.seek(0)
            n = sum(
                1
                for line in trace
                if line.startswith("F") and ("\tSync" in line or "\tQuery" in line)
            )
            trace.seek(0, os.SEEK_END)
            return n

        yield attach, trips


def round_trips(django_ledger: Ledger, schema: str) -> dict[str, dict[str, float]]:
    """Round trips per operation on the wire: DjangoStore and PostgresStore."""
    from django.db import connections

    out: dict[str, dict[str, float]] = {}
    with _wire_trace() as (attach, trips):
        conn = connections[PG]
        conn.ensure_connection()
        attach(conn.connection)
        try:
            out["django"] = dict(_one_of_each(django_ledger, trips))
        finally:
            conn.connection.pgconn.untrace()
    with _wire_trace() as (attach, trips):
        store = PostgresStore.from_url(
            URL, schema=f"{schema}_rt", min_size=1, max_size=1, configure=attach
        )
        store.migrate()
        try:
            with Ledger(store, balances=True) as ledger:
                out["postgres"] = dict(_one_of_each(ledger, trips))
        finally:
            store.drop()
    return out


def _key(op: str) -> str:
    return op.replace("charge ", "").replace(" ", "_").replace("-", "_")


def run(quick: bool, n: int | None = None, repeats: int | None = None) -> list[dict[str, Any]]:
    """The figures (``n`` jobs per chunk and side, ``repeats`` repeats: by
    default 20 and 3 with ``quick``, else 100 and 5)."""
    n = n or (20 if quick else 100)
    repeats = repeats or (3 if quick else 5)
    try:
        psycopg.connect(URL, connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        raise ConnectionError(f"no PostgreSQL at {URL}: {exc}") from exc
    from django.core.management import call_command

    from jobcredits_plugin.django import DjangoStore

    rows: list[dict[str, Any]] = []
    schema = f"jcbench_{uuid.uuid4().hex[:10]}"
    with tempfile.TemporaryDirectory(prefix="jcbench-django-") as directory:
        _configure(directory, schema)
        with psycopg.connect(URL, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        native_pg = PostgresStore.from_url(URL, schema=f"{schema}_native")
        try:
            native_pg.migrate()
            for alias in (PG, LITE):
                call_command("migrate", "jobcredits", database=alias, verbosity=0)
            native_lite = SQLiteStore(os.path.join(directory, "native.db"))
            with (
                Ledger(DjangoStore(PG), balances=True) as dj_pg,
                Ledger(native_pg, balances=True) as pg,
                Ledger(DjangoStore(LITE), balances=True) as dj_lite,
                Ledger(native_lite, balances=True) as lite,
            ):
                for db, (ours, theirs, native_name) in (
                    ("postgres", (dj_pg, pg, "PostgresStore")),
                    ("sqlite", (dj_lite, lite, "SQLiteStore")),
                ):
                    for op, (ratio, us, them) in _ratios(ours, theirs, n, repeats).items():
                        rows.append(
                            {
                                "key": f"django_{db}_{_key(op)}_ratio",
                                "name": f"django ({db}): {op}, DjangoStore / {native_name}",
                                "figure": ratio,
                                "unit": "x time",
                                "details": {"django_us": us, "native_us": them},
                            }
                        )
                for db, alias, ledger in (("postgres", PG, dj_pg), ("sqlite", LITE, dj_lite)):
                    for op, count in query_counts(alias, ledger).items():
                        rows.append(
                            {
                                "key": f"django_{db}_{_key(op)}_queries",
                                "name": f"django ({db}): {op}, SQL statements",
                                "figure": count,
                                "unit": "queries",
                            }
                        )
                for store, trips in round_trips(dj_pg, schema).items():
                    name = "DjangoStore" if store == "django" else "PostgresStore"
                    for op, count in trips.items():
                        rows.append(
                            {
                                "key": f"django_postgres_{_key(op)}_round_trips_{store}",
                                "name": f"postgres: {op}, {name} round trips",
                                "figure": count,
                                "unit": "round trips",
                            }
                        )
        finally:
            from django.db import connections

            connections.close_all()
            native_pg.drop()
            with psycopg.connect(URL, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--jobs", type=int, metavar="N", help="jobs per chunk and side")
    parser.add_argument("--repeats", type=int, metavar="R", help="repeats")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = parser.parse_args()
    rows = run(args.quick, args.jobs, args.repeats)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        us = r.get("details", {})
        times = f"  ({us['django_us']:.0f} us / {us['native_us']:.0f} us)" if us else ""
        print(f"{r['name']:<{width}}  {r['figure']:8.3f} {r['unit']}{times}")


if __name__ == "__main__":
    main()
