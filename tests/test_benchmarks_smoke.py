"""The benchmark script runs end to end and produces every figure.

Only a smoke test: tiny sizes, and no assertion on any timing (figures are
measured by ``tox -e bench``, never asserted in the test suite).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
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
    "memory_bytes_per_job_defaults",
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
    assert data["memory_breakdown_defaults"], "tracemalloc found nothing held with the defaults"


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


def test_quick_sweep_produces_its_figures(bench: ModuleType, tmp_path: Path) -> None:
    """Section (h), the sweep the performance chart is drawn from: one time
    per size for each subject (``--jobs`` caps the sizes), and not part of the
    default run."""
    assert "sweep" not in bench.DEFAULT_BENCHMARKS
    out = tmp_path / "figures.json"
    assert bench.main(["--quick", "--jobs", "10000", "--json", str(out), "--only", "sweep"]) == 0
    data = json.loads(out.read_text())
    figures = {f["key"]: f for f in data["figures"]}
    assert set(figures) == {"sweep_memory_scaling", "sweep_memory_vs_original"}
    details = figures["sweep_memory_scaling"]["details"]
    assert details["sizes"] == [1_000, 10_000]
    for key in ("memory_s_per_op", "original_s_per_op"):
        assert len(details[key]) == 2
        assert all(math.isfinite(t) and t > 0 for t in details[key]), key
    assert data["measured_at"].endswith("Z")


def _load(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as the module ``<name>``, as the modules import
    each other (``benchmarks/`` on sys.path, where they put it themselves)."""
    sys.path.insert(0, str(RUN_PY.parent))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(RUN_PY.parent))


def _check_rows(rows: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    by_key = {str(row["key"]): row for row in rows}
    assert len(by_key) == len(rows), "two rows share a key"
    for key, row in by_key.items():
        value = row["figure"]
        assert isinstance(value, float), key
        assert math.isfinite(value), key
    return by_key


def test_quick_fastapi_peers_run_produces_its_figures() -> None:
    """benchmarks/fastapi_peers.py: our dependency and decorator against
    slowapi, each in its own app (needs FastAPI and slowapi)."""
    pytest.importorskip("fastapi")
    pytest.importorskip("slowapi")
    rows = _check_rows(_load("fastapi_peers").run(quick=True, log=lambda _msg: None))
    assert set(rows) == {
        "fastapi_dependency_vs_slowapi_new_job",
        "fastapi_dependency_vs_slowapi_follow_up",
        "fastapi_decorator_vs_slowapi_new_job",
        "fastapi_decorator_vs_slowapi_follow_up",
        "fastapi_slowapi_overhead_vs_bare",
    }
    assert all(rows[k].get("target") is not None for k in rows if "_vs_slowapi_" in k)


def test_quick_redis_peers_run_produces_its_figures() -> None:
    """benchmarks/redis_peers.py: ours against Powertools' idempotency and
    ``limits`` on one Redis server (needs the peers and a server: a private
    redis-server when the binary is installed, else JOBCREDITS_TEST_REDIS_URL)."""
    pytest.importorskip("redis")
    pytest.importorskip("aws_lambda_powertools")
    pytest.importorskip("limits")
    private = shutil.which("redis-server") is not None
    if not private and not os.environ.get("JOBCREDITS_TEST_REDIS_URL"):
        pytest.skip("no redis-server binary and no JOBCREDITS_TEST_REDIS_URL")
    rows = _check_rows(_load("redis_peers").run(quick=True, log=lambda _msg: None))
    for clients in ("1", "8"):
        for key in (
            "new_job_vs_powertools_new",
            "follow_up_vs_powertools_replay",
            "follow_up_vs_limits_hit",
        ):
            assert f"redis_{key}_{clients}" in rows
            assert f"redis_{key}_{clients}_cpu" in rows
    if private:  # a server of its own: the server's counts are exact (not timings)
        assert rows["redis_set_nx_round_trips"]["figure"] == 1.0
        assert rows["redis_ours_new_job_round_trips"]["figure"] == 2.0
        assert rows["redis_ours_follow_up_round_trips"]["figure"] == 1.0


def test_django_store_bench_runs_and_counts_the_pinned_statements(tmp_path: Path) -> None:
    """benchmarks/django_store_bench.py end to end at tiny sizes, in a process
    of its own (it configures Django). Its counts are counts, not timings:
    the statements per operation are the ones
    tests/integrations/django/test_store.py pins, a PostgresStore operation
    is one round trip, and a DjangoStore one is its statements plus BEGIN and
    COMMIT."""
    pytest.importorskip("django")
    pytest.importorskip("psycopg")
    # The pinned counts live beside the tests that pin them, a module that
    # needs Django configured (as tests/integrations/django/conftest.py does
    # when that folder is collected; not when this file runs alone).
    from tests.integrations.django.settings import configure_once

    configure_once()
    from tests.integrations.django.test_store import QUERIES
    from tests.stores.conftest import POSTGRES_DEFAULT, POSTGRES_URL_ENV, _server_url

    _server_url(POSTGRES_URL_ENV, POSTGRES_DEFAULT, "PostgreSQL")
    out = tmp_path / "rows.json"
    script = RUN_PY.parent / "django_store_bench.py"
    args = ["--jobs", "2", "--repeats", "1", "--json", str(out)]
    done = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=240,
        env={k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    rows = _check_rows(json.loads(out.read_text()))
    pinned = {
        "new_job": "charge, a new job",
        "confirm": "confirm",
        "follow_up": "charge, a reuse",
        "refund": "refund",
        "grant": "grant",
    }
    for key, op in pinned.items():
        count = QUERIES[op]
        assert rows[f"django_postgres_{key}_ratio"]["figure"] > 0
        assert rows[f"django_sqlite_{key}_ratio"]["figure"] > 0
        assert rows[f"django_postgres_{key}_queries"]["figure"] == count
        # SQLite: one more, the write that takes the file's lock
        assert rows[f"django_sqlite_{key}_queries"]["figure"] == count + 1
        assert rows[f"django_postgres_{key}_round_trips_postgres"]["figure"] == 1
        assert rows[f"django_postgres_{key}_round_trips_django"]["figure"] == count + 2
