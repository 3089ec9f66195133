"""Draw the docs' charts from measured figures: docs/_static/perf-*.svg, faults.svg.

The figures are committed next to this script, in ``data/``, as the measuring
commands wrote them:

- ``data/benchmarks.json``: ``python benchmarks/run.py --sweep --json
  docs/_pictures/data/benchmarks.json`` (the benchmarks, plus the sweep from
  1k to 1M live jobs);
- ``data/store-faults.json``: ``pytest tests/system/test_store_faults.py
  --system-report docs/_pictures/data/store-faults.json`` (the store fault
  scenarios; reduced sizes unless ``JOBCREDITS_SYSTEM=full``).

This script only draws: ``tox -e pictures`` redraws the charts from the
committed data without measuring anything (measuring takes minutes and
depends on the machine; the data files say which machine and when). Each SVG
names the sha256 of the data it was drawn from in its description, and
``tests/test_figures_pictures.py`` checks that the committed SVGs were drawn
from the committed data. The output is deterministic for a given matplotlib
(no date, fixed ids, text kept as text).

Needs matplotlib (the ``pictures`` dependency group).
"""

from __future__ import annotations

import hashlib
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data"
STATIC = ROOT / "docs" / "_static"
BENCHMARKS = DATA / "benchmarks.json"
STORE_FAULTS = DATA / "store-faults.json"

OURS = "#2563eb"
THEIRS = "#9ca3af"
BOUND = "#dc2626"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams.update(
        {
            # Deterministic SVG: fixed element ids, text as <text> (not glyph
            # paths, which depend on the fonts installed), no date.
            "svg.hashsalt": "jobcredits-plugin",
            "svg.fonttype": "none",
            "font.family": "sans-serif",
            "font.size": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
        }
    )
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, name: str, source: Path, out: Path) -> Path:
    path = out / name
    fig.savefig(
        path,
        format="svg",
        bbox_inches="tight",
        metadata={
            "Date": None,
            "Creator": "docs/_pictures/figures.py",
            "Description": f"drawn from {source.name} sha256 {_sha256(source)}",
        },
    )
    _pyplot().close(fig)
    return path


def _figures(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["key"]: f for f in data["figures"]}


def _when(data: dict[str, Any]) -> str:
    m = data["machine"]
    return f"measured {data.get('measured_at', '?')[:10]}, CPython {m['python']}, {m['cpus']} CPUs"


# -- performance ------------------------------------------------------------------


def draw_scaling(data: dict[str, Any], source: Path, out: Path) -> Path:
    """Time per new job (charge + confirm) against live jobs, log-log: the
    memory store beside the original's algorithm (run.py's sweep, h)."""
    plt = _pyplot()
    d = _figures(data)["sweep_memory_scaling"]["details"]
    sizes = d["sizes"]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for key, label, colour, marker in (
        ("original_s_per_op", "the original module's algorithm (O(n) scan per call)", THEIRS, "s"),
        ("memory_s_per_op", "MemoryStore (heap of deadlines)", OURS, "o"),
    ):
        values = [v * 1e6 for v in d[key]]
        ax.plot(sizes, values, marker=marker, color=colour, label=label, linewidth=2)
        for x, y in zip(sizes, values, strict=True):
            text = f"{y:,.0f} µs" if y >= 100 else f"{y:.1f} µs"
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(0, 7), ha="center")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
    ax.set_xlabel("live jobs in the store")
    ax.set_ylabel("time per new job (charge + confirm)")
    ax.set_title(f"Time per call against live jobs ({_when(data)})", fontsize=9)
    ax.legend(frameon=False, loc="upper left")
    ax.margins(x=0.08, y=0.25)
    return _save(fig, "perf-scaling.svg", source, out)


def _overhead_rows(figures: dict[str, dict[str, Any]]) -> list[tuple[str, str, float, bool]]:
    """(framework, side, microseconds added per request, ours?) from the
    adapter benchmarks: Flask beside Flask-Limiter, FastAPI beside slowapi."""
    rows: list[tuple[str, str, float, bool]] = []
    for slug, what in (("new_job", "new job"), ("follow_up", "follow-up")):
        key = f"flask_overhead_{slug}_us"
        if key in figures:
            rows.append(("Flask", f"@charges_credit, {what}", figures[key]["value"], True))
    theirs = figures.get("flask_limiter_overhead_new_job_us")
    if theirs is not None:
        rows.append(("Flask", "Flask-Limiter @limit", theirs["value"], False))
    peers = figures.get("fastapi_slowapi_overhead_vs_bare")
    if peers is not None:
        per = peers["details"]["cpu_s_per_request"]

        def added(side: str) -> float:
            return statistics.median(s - b for s, b in zip(per[side], per["bare"], strict=True))

        for side, label in (
            ("dependency/new", "Depends(charge_credit()), new job"),
            ("dependency/follow-up", "Depends(charge_credit()), follow-up"),
            ("decorator/new", "@charges_credit, new job"),
            ("decorator/follow-up", "@charges_credit, follow-up"),
        ):
            rows.append(("FastAPI", label, added(side) * 1e6, True))
        rows.append(("FastAPI", "slowapi @limit", added("slowapi") * 1e6, False))
    return rows


def draw_overhead(data: dict[str, Any], source: Path, out: Path) -> Path:
    """Time added per request by our adapters beside the framework's usual
    rate limiter (each app alone, the bare request subtracted)."""
    plt = _pyplot()
    rows = _overhead_rows(_figures(data))
    frameworks = list(dict.fromkeys(f for f, *_ in rows))
    heights = [sum(1 for r in rows if r[0] == f) for f in frameworks]
    fig, axes = plt.subplots(
        len(frameworks),
        1,
        figsize=(6.4, 0.42 * len(rows) + 1.2),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    top = max(r[2] for r in rows)
    for ax, framework in zip(axes[:, 0], frameworks, strict=True):
        mine = [r for r in rows if r[0] == framework][::-1]
        labels = [r[1] for r in mine]
        values = [r[2] for r in mine]
        colours = [OURS if r[3] else THEIRS for r in mine]
        bars = ax.barh(labels, values, color=colours)
        ax.bar_label(bars, [f"{v:.0f} µs" for v in values], padding=3)
        ax.set_xlim(0, top * 1.2)
        ax.set_title(framework, loc="left", fontsize=9, fontweight="bold")
    axes[-1, 0].set_xlabel("time added per request (µs, the bare request subtracted)")
    fig.suptitle(
        f"Overhead per request beside the usual rate limiter ({_when(data)})",
        fontsize=9,
        x=0.02,
        ha="left",
    )
    fig.tight_layout()
    return _save(fig, "perf-overhead.svg", source, out)


def _store_rows(figures: dict[str, dict[str, Any]]) -> list[tuple[str, float]]:
    """(label, charges per second / raw command per second)."""
    wanted = [
        ("sqlite_charge_rate", "SQLite, journal off\n(vs INSERT)"),
        ("sqlite_charge_rate_journal", "SQLite, journal on (default)\n(vs INSERT)"),
    ]
    for f in figures.values():
        name = f["label"]
        if name.startswith("redis: charge throughput vs SET NX, "):
            wanted.append((f["key"], f"Redis, {name.rsplit(', ', 1)[1]}\n(vs SET NX PX)"))
        elif name.startswith("postgres: ledger.charge vs bare INSERT, "):
            clients = name.rsplit(", ", 1)[1]
            wanted.append((f["key"], f"PostgreSQL, {clients}\n(vs INSERT ON CONFLICT)"))
    return [(label, figures[key]["value"]) for key, label in wanted if key in figures]


def draw_stores(data: dict[str, Any], source: Path, out: Path) -> Path:
    """Charge throughput of each store as a fraction of its server's raw
    write (the floor a charge cannot beat: one write, no rules)."""
    plt = _pyplot()
    rows = _store_rows(_figures(data))
    fig, ax = plt.subplots(figsize=(6.4, 0.5 * len(rows) + 1.0))
    labels = [r[0] for r in rows][::-1]
    values = [r[1] for r in rows][::-1]
    bars = ax.barh(labels, values, color=OURS)
    ax.bar_label(bars, [f"{v:.2f}x" for v in values], padding=3)
    ax.axvline(1.0, color=THEIRS, linestyle="--", linewidth=1)
    ax.text(1.0, -0.6, " the raw command = 1", color="#4b5563", va="center")
    ax.set_xlim(0, max(1.2, max(values) * 1.2))
    ax.set_xlabel("ledger.charge throughput / the raw command's throughput")
    ax.set_title(f"Store throughput beside the raw command ({_when(data)})", fontsize=9)
    fig.tight_layout()
    return _save(fig, "perf-stores.svg", source, out)


# -- reliability ------------------------------------------------------------------

#: The calls of the store fault scenarios that answer a client's request (a
#: prune and a journal turn are several round trips, bounded separately).
CALL_OPS = ("charge", "confirm", "refund", "grant")


#: The faults of tests/system/test_store_faults.py, by the name its report gives them.
FAULTS = {
    "client-kill": "CLIENT KILL every client, every 0.15 s",
    "sigkill-restart": "SIGKILL, restart (AOF replayed)",
    "sigstop": "SIGSTOP 1.2 s, past the timeout",
    "lost-answers": "answers lost after the commit",
    "terminate-backends": "pg_terminate_backend every 0.3 s",
    "proxy-freeze": "connection frozen 2.5 s, past the deadline",
    "master-killed-failover": "a master SIGKILLed, replica promoted",
}
STORES = {"redis": "Redis", "postgres": "PostgreSQL", "redis-cluster": "Redis Cluster"}


def _fault_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for row in data["store_faults"]:
        by_op = row["max_latency_by_op"]
        calls = [v for op, v in by_op.items() if op.removeprefix("a") in CALL_OPS]
        store = STORES.get(row["store"], row["store"])
        rows.append(
            {
                "label": f"{store}: {FAULTS.get(row['fault'], row['fault'])}",
                "per_second": row["calls_per_second"],
                "calls": row["calls"],
                "max_call": max(calls, default=row["max_latency"]),
                "bound": row["bound"],
                "unavailable": row["unavailable"],
            }
        )
    return rows


def draw_faults(data: dict[str, Any], source: Path, out: Path) -> Path:
    """For each store fault scenario: the load held through it, and the
    slowest call against the store's bound. Every row passed the audit:
    its books are exact (a failed audit writes no row)."""
    plt = _pyplot()
    from matplotlib.transforms import blended_transform_factory

    rows = _fault_rows(data)[::-1]
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(8.0, 0.42 * len(rows) + 1.4), sharey=True, gridspec_kw={"wspace": 0.08}
    )
    labels = [r["label"] for r in rows]
    bars = left.barh(labels, [r["per_second"] for r in rows], color=OURS)
    left.bar_label(
        bars,
        [
            f"{r['per_second']:,.0f}/s"
            + (f", {r['unavailable']:,} unanswered" if r["unavailable"] else "")
            for r in rows
        ],
        padding=3,
    )
    left.set_xlabel("calls per second held during the fault")
    left.set_xlim(0, max(r["per_second"] for r in rows) * 1.6)
    bars = right.barh(labels, [r["max_call"] for r in rows], color=OURS)
    right.bar_label(bars, [f"{r['max_call']:.2f} s" for r in rows], padding=3)
    beside = blended_transform_factory(right.transAxes, right.transData)
    for y in range(len(rows)):
        right.text(1.03, y, "books exact", transform=beside, va="center", color="#15803d")
    right.scatter(
        [r["bound"] for r in rows], labels, marker="|", s=200, color=BOUND, label="bound per call"
    )
    right.set_xlabel("slowest call (s), against the store's bound")
    right.set_xlim(0, max(max(r["bound"], r["max_call"]) for r in rows) * 1.15)
    right.legend(frameon=False, loc="lower left", bbox_to_anchor=(0.0, 1.0))
    mode = data.get("mode", "?")
    fig.suptitle(
        f"Store faults under load ({mode} run, {data.get('measured_at', '?')[:10]}): "
        "every scenario's books exact, every hook once",
        fontsize=9,
        x=0.02,
        ha="left",
    )
    return _save(fig, "faults.svg", source, out)


PERFORMANCE: list[Callable[[dict[str, Any], Path, Path], Path]] = [
    draw_scaling,
    draw_overhead,
    draw_stores,
]
RELIABILITY: list[Callable[[dict[str, Any], Path, Path], Path]] = [draw_faults]
#: Each data file and the charts drawn from it.
SOURCES = [(BENCHMARKS, PERFORMANCE), (STORE_FAULTS, RELIABILITY)]


def draw_all(out: Path = STATIC) -> list[Path]:
    """Every chart, from the committed data, into ``out``."""
    written = []
    for source, drawers in SOURCES:
        data = json.loads(source.read_text(encoding="utf-8"))
        written += [draw(data, source, out) for draw in drawers]
    return written


def main() -> int:
    for path in draw_all():
        print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
