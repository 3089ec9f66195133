"""What a charge costs on PostgreSQL, against the cheapest write the server does.

Three figures:

- round trips per ``ledger.charge`` of a new job, counted on the wire (libpq's
  protocol trace: one ``Sync`` message is one round trip): the target is 1;
- throughput of ``ledger.charge`` (new jobs, balances on) against a bare
  ``INSERT ... ON CONFLICT DO NOTHING`` of a similar row into a similar table
  on the same server, both over one connection;
- the same with 8 client threads, each on its own connection.

And, as context (no target), the floors under a charge, against the same bare
insert, one connection and 8 clients:

- an empty PL/pgSQL function with the claim function's signature (its
  arguments, and a row of its answer's columns, the answer of a new job),
  called with the store's own claim statement (its text, the function's name
  swapped) and the parameters the store sends for a new-job charge: what the
  call itself costs, before the claim does any work. It writes nothing, so
  its transaction commits without a WAL flush, which the bare insert's waits
  for: it can be faster than the bare insert;
- the same empty function doing the bare insert (the same row, from its
  arguments): the call and the one write, the floor of any design that makes
  a charge one function call;
- the claim function itself, called with the same statement and parameters
  straight from psycopg (no ledger, store or pool code in between): the
  server-side cost of a charge without the client-side Python.

Both are called over the bare insert's connections with parameters built
before the clock starts. All sides take turns in chunks within each repeat,
and each ratio is the median over the repeats (ledger charges, or calls, per
second / bare inserts per second, so higher is better; the target, for the
charge, is >= 0.7). The server is
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


#: An empty function of the claim function's signature (``{arguments}``, as
#: ``pg_get_function_arguments`` gives the real one's, OUT columns included),
#: answering what a new job's claim answers: ``charged``, the balance, and no
#: record found (the ``o_*`` columns NULL); ``{name}`` and ``{work}``: its
#: name and what it does first (nothing, or the bare insert).
_EMPTY_CLAIM = """
CREATE FUNCTION {schema}.{name}({arguments}) LANGUAGE plpgsql AS $fn$
BEGIN
    {work}
    status := 'charged';
    balance := 0;
    o_now := p_now;
END
$fn$
"""
_EMPTY_INSERT = (
    "INSERT INTO {schema}.bare VALUES (p_account, p_scope, p_job_id, p_charge_id, "
    "'pending', p_cost, p_tier, p_backend, p_now, p_now + p_ttl, p_now + p_lease, 1, 1, "
    "p_now + p_lease) ON CONFLICT DO NOTHING;"
)
_CLAIM_ARGUMENTS = """
SELECT pg_get_function_arguments(p.oid) FROM pg_proc p
  JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = %s AND p.proname = 'claim' AND p.pronargs = %s
"""


class Bench:
    """One schema holding the store's tables, the bare twin table and the
    empty claim function."""

    def __init__(self) -> None:
        self.schema = f"jcbench_{uuid.uuid4().hex[:10]}"
        # The journal (a second row per charge, section g) is off: this is the
        # ledger's cost over the one write a charge must do.
        self.store = PostgresStore.from_url(
            URL, schema=self.schema, max_size=THREADS, journal=False
        )
        self.store.migrate()
        s = sql.Identifier(self.schema)
        self.ledger = Ledger(self.store, balances=True)
        # The parameters of a new-job claim, as the store sends them.
        arity = len(self._claim_params("acct-0", "probe"))
        with psycopg.connect(URL, autocommit=True) as conn:
            conn.execute(sql.SQL(_BARE_TABLE).format(schema=s))
            conn.execute(sql.SQL(_BARE_INDEX).format(schema=s))
            # The store's claim statement as it sends it, and the same with
            # the empty function in place of the claim function.
            claim = self.store._sql.claim  # bytes, or composed on psycopg 3.1
            self.claim = claim.decode() if isinstance(claim, bytes) else claim.as_string(conn)
            called = f"{s.as_string(conn)}.claim("
            assert self.claim.count(called) == 1, self.claim
            row = conn.execute(_CLAIM_ARGUMENTS, (self.schema, arity)).fetchone()
            assert row is not None, f"no claim function of {arity} arguments"
            self.empty, self.empty_insert = (
                self.claim.replace(called, f"{s.as_string(conn)}.{name}(")
                for name in ("empty_claim", "empty_claim_insert")
            )
            for name, work in (("empty_claim", ""), ("empty_claim_insert", _EMPTY_INSERT)):
                text = _EMPTY_CLAIM.replace("{arguments}", row[0]).replace("{work}", work)
                conn.execute(sql.SQL(text).format(schema=s, name=sql.Identifier(name)))
        self.insert = sql.SQL(_BARE_INSERT).format(schema=s)
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

    def _claim_params(self, account: str, job_id: str) -> tuple[Any, ...]:
        req = self.ledger._claim_request(account, job_id, "default", 1, None, None)
        return self.store._claim_params(req)

    def call_run(
        self, conn: psycopg.Connection[Any], statement: str, n: int, t: int
    ) -> Callable[[], None]:
        """``statement`` (the claim's or the empty function's) with the
        parameters of ``n`` new-job charges, built now, straight from psycopg."""
        account, tag = f"acct-{t}", uuid.uuid4().hex[:8]
        params = [self._claim_params(account, f"{tag}-{i}") for i in range(n)]

        def run() -> None:
            for p in params:
                conn.execute(statement, p).fetchall()

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


def _ratios(bench: Bench, clients: int, n: int, repeats: int) -> dict[str, float]:
    """Median over ``repeats`` of each side's rate / the bare insert's rate:
    ``charge`` (ledger.charge), ``empty`` (the empty claim function),
    ``empty_insert`` (the same doing the bare insert) and ``claim`` (the claim
    function from psycopg)."""
    conns = [psycopg.connect(URL, autocommit=True, prepare_threshold=None) for _ in range(clients)]
    calls = {"empty": bench.empty, "empty_insert": bench.empty_insert, "claim": bench.claim}
    try:
        ratios: dict[str, list[float]] = {side: [] for side in ("charge", *calls)}
        for _ in range(repeats):
            seconds = dict.fromkeys(("bare", *ratios), 0.0)
            for _chunk in range(4):  # the sides take turns
                seconds["charge"] += at_once([bench.charge_run(n, t) for t in range(clients)])
                seconds["bare"] += at_once([bench.bare_run(conns[t], n, t) for t in range(clients)])
                for side, statement in calls.items():
                    seconds[side] += at_once(
                        [bench.call_run(conns[t], statement, n, t) for t in range(clients)]
                    )
            for side, r in ratios.items():
                # time of the bare inserts / the side's = its rate / the bare rate
                r.append(seconds["bare"] / seconds[side])
        return {side: statistics.median(r) for side, r in ratios.items()}
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
            ratios = _ratios(bench, clients, n // clients if clients > 1 else n, repeats)
            rows.append(
                {
                    "name": "postgres: empty function given a claim's arguments, answering "
                    f"its row, vs bare INSERT, {label} (context)",
                    "figure": ratios["empty"],
                    "unit": "x",
                }
            )
            rows.append(
                {
                    "name": "postgres: the same empty function doing the bare INSERT "
                    f"vs bare INSERT, {label} (context)",
                    "figure": ratios["empty_insert"],
                    "unit": "x",
                }
            )
            rows.append(
                {
                    "name": "postgres: claim function called from psycopg (no ledger Python) "
                    f"vs bare INSERT, {label} (context)",
                    "figure": ratios["claim"],
                    "unit": "x",
                }
            )
            rows.append(
                {
                    "name": f"postgres: ledger.charge vs bare INSERT, {label}",
                    "figure": ratios["charge"],
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
