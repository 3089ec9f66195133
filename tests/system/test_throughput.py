"""What charging costs a real server: each example app's charged route against
its free twin (the same handler without the decorator or dependency), on one
server process tree, in one run.

The free and the charged route get the same load, in alternating rounds (free,
charged, free, charged) so that a slow spell of the machine hits both sides.
The figures are ratios (charged / free) of throughput, of the p50 and p99
latencies and of the server's CPU time per call, reported, never asserted:
timings belong in reports, not in pass/fail checks (see docs/performance.md).

The load here is the lean client of ``_bench.py``, not httpx: on two cores
shared with the server, httpx's own CPU per call would cap the throughput of
both routes alike and hide the difference. The server CPU per call counts the
worker processes only (the SQLite store runs inside them; Redis and PostgreSQL
run in their own servers and are not counted).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("httpx")  # the servers' readiness checks use it

from tests.system._bench import BenchResult, bench_sync, cpu_seconds
from tests.system._servers import KINDS, grant, provision_store, require, start_server
from tests.system.conftest import SIZES, Report, Sizes

pytestmark = pytest.mark.slow

ROUNDS = 2
API_KEY = "key-bench"


def figures(results: list[BenchResult], cpu: float) -> dict[str, Any]:
    """Throughput, latency percentiles and server CPU per call over the rounds."""
    merged = BenchResult.merge(results)
    return {
        "calls": merged.calls,
        "seconds": round(merged.seconds, 3),
        "calls_per_second": round(merged.throughput(), 1),
        "p50_ms": round(merged.percentile(50) * 1000, 2),
        "p99_ms": round(merged.percentile(99) * 1000, 2),
        "server_cpu_ms_per_call": round(cpu / merged.calls * 1000, 3),
        "statuses": {str(k): v for k, v in merged.statuses.items()},
        "charges": dict(merged.charges),
    }


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else math.nan


@pytest.mark.timeout(180)
# The reduced run compares on SQLite only (the load tests cover every store).
@pytest.mark.parametrize("store", SIZES.bench_stores)
@pytest.mark.parametrize("kind", KINDS)
def test_charged_route_against_its_free_twin(
    kind: str, store: str, tmp_path: Path, sizes: Sizes, system_report: Report
) -> None:
    """Reports throughput, p50/p99 and server CPU per call of the charged route
    over its free twin (no timing assertion: only that every call of both
    sides was served, and every charged job charged once)."""
    require(kind)
    jobs, clients = sizes.bench_jobs, sizes.bench_clients
    account = "acct-bench"
    sides: dict[str, list[BenchResult]] = {"free": [], "charged": []}
    cpu = {"free": 0.0, "charged": 0.0}
    # No upstream latency: what is left is the framework, the adapter and the store.
    env = {"EXAMPLE_API_KEYS": f"{API_KEY}={account}", "SUMMARIZE_LATENCY": "0"}
    with provision_store(store, tmp_path) as url:
        grant(url, {account: 10 * (ROUNDS + 1) * jobs})
        with start_server(kind, url, env=env, log_dir=tmp_path) as server:
            paths = {"free": (server.free_path,), "charged": server.charged_paths}
            for side in sides:  # warm up: imports, connection pools, caches
                bench_sync(server.base_url, paths[side], jobs=max(10, jobs // 5), clients=clients)
            pids = server.worker_pids()
            for _ in range(ROUNDS):
                for side in sides:
                    before = cpu_seconds(pids)
                    sides[side].append(
                        bench_sync(server.base_url, paths[side], jobs=jobs, clients=clients)
                    )
                    cpu[side] += cpu_seconds(pids) - before
            assert server.worker_pids() == pids, "a worker died during the comparison"

    calls = ROUNDS * jobs * 3
    free, charged = figures(sides["free"], cpu["free"]), figures(sides["charged"], cpu["charged"])
    assert free["statuses"] == {"200": calls}, free
    assert charged["statuses"] == {"200": calls}, charged
    assert charged["charges"] == {"charged": ROUNDS * jobs, "reused": calls - ROUNDS * jobs}
    row = {
        "server": kind,
        "store": store,
        "jobs_per_round": jobs,
        "rounds": ROUNDS,
        "clients": clients,
        "free": free,
        "charged": charged,
        # Charged over free: below 1 for throughput, above 1 for latency and CPU, is the cost.
        "throughput_ratio": ratio(charged["calls_per_second"], free["calls_per_second"]),
        "p50_ratio": ratio(charged["p50_ms"], free["p50_ms"]),
        "p99_ratio": ratio(charged["p99_ms"], free["p99_ms"]),
        "cpu_ratio": ratio(charged["server_cpu_ms_per_call"], free["server_cpu_ms_per_call"]),
    }
    system_report.throughput.append(row)
    print(
        f"\n{kind}/{store}: free {free['calls_per_second']}/s p50 {free['p50_ms']} ms "
        f"p99 {free['p99_ms']} ms cpu {free['server_cpu_ms_per_call']} ms/call; charged "
        f"{charged['calls_per_second']}/s p50 {charged['p50_ms']} ms p99 {charged['p99_ms']} ms "
        f"cpu {charged['server_cpu_ms_per_call']} ms/call; throughput x{row['throughput_ratio']} "
        f"p50 x{row['p50_ratio']} p99 x{row['p99_ratio']} cpu x{row['cpu_ratio']}"
    )
