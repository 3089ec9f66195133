"""benchmarks/fastapi_bench.py runs and reports every figure (a smoke run:
no timing is asserted, figures are measured by the benchmark, not the tests)."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

BENCH = Path(__file__).resolve().parents[3] / "benchmarks" / "fastapi_bench.py"


def test_quick_run_reports_every_figure() -> None:
    """run(quick=True) returns the bare time, the installed-but-free overhead
    and, for the dependency and the decorator, the added time and the ratio
    for a new job and a follow-up; all finite numbers."""
    spec = importlib.util.spec_from_file_location("jobcredits_fastapi_bench", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        rows = module.run(quick=True)
    finally:
        del sys.modules[spec.name]
    assert len(rows) == 10
    assert all(set(row) == {"name", "figure", "unit"} for row in rows)
    assert all(isinstance(row["figure"], float) and math.isfinite(row["figure"]) for row in rows)
    assert [row["unit"] for row in rows].count("x") == 4
    assert len({row["name"] for row in rows}) == 10
    assert "fastapi: charge_credit dependency, new job: time vs bare" in {r["name"] for r in rows}
