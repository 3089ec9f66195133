"""What the journal costs a charge, on every store.

For each store kind, two stores built alike, one with ``journal=True`` (the
default) and one with ``journal=False``, on the same file system or server.
New jobs are charged (``Ledger.charge``, balances off: the journal then has
to read the balance the charge itself does not need, the worst case) and
then confirmed, on both, in short chunks that take turns in alternating
order, so drift in the machine's speed hits both alike. The figure held to
the target is the ratio of the total times, journal on / journal off, of
the charges alone (the confirm writes no entry, so adding it would only
dilute the cost); charge + confirm, what a charged call costs, is reported
beside it.

Targets (issue 7): at most 1.3 on SQLite and PostgreSQL, at most 1.2 on
Redis. The memory store has no target for time; what it must show is that
its entries stay bounded by retention: after more charges than its
``journal_limit`` it holds exactly ``journal_limit`` entries, and the bytes
one entry costs are reported for sizing that limit.

Redis and PostgreSQL are measured when their servers answer
(``JOBCREDITS_TEST_REDIS_URL``, ``JOBCREDITS_TEST_POSTGRES_URL``, or the
loopback defaults); each run uses its own key prefix / schema and removes it.

    python benchmarks/journal_bench.py           # full sizes
    python benchmarks/journal_bench.py --quick   # a smoke run
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:  # prefer the installed package ...
    import jobcredits_plugin  # noqa: F401
except ImportError:  # ... but let the script run from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from jobcredits_plugin import Ledger
from jobcredits_plugin.stores import BaseStore, MemoryStore, SQLiteStore

REDIS_URL = os.environ.get("JOBCREDITS_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
POSTGRES_URL = os.environ.get(
    "JOBCREDITS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)

#: Store kind -> the target for journal on / journal off (None: context only).
TARGETS: dict[str, float | None] = {"memory": None, "sqlite": 1.3, "redis": 1.2, "postgres": 1.3}


@contextmanager
def _pair(kind: str, directory: Path) -> Iterator[tuple[BaseStore, BaseStore]]:
    """Two stores of one kind, journal on and journal off; removed afterwards."""
    if kind == "memory":
        yield MemoryStore(), MemoryStore(journal=False)
        return
    if kind == "sqlite":
        on = SQLiteStore(directory / "on.db")
        off = SQLiteStore(directory / "off.db", journal=False)
        try:
            yield on, off
        finally:
            on.close()
            off.close()
        return
    if kind == "redis":
        import redis

        from jobcredits_plugin.stores import RedisStore

        tag = uuid.uuid4().hex[:8]
        on = RedisStore.from_url(REDIS_URL, prefix=f"jcbench:{tag}:on")
        off = RedisStore.from_url(REDIS_URL, prefix=f"jcbench:{tag}:off", journal=False)
        try:
            yield on, off
        finally:
            on.close()
            off.close()
            client = redis.Redis.from_url(REDIS_URL)
            try:
                keys = list(client.scan_iter(match=f"jcbench:{tag}:*", count=1000))
                for start in range(0, len(keys), 500):
                    client.delete(*keys[start : start + 500])
            finally:
                client.close()
        return
    if kind == "postgres":
        from jobcredits_plugin.stores import PostgresStore

        tag = uuid.uuid4().hex[:8]
        on = PostgresStore.from_url(POSTGRES_URL, schema=f"jcbench_{tag}_on")
        off = PostgresStore.from_url(POSTGRES_URL, schema=f"jcbench_{tag}_off", journal=False)
        try:
            yield on, off
        finally:
            for store in (on, off):
                store.close()
                store.drop()
        return
    raise ValueError(kind)


def _chunk(ledger: Ledger, n: int, prefix: str) -> tuple[float, float]:
    """Charge ``n`` new jobs, then confirm them; the two times apart."""
    ids = [f"{prefix}-{i}" for i in range(n)]
    charge, confirm = ledger.charge, ledger.confirm
    start = time.perf_counter()
    charge_ids = [charge("bench", job_id).record.charge_id for job_id in ids]
    middle = time.perf_counter()
    for job_id, charge_id in zip(ids, charge_ids, strict=True):
        confirm("bench", job_id, charge_id=charge_id)
    return middle - start, time.perf_counter() - middle


def measure(kind: str, rounds: int, chunk: int, directory: Path) -> dict[str, Any]:
    with _pair(kind, directory) as (on_store, off_store):
        on, off = Ledger(on_store), Ledger(off_store)
        _chunk(on, chunk, "warm")  # connections, plans, scripts
        _chunk(off, chunk, "warm")
        charge_ratios: list[float] = []
        path_ratios: list[float] = []
        times_on: list[float] = []
        times_off: list[float] = []
        path_on: list[float] = []
        path_off: list[float] = []
        gc.disable()
        try:
            for r in range(rounds):
                order: list[tuple[str, Ledger]] = [("on", on), ("off", off)]
                if r % 2:
                    order.reverse()
                t: dict[str, tuple[float, float]] = {}
                for name, ledger in order:
                    t[name] = _chunk(ledger, chunk, f"r{r}")
                charge_ratios.append(t["on"][0] / t["off"][0])
                path_ratios.append(sum(t["on"]) / sum(t["off"]))
                path_on.append(sum(t["on"]))
                path_off.append(sum(t["off"]))
                times_on.append(t["on"][0] / chunk)
                times_off.append(t["off"][0] / chunk)
        finally:
            gc.enable()
        entries = len(on.journal(limit=10_000))
        # Ratios of the totals, not medians of per-round ratios: SQLite's WAL
        # checkpoints (every 1,000 pages; the journal's extra page per commit
        # brings them sooner) land in some chunks and not others, and only
        # the totals share their cost out fairly.
        return {
            "ratio": sum(times_on) / sum(times_off),
            "path_ratio": sum(path_on) / sum(path_off),
            "median_round_ratio": statistics.median(charge_ratios),
            "median_round_path_ratio": statistics.median(path_ratios),
            "us_on": statistics.median(times_on) * 1e6,
            "us_off": statistics.median(times_off) * 1e6,
            "entries_sample": entries,
        }


def memory_retention(limit: int, charges: int) -> dict[str, Any]:
    """Charges past the limit leave exactly ``limit`` entries; bytes per entry."""
    store = MemoryStore(journal_limit=limit)
    ledger = Ledger(store)
    for i in range(charges):
        c = ledger.charge("bench", f"fill-{i}")
        ledger.confirm("bench", f"fill-{i}", charge_id=c.record.charge_id)
    held = store.journal_size()
    bare = MemoryStore(journal=False)
    ledger_bare = Ledger(bare)
    sample = min(limit, 20_000)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(sample):
            ledger_bare.charge("bench", f"b-{i}")
        mid = tracemalloc.get_traced_memory()[0]
        ledger2 = Ledger(MemoryStore(journal_limit=limit))
        base2 = tracemalloc.get_traced_memory()[0]
        for i in range(sample):
            ledger2.charge("bench", f"b-{i}")
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    per_job_bare = (mid - before) / sample
    per_job_journal = (after - base2) / sample
    return {
        "held": held,
        "limit": limit,
        "charges": charges,
        "bytes_per_entry": per_job_journal - per_job_bare,
    }


def _available(kind: str) -> str | None:
    """None when the kind can be measured here, else why not."""
    try:
        if kind == "redis":
            import redis

            client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
            try:
                client.ping()
            finally:
                client.close()
        elif kind == "postgres":
            import psycopg

            with psycopg.connect(POSTGRES_URL, connect_timeout=2):
                pass
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def run(quick: bool = False, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    rounds, chunk = (4, 100) if quick else (15, 400)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="jcbench-journal-") as tmp:
        for kind in ("memory", "sqlite", "redis", "postgres"):
            why = _available(kind)
            if why is not None:
                log(f"journal on {kind}: skipped ({why})")
                continue
            directory = Path(tmp) / kind
            directory.mkdir()
            m = measure(kind, rounds, chunk, directory)
            target = TARGETS[kind]
            rows.append(
                {
                    "key": f"journal_{kind}_ratio",
                    "name": f"{kind}: ledger.charge, journal on / off",
                    "figure": m["ratio"],
                    "unit": "x",
                    "op": "<=" if target is not None else None,
                    "target": target,
                    "details": {
                        "us_per_charge_on": round(m["us_on"], 1),
                        "us_per_charge_off": round(m["us_off"], 1),
                        "rounds": rounds,
                        "chunk": chunk,
                    },
                }
            )
            rows.append(
                {
                    "key": f"journal_{kind}_path_ratio",
                    "name": f"{kind}: charge+confirm (a charged call), journal on / off",
                    "figure": m["path_ratio"],
                    "unit": "x",
                    "op": None,
                    "target": None,
                }
            )
            log(
                f"journal on {kind}: charge {m['ratio']:.2f}x "
                f"({m['us_on']:.0f} us vs {m['us_off']:.0f} us), "
                f"charge+confirm {m['path_ratio']:.2f}x"
            )
    limit = 1_000 if quick else 10_000
    ret = memory_retention(limit, limit * 3)
    rows.append(
        {
            "key": "journal_memory_entries_held",
            "name": f"memory: entries held after {ret['charges']} charges (journal_limit)",
            "figure": ret["held"],
            "unit": "entries",
            "op": "<=",
            "target": ret["limit"],
            "details": {"limit": ret["limit"]},
        }
    )
    rows.append(
        {
            "key": "journal_memory_bytes_per_entry",
            "name": "memory: bytes per journal entry (tracemalloc)",
            "figure": ret["bytes_per_entry"],
            "unit": "B",
            "op": None,
            "target": None,
        }
    )
    log(
        f"journal on memory: {ret['held']} entries held after {ret['charges']} charges "
        f"(limit {ret['limit']}), {ret['bytes_per_entry']:.0f} B per entry"
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args(argv)
    for row in run(quick=args.quick):
        target = f" (target {row['op']} {row['target']})" if row.get("op") else ""
        print(f"{row['name']}: {row['figure']:.2f} {row['unit']}{target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
