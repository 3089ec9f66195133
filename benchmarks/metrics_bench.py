"""What the Prometheus plugin adds to a charge.

The request path of a new job (``Ledger.charge`` then ``Ledger.confirm``, as
the decorator calls them) on a memory store with balances off, timed on three
ledgers built alike:

- **bare**: no plugin at all (the baseline);
- **no-op**: a plugin implementing the same hooks with empty bodies, so the
  ledger pays for timing its store calls and dispatching the hooks, and
  nothing else;
- **prometheus**: :class:`~jobcredits_plugin.contrib.prometheus.PrometheusMetrics`
  on a registry of its own.

The three are timed in short chunks that take turns (in a rotating order), so
that drift in the machine's speed hits them alike, and each figure is the
median of the per-round ratios. Fresh job ids for every call: each is a
charge and a confirm, which fire ``on_charge`` once and ``on_store_call``
twice. The figure held to a target is prometheus / bare (at most 1.3), on
the memory store (the worst case: the plugin's few microseconds against the
cheapest charge there is) and on SQLite (against a real commit); the
others are reported for context: prometheus / no-op is what prometheus_client
itself costs, no-op / bare what the ledger's hook machinery costs.

    python benchmarks/metrics_bench.py           # full sizes
    python benchmarks/metrics_bench.py --quick   # a smoke run (a second or two)
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

try:  # prefer the installed package ...
    import jobcredits_plugin  # noqa: F401
except ImportError:  # ... but let the script run from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from prometheus_client import CollectorRegistry

from jobcredits_plugin import Ledger, hookimpl
from jobcredits_plugin.contrib.prometheus import PrometheusMetrics
from jobcredits_plugin.stores import MemoryStore, SQLiteStore

ACCOUNT = "bench"


class NoOp:
    """The hooks PrometheusMetrics implements, doing nothing."""

    @hookimpl
    def on_charge(self, record: Any) -> None:
        pass

    @hookimpl
    def on_reuse(self, record: Any) -> None:
        pass

    @hookimpl
    def on_refund(self, record: Any) -> None:
        pass

    @hookimpl
    def on_expire(self, record: Any) -> None:
        pass

    @hookimpl
    def on_reject(self, error: Any, scope: Any) -> None:
        pass

    @hookimpl
    def on_store_call(self, operation: str, seconds: float) -> None:
        pass


def _per_call(ledger: Ledger, jobs: list[str]) -> float:
    """Seconds per charge + confirm of new jobs, with the cyclic GC kept out."""
    charge, confirm = ledger.charge, ledger.confirm
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        for job in jobs:
            c = charge(ACCOUNT, job)
            confirm(ACCOUNT, job, charge_id=c.record.charge_id)
        elapsed = time.perf_counter() - start
    finally:
        gc.enable()
    return elapsed / len(jobs)


def _interleaved(ledgers: dict[str, Ledger], rounds: int, chunk: int) -> dict[str, list[float]]:
    """Per-call times of each ledger, in chunks that take turns in a rotating order."""
    names = list(ledgers)
    times: dict[str, list[float]] = {name: [] for name in names}
    try:
        for ledger in ledgers.values():  # warm up: first label sets, caches, code paths
            _per_call(ledger, [uuid.uuid4().hex for _ in range(chunk)])
        for n in range(rounds):
            k = n % len(names)
            for name in names[k:] + names[:k]:
                jobs = [uuid.uuid4().hex for _ in range(chunk)]
                times[name].append(_per_call(ledgers[name], jobs))
    finally:
        for ledger in ledgers.values():
            ledger.close()
    return times


def _ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))


def run(quick: bool = False) -> list[dict[str, Any]]:
    """The figures as rows of ``name``, ``figure``, ``unit`` (and ``op``/``target``)."""
    rounds = 15 if quick else 41
    chunk = 200 if quick else 1000
    times = _interleaved(
        {
            "bare": Ledger(MemoryStore()),
            "no-op": Ledger(MemoryStore(), plugins=[NoOp()]),
            "prometheus": Ledger(MemoryStore(), plugins=[PrometheusMetrics(CollectorRegistry())]),
        },
        rounds,
        chunk,
    )
    details = {
        "rounds": rounds,
        "calls_per_sample": chunk,
        **{f"{name}_us_per_call": statistics.median(t) * 1e6 for name, t in times.items()},
    }
    # The same on SQLite, the first store that keeps its jobs: the plugin's
    # cost is the same few microseconds, set against a real commit.
    with tempfile.TemporaryDirectory() as directory:
        sqlite_times = _interleaved(
            {
                "bare": Ledger(SQLiteStore(Path(directory) / "bare.db")),
                "prometheus": Ledger(
                    SQLiteStore(Path(directory) / "prom.db"),
                    plugins=[PrometheusMetrics(CollectorRegistry())],
                ),
            },
            5 if quick else 15,
            40 if quick else 200,
        )
    sqlite_details = {
        f"sqlite_{name}_us_per_call": statistics.median(t) * 1e6 for name, t in sqlite_times.items()
    }
    return [
        {
            "key": "metrics_prometheus_overhead",
            "name": "prometheus: charge+confirm time, plugin vs none (memory)",
            "figure": _ratio(times, "prometheus", "bare"),
            "unit": "x",
            "op": "<=",
            "target": 1.3,
            "details": details,
        },
        {
            "key": "metrics_prometheus_overhead_sqlite",
            "name": "prometheus: charge+confirm time, plugin vs none (SQLite)",
            "figure": _ratio(sqlite_times, "prometheus", "bare"),
            "unit": "x",
            "op": "<=",
            "target": 1.3,
            "details": sqlite_details,
        },
        {
            "key": "metrics_prometheus_vs_noop",
            "name": "prometheus: charge+confirm time, plugin vs no-op plugin",
            "figure": _ratio(times, "prometheus", "no-op"),
            "unit": "x",
            "details": details,
        },
        {
            "key": "metrics_noop_overhead",
            "name": "prometheus: charge+confirm time, no-op plugin vs none",
            "figure": _ratio(times, "no-op", "bare"),
            "unit": "x",
            "details": details,
        },
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run with small sizes")
    args = parser.parse_args(argv)
    rows = run(quick=args.quick)
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        target = f"{r['op']} {r['target']}" if "target" in r else ""
        print(f"{r['name']:<{width}}  {r['figure']:>8.3f} {r['unit']:<3} {target}")
    print(", ".join(f"{k} {v:.2f}" for k, v in rows[0]["details"].items() if k.endswith("_call")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
