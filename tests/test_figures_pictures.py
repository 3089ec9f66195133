"""The docs' charts are drawn from the committed figures, and still can be.

``docs/_pictures/figures.py`` draws docs/_static/perf-*.svg and faults.svg
from the measured figures committed in ``docs/_pictures/data/`` (see its
docstring for the commands that measure them). Each SVG names the sha256 of
the data it was drawn from: a data file re-measured without redrawing, or a
chart edited by hand, fails here. Rebuild with ``tox -e pictures``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "docs" / "_pictures" / "data"
STATIC = ROOT / "docs" / "_static"

#: Each chart and the data file it is drawn from.
CHARTS = {
    "perf-scaling.svg": "benchmarks.json",
    "perf-overhead.svg": "benchmarks.json",
    "perf-stores.svg": "benchmarks.json",
    "faults.svg": "store-faults.json",
}


def _figures() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "_figures_picture", ROOT / "docs" / "_pictures" / "figures.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sha256(name: str) -> str:
    return hashlib.sha256((DATA / name).read_bytes()).hexdigest()


@pytest.mark.parametrize("chart", sorted(CHARTS))
def test_the_committed_chart_was_drawn_from_the_committed_data(chart: str) -> None:
    svg = (STATIC / chart).read_text(encoding="utf-8")
    assert f"sha256 {_sha256(CHARTS[chart])}" in svg, (
        f"docs/_static/{chart} was not drawn from docs/_pictures/data/{CHARTS[chart]}: "
        "run `tox -e pictures` (or python docs/_pictures/figures.py) and commit the SVGs"
    )


def test_the_data_holds_what_the_charts_show() -> None:
    bench = json.loads((DATA / "benchmarks.json").read_text(encoding="utf-8"))
    figures = {f["key"]: f for f in bench["figures"]}
    sweep = figures["sweep_memory_scaling"]["details"]
    assert sweep["sizes"] == [1_000, 10_000, 100_000, 1_000_000]
    assert "flask_limiter_overhead_new_job_us" in figures
    assert "fastapi_slowapi_overhead_vs_bare" in figures
    faults = json.loads((DATA / "store-faults.json").read_text(encoding="utf-8"))
    assert faults["store_faults"], "no store fault scenario in the data"
    for row in faults["store_faults"]:
        assert {"store", "fault", "calls_per_second", "max_latency_by_op", "bound"} <= set(row)


def test_the_script_draws_every_chart_from_the_committed_data(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the pictures group (matplotlib) is not installed")
    written = _figures().draw_all(tmp_path)
    assert sorted(p.name for p in written) == sorted(CHARTS)
    for path in written:
        svg = path.read_text(encoding="utf-8")
        assert svg.lstrip().startswith("<?xml"), path.name
        assert f"sha256 {_sha256(CHARTS[path.name])}" in svg, path.name
        assert "<dc:date>" not in svg, f"{path.name} is stamped with a date"
