"""The benchmark script runs end to end and produces every figure.

Only a smoke test: tiny sizes, and no assertion on any timing (figures are
measured by ``tox -e bench``, never asserted in the test suite).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

RUN_PY = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"

EXPECTED = {
    "memory_scaling",
    "memory_vs_original",
    "original_scaling",
    "memory_bytes_per_job",
    "sqlite_charge_rate",
    "sqlite_charge_rate_balances",
    "sqlite_charge_rate_journal",
}


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("jobcredits_benchmarks_run", RUN_PY)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_quick_run_produces_every_figure(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    # The shared stores' benchmarks (section (e)) need their servers and have
    # their own smoke tests; everything else runs here.
    parts = ["--only", "time", "--only", "bytes", "--only", "sqlite", "--only", "adapters"]
    assert bench.main(["--quick", "--jobs", "200", "--json", str(out), *parts]) == 0
    data = json.loads(out.read_text())
    figures = {f["key"]: f for f in data["figures"]}
    # The adapter figures (section (d)) depend on which frameworks are installed.
    core = {k for k, f in figures.items() if f["details"].get("section") != "adapters"}
    assert core == EXPECTED
    for key, figure in figures.items():
        value = figure["value"]
        assert isinstance(value, float), key
        assert math.isfinite(value), key
        if key in core:  # a tiny, noisy adapter run may even measure a negative overhead
            assert value > 0, key
        assert figure["status"] in {"PASS", "MISS", "info"}, key
    assert data["memory_breakdown"], "tracemalloc found no allocation held by the jobs"


def test_quick_metrics_run_produces_its_figures(bench: ModuleType, tmp_path: Path) -> None:
    """Section (f), the Prometheus plugin's cost per charge (needs prometheus_client)."""
    pytest.importorskip("prometheus_client")
    out = tmp_path / "figures.json"
    assert bench.main(["--quick", "--json", str(out), "--only", "metrics"]) == 0
    figures = {f["key"]: f for f in json.loads(out.read_text())["figures"]}
    assert set(figures) == {
        "metrics_prometheus_overhead",
        "metrics_prometheus_overhead_sqlite",
        "metrics_prometheus_vs_noop",
        "metrics_noop_overhead",
    }
    for key, figure in figures.items():
        assert math.isfinite(figure["value"]), key
        assert figure["value"] > 0, key


def test_quick_journal_run_produces_its_figures(bench: ModuleType, tmp_path: Path) -> None:
    """Section (g), the journal's cost per charge. Memory and SQLite always;
    Redis and PostgreSQL when their servers answer (their figures are then
    required: with CI=true the servers are part of the run)."""
    out = tmp_path / "figures.json"
    assert bench.main(["--quick", "--json", str(out), "--only", "journal"]) == 0
    figures = {f["key"]: f for f in json.loads(out.read_text())["figures"]}
    required = {
        "journal_memory_ratio",
        "journal_sqlite_ratio",
        "journal_memory_entries_held",
        "journal_memory_bytes_per_entry",
    }
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        # the servers run on CI; the drivers are there unless the env omits them
        if importlib.util.find_spec("redis") is not None:
            required.add("journal_redis_ratio")
        if importlib.util.find_spec("psycopg") is not None:
            required.add("journal_postgres_ratio")
    assert required <= set(figures)
    held = figures["journal_memory_entries_held"]
    assert held["value"] == held["target"]  # bounded by journal_limit: a count, not a timing
    for key, figure in figures.items():
        assert math.isfinite(figure["value"]), key
        if key.endswith("_ratio"):
            assert figure["value"] > 0, key
