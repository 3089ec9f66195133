"""The benchmarks of jobcredits-plugin, run by ``tox -e bench``.

Every figure is a ratio against a baseline measured in the same run (the same
process, the same machine, interleaved with the measured code), so that the
figures mean the same thing on a laptop and on a CI runner. The one exception
is the memory figure, bytes held per live job, which tracemalloc counts
exactly rather than times.

    python benchmarks/run.py                 # the full run (about a minute)
    python benchmarks/run.py --quick         # a smoke run with small sizes
    python benchmarks/run.py --json out.json # also write the figures as JSON
    python benchmarks/run.py --only adapters # one part: time, bytes, sqlite, adapters, stores,
                                             # metrics, journal, sweep
    python benchmarks/run.py --sweep         # everything, plus (h): time per call from 1k
                                             # to 1M live jobs (the performance picture's curve)

The exit code is 0 even when a target is missed: this is a report, not a test.
See docs/performance.md for what each figure means and how it is measured.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import linecache
import math
import os
import platform
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

try:  # prefer the installed package (tox installs it) ...
    import jobcredits_plugin
except ImportError:  # ... but let `python benchmarks/run.py` work from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    import jobcredits_plugin

from jobcredits_plugin import Ledger
from jobcredits_plugin.stores import MemoryStore, SQLiteStore
from jobcredits_plugin.testing import FakeClock

# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """Sizes of one run. ``full()`` is what the targets are set for."""

    accounts: int = 100
    # (a) memory store: time per charge + confirm at two store sizes
    small_jobs: int = 1_000
    large_jobs: int = 100_000
    ops: int = 2_000  # timed charge + confirm pairs per repeat
    repeats: int = 7
    # (a) the port of the original: every call scans every job, so few ops
    port_ops_large: int = 30
    port_ops_small: int = 300
    port_repeats: int = 5
    # (b) bytes per live job
    memory_jobs: int = 100_000
    breakdown_lines: int = 12
    # (c) SQLite
    sqlite_ops: int = 2_000  # per side and repeat ...
    sqlite_chunk: int = 250  # ... timed in chunks of this many, sides alternating
    sqlite_repeats: int = 9
    # (d) web adapters (benchmarks/adapters.py and friends): their own sizes
    adapters_quick: bool = False
    # (h) the sweep's largest store
    sweep_jobs: int = 1_000_000

    @classmethod
    def full(cls) -> Config:
        return cls()

    @classmethod
    def quick(cls) -> Config:
        return cls(
            large_jobs=10_000,
            ops=500,
            repeats=3,
            port_ops_large=10,
            port_ops_small=50,
            port_repeats=3,
            memory_jobs=10_000,
            sqlite_ops=300,
            sqlite_chunk=100,
            sqlite_repeats=3,
            adapters_quick=True,
            sweep_jobs=10_000,
        )

    def with_jobs(self, jobs: int) -> Config:
        """Scale the store sizes to ``jobs`` live jobs (for smoke tests)."""
        if jobs < 2:
            raise ValueError("--jobs must be at least 2")
        return replace(
            self,
            large_jobs=jobs,
            small_jobs=max(1, min(self.small_jobs, jobs // 10)),
            memory_jobs=jobs,
            sweep_jobs=jobs,
            accounts=max(1, min(self.accounts, jobs // 10)),
        )


# --------------------------------------------------------------------------------------
# Figures and the report
# --------------------------------------------------------------------------------------


@dataclass
class Figure:
    """One measured figure and the target it is held to (if any)."""

    key: str
    label: str
    value: float
    unit: str
    #: "<=" or ">=" against ``target``; None for a figure reported for context.
    op: str | None = None
    target: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        if self.op is None or self.target is None:
            return "info"
        ok = self.value <= self.target if self.op == "<=" else self.value >= self.target
        return "PASS" if ok else "MISS"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status
        return data


def _fmt(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:,.2f}x" if value < 100 else f"{value:,.0f}x"
    if unit == "B":
        return f"{value:,.0f} B"
    return f"{value:.3g} {unit}"


def format_table(figures: Sequence[Figure]) -> str:
    rows = [("benchmark", "figure", "target", "result")]
    for f in figures:
        target = "-" if f.target is None else f"{f.op} {_fmt(f.target, f.unit)}"
        rows.append((f.label, _fmt(f.value, f.unit), target, f.status))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for n, row in enumerate(rows):
        lines.append(
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Timing helpers
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Collect now, then keep the cyclic GC out of the timed region: a full
    collection over 100k live records would land in one sample at random."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _timed(fn: Callable[[], int]) -> float:
    """Seconds per operation of ``fn``, which runs and returns its op count."""
    with _gc_paused():
        t0 = time.perf_counter()
        count = fn()
        elapsed = time.perf_counter() - t0
    return elapsed / count


def _job_ids(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


def _accounts(n: int) -> list[str]:
    return [f"account-{i:04d}" for i in range(n)]


def _pairs(accounts: Sequence[str], n: int) -> list[tuple[str, str]]:
    return [(accounts[i % len(accounts)], job) for i, job in enumerate(_job_ids(n))]


def _load_sibling(name: str) -> Any:
    """Import ``benchmarks/<name>.py`` by path: this file may itself have been
    loaded by path (the smoke test), with ``benchmarks/`` not on sys.path."""
    path = Path(__file__).resolve().parent / f"{name}.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location(f"jobcredits_benchmarks_{name}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    try:
        spec.loader.exec_module(module)
    except ImportError:
        sys.modules.pop(spec.name, None)
        raise
    return module


# --------------------------------------------------------------------------------------
# (a) The original's algorithm, ported as is
# --------------------------------------------------------------------------------------


#: The port of the original ``job-credits.js`` (benchmarks/_original.py, which
#: tests/test_original.py replays against the ledger): one dict keyed by
#: ``f"{install}|{job}"``, a scan of every entry on every ``lookup_job`` and
#: ``mark_job_charged``, and lookup and mark as two separate steps (that is its
#: race, kept here).
OriginalJobCredits = _load_sibling("_original").OriginalJobCredits


# --------------------------------------------------------------------------------------
# (a) Time per new charge + confirm
# --------------------------------------------------------------------------------------


class _MemorySubject:
    """A ledger on a MemoryStore holding ``size`` live (confirmed) jobs."""

    def __init__(self, size: int, accounts: Sequence[str]) -> None:
        self.clock = FakeClock()
        self.store = MemoryStore()
        self.ledger = Ledger(self.store, clock=self.clock)
        self.accounts = accounts
        self.size = size
        charge, confirm = self.ledger.charge, self.ledger.confirm
        for acct, job in _pairs(accounts, size):
            confirm(acct, job, charge_id=charge(acct, job).record.charge_id)
        assert len(self.store) == size

    def time_ops(self, n: int) -> float:
        pairs = _pairs(self.accounts, n)
        charge, confirm = self.ledger.charge, self.ledger.confirm

        def run() -> int:
            for acct, job in pairs:
                c = charge(acct, job)
                confirm(acct, job, charge_id=c.record.charge_id)
            return len(pairs)

        per_op = _timed(run)
        # Untimed: check the work was done, then bring the store back to size.
        assert len(self.store) == self.size + n
        for acct, job in pairs:
            self.ledger.refund(acct, job)
        assert len(self.store) == self.size
        return per_op


class _PortSubject:
    """The original's algorithm holding ``size`` live jobs."""

    def __init__(self, size: int, accounts: Sequence[str]) -> None:
        self.clock = FakeClock()
        self.port = OriginalJobCredits(self.clock)
        self.accounts = accounts
        self.size = size
        now = self.port.now_ms()
        # Filled directly: marking one by one would scan O(n^2) entries for
        # the same end state.
        for acct, job in _pairs(accounts, size):
            self.port.jobs[OriginalJobCredits.key(acct, job)] = {
                "backend": None,
                "tier": None,
                "charged_at": now,
                "refunded": False,
            }

    def time_ops(self, n: int) -> float:
        pairs = _pairs(self.accounts, n)
        lookup, mark = self.port.lookup_job, self.port.mark_job_charged

        def run() -> int:
            # The original relay's request path for a new job: look it up,
            # find nothing, charge, mark it charged.
            for acct, job in pairs:
                if lookup(acct, job) is None:
                    mark(acct, job, backend=None, tier=None)
            return len(pairs)

        per_op = _timed(run)
        assert len(self.port.jobs) == self.size + n
        for acct, job in pairs:
            del self.port.jobs[OriginalJobCredits.key(acct, job)]
        return per_op


def _paired(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """The median of per-repeat ratios. Both sides of a ratio are timed back to
    back in each repeat, so slow drift of the machine cancels out."""
    return statistics.median([n / d for n, d in zip(numerators, denominators, strict=True)])


def bench_memory_time(cfg: Config, log: Callable[[str], None]) -> list[Figure]:
    accounts = _accounts(cfg.accounts)
    n_s, n_l = f"{cfg.small_jobs:,}", f"{cfg.large_jobs:,}"
    log(f"(a) filling memory stores with {n_s} and {n_l} live jobs")
    small = _MemorySubject(cfg.small_jobs, accounts)
    large = _MemorySubject(cfg.large_jobs, accounts)
    small.time_ops(min(cfg.ops, 200))  # warm-up: caches, lazy imports
    large.time_ops(min(cfg.ops, 200))
    t_small: list[float] = []
    t_large: list[float] = []
    for _ in range(cfg.repeats):
        t_small.append(small.time_ops(cfg.ops))
        t_large.append(large.time_ops(cfg.ops))
    del small

    log(f"(a) timing the port of the original at {n_s} and {n_l} jobs")
    port_small = _PortSubject(cfg.small_jobs, accounts)
    port_large = _PortSubject(cfg.large_jobs, accounts)
    port_small.time_ops(min(cfg.port_ops_small, 20))
    port_large.time_ops(min(cfg.port_ops_large, 3))
    p_small: list[float] = []
    p_large: list[float] = []
    t_beside: list[float] = []  # ours at the large size, timed beside the port
    for _ in range(cfg.port_repeats):
        p_small.append(port_small.time_ops(cfg.port_ops_small))
        p_large.append(port_large.time_ops(cfg.port_ops_large))
        t_beside.append(large.time_ops(cfg.ops))
    del port_small, port_large, large

    return [
        Figure(
            "memory_scaling",
            f"memory: charge+confirm time/op, {n_l} vs {n_s} live jobs",
            _paired(t_large, t_small),
            "x",
            "<=",
            1.5,
            {
                "small_jobs": cfg.small_jobs,
                "large_jobs": cfg.large_jobs,
                "ops": cfg.ops,
                "small_s_per_op": t_small,
                "large_s_per_op": t_large,
            },
        ),
        Figure(
            "memory_vs_original",
            f"memory: speed-up over the original's algorithm at {n_l} jobs",
            _paired(p_large, t_beside),
            "x",
            ">=",
            20.0,
            {
                "jobs": cfg.large_jobs,
                "port_ops": cfg.port_ops_large,
                "port_s_per_op": p_large,
                "ours_s_per_op": t_beside,
            },
        ),
        Figure(
            "original_scaling",
            f"original's algorithm: time/op, {n_l} vs {n_s} jobs",
            _paired(p_large, p_small),
            "x",
            details={
                "small_jobs": cfg.small_jobs,
                "large_jobs": cfg.large_jobs,
                "small_s_per_op": p_small,
                "large_s_per_op": p_large,
            },
        ),
    ]


# --------------------------------------------------------------------------------------
# (b) Bytes held per live job
# --------------------------------------------------------------------------------------


def _fill_new_jobs(ledger: Ledger, accounts: Sequence[str], n: int) -> None:
    """Charge and confirm ``n`` new jobs whose ids are made here, so that the
    store's references are the only ones left when this returns."""
    charge, confirm = ledger.charge, ledger.confirm
    n_acc = len(accounts)
    for i in range(n):
        acct = accounts[i % n_acc]
        job = str(uuid.uuid4())
        confirm(acct, job, charge_id=charge(acct, job).record.charge_id)


def _traced_bytes(
    store: MemoryStore, accounts: Sequence[str], n: int, clock: FakeClock
) -> tuple[float, list[dict[str, Any]]]:
    """Bytes held per job by ``store`` after ``n`` new jobs (charged and
    confirmed), and the lines that allocated them, biggest first."""
    ledger = Ledger(store, clock=clock)
    # Warm up on another ledger: the first call fills regex and pluggy caches
    # that belong to the process, not to the jobs.
    _fill_new_jobs(Ledger(MemoryStore(), clock=clock), accounts, 10)
    was_tracing = tracemalloc.is_tracing()
    old_limit = tracemalloc.get_traceback_limit()
    gc.collect()
    tracemalloc.start(2)  # the allocating line and its caller
    try:
        # The snapshot is taken before the first reading, so its own objects
        # are in both readings and cancel out.
        snap_before = tracemalloc.take_snapshot()
        before = tracemalloc.get_traced_memory()[0]
        _fill_new_jobs(ledger, accounts, n)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        snap_after = tracemalloc.take_snapshot()
    finally:
        if was_tracing:  # someone traces this process already: leave it as it was
            tracemalloc.start(old_limit)
        else:
            tracemalloc.stop()
    assert len(store) == n
    own = tracemalloc.Filter(False, tracemalloc.__file__)
    stats = snap_after.filter_traces([own]).compare_to(
        snap_before.filter_traces([own]), "traceback"
    )
    breakdown = []
    for stat in stats:
        if stat.size_diff <= 0:
            continue
        frames = list(stat.traceback)  # oldest first: the allocating line is last
        where, caller = frames[-1], (frames[-2] if len(frames) > 1 else None)
        breakdown.append(
            {
                "where": _location(where),
                "source": _source_line(where),
                "caller": _location(caller) if caller else "",
                "caller_source": _source_line(caller) if caller else "",
                "bytes_per_job": stat.size_diff / n,
                "blocks_per_job": stat.count_diff / n,
            }
        )
    breakdown.sort(key=lambda row: -row["bytes_per_job"])
    return (after - before) / n, breakdown


def bench_memory_bytes(
    cfg: Config, log: Callable[[str], None]
) -> tuple[list[Figure], list[dict[str, Any]], list[dict[str, Any]]]:
    """Bytes per live job twice: the job alone (journal off), and with the
    memory store's default settings, its in-process journal included (the
    store a ``Ledger()`` gets when no store is given)."""
    n = cfg.memory_jobs
    log(f"(b) counting bytes held by {n:,} live jobs (tracemalloc), journal off and defaults")
    accounts = _accounts(cfg.accounts)
    # What a live job holds. The journal's entries are not part of it: they
    # are bounded by journal_limit whatever the number of live jobs, and
    # counted on their own in section (g).
    per_job, breakdown = _traced_bytes(MemoryStore(journal=False), accounts, n, FakeClock())
    figure = Figure(
        "memory_bytes_per_job",
        f"memory: bytes held per live job ({n:,} jobs, ids included)",
        per_job,
        "B",
        "<=",
        512.0,
        {"jobs": n, "accounts": cfg.accounts, "traced_bytes": per_job * n},
    )
    # What a service that keeps the defaults pays: each job's share of the
    # journal (a charge and a confirm entry per job, up to journal_limit).
    store = MemoryStore()
    per_job_defaults, breakdown_defaults = _traced_bytes(store, accounts, n, FakeClock())
    journal_size = getattr(store, "journal_size", None)
    entries = journal_size() if journal_size is not None else None
    defaults = Figure(
        "memory_bytes_per_job_defaults",
        f"memory: bytes held per live job, default settings (journal on), {n:,} jobs",
        per_job_defaults,
        "B",
        "<=",
        512.0,
        {
            "jobs": n,
            "journal_limit": store.journal_limit,
            "journal_entries_held": entries,
            "journal_share_bytes_per_job": per_job_defaults - per_job,
        },
    )
    return [figure, defaults], breakdown, breakdown_defaults


def _location(frame: tracemalloc.Frame) -> str:
    """``package/module.py:line``: enough of the path to tell our lines from
    attrs' or the stdlib's."""
    filename = frame.filename
    if filename.startswith("<"):
        return f"{filename}:{frame.lineno}"
    parts = Path(filename).parts
    if "jobcredits_plugin" in parts:
        short = "/".join(parts[len(parts) - parts[::-1].index("jobcredits_plugin") - 1 :])
    else:
        short = "/".join(parts[-2:])
    return f"{short}:{frame.lineno}"


def _source_line(frame: tracemalloc.Frame) -> str:
    return linecache.getline(frame.filename, frame.lineno).strip()


def format_breakdown(rows: Sequence[dict[str, Any]], limit: int, min_bytes: float = 0.5) -> str:
    """The lines that allocated what the jobs hold, biggest first, each with
    the line that called it."""
    shown = [r for r in rows[:limit] if r["bytes_per_job"] >= min_bytes]
    rest = rows[len(shown) :]
    total = sum(r["bytes_per_job"] for r in rows)
    lines = [f"{'B/job':>7}  {'blocks/job':>10}  allocated at (and called from)"]
    for r in shown:
        lines.append(
            f"{r['bytes_per_job']:7.1f}  {r['blocks_per_job']:10.2f}  {r['where']}"
            f"  {_clip(r['source'])}"
        )
        if r["caller"]:
            lines.append(f"{'':>7}  {'':>10}    <- {r['caller']}  {_clip(r['caller_source'])}")
    if rest:
        rest_bytes = sum(r["bytes_per_job"] for r in rest)
        lines.append(f"{rest_bytes:7.1f}  {'':>10}  ({len(rest)} more places)")
    lines.append(f"{total:7.1f}  {'':>10}  total")
    return "\n".join(lines)


def _clip(text: str, width: int = 56) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


# --------------------------------------------------------------------------------------
# (c) SQLite: ledger.charge against a bare INSERT
# --------------------------------------------------------------------------------------

_BASELINE_SCHEMA = """
CREATE TABLE IF NOT EXISTS baseline_jobs (
    account     TEXT    NOT NULL,
    scope       TEXT    NOT NULL,
    job_id      TEXT    NOT NULL,
    charge_id   TEXT    NOT NULL,
    state       TEXT    NOT NULL,
    cost        INTEGER NOT NULL,
    tier        TEXT,
    backend     TEXT,
    charged_at  REAL    NOT NULL,
    expires_at  REAL    NOT NULL,
    lease_until REAL    NOT NULL,
    uses        INTEGER NOT NULL,
    debited     INTEGER NOT NULL,
    deadline    REAL    NOT NULL,
    PRIMARY KEY (account, scope, job_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS baseline_jobs_deadline ON baseline_jobs (deadline);
"""

_BASELINE_INSERT = (
    "INSERT INTO baseline_jobs (account, scope, job_id, charge_id, state, cost, tier, "
    "backend, charged_at, expires_at, lease_until, uses, debited, deadline) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)


def _baseline_connection(path: Path) -> sqlite3.Connection:
    """The same file settings as SQLiteStore: WAL, synchronous=NORMAL, the same
    busy timeout, autocommit (so each statement is its own transaction)."""
    conn = sqlite3.connect(path, timeout=5.0, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.executescript(_BASELINE_SCHEMA)
    return conn


def _time_baseline(conn: sqlite3.Connection, accounts: Sequence[str], n: int) -> float:
    now = FakeClock()()
    # What a charge writes: a pending record with its window, lease and deadline.
    times = (now, now + 3600.0, now + 60.0, 1, 0, now + 60.0)
    rows = [
        (acct, "default", job, secrets.token_hex(8), "pending", 1, None, None, *times)
        for acct, job in _pairs(accounts, n)
    ]
    execute = conn.execute

    def run() -> int:
        for row in rows:
            execute(_BASELINE_INSERT, row)
        return len(rows)

    per_op = _timed(run)
    assert conn.execute("SELECT changes()").fetchone()[0] == 1
    return per_op


def _time_charges(ledger: Ledger, accounts: Sequence[str], n: int) -> float:
    pairs = _pairs(accounts, n)
    charge = ledger.charge
    results: list[bool] = []
    append = results.append

    def run() -> int:
        for acct, job in pairs:
            append(charge(acct, job).charged)
        return len(pairs)

    per_op = _timed(run)
    assert all(results)
    return per_op


def bench_sqlite(cfg: Config, log: Callable[[str], None]) -> list[Figure]:
    log(f"(c) SQLite: {cfg.sqlite_repeats} x {cfg.sqlite_ops:,} inserts / charges per line")
    accounts = _accounts(cfg.accounts)
    with tempfile.TemporaryDirectory(prefix="jobcredits-bench-") as tmp:
        base = _baseline_connection(Path(tmp) / "baseline.db")
        # The ledger's own cost over the one write a charge must do: the
        # journal (a second row per charge, section g) is off here; the
        # default, journal on, is reported beside it for context.
        off = Ledger(SQLiteStore(Path(tmp) / "off.db", journal=False), clock=FakeClock())
        on = Ledger(
            SQLiteStore(Path(tmp) / "on.db", journal=False), clock=FakeClock(), balances=True
        )
        journaled = Ledger(SQLiteStore(Path(tmp) / "journal.db"), clock=FakeClock())
        try:
            for acct in accounts:
                on.grant(acct, 10**12)
            warm = min(cfg.sqlite_ops, 100)
            _time_baseline(base, accounts, warm)
            _time_charges(off, accounts, warm)
            _time_charges(on, accounts, warm)
            _time_charges(journaled, accounts, warm)
            t_base: list[float] = []
            t_off: list[float] = []
            t_on: list[float] = []
            t_journal: list[float] = []
            # Each repeat alternates the three sides in small chunks, so that a
            # burst of load from elsewhere on the machine hits all of them.
            chunk = max(1, min(cfg.sqlite_chunk, cfg.sqlite_ops))
            rounds = max(1, cfg.sqlite_ops // chunk)
            for _ in range(cfg.sqlite_repeats):
                samples: tuple[list[float], ...] = ([], [], [], [])
                for _ in range(rounds):
                    samples[0].append(_time_baseline(base, accounts, chunk))
                    samples[1].append(_time_charges(off, accounts, chunk))
                    samples[2].append(_time_charges(on, accounts, chunk))
                    samples[3].append(_time_charges(journaled, accounts, chunk))
                t_base.append(statistics.fmean(samples[0]))
                t_off.append(statistics.fmean(samples[1]))
                t_on.append(statistics.fmean(samples[2]))
                t_journal.append(statistics.fmean(samples[3]))
        finally:
            off.close()
            on.close()
            journaled.close()
            base.close()
    raw = {
        "ops": cfg.sqlite_ops,
        "chunk": cfg.sqlite_chunk,
        "baseline_s_per_op": t_base,
        "sqlite_version": sqlite3.sqlite_version,
    }
    return [
        Figure(
            "sqlite_charge_rate",
            "sqlite: ledger.charge rate / bare INSERT rate, balances off",
            _paired(t_base, t_off),
            "x",
            ">=",
            0.5,
            {**raw, "charge_s_per_op": t_off},
        ),
        Figure(
            "sqlite_charge_rate_balances",
            "sqlite: ledger.charge rate / bare INSERT rate, balances on",
            _paired(t_base, t_on),
            "x",
            ">=",
            0.5,
            {**raw, "charge_s_per_op": t_on},
        ),
        Figure(
            "sqlite_charge_rate_journal",
            "sqlite: ledger.charge rate / bare INSERT rate, journal on (default)",
            _paired(t_base, t_journal),
            "x",
            None,
            None,
            {**raw, "charge_s_per_op": t_journal},
        ),
    ]


# --------------------------------------------------------------------------------------
# (h) Time per call against the number of live jobs, 1k to 1M
# --------------------------------------------------------------------------------------

#: The store sizes of the sweep; ``--quick`` stops at 10k, ``--jobs N`` at N.
SWEEP_SIZES = (1_000, 10_000, 100_000, 1_000_000)


def bench_sweep(cfg: Config, log: Callable[[str], None]) -> list[Figure]:
    """Section (a)'s two subjects at every size of :data:`SWEEP_SIZES`: the
    curve of docs/performance.md's picture. One size at a time (a million
    jobs of each kind at once would hold gigabytes); within a size the two
    sides take turns, as in (a). The port times fewer calls the larger its
    store, since each scans every job twice."""
    sizes = [n for n in SWEEP_SIZES if n <= cfg.sweep_jobs] or [cfg.sweep_jobs]
    accounts = _accounts(cfg.accounts)
    ours: list[float] = []
    port: list[float] = []
    for size in sizes:
        log(f"(h) time per call at {size:,} live jobs: memory store and the original's algorithm")
        mem = _MemorySubject(size, accounts)
        orig = _PortSubject(size, accounts)
        port_ops = max(3, min(cfg.port_ops_small, 3_000_000 // size))
        mem.time_ops(min(cfg.ops, 200))
        orig.time_ops(min(port_ops, 3))
        t_mem: list[float] = []
        t_port: list[float] = []
        for _ in range(cfg.port_repeats):
            t_mem.append(mem.time_ops(cfg.ops))
            t_port.append(orig.time_ops(port_ops))
        ours.append(statistics.median(t_mem))
        port.append(statistics.median(t_port))
        del mem, orig
    details = {"sizes": sizes, "memory_s_per_op": ours, "original_s_per_op": port}
    largest = f"{sizes[-1]:,}"
    return [
        Figure(
            "sweep_memory_scaling",
            f"memory: charge+confirm time/op, {largest} vs {sizes[0]:,} live jobs (sweep)",
            ours[-1] / ours[0],
            "x",
            details=details,
        ),
        Figure(
            "sweep_memory_vs_original",
            f"memory: speed-up over the original's algorithm at {largest} jobs (sweep)",
            port[-1] / ours[-1],
            "x",
            details=details,
        ),
    ]


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


@dataclass
class Report:
    config: Config
    figures: list[Figure]
    breakdown: list[dict[str, Any]]
    elapsed: float
    breakdown_defaults: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "machine": machine_info(),
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "config": asdict(self.config),
            "elapsed_s": self.elapsed,
            "figures": [f.as_dict() for f in self.figures],
            "memory_breakdown": self.breakdown,
            "memory_breakdown_defaults": self.breakdown_defaults,
        }


def machine_info() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "sqlite": sqlite3.sqlite_version,
        "jobcredits_plugin": getattr(jobcredits_plugin, "__version__", "?"),
    }


# --------------------------------------------------------------------------------------
# (d) The web adapters
# --------------------------------------------------------------------------------------

#: Modules next to this file that measure an adapter against the framework's
#: usual extension (Flask-Limiter, slowapi), each exposing
#: ``run(quick: bool) -> list[dict]`` (rows with ``name``, ``figure``, ``unit``,
#: and optionally ``key``, ``op``, ``target``, ``details``). A module whose
#: framework (or peer) is not installed is skipped.
ADAPTER_MODULES = ("adapters", "fastapi_bench", "fastapi_peers")


#: Modules measuring the shared stores against their server's own floor (a
#: bare ``SET NX PX`` / ``INSERT ... ON CONFLICT DO NOTHING``), on Redis
#: against the peers on the same server (Powertools' idempotency, ``limits``),
#: and DjangoStore against PostgresStore and SQLiteStore (the ORM's cost,
#: with its statements and round trips per operation), same interface. A
#: module whose driver or peer library is missing, or whose server does not
#: answer, is skipped.
STORE_MODULES = ("redis_bench", "postgres_bench", "redis_peers", "django_store_bench")


def _bench_modules(
    names: Sequence[str], section: str, label: str, quick: bool, log: Callable[[str], None]
) -> list[Figure]:
    figures: list[Figure] = []
    for name in names:
        try:
            module = _load_sibling(name)
            if module is None:
                continue
            rows = module.run(quick=quick)
        except (ImportError, ConnectionError, OSError) as exc:
            log(f"({label}) {name}: skipped ({exc})")
            continue
        for row in rows:
            key = row.get("key") or f"{name}_" + "_".join(
                "".join(c if c.isalnum() else " " for c in row["name"].lower()).split()
            )
            figures.append(
                Figure(
                    key,
                    row["name"],
                    float(row["figure"]),
                    row["unit"],
                    row.get("op"),
                    row.get("target"),
                    {**row.get("details", {}), "section": section, "module": name},
                )
            )
    return figures


def bench_adapters(cfg: Config, log: Callable[[str], None]) -> list[Figure]:
    return _bench_modules(ADAPTER_MODULES, "adapters", "d", cfg.adapters_quick, log)


def bench_stores(cfg: Config, log: Callable[[str], None]) -> list[Figure]:
    return _bench_modules(STORE_MODULES, "stores", "e", cfg.adapters_quick, log)


#: Modules measuring what a metrics plugin adds to a charge (the ledger with
#: the plugin registered against the same ledger without it), same interface.
METRICS_MODULES = ("metrics_bench",)


def bench_metrics(cfg: Config, log: Callable[[str], None]) -> list[Figure]:
    return _bench_modules(METRICS_MODULES, "metrics", "f", cfg.adapters_quick, log)


#: What the journal adds to a charge on each store (journal on / off).
JOURNAL_MODULES = ("journal_bench",)


def bench_journal(cfg: Config, log: Callable[[str], None]) -> list[Figure]:
    return _bench_modules(JOURNAL_MODULES, "journal", "g", cfg.adapters_quick, log)


#: The benchmarks by name, for ``--only``; the sweep (h) runs only when asked
#: (``--sweep`` or ``--only sweep``): filling a million jobs takes a while.
BENCHMARKS = ("time", "bytes", "sqlite", "adapters", "stores", "metrics", "journal", "sweep")
DEFAULT_BENCHMARKS = BENCHMARKS[:-1]


def run(
    cfg: Config,
    log: Callable[[str], None] = print,
    only: Sequence[str] = DEFAULT_BENCHMARKS,
) -> Report:
    t0 = time.perf_counter()
    figures: list[Figure] = []
    breakdown: list[dict[str, Any]] = []
    breakdown_defaults: list[dict[str, Any]] = []
    if "time" in only:
        figures += bench_memory_time(cfg, log)
    if "bytes" in only:
        mem_figures, breakdown, breakdown_defaults = bench_memory_bytes(cfg, log)
        figures += mem_figures
    if "sqlite" in only:
        figures += bench_sqlite(cfg, log)
    if "adapters" in only:
        figures += bench_adapters(cfg, log)
    if "stores" in only:
        figures += bench_stores(cfg, log)
    if "metrics" in only:
        figures += bench_metrics(cfg, log)
    if "journal" in only:
        figures += bench_journal(cfg, log)
    if "sweep" in only:
        figures += bench_sweep(cfg, log)
    return Report(cfg, figures, breakdown, time.perf_counter() - t0, breakdown_defaults)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmarks of jobcredits-plugin; figures are ratios against "
        "baselines measured in the same run."
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument(
        "--jobs", type=int, metavar="N", help="live jobs in the large stores (overrides the size)"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=BENCHMARKS,
        help="run only this benchmark (repeatable): time (a), bytes (b), sqlite (c), "
        "adapters (d: Flask-Limiter, slowapi beside ours), stores (e: Redis and PostgreSQL, "
        "when their servers answer; Powertools and limits beside ours on Redis; DjangoStore "
        "beside PostgresStore and SQLiteStore), "
        "metrics (f: the Prometheus plugin's cost per charge), journal (g: the journal's "
        "cost per charge on each store, and the memory store's retention bound), "
        "sweep (h: time per call at 1k to 1M live jobs, ours and the original's algorithm)",
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="run the sweep (h) too (it is left out of the default run: it takes minutes)",
    )
    args = parser.parse_args(argv)
    cfg = Config.quick() if args.quick else Config.full()
    if args.jobs is not None:
        cfg = cfg.with_jobs(args.jobs)

    info = machine_info()
    print(
        f"jobcredits-plugin {info['jobcredits_plugin']} benchmarks"
        f"{' (quick: targets are set for the full sizes)' if args.quick else ''}\n"
        f"Python {info['python']} ({info['implementation']}), SQLite {info['sqlite']}, "
        f"{info['cpus']} CPUs, {info['platform']}\n",
        flush=True,
    )
    only = list(args.only or DEFAULT_BENCHMARKS)
    if args.sweep and "sweep" not in only:
        only.append("sweep")
    report = run(cfg, log=lambda msg: print(msg, flush=True), only=only)
    print()
    print(format_table(report.figures))
    print()
    if report.breakdown:
        print("Where the bytes of one live job go (tracemalloc, by line; ids included):")
        print(format_breakdown(report.breakdown, cfg.breakdown_lines))
        print()
    if report.breakdown_defaults:
        print("The same with the memory store's default settings (its journal on):")
        print(format_breakdown(report.breakdown_defaults, cfg.breakdown_lines))
        print()
    misses = [f for f in report.figures if f.status == "MISS"]
    if misses:
        print(f"MISS: {len(misses)} target(s) missed: {', '.join(f.key for f in misses)}")
    else:
        print("All targets met.")
    print(f"(run took {report.elapsed:.1f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(report.as_dict(), indent=2) + "\n")
        print(f"figures written to {args.json}")
    assert all(math.isfinite(f.value) for f in report.figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
