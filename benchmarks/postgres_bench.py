"""What a charge costs on PostgreSQL, against the cheapest write the server does.

Three figures:

- round trips per ``ledger.charge`` of a new job, counted on the wire (libpq's
  protocol trace: one ``Sync`` message is one round trip): the target is 1;
- throughput of ``ledger.charge`` (new jobs, balances on) against a bare
  ``INSERT ... ON CONFLICT DO NOTHING`` of a similar row into a similar table
  on the same server, both over one connection;
- the same with 8 client threads, each on its own connection.

The two sides take turns in chunks within each repeat, and each ratio is the
median over the repeats (ledger charges per second / bare inserts per second,
so higher is better; the target is >= 0.7). The server is
``JOBCREDITS_BENCH_POSTGRES_URL`` or ``JOBCREDITS_TEST_POSTGRES_URL``, default
``postgresql://postgres@127.0.0.1:5432/test``; the schemas made are dropped.

    python benchmarks/postgres_bench.py           # full sizes
    python benchmarks/postgres_bench.py --quick   # a smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:  # prefer the installed package ...
    import jobcredits_plugin  # noqa: F401
except ImportError:  # ... but let the script run from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import psycopg
from psycopg import sql

from jobcredits_plugin import Ledger
from jobcredits_plugin.stores._postgres import PostgresStore

# The shared helpers, from the directory of this file (it may have been
# loaded by path).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import at_once

URL = os.environ.get(
    "JOBCREDITS_BENCH_POSTGRES_URL",
    os.environ.get("JOBCREDITS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
)
THREADS = 8
TARGET = 0.7

_BARE_TABLE = """
CREATE TABLE {schema}.bare (
    account text COLLATE "C" NOT NULL, scope text COLLATE "C" NOT NULL,
    job_id text COLLATE "C" NOT NULL, charge_id text NOT NULL, state text NOT NULL,
    cost bigint NOT NULL, tier text, backend text, charged_at double precision NOT NULL,
    expires_at double precision NOT NULL, lease_until double precision NOT NULL,
    uses bigint NOT NULL, debited bigint NOT NULL, deadline double precision NOT NULL,
    PRIMARY KEY (account, scope, job_id))
"""
_BARE_INDEX = "CREATE INDEX ON {schema}.bare (deadline)"
_BARE_INSERT = (
    "INSERT INTO {schema}.bare VALUES "
    "(%s, 'default', %s, %s, 'pending', 1, NULL, NULL, %s, %s, %s, 1, 1, %s) "
    "ON CONFLICT DO NOTHING"
)


class Bench:
    """One schema holding the store's tables and the bare twin table."""

    def __init__(self) -> None:
        self.schema = f"jcbench_{uuid.uuid4().hex[:10]}"
        # The journal (a second row per charge, section g) is off: this is the
        # ledger's cost over the one write a charge must do.
        self.store = PostgresStore.from_url(
            URL, schema=self.schema, max_size=THREADS, journal=False
        )
        self.store.migrate()
        s = sql.Identifier(self.schema)
        with psycopg.connect(URL, autocommit=True) as conn:
            conn.execute(sql.SQL(_BARE_TABLE).format(schema=s))
            conn.execute(sql.SQL(_BARE_INDEX).format(schema=s))
        self.insert = sql.SQL(_BARE_INSERT).format(schema=s)
        self.ledger = Ledger(self.store, balances=True)
        for t in range(THREADS):
            self.ledger.grant(f"acct-{t}", 10**12)

    def close(self) -> None:
        self.ledger.close()
        self.store.drop()

    def charge_run(self, n: int, t: int) -> Callable[[], None]:
        ledger, account, tag = self.ledger, f"acct-{t}", uuid.uuid4().hex[:8]

        def run() -> None:
            for i in range(n):
                ledger.charge(account, f"{tag}-{i}")

        return run

    def bare_run(self, conn: psycopg.Connection[Any], n: int, t: int) -> Callable[[], None]:
        account, tag, insert = f"acct-{t}", uuid.uuid4().hex[:8], self.insert

        def run() -> None:
            now = time.time()
            for i in range(n):
                conn.execute(
                    insert, (account, f"{tag}-{i}", uuid.uuid4().hex[:16], now, now, now, now)
                )

        return run


def _ratio(bench: Bench, clients: int, n: int, repeats: int) -> float:
    conns = [psycopg.connect(URL, autocommit=True, prepare_threshold=None) for _ in range(clients)]
    try:
        ratios = []
        for _ in range(repeats):
            ledger_s = bare_s = 0.0
            for _chunk in range(4):  # the sides take turns
                ledger_s += at_once([bench.charge_run(n, t) for t in range(clients)])
                bare_s += at_once([bench.bare_run(conns[t], n, t) for t in range(clients)])
            ratios.append(bare_s / ledger_s)  # = ledger rate / bare rate
        return statistics.median(ratios)
    finally:
        for c in conns:
            c.close()


def _round_trips(n: int) -> float:
    """Round trips per new-job charge, counted on the wire."""
    trace = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed below

    def configure(conn: Any) -> None:
        conn.pgconn.trace(trace.fileno())
        conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)

    schema = f"jcbench_{uuid.uuid4().hex[:10]}"
    store = PostgresStore.from_url(URL, schema=schema, min_size=1, max_size=1, configure=configure)
    try:
        ledger = Ledger(store, balances=True)
        ledger.grant("acct", 10**9)

        def syncs() -> int:
            trace.flush()
            trace.seek(0)
            count = sum(1 for line in trace if line.startswith("F") and "\tSync" in line)
            trace.seek(0, os.SEEK_END)
            return count

        before = syncs()
        for i in range(n):
            ledger.charge("acct", f"job-{i}")
        return (syncs() - before) / n
    finally:
        store.close()
        store.drop()
        trace.close()


def run(quick: bool) -> list[dict[str, Any]]:
    n, repeats = (50, 3) if quick else (500, 5)
    rows: list[dict[str, Any]] = [
        {
            "name": "postgres: round trips per charge",
            "figure": _round_trips(20 if quick else 200),
            "unit": "round trips",
            "op": "==",
            "target": 1,
        }
    ]
    bench = Bench()
    try:
        for clients, label in ((1, "1 connection"), (THREADS, f"{THREADS} clients")):
            rows.append(
                {
                    "name": f"postgres: ledger.charge vs bare INSERT, {label}",
                    "figure": _ratio(bench, clients, n // clients if clients > 1 else n, repeats),
                    "unit": "x",
                    "op": ">=",
                    "target": TARGET,
                }
            )
    finally:
        bench.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    rows = run(parser.parse_args().quick)
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        target = f"  (target {r['op']} {r['target']})" if "target" in r else ""
        print(f"{r['name']:<{width}}  {r['figure']:8.3f} {r['unit']}{target}")


if __name__ == "__main__":
    main()
