"""The helpers for users' own tests: FakeClock, RecordingPlugin, make_ledger."""

from __future__ import annotations

import threading

import pytest

from jobcredits_plugin import Ledger
from jobcredits_plugin.stores import MemoryStore
from jobcredits_plugin.testing import DEFAULT_START, FakeClock, RecordingPlugin, make_ledger

# -- FakeClock ---------------------------------------------------------------------------


def test_fake_clock_starts_at_a_fixed_time_and_stands_still() -> None:
    """A FakeClock starts at DEFAULT_START (or the given time) and never moves by itself."""
    clock = FakeClock()
    assert clock() == DEFAULT_START
    assert clock.now == DEFAULT_START
    assert clock() == clock()
    assert FakeClock(100)() == 100.0
    assert isinstance(FakeClock(100)(), float)


def test_fake_clock_advance_moves_forward_and_returns_the_new_time() -> None:
    """advance(s) adds s seconds and returns the new time."""
    clock = FakeClock(1000)
    assert clock.advance(1.5) == 1001.5
    assert clock() == 1001.5
    assert clock.advance(0) == 1001.5


def test_fake_clock_refuses_to_advance_backwards() -> None:
    """advance() with a negative amount raises ValueError and leaves the time alone."""
    clock = FakeClock(1000)
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)
    assert clock() == 1000.0


def test_fake_clock_set_jumps_either_way() -> None:
    """set() jumps to any time, backwards included (for clock-skew tests)."""
    clock = FakeClock(1000)
    clock.set(5000)
    assert clock() == 5000.0
    clock.set(10)
    assert clock() == 10.0
    assert "10.0" in repr(clock)


def test_fake_clock_advance_is_thread_safe() -> None:
    """Concurrent advances all count."""
    clock = FakeClock(0)

    def bump() -> None:
        for _ in range(1000):
            clock.advance(1)

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clock() == 4000.0


# -- RecordingPlugin --------------------------------------------------------------------------


def test_recording_plugin_records_kinds_in_order() -> None:
    """kinds() lists every hook call in order; of(kind) their records."""
    clock = FakeClock()
    events = RecordingPlugin()
    ledger = make_ledger(clock=clock, plugins=[events])
    first = ledger.charge("a", "j1")
    ledger.confirm("a", "j1")
    ledger.charge("a", "j1")
    ledger.charge("a", "j2")
    ledger.refund("a", "j2")
    clock.advance(3600)
    ledger.prune()
    assert events.kinds() == ["charge", "reuse", "charge", "refund", "expire"]
    assert [r.job_id for r in events.of("charge")] == ["j1", "j2"]
    assert [r.job_id for r in events.of("refund")] == ["j2"]
    assert events.of("expire")[0].charge_id == first.record.charge_id
    assert events.of("nothing") == []
    assert [e.kind for e in events.events] == events.kinds()


def test_recording_plugin_clear_forgets_everything() -> None:
    """clear() empties the recording; later events are recorded afresh."""
    events = RecordingPlugin()
    ledger = make_ledger(plugins=[events])
    ledger.charge("a", "j1")
    events.clear()
    assert events.kinds() == []
    assert events.events == []
    ledger.charge("a", "j2")
    assert events.kinds() == ["charge"]


def test_recording_plugin_passes_check_pending() -> None:
    """RecordingPlugin implements only hooks the ledger knows."""
    make_ledger(plugins=[RecordingPlugin()]).check_pending()


# -- make_ledger ---------------------------------------------------------------------------


def test_make_ledger_defaults() -> None:
    """make_ledger() gives a memory ledger on a fresh FakeClock with the Ledger's
    defaults (ttl 3600, lease 60, balances off, no max_uses)."""
    ledger = make_ledger()
    assert isinstance(ledger, Ledger)
    assert isinstance(ledger.store, MemoryStore)
    assert isinstance(ledger.clock, FakeClock)
    assert ledger.clock() == DEFAULT_START
    assert ledger.ttl == 3600.0
    assert ledger.lease == 60.0
    assert ledger.balances is False
    assert ledger.max_uses is None
    c = ledger.charge("a", "j")
    assert c.record.charged_at == DEFAULT_START


def test_make_ledger_gives_each_ledger_its_own_store_and_clock() -> None:
    """Two make_ledger() calls share neither store nor clock."""
    one, two = make_ledger(), make_ledger()
    assert one.store is not two.store
    assert one.clock is not two.clock
    one.charge("a", "j")
    assert two.lookup("a", "j") is None


def test_make_ledger_uses_the_given_clock_store_and_options() -> None:
    """make_ledger passes clock, store and any Ledger option through."""
    clock = FakeClock(50)
    store = MemoryStore()
    ledger = make_ledger(clock=clock, store=store, ttl=10, lease=5, balances=True, max_uses=3)
    assert ledger.clock is clock
    assert ledger.store is store
    assert (ledger.ttl, ledger.lease, ledger.balances, ledger.max_uses) == (10.0, 5.0, True, 3)
    clock.advance(1)
    ledger.grant("a", 1)
    c = ledger.charge("a", "j")
    assert c.record.charged_at == 51.0
    assert c.record.expires_at == 61.0


def test_make_ledger_runs_the_docstring_example() -> None:
    """The example in jobcredits_plugin.testing's docstring holds."""
    clock = FakeClock()
    events = RecordingPlugin()
    ledger = make_ledger(clock=clock, plugins=[events])
    first = ledger.charge("acct", "job-1")
    assert first.charged
    # the first call must finish before a follow-up can reuse it
    ledger.confirm("acct", "job-1", charge_id=first.record.charge_id)
    assert not ledger.charge("acct", "job-1").charged
    clock.advance(3601)
    assert ledger.charge("acct", "job-1").charged
    assert events.kinds() == ["charge", "reuse", "expire", "charge"]
