"""A caller cancelled while its store operation is under way must not lose
that operation's hooks: the store commits regardless (a worker thread, a
network round trip), so the ledger still reports what it committed."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from pathlib import Path

from jobcredits_plugin import Ledger
from jobcredits_plugin.stores import ClaimRequest, ClaimResult, Event, Key, SQLiteStore
from jobcredits_plugin.testing import FakeClock, RecordingPlugin


def _hold_write_lock(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN IMMEDIATE")
    return conn


class _EnteringStore(SQLiteStore):
    """Sets ``entered`` when a claim or refund starts in the store's worker
    thread: from then on the caller awaits that thread, the moment the tests
    cancel at (an event, not a sleep that hopes the thread got there)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, timeout=10)
        self.entered = threading.Event()

    def claim(self, req: ClaimRequest) -> ClaimResult:
        self.entered.set()
        return super().claim(req)

    def refund(self, key: Key, charge_id: str | None, now: float) -> Event | None:
        self.entered.set()
        return super().refund(key, charge_id, now)


async def _until_entered(store: _EnteringStore) -> None:
    assert await asyncio.to_thread(store.entered.wait, 60), "the store call never started"


def test_cancelled_acharge_still_fires_on_charge_once(tmp_path: Path) -> None:
    """acharge cancelled while SQLite waits for the write lock: the claim
    commits once the lock frees, and on_charge fires exactly once for it;
    then, since the cancelled caller never got the Charge to confirm or
    refund, the charge is refunded (on_refund) instead of waiting for its
    lease."""
    path = tmp_path / "jobs.db"
    events = RecordingPlugin()
    store = _EnteringStore(path)
    ledger = Ledger(store, clock=FakeClock(), plugins=[events])
    blocker = _hold_write_lock(path)

    async def scenario() -> None:
        task = asyncio.create_task(ledger.acharge("acct", "job-1"))
        await _until_entered(store)  # the claim is now under way in its thread
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        else:  # pragma: no cover - the cancel must win the race
            raise AssertionError("acharge was not cancelled")
        assert events.kinds() == []  # nothing committed yet
        blocker.execute("ROLLBACK")  # let the claim through
        for _ in range(200):  # bounded wait for the late commit to be reported
            if len(events.kinds()) >= 2:
                break
            await asyncio.sleep(0.02)

    try:
        asyncio.run(scenario())
    finally:
        blocker.close()
    assert events.kinds() == ["charge", "refund"]
    assert ledger.lookup("acct", "job-1") is None
    (charged,) = events.of("charge")
    (refunded,) = events.of("refund")
    assert refunded.charge_id == charged.charge_id
    ledger.close()


def test_cancelled_arefund_still_fires_on_refund_once(tmp_path: Path) -> None:
    """arefund cancelled mid-way: the refund commits and on_refund fires once."""
    path = tmp_path / "jobs.db"
    events = RecordingPlugin()
    store = _EnteringStore(path)
    ledger = Ledger(store, clock=FakeClock(), plugins=[events])
    ledger.charge("acct", "job-1")
    store.entered.clear()
    blocker = _hold_write_lock(path)

    async def scenario() -> None:
        task = asyncio.create_task(ledger.arefund("acct", "job-1"))
        await _until_entered(store)  # the refund is now under way in its thread
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        blocker.execute("ROLLBACK")
        for _ in range(200):
            if "refund" in events.kinds():
                break
            await asyncio.sleep(0.02)

    try:
        asyncio.run(scenario())
    finally:
        blocker.close()
    assert events.kinds() == ["charge", "refund"]
    assert ledger.lookup("acct", "job-1") is None
    ledger.close()


def test_memory_store_is_awaited_without_a_shielding_task() -> None:
    """The memory store never suspends, so the ledger awaits it directly (no
    extra task per call) and a cancellation cannot split an operation."""
    from jobcredits_plugin.stores import MemoryStore

    assert MemoryStore.cancel_safe is True
    assert SQLiteStore.cancel_safe is False
    ledger = Ledger(clock=FakeClock())

    async def scenario() -> str:
        charge = await ledger.acharge("acct", "job-1")
        return charge.outcome

    assert asyncio.run(scenario()) == "charged"
