"""What only the SQLite store promises: durability, sharing one file, locking,
URLs, threads, the event loop and fork."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import sqlite3
import sys
import threading
from pathlib import Path
from typing import Any

import attrs
import pytest

from jobcredits_plugin import (
    ConfigurationError,
    InvalidArgument,
    JobCreditsError,
    JobInProgress,
    Ledger,
    StoreUnavailable,
)
from jobcredits_plugin.stores import SQLiteStore, from_url
from jobcredits_plugin.testing import FakeClock, RecordingPlugin

needs_fork = pytest.mark.skipif(
    sys.platform == "win32" or "fork" not in multiprocessing.get_all_start_methods(),
    reason="needs the fork start method",
)
# Python 3.12+ warns when forking a process that runs threads; these tests
# fork from the main thread with no other threads of their own.
fork_warning_ok = pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded:DeprecationWarning"
)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "jobs.db"


def _ledger(store: SQLiteStore, clock: FakeClock, events: RecordingPlugin, **kw: Any) -> Ledger:
    return Ledger(store, clock=clock, plugins=[events], **kw)


# -- durability and sharing -----------------------------------------------------------------


def test_jobs_states_and_balances_survive_a_restart(
    db: Path, clock: FakeClock, events: RecordingPlugin
) -> None:
    """Close the store, reopen the file: records, states and balances are all still there."""
    with _ledger(SQLiteStore(db), clock, events, balances=True) as before:
        before.grant("acct", 10)
        before.charge("acct", "done", cost=2, tier="pro", backend="gpu")
        done = before.confirm("acct", "done")
        running = before.charge("acct", "running", cost=3).record
    events.clear()
    with _ledger(SQLiteStore(db), clock, events, balances=True) as after:
        assert after.lookup("acct", "done") == done
        assert after.lookup("acct", "running") == running
        assert after.balance("acct") == 5
        assert after.snapshot() == sorted([done, running], key=lambda r: r.job_id)
        reused = after.charge("acct", "done")
        assert reused.record == attrs.evolve(done, uses=2)
    assert events.kinds() == ["reuse"]


def test_a_pending_record_keeps_its_lease_across_a_restart(
    db: Path, clock: FakeClock, events: RecordingPlugin
) -> None:
    """After a restart, a pending job is still in progress until its lease ends, then taken over."""
    with _ledger(SQLiteStore(db), clock, events) as before:
        old = before.charge("acct", "job-1")
    clock.advance(30)
    with _ledger(SQLiteStore(db), clock, events) as after:
        with pytest.raises(JobInProgress) as info:
            after.charge("acct", "job-1")
        assert info.value.retry_after == 30
        clock.advance(30)
        new = after.charge("acct", "job-1")
        assert new.charged
        assert events.of("refund") == [attrs.evolve(old.record, state="refunded")]
    assert events.kinds() == ["charge", "refund", "charge"]


def test_two_stores_on_one_file_see_each_others_writes(
    db: Path, clock: FakeClock, events: RecordingPlugin
) -> None:
    """Two store objects on one file behave as one store: jobs, states, balances are shared."""
    one = _ledger(SQLiteStore(db), clock, events, balances=True)
    two = _ledger(SQLiteStore(db), clock, events, balances=True)
    try:
        one.grant("acct", 3)
        assert two.balance("acct") == 3
        c = one.charge("acct", "job-1")
        assert two.lookup("acct", "job-1") == c.record
        with pytest.raises(JobInProgress):
            two.charge("acct", "job-1")
        two.confirm("acct", "job-1", charge_id=c.record.charge_id)
        assert one.charge("acct", "job-1").outcome == "reused"
        assert two.refund("acct", "job-1") is True
        assert one.refund("acct", "job-1") is False
        assert one.balance("acct") == 3
        assert events.kinds() == ["charge", "reuse", "refund"]
    finally:
        one.close()
        two.close()


def test_the_file_is_in_wal_mode(db: Path) -> None:
    """The store switches the file to WAL so readers run beside the writer."""
    SQLiteStore(db).close()
    raw = sqlite3.connect(db)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        raw.close()


# -- URLs and construction ------------------------------------------------------------------


def test_relative_url_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    """sqlite:///relative.db (three slashes) creates relative.db in the current directory."""
    monkeypatch.chdir(tmp_path)
    with Ledger.from_url("sqlite:///relative.db", clock=clock) as ledger:
        assert isinstance(ledger.store, SQLiteStore)
        ledger.charge("acct", "job-1")
    assert (tmp_path / "relative.db").is_file()
    with Ledger(SQLiteStore(tmp_path / "relative.db"), clock=clock) as again:
        assert again.lookup("acct", "job-1") is not None


def test_absolute_url_uses_four_slashes(tmp_path: Path, clock: FakeClock) -> None:
    """sqlite:////abs/path.db opens the absolute path."""
    path = tmp_path / "abs.db"
    url = f"sqlite:///{path}"
    assert url.startswith("sqlite:////")
    with Ledger.from_url(url, clock=clock) as ledger:
        ledger.charge("acct", "job-1")
    assert path.is_file()


def test_url_options_become_store_options(tmp_path: Path) -> None:
    """?timeout=2 sets the busy timeout; other known options pass through too."""
    store = from_url(f"sqlite:///{tmp_path}/jobs.db?timeout=2&synchronous=full&prune_batch=7")
    try:
        assert isinstance(store, SQLiteStore)
        assert store.timeout == 2.0
        assert store.synchronous == "FULL"
        assert store.prune_batch == 7
    finally:
        store.close()


@pytest.mark.parametrize(
    "query",
    [
        "timeot=2",
        "timeout=abc",
        "journal=wal",
        "timeout=0",
        "synchronous=sometimes",
        "timeout=inf",
        "timeout=nan",
        "timeout=-1",
        "timeout=1e12",
    ],
)
def test_bad_url_options_raise_configuration_error(tmp_path: Path, query: str) -> None:
    """An unknown option name, or a bad value, is ConfigurationError (a
    ValueError, not the client's InvalidArgument), raised at construction:
    ``timeout=inf`` used to be a bare OverflowError at the first connection."""
    with pytest.raises(ConfigurationError) as info:
        Ledger.from_url(f"sqlite:///{tmp_path}/jobs.db?{query}").balance("a")
    assert isinstance(info.value, ValueError)
    assert not isinstance(info.value, InvalidArgument)
    assert not (tmp_path / "jobs.db").exists()


@pytest.mark.parametrize("kwargs", [{"timeout": float("inf")}, {"synchronous": 1}])
def test_bad_constructor_options_raise_configuration_error(
    tmp_path: Path, kwargs: dict[str, Any]
) -> None:
    with pytest.raises(ConfigurationError):
        SQLiteStore(tmp_path / "jobs.db", **kwargs)


def test_sqlite_url_with_a_host_is_rejected() -> None:
    """sqlite://host/path is a typo for a relative or absolute path: ConfigurationError."""
    with pytest.raises(ConfigurationError):
        from_url("sqlite://localhost/jobs.db")


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_in_memory_sqlite_urls(url: str, clock: FakeClock) -> None:
    """sqlite:// and sqlite:///:memory: give a private in-memory database."""
    with Ledger.from_url(url, clock=clock) as ledger:
        assert ledger.charge("acct", "job-1").charged
        assert ledger.lookup("acct", "job-1") is not None


def test_a_missing_directory_is_store_unavailable(tmp_path: Path) -> None:
    """A path whose directory does not exist fails at construction with StoreUnavailable."""
    with pytest.raises(StoreUnavailable):
        SQLiteStore(tmp_path / "missing" / "jobs.db")
    with pytest.raises(StoreUnavailable):
        Ledger.from_url(f"sqlite:///{tmp_path}/missing/jobs.db")
    assert not (tmp_path / "missing").exists()


# -- locking ------------------------------------------------------------------------------


def test_a_held_write_lock_makes_a_charge_store_unavailable(
    db: Path, clock: FakeClock, events: RecordingPlugin
) -> None:
    """Another connection holding the write lock past the timeout: StoreUnavailable,
    and nothing recorded."""
    ledger = _ledger(SQLiteStore(db, timeout=0.2), clock, events, balances=True)
    ledger.grant("acct", 5)
    raw = sqlite3.connect(db, isolation_level=None)
    try:
        raw.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailable) as info:
            ledger.charge("acct", "job-1")
        assert info.value.status == 503
        assert info.value.retry_after is not None
        with pytest.raises(StoreUnavailable):
            ledger.grant("acct", 1)
        raw.execute("ROLLBACK")
    finally:
        raw.close()
    assert ledger.lookup("acct", "job-1") is None
    assert ledger.snapshot() == []
    assert ledger.balance("acct") == 5
    assert events.kinds() == []
    assert ledger.charge("acct", "job-1").charged  # the store works again
    ledger.close()


def test_async_charge_waiting_on_a_lock_does_not_block_the_event_loop(
    db: Path, clock: FakeClock, events: RecordingPlugin
) -> None:
    """While acharge waits for a held lock, other tasks run (one of them releases the lock)."""
    ledger = _ledger(SQLiteStore(db, timeout=10.0), clock, events)
    raw = sqlite3.connect(db, isolation_level=None)
    raw.execute("BEGIN IMMEDIATE")
    ticks_while_waiting = 0

    async def scenario() -> str:
        nonlocal ticks_while_waiting
        charge = asyncio.create_task(ledger.acharge("acct", "job-1"))
        while not charge.done():
            await asyncio.sleep(0.02)
            if charge.done():
                break
            ticks_while_waiting += 1
            if ticks_while_waiting == 5:
                raw.execute("ROLLBACK")  # only reachable if the loop kept running
        return (await charge).outcome

    try:
        assert asyncio.run(scenario()) == "charged"
    finally:
        raw.close()
        ledger.close()
    assert ticks_while_waiting >= 5
    assert events.kinds() == ["charge"]


# -- threads, closing, fork ---------------------------------------------------------------


def test_in_memory_database_is_shared_by_threads(clock: FakeClock, events: RecordingPlugin) -> None:
    """ ":memory:" is one database for every thread of the store, charged once per job."""
    ledger = _ledger(SQLiteStore(":memory:"), clock, events)
    errors: list[BaseException] = []
    barrier = threading.Barrier(4, timeout=60)

    def work(n: int) -> None:
        try:
            barrier.wait()
            for i in range(25):
                assert ledger.charge("acct", f"t{n}-{i}").charged
                with contextlib.suppress(JobInProgress):
                    ledger.charge("acct", "shared")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert len(ledger.snapshot()) == 101
    assert [r.job_id for r in events.of("charge")].count("shared") == 1
    ledger.close()


def test_closed_store_raises_store_unavailable(
    db: Path, clock: FakeClock, events: RecordingPlugin
) -> None:
    """After close(), every operation is StoreUnavailable, from the store or the ledger."""
    store = SQLiteStore(db)
    ledger = _ledger(store, clock, events)
    ledger.charge("acct", "job-1")
    store.close()
    with pytest.raises(StoreUnavailable):
        ledger.charge("acct", "job-2")
    with pytest.raises(StoreUnavailable):
        ledger.lookup("acct", "job-1")
    with pytest.raises(StoreUnavailable):
        ledger.snapshot()
    ledger.close()
    with pytest.raises(StoreUnavailable):
        ledger.charge("acct", "job-3")
    with pytest.raises(StoreUnavailable):
        asyncio.run(ledger.acharge("acct", "job-3"))
    store.close()  # idempotent
    assert events.kinds() == ["charge"]


def _charge_in_child(store: SQLiteStore, job_ids: list[str]) -> None:
    ledger = Ledger(store, clock=FakeClock())
    for job_id in job_ids:
        c = ledger.charge("acct", job_id)
        if ledger.confirm("acct", job_id, charge_id=c.record.charge_id) is None:
            raise SystemExit(3)


@needs_fork
@fork_warning_ok
def test_a_forked_child_can_use_the_parents_store(db: Path, clock: FakeClock) -> None:
    """A store made (and used) in the parent works in a forked child, whose writes
    reach the parent."""
    store = SQLiteStore(db)
    ledger = Ledger(store, clock=clock)
    ledger.charge("acct", "parent-1")
    child = multiprocessing.get_context("fork").Process(
        target=_charge_in_child, args=(store, ["child-1", "child-2"])
    )
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    for job_id in ("child-1", "child-2"):
        record = ledger.lookup("acct", job_id)
        assert record is not None
        assert record.state == "charged"
    assert ledger.charge("acct", "parent-2").charged  # the parent's store still works
    assert ledger.lookup("acct", "parent-1") is not None
    ledger.close()


@needs_fork
@fork_warning_ok
def test_a_relative_path_keeps_naming_the_same_file_after_chdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    """A store opened on a relative path keeps its file when the process changes directory
    (as daemons do) and opens new connections later, e.g. in a forked worker."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    ledger = Ledger.from_url("sqlite:///jobs.db", clock=clock)
    ledger.charge("acct", "before")
    monkeypatch.chdir(tmp_path / "b")
    child = multiprocessing.get_context("fork").Process(
        target=_charge_in_child, args=(ledger.store, ["after"])
    )
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert ledger.lookup("acct", "after") is not None
    assert not (tmp_path / "b" / "jobs.db").exists()
    ledger.close()


@pytest.mark.parametrize("journal", [False, True])
def test_a_refund_that_would_overflow_64_bits_is_refused_not_rounded(
    tmp_path: Path, clock: FakeClock, events: RecordingPlugin, journal: bool
) -> None:
    """SQLite turns an integer sum past 2**63 - 1 into a REAL silently; the
    store refuses instead (only refunds can go past the credit cap). With the
    journal on, the journal row's balance cannot be stored either."""
    store = SQLiteStore(tmp_path / "jobs.db", journal=journal)
    ledger = _ledger(store, clock, events, balances=True)
    ledger.grant("acct", 5)
    charge = ledger.charge("acct", "job-1", cost=5)
    with store._transaction() as conn:
        conn.execute("UPDATE jobcredits_balances SET credits = ?", (2**63 - 3,))
    with pytest.raises((JobCreditsError, OverflowError)):
        ledger.refund("acct", "job-1", charge_id=charge.record.charge_id)
    assert store.balance("acct") == 2**63 - 3  # unchanged, still an integer
    assert ledger.lookup("acct", "job-1") is not None  # the refund rolled back whole
    assert events.kinds() == ["charge"]
    store.close()
