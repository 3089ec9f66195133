"""What only the memory store promises: bounded work per request (no scan of
every job, as the original did), exact settlement through its deadline heap,
and thread safety."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from jobcredits_plugin import ConfigurationError, InvalidArgument, JobInProgress, Ledger
from jobcredits_plugin.stores import MemoryStore, from_url
from jobcredits_plugin.testing import FakeClock, RecordingPlugin


def _ledger(store: MemoryStore, clock: FakeClock, events: RecordingPlugin, **kw: Any) -> Ledger:
    return Ledger(store, clock=clock, plugins=[events], **kw)


@pytest.mark.parametrize("settle_batch", [1, 8])
def test_a_charge_settles_at_most_settle_batch_expired_records(
    clock: FakeClock, events: RecordingPlugin, settle_batch: int
) -> None:
    """With many expired records, one request settles at most settle_batch of them, never all."""
    store = MemoryStore(settle_batch=settle_batch)
    ledger = _ledger(store, clock, events)
    for n in range(100):
        ledger.charge("acct", f"old-{n}")
        ledger.confirm("acct", f"old-{n}")
    clock.advance(3600)
    events.clear()
    assert ledger.charge("acct", "new").charged
    assert len(events.of("expire")) == settle_batch
    assert len(store) == 100 - settle_batch + 1
    assert events.kinds() == ["expire"] * settle_batch + ["charge"]
    # Reads settle nothing; they only hide what is past its window.
    assert [r.job_id for r in ledger.snapshot()] == ["new"]
    assert len(store) == 100 - settle_batch + 1


def test_prune_settles_everything_that_is_due(clock: FakeClock, events: RecordingPlugin) -> None:
    """prune() settles every due record, each once, whatever settle_batch is."""
    store = MemoryStore(settle_batch=8)
    ledger = _ledger(store, clock, events)
    for n in range(100):
        ledger.charge("acct", f"old-{n}")
        ledger.confirm("acct", f"old-{n}")
    for n in range(10):
        ledger.charge("acct", f"stale-{n}")  # pending, never confirmed
    clock.advance(3600)
    ledger.charge("acct", "new")
    removed = ledger.prune()
    assert len(removed) == 110 - 8
    assert len(store) == 1
    assert len(events.of("expire")) + len(events.of("refund")) == 110
    assert len(events.of("refund")) == 10
    keys = [r.key for r in events.of("expire") + events.of("refund")]
    assert len(set(keys)) == 110
    assert ledger.prune() == []


def test_a_request_settles_stale_pending_records_with_a_refund(
    clock: FakeClock, events: RecordingPlugin
) -> None:
    """A stale pending record settled on another request's way is refunded, its credit returned."""
    store = MemoryStore(settle_batch=8)
    ledger = _ledger(store, clock, events, balances=True)
    ledger.grant("acct", 2)
    stale = ledger.charge("acct", "stale")
    clock.advance(60)
    c = ledger.charge("acct", "other")
    assert events.kinds() == ["charge", "refund", "charge"]
    assert events.of("refund")[0].charge_id == stale.record.charge_id
    assert c.balance == 1  # 2 - 1 - 1 + 1 refunded
    assert ledger.balance("acct") == 1
    assert len(store) == 1


def test_stale_heap_entries_are_dropped_without_events(
    clock: FakeClock, events: RecordingPlugin
) -> None:
    """Entries left by refunded or taken-over charges never produce an event and are cleared."""
    store = MemoryStore(settle_batch=8)
    ledger = _ledger(store, clock, events)
    ledger.charge("acct", "refunded")
    assert ledger.refund("acct", "refunded")
    ledger.charge("acct", "again")
    ledger.refund("acct", "again")
    ledger.charge("acct", "again")
    again = ledger.confirm("acct", "again")
    old = ledger.charge("acct", "taken-over")
    clock.advance(60)
    new = ledger.charge("acct", "taken-over")
    assert new.record.charge_id != old.record.charge_id
    taken = ledger.confirm("acct", "taken-over")
    events.clear()
    clock.advance(3600)
    removed = ledger.prune()
    assert sorted(removed, key=lambda r: r.job_id) == [again, taken]
    assert events.kinds() == ["expire", "expire"]
    assert len(store) == 0
    assert store._heap == []


def test_a_confirmed_record_is_rescheduled_for_its_expiry(
    clock: FakeClock, events: RecordingPlugin
) -> None:
    """A record confirmed after its lease deadline passed is not settled until it expires."""
    store = MemoryStore(settle_batch=8)
    ledger = _ledger(store, clock, events)
    ledger.charge("acct", "job-1")
    confirmed = ledger.confirm("acct", "job-1")
    clock.advance(120)  # past the lease deadline its heap entry was filed under
    assert ledger.prune() == []
    assert ledger.charge("acct", "job-2").charged
    assert ledger.lookup("acct", "job-1") == confirmed
    clock.advance(3600)
    settled = sorted((r.job_id, r.state) for r in ledger.prune())
    assert settled == [("job-1", "charged"), ("job-2", "refunded")]
    assert sorted(events.kinds()) == ["charge", "charge", "expire", "refund"]


def test_concurrent_threads_keep_the_memory_store_consistent(
    clock: FakeClock, events: RecordingPlugin
) -> None:
    """Threads charging, confirming and refunding at once: every job charged once, no errors."""
    store = MemoryStore()
    ledger = _ledger(store, clock, events, balances=True)
    ledger.grant("acct", 10_000)
    errors: list[BaseException] = []
    barrier = threading.Barrier(8, timeout=60)
    refunded: list[bool] = []

    def work(n: int) -> None:
        try:
            barrier.wait()
            for i in range(200):
                c = ledger.charge("acct", f"own-{n}-{i}")
                ledger.confirm("acct", f"own-{n}-{i}", charge_id=c.record.charge_id)
                try:
                    shared = ledger.charge("acct", f"shared-{i}")
                except JobInProgress:
                    pass
                else:
                    if shared.charged:
                        ledger.confirm("acct", f"shared-{i}", charge_id=shared.record.charge_id)
                if i % 10 == 0:
                    refunded.append(ledger.refund("acct", f"own-{n}-{i}"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert refunded == [True] * 160
    charges = events.of("charge")
    assert len({r.key for r in charges}) == len(charges) == 8 * 200 + 200
    assert len(events.of("refund")) == 160
    assert len(store) == 8 * 200 + 200 - 160
    assert ledger.balance("acct") == 10_000 - len(charges) + 160


def test_the_journal_stays_bounded_and_says_what_it_dropped() -> None:
    store = MemoryStore(journal_limit=5)
    ledger = Ledger(store, clock=FakeClock())
    cursor = ledger.cursor("slow")
    for i in range(8):
        ledger.charge("acct", f"job-{i}")
    assert store.journal_size() == 5
    assert [e.seq for e in ledger.journal(after=3)] == [4, 5, 6, 7, 8]
    with pytest.raises(InvalidArgument, match="journal_limit=5"):
        cursor.read()  # it had read nothing: 1-3 are gone, and it is told
    ledger.confirm("acct", "job-0")
    for _ in range(1000):
        ledger.charge("acct", "job-0")  # reuses are not journaled: no growth
    assert store.journal_size() == 5


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("memory://?journal=off", {"journal": False}),
        ("memory://?journal_reuses=yes&journal_limit=10", {"journal_reuses": True}),
        ("memory://?journal_max_age=none", {"journal_max_age": None}),
        ("memory://?journal_max_age=60", {"journal_max_age": 60.0}),
        ("sqlite://?journal=0&journal_reuses=1", {"journal": False, "journal_reuses": True}),
        ("sqlite://?journal_max_age=off", {"journal_max_age": None}),
    ],
)
def test_journal_options_from_the_url(url: str, expected: dict[str, object]) -> None:
    store = from_url(url)
    try:
        for name, value in expected.items():
            assert getattr(store, name) == value
    finally:
        store.close()


@pytest.mark.parametrize(
    "url",
    [
        "memory://?journal=maybe",
        "memory://?journal_limit=0",
        "memory://?journal_max_age=-1",
        "sqlite://?journal_max_age=0",
        "sqlite://?journal_reuse=1",
    ],
)
def test_bad_journal_options_are_refused(url: str) -> None:
    with pytest.raises(ConfigurationError):
        from_url(url)


def test_a_cursor_falling_behind_the_limit_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore(journal_limit=3)
    ledger = Ledger(store, clock=FakeClock())
    ledger.cursor("slow")
    with caplog.at_level("WARNING", logger="jobcredits_plugin"):
        for i in range(10):
            ledger.charge("acct", f"job-{i}")
    warnings = [r for r in caplog.records if "journal_limit" in r.getMessage()]
    assert len(warnings) == 1
    assert [e.seq for e in ledger.journal(after=7)] == [8, 9, 10]
