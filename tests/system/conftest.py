"""Sizes and the report of the system tests.

``JOBCREDITS_SYSTEM=full`` (what ``tox -e system`` sets) runs the full sizes:
2,000 jobs of 3 calls from 50 concurrent clients per scenario. Without it the
same scenarios run reduced (150 jobs from 20 clients, 80 on DjangoStore, the
throughput comparison on SQLite only), so that the default ``tox`` run exercises every
server and store in well under three minutes on two cores.

Each test adds its figures to one report, printed at the end of the session
and written as JSON to ``--system-report PATH`` (default:
``system-report.json`` in the session's pytest temporary directory).
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

FULL = os.environ.get("JOBCREDITS_SYSTEM", "").lower() == "full"


@dataclass(frozen=True)
class Sizes:
    mode: str
    #: The load of tests/system/test_load.py.
    jobs: int
    clients: int
    #: Jobs per side and round of the throughput comparison (two rounds).
    bench_jobs: int
    bench_clients: int
    #: The stores the throughput comparison runs on.
    bench_stores: tuple[str, ...]
    #: The load's jobs on DjangoStore (the Django example only): the full
    #: load at full size, less in the default run, whose time it would
    #: otherwise add to twice over (SQLite and PostgreSQL).
    django_store_jobs: int


SIZES = (
    Sizes("full", jobs=2000, clients=50, bench_jobs=300, bench_clients=50,
          bench_stores=("sqlite", "redis", "postgres"), django_store_jobs=2000)
    if FULL
    else Sizes("reduced", jobs=150, clients=20, bench_jobs=100, bench_clients=20,
               bench_stores=("sqlite",), django_store_jobs=80)
)  # fmt: skip

#: Seconds each charged or free call sleeps in the load (the upstream model).
LOAD_LATENCY = "0.005"


@pytest.fixture(scope="session")
def sizes() -> Sizes:
    return SIZES


class Report:
    """Figures gathered by the tests, printed and written once at the end."""

    def __init__(self) -> None:
        self.mode = SIZES.mode
        self.load: list[dict[str, Any]] = []
        self.throughput: list[dict[str, Any]] = []
        #: tests/system/test_store_faults.py: one row per store and fault.
        self.store_faults: list[dict[str, Any]] = []

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            # Where and when: the docs' fault chart is drawn from a committed report.
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {
                "python": platform.python_version(),
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
            },
            "load": self.load,
            "throughput": self.throughput,
            "store_faults": self.store_faults,
        }

    def lines(self) -> list[str]:
        out: list[str] = []
        if self.load:
            out.append(f"load ({self.mode}): server/store, jobs, calls, s, statuses, books")
            for row in self.load:
                b = row["books"]
                out.append(
                    f"  {row['server']:7} {row['store']:15} jobs={row['jobs']} "
                    f"calls={row['calls']} {row['seconds']:.1f}s "
                    f"charged={b['charged_jobs']} debited={b['debited']} "
                    f"refunded={b['refunded']} reused={b['reused']} 402={b['rejected']} "
                    f"409={b['conflicts']} statuses={row['statuses']} -> balanced"
                )
        if self.throughput:
            out.append(f"throughput ({self.mode}): charged route vs free twin, same server and run")
            for row in self.throughput:
                out.append(
                    f"  {row['server']:7} {row['store']:8} "
                    f"free {row['free']['calls_per_second']:7.1f}/s "
                    f"p50 {row['free']['p50_ms']:6.2f} p99 {row['free']['p99_ms']:7.2f} ms | "
                    f"charged {row['charged']['calls_per_second']:7.1f}/s "
                    f"p50 {row['charged']['p50_ms']:6.2f} p99 {row['charged']['p99_ms']:7.2f} ms"
                    f" | throughput x{row['throughput_ratio']:.2f} "
                    f"p50 x{row['p50_ratio']:.2f} p99 x{row['p99_ratio']:.2f} "
                    f"cpu/call x{row['cpu_ratio']:.2f}"
                )
        if self.store_faults:
            out.append(
                f"store faults ({self.mode}): store, fault, calls/s, faults, events checked, "
                "calls unanswered (StoreUnavailable), max latency / bound"
            )
            for row in self.store_faults:
                out.append(
                    f"  {row['store']:13} {row['fault']:22} {row['calls_per_second']:7.1f}/s "
                    f"faults={row['faults']} events={row['events_checked']} "
                    f"unavailable={row['unavailable']} max={row['max_latency']:.2f}s "
                    f"bound={row['bound']:.1f}s -> audited"
                )
        return out


_REPORT = Report()


@pytest.fixture(scope="session")
def system_report(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Report]:
    yield _REPORT
    option = request.config.getoption("system_report", default=None)
    path = Path(option) if option else tmp_path_factory.getbasetemp() / "system-report.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_REPORT.as_dict(), indent=2) + "\n")
    _REPORT.path = path  # type: ignore[attr-defined]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    lines = _REPORT.lines()
    if not lines:
        return
    terminalreporter.section("jobcredits system tests")
    for line in lines:
        terminalreporter.write_line(line)
    path = getattr(_REPORT, "path", None)
    if path is not None:
        terminalreporter.write_line(f"report: {path}")
