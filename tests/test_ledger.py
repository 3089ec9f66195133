"""Behaviour of the Ledger API on the memory store (DESIGN §2 and §3).

One test per row of the §2 table first, then the rules around it, the async
twins, closing, URLs and constructor validation. Store-parametrized and
model-based tests live in tests/stores/ and tests/test_model.py.
"""

from __future__ import annotations

import asyncio
import math
import re

import pytest

from jobcredits_plugin import (
    Charge,
    ConfigurationError,
    InsufficientCredits,
    InvalidJobId,
    JobExhausted,
    JobInProgress,
    JobRecord,
    Ledger,
    StoreUnavailable,
)
from jobcredits_plugin.stores import MemoryStore
from jobcredits_plugin.testing import FakeClock, RecordingPlugin, make_ledger

A = "acct-1"
J = "6f1c2d3e-0000-4000-8000-000000000001"


def charge_and_confirm(ledger: Ledger, account: str = A, job_id: str = J, **kw: object) -> Charge:
    c = ledger.charge(account, job_id, **kw)  # type: ignore[arg-type]
    ledger.confirm(account, job_id, scope=c.record.scope, charge_id=c.record.charge_id)
    return c


# -- the §2 table, row by row ----------------------------------------------------------


def test_no_live_record_charges_a_new_pending_record(
    ledger: Ledger, clock: FakeClock, events: RecordingPlugin
) -> None:
    """With no record for the key, the call opens a pending record, fires on_charge
    and reports outcome "charged"."""
    c = ledger.charge(A, J, tier="pro", backend="gpu")
    assert c.outcome == "charged"
    assert c.charged is True
    assert c.balance is None
    r = c.record
    assert r.key == (A, "default", J)
    assert r.state == "pending"
    assert r.uses == 1
    assert r.cost == 1
    assert (r.tier, r.backend) == ("pro", "gpu")
    assert r.charged_at == clock.now
    assert r.expires_at == clock.now + 3600
    assert r.lease_until == clock.now + 60
    assert events.kinds() == ["charge"]
    assert events.of("charge") == [r]
    assert ledger.lookup(A, J) == r


def test_live_charged_record_is_reused_for_free(clock: FakeClock, events: RecordingPlugin) -> None:
    """A follow-up on a live charged job counts a use, fires on_reuse, reports
    "reused" and debits nothing."""
    bal = make_ledger(clock=clock, balances=True, plugins=[events])
    bal.grant(A, 5)
    first = charge_and_confirm(bal)
    events.clear()
    second = bal.charge(A, J)
    assert second.outcome == "reused"
    assert second.charged is False
    assert second.record.uses == 2
    assert second.record.charge_id == first.record.charge_id
    assert second.record.state == "charged"
    assert second.balance == 4
    assert bal.balance(A) == 4
    assert events.kinds() == ["reuse"]
    assert events.of("reuse")[0].uses == 2


def test_pending_within_lease_raises_job_in_progress(ledger: Ledger, clock: FakeClock) -> None:
    """A second call while the first is still pending and its lease runs gets
    JobInProgress (409) with Retry-After = the lease left, rounded up."""
    first = ledger.charge(A, J)
    clock.advance(10.5)
    with pytest.raises(JobInProgress) as info:
        ledger.charge(A, J)
    err = info.value
    assert err.status == 409
    assert err.retry_after == math.ceil(60 - 10.5) == 50
    assert err.headers(retry_after_max=None) == {"Retry-After": "50"}
    assert err.headers() == {"Retry-After": "5"}  # what clients are told: capped
    # nothing moved: the first call's record is untouched
    assert ledger.lookup(A, J) == first.record


def test_pending_with_lease_over_is_refunded_then_charged_anew(
    clock: FakeClock, events: RecordingPlugin
) -> None:
    """A pending record whose lease ran out (window still open) is refunded
    (on_refund, balance credited back) and the call charges anew with a new
    charge_id (on_charge, balance debited)."""
    bal = make_ledger(clock=clock, balances=True, plugins=[events])
    bal.grant(A, 3)
    first = bal.charge(A, J)
    assert bal.balance(A) == 2
    clock.advance(61)
    second = bal.charge(A, J)
    assert second.charged
    assert second.record.charge_id != first.record.charge_id
    assert second.record.state == "pending"
    assert second.record.charged_at == clock.now
    assert events.kinds() == ["charge", "refund", "charge"]
    refunded = events.of("refund")[0]
    assert refunded.charge_id == first.record.charge_id
    assert refunded.state == "refunded"
    assert refunded.debited == 1
    # refunded (+1) then debited (-1)
    assert second.balance == 2
    assert bal.balance(A) == 2


def test_pending_with_lease_over_and_window_over_is_refunded_not_expired(
    ledger: Ledger, clock: FakeClock, events: RecordingPlugin
) -> None:
    """A pending record past both its lease and its expiry is settled as a refund
    (never as an expiry: its first call never succeeded), then charged anew."""
    first = ledger.charge(A, J)
    clock.advance(3601)
    second = ledger.charge(A, J)
    assert second.charged
    assert second.record.charge_id != first.record.charge_id
    assert events.kinds() == ["charge", "refund", "charge"]
    assert events.of("refund")[0].charge_id == first.record.charge_id


def test_expired_charged_record_fires_on_expire_then_charges_anew(
    ledger: Ledger, clock: FakeClock, events: RecordingPlugin
) -> None:
    """A charged record past expires_at (not yet pruned) fires on_expire for the
    old record, then the call is a new charge."""
    first = charge_and_confirm(ledger)
    clock.advance(3600)
    second = ledger.charge(A, J)
    assert second.charged
    assert second.record.charge_id != first.record.charge_id
    assert second.record.uses == 1
    assert events.kinds() == ["charge", "expire", "charge"]
    expired = events.of("expire")[0]
    assert expired.charge_id == first.record.charge_id
    assert expired.state == "charged"


def test_refunded_job_is_treated_as_absent(ledger: Ledger, events: RecordingPlugin) -> None:
    """After a refund the next call with the same job id is a new charge."""
    first = ledger.charge(A, J)
    assert ledger.refund(A, J, charge_id=first.record.charge_id) is True
    second = ledger.charge(A, J)
    assert second.charged
    assert second.record.uses == 1
    assert second.record.charge_id != first.record.charge_id
    assert events.kinds() == ["charge", "refund", "charge"]


def test_insufficient_balance_raises_and_records_nothing(
    clock: FakeClock, events: RecordingPlugin
) -> None:
    """With balances on and balance < cost: InsufficientCredits (402), no record,
    the balance unchanged and no hook fired."""
    ledger = make_ledger(clock=clock, balances=True, plugins=[events])
    ledger.grant(A, 2)
    with pytest.raises(InsufficientCredits) as info:
        ledger.charge(A, J, cost=3)
    assert info.value.status == 402
    assert info.value.balance == 2
    assert info.value.cost == 3
    assert ledger.lookup(A, J) is None
    assert ledger.snapshot() == []
    assert ledger.balance(A) == 2
    assert events.events == []
    assert len(ledger.store) == 0  # type: ignore[arg-type]


def test_max_uses_reached_raises_job_exhausted_without_retry_after(clock: FakeClock) -> None:
    """With max_uses=2, the charging call and one follow-up pass; the third call
    gets JobExhausted (409) with no Retry-After, and the record is unchanged."""
    ledger = make_ledger(clock=clock, max_uses=2)
    charge_and_confirm(ledger)
    assert ledger.charge(A, J).record.uses == 2
    with pytest.raises(JobExhausted) as info:
        ledger.charge(A, J)
    err = info.value
    assert err.status == 409
    assert err.retry_after is None
    assert err.headers() == {}
    assert err.max_uses == 2
    record = ledger.lookup(A, J)
    assert record is not None
    assert record.uses == 2


# -- the rules around the table ----------------------------------------------------------


def test_window_is_counted_from_the_charge_and_never_extended(
    ledger: Ledger, clock: FakeClock
) -> None:
    """Follow-ups never move expires_at: the job expires ttl after its charge
    however often it is reused."""
    first = charge_and_confirm(ledger)
    expires = first.record.expires_at
    for _ in range(5):
        clock.advance(719)
        reuse = ledger.charge(A, J)
        assert not reuse.charged
        assert reuse.record.expires_at == expires
    clock.set(expires - 0.001)
    assert not ledger.charge(A, J).charged
    clock.set(expires)
    assert ledger.charge(A, J).charged


def test_lookup_and_snapshot_hide_expired_records_before_prune(
    ledger: Ledger, clock: FakeClock, events: RecordingPlugin
) -> None:
    """A record past expires_at is absent from lookup and snapshot although no
    prune ran and the store still holds it."""
    charge_and_confirm(ledger)
    assert ledger.snapshot() != []
    clock.advance(3600)
    assert ledger.lookup(A, J) is None
    assert ledger.snapshot() == []
    assert len(ledger.store) == 1  # type: ignore[arg-type]
    assert events.kinds() == ["charge"]  # reads settle nothing


def test_lookup_and_snapshot_never_return_refunded_records(ledger: Ledger) -> None:
    """Refunded records are invisible to lookup and snapshot."""
    ledger.charge(A, J)
    ledger.charge(A, "other-job")
    ledger.refund(A, J)
    assert ledger.lookup(A, J) is None
    assert [r.job_id for r in ledger.snapshot()] == ["other-job"]


def test_snapshot_lists_live_jobs_oldest_first(ledger: Ledger, clock: FakeClock) -> None:
    """snapshot returns every live job, oldest charge first, as JobRecords."""
    ledger.charge("b", "j2")
    clock.advance(1)
    ledger.charge("a", "j1")
    snap = ledger.snapshot()
    assert all(isinstance(r, JobRecord) for r in snap)
    assert [r.key for r in snap] == [("b", "default", "j2"), ("a", "default", "j1")]


def test_confirm_moves_pending_to_charged(ledger: Ledger) -> None:
    """confirm turns the pending record into a charged one and returns it."""
    c = ledger.charge(A, J)
    confirmed = ledger.confirm(A, J, charge_id=c.record.charge_id)
    assert confirmed is not None
    assert confirmed.state == "charged"
    assert confirmed.charge_id == c.record.charge_id
    assert ledger.lookup(A, J) == confirmed


def test_confirm_of_unknown_job_returns_none(ledger: Ledger) -> None:
    """confirm of a job that does not exist does nothing and returns None."""
    assert ledger.confirm(A, J) is None
    assert ledger.lookup(A, J) is None


def test_confirm_and_refund_with_stale_charge_id_do_nothing(
    ledger: Ledger, clock: FakeClock, events: RecordingPlugin
) -> None:
    """A late confirm or refund carrying the charge_id of a charge that was taken
    over leaves the newer charge alone."""
    old = ledger.charge(A, J)
    clock.advance(61)
    new = ledger.charge(A, J)
    events.clear()
    assert ledger.confirm(A, J, charge_id=old.record.charge_id) is None
    assert ledger.refund(A, J, charge_id=old.record.charge_id) is False
    live = ledger.lookup(A, J)
    assert live == new.record
    assert live is not None
    assert live.state == "pending"
    assert events.events == []


def test_refund_is_idempotent_and_fires_once(ledger: Ledger, events: RecordingPlugin) -> None:
    """refund returns True for the call that refunded, False afterwards, and
    on_refund fires once."""
    c = ledger.charge(A, J)
    assert ledger.refund(A, J, charge_id=c.record.charge_id) is True
    assert ledger.refund(A, J, charge_id=c.record.charge_id) is False
    assert ledger.refund(A, J) is False
    assert events.kinds() == ["charge", "refund"]


def test_refund_of_unknown_job_returns_false(ledger: Ledger, events: RecordingPlugin) -> None:
    """Refunding a job that was never charged does nothing."""
    assert ledger.refund(A, J) is False
    assert events.events == []


def test_refund_of_a_confirmed_job_works(ledger: Ledger, events: RecordingPlugin) -> None:
    """refund also moves a charged (confirmed) job to refunded."""
    charge_and_confirm(ledger)
    assert ledger.refund(A, J) is True
    assert events.of("refund")[0].state == "refunded"
    assert ledger.lookup(A, J) is None


def test_refund_credits_back_exactly_what_was_debited(clock: FakeClock) -> None:
    """A refund gives back the record's `debited`: the cost when balances were on,
    nothing when the charge was taken with balances off."""
    store = MemoryStore()
    on = make_ledger(store=store, clock=clock, balances=True)
    off = make_ledger(store=store, clock=clock, balances=False)
    on.grant(A, 10)
    c = on.charge(A, J, cost=3)
    assert c.record.debited == 3
    assert c.balance == 7
    assert on.refund(A, J) is True
    assert on.balance(A) == 10
    # charged while balances were off: nothing was debited, nothing comes back
    c2 = off.charge(A, "free-job", cost=3)
    assert c2.record.debited == 0
    assert on.refund(A, "free-job") is True
    assert on.balance(A) == 10


def test_grant_never_takes_a_balance_below_zero(clock: FakeClock) -> None:
    """A negative grant larger than the balance leaves it at zero."""
    ledger = make_ledger(clock=clock, balances=True)
    assert ledger.grant(A, 5) == 5
    assert ledger.grant(A, -3) == 2
    assert ledger.grant(A, -10) == 0
    assert ledger.balance(A) == 0
    assert ledger.grant(A, 4) == 4


def test_balances_off_balance_is_none_but_grant_is_stored(clock: FakeClock) -> None:
    """With balances off balance() is None, yet grant stores the amount: a ledger
    with balances on over the same store sees it."""
    store = MemoryStore()
    off = make_ledger(store=store, clock=clock)
    assert off.balance(A) is None
    assert off.grant(A, 7) == 7
    assert off.balance(A) is None
    # charges with balances off debit nothing
    c = off.charge(A, J)
    assert c.balance is None
    assert c.record.debited == 0
    on = make_ledger(store=store, clock=clock, balances=True)
    assert on.balance(A) == 7


def test_cost_zero_with_balances_charges_without_debit(clock: FakeClock) -> None:
    """cost=0 with balances on charges even an empty account and debits nothing."""
    ledger = make_ledger(clock=clock, balances=True)
    c = ledger.charge(A, J, cost=0)
    assert c.charged
    assert c.balance == 0
    assert c.record.cost == 0
    assert c.record.debited == 0
    assert ledger.balance(A) == 0


def test_balance_is_debited_by_cost(clock: FakeClock) -> None:
    """A charge with balances on debits exactly `cost` and reports what is left."""
    ledger = make_ledger(clock=clock, balances=True)
    ledger.grant(A, 10)
    c = ledger.charge(A, J, cost=4)
    assert c.balance == 6
    assert c.record.debited == 4
    assert ledger.balance(A) == 6


def test_scopes_keep_jobs_apart(ledger: Ledger, events: RecordingPlugin) -> None:
    """The same account and job id in two scopes are two jobs, each charged."""
    a = ledger.charge(A, J, scope="transcribe")
    b = ledger.charge(A, J, scope="analyze")
    assert a.charged
    assert b.charged
    assert a.record.charge_id != b.record.charge_id
    assert ledger.lookup(A, J) is None  # nothing in the default scope
    lookup = ledger.lookup(A, J, scope="analyze")
    assert lookup is not None
    assert lookup.scope == "analyze"
    assert events.kinds() == ["charge", "charge"]


def test_accounts_keep_jobs_apart(ledger: Ledger) -> None:
    """The same job id under two accounts is two jobs, each charged."""
    assert ledger.charge("alice", J).charged
    assert ledger.charge("bob", J).charged


def test_prune_returns_removed_records_and_fires_once(
    ledger: Ledger, clock: FakeClock, events: RecordingPlugin
) -> None:
    """prune removes expired records, fires on_expire once for each and returns
    them; a second prune finds nothing."""
    charge_and_confirm(ledger, job_id="j1")
    charge_and_confirm(ledger, job_id="j2")
    clock.advance(1000)
    charge_and_confirm(ledger, job_id="j3")
    events.clear()
    clock.advance(2700)  # j1, j2 past their window; j3 still live
    removed = ledger.prune()
    assert sorted(r.job_id for r in removed) == ["j1", "j2"]
    assert events.kinds() == ["expire", "expire"]
    assert sorted(r.job_id for r in events.of("expire")) == ["j1", "j2"]
    assert ledger.prune() == []
    assert events.kinds() == ["expire", "expire"]
    assert [r.job_id for r in ledger.snapshot()] == ["j3"]
    assert len(ledger.store) == 1  # type: ignore[arg-type]


def test_prune_on_nothing_due_returns_empty(ledger: Ledger) -> None:
    """prune with only live jobs removes nothing."""
    charge_and_confirm(ledger)
    ledger.charge(A, "pending-job")
    assert ledger.prune() == []
    assert len(ledger.snapshot()) == 2


def test_prune_settles_stale_pending_with_refund(clock: FakeClock, events: RecordingPlugin) -> None:
    """prune refunds a pending record whose lease ran out (on_refund, balance
    credited back) and leaves a pending one within its lease alone."""
    ledger = make_ledger(clock=clock, balances=True, plugins=[events])
    ledger.grant(A, 5)
    stale = ledger.charge(A, "stale", cost=2)
    clock.advance(30)
    ledger.charge(A, "fresh", cost=1)
    assert ledger.balance(A) == 2
    clock.advance(31)  # stale's lease is over, fresh's is not
    events.clear()
    removed = ledger.prune()
    assert [r.job_id for r in removed] == ["stale"]
    assert removed[0].state == "refunded"
    assert removed[0].charge_id == stale.record.charge_id
    assert events.kinds() == ["refund"]
    assert ledger.balance(A) == 4
    assert ledger.lookup(A, "stale") is None
    assert ledger.charge(A, "stale", cost=2).charged  # treated as new


def test_prune_limit_bounds_the_work(ledger: Ledger, clock: FakeClock) -> None:
    """prune(limit=n) settles at most n records; the rest on a later prune."""
    for i in range(5):
        charge_and_confirm(ledger, job_id=f"j{i}")
    clock.advance(3600)
    assert len(ledger.prune(limit=2)) == 2
    assert len(ledger.prune()) == 3


def test_tier_and_backend_are_kept_for_follow_ups(ledger: Ledger) -> None:
    """Follow-ups see the tier and backend the first call paid for, whatever
    they pass themselves."""
    charge_and_confirm(ledger, tier="pro", backend="whisper")
    again = ledger.charge(A, J, tier="free", backend="other")
    assert (again.record.tier, again.record.backend) == ("pro", "whisper")


def test_charge_ids_are_unique(ledger: Ledger) -> None:
    """Every charge gets its own charge_id."""
    ids = {ledger.charge(A, f"job-{i}").record.charge_id for i in range(50)}
    assert len(ids) == 50


def test_records_are_frozen(ledger: Ledger) -> None:
    """Records handed out cannot be edited behind the store's back."""
    c = ledger.charge(A, J)
    with pytest.raises(AttributeError):
        c.record.uses = 99  # type: ignore[misc]
    with pytest.raises(AttributeError):
        c.outcome = "reused"  # type: ignore[misc]


# -- async twins -------------------------------------------------------------------------


def test_async_twins_behave_like_the_sync_ones(clock: FakeClock, events: RecordingPlugin) -> None:
    """acharge, aconfirm, arefund, alookup, asnapshot, aprune, agrant and abalance
    give the same results and fire the same hooks as their sync twins."""

    async def scenario() -> None:
        ledger = make_ledger(clock=clock, balances=True, plugins=[events])
        assert await ledger.agrant(A, 3) == 3
        assert await ledger.abalance(A) == 3
        c = await ledger.acharge(A, J, tier="t", backend="b")
        assert c.charged
        assert c.balance == 2
        with pytest.raises(JobInProgress):
            await ledger.acharge(A, J)
        confirmed = await ledger.aconfirm(A, J, charge_id=c.record.charge_id)
        assert confirmed is not None
        assert confirmed.state == "charged"
        again = await ledger.acharge(A, J)
        assert again.outcome == "reused"
        assert again.record.uses == 2
        assert await ledger.alookup(A, J) == again.record
        assert await ledger.asnapshot() == [again.record]
        assert await ledger.arefund(A, J) is True
        assert await ledger.arefund(A, J) is False
        assert await ledger.abalance(A) == 3
        assert await ledger.alookup(A, J) is None
        charge_and_confirm(ledger, job_id="old")
        clock.advance(3600)
        removed = await ledger.aprune()
        assert [r.job_id for r in removed] == ["old"]
        assert await ledger.aprune() == []

    asyncio.run(scenario())
    assert events.kinds() == ["charge", "reuse", "refund", "charge", "expire"]


def test_async_balance_is_none_when_balances_are_off(ledger: Ledger) -> None:
    """abalance returns None with balances off, while agrant still stores."""

    async def scenario() -> tuple[int, int | None]:
        return await ledger.agrant(A, 4), await ledger.abalance(A)

    assert asyncio.run(scenario()) == (4, None)


def test_async_insufficient_credits_records_nothing(
    clock: FakeClock, events: RecordingPlugin
) -> None:
    """acharge with a short balance raises InsufficientCredits and records nothing."""
    ledger = make_ledger(clock=clock, balances=True, plugins=[events])

    async def scenario() -> None:
        with pytest.raises(InsufficientCredits):
            await ledger.acharge(A, J)
        assert await ledger.alookup(A, J) is None

    asyncio.run(scenario())
    assert events.events == []


def test_async_with_closes_the_ledger(clock: FakeClock) -> None:
    """`async with` closes the ledger on exit; aclose is idempotent."""

    async def scenario() -> Ledger:
        async with make_ledger(clock=clock) as ledger:
            assert (await ledger.acharge(A, J)).charged
        with pytest.raises(StoreUnavailable):
            await ledger.acharge(A, J)
        with pytest.raises(StoreUnavailable):
            await ledger.alookup(A, J)
        await ledger.aclose()
        return ledger

    asyncio.run(scenario())


def test_aclose_closes_the_store_once() -> None:
    """aclose releases the store exactly once; later calls do nothing."""
    closed: list[int] = []

    class CountingStore(MemoryStore):
        def close(self) -> None:
            closed.append(1)

    ledger = Ledger(CountingStore(), clock=FakeClock())
    asyncio.run(ledger.aclose())
    asyncio.run(ledger.aclose())
    ledger.close()
    assert closed == [1]


# -- closing -----------------------------------------------------------------------------


def test_closed_ledger_raises_store_unavailable(clock: FakeClock) -> None:
    """Every store operation on a closed ledger raises StoreUnavailable."""
    ledger = make_ledger(clock=clock, balances=True)
    ledger.close()
    ledger.close()  # idempotent
    for op in (
        lambda: ledger.charge(A, J),
        lambda: ledger.confirm(A, J),
        lambda: ledger.refund(A, J),
        lambda: ledger.lookup(A, J),
        ledger.prune,
        ledger.snapshot,
        lambda: ledger.grant(A, 1),
        lambda: ledger.balance(A),
    ):
        with pytest.raises(StoreUnavailable) as info:
            op()
        assert info.value.status == 503


def test_context_manager_closes_the_ledger() -> None:
    """`with Ledger(...)` closes the store on exit."""
    closed: list[int] = []

    class CountingStore(MemoryStore):
        def close(self) -> None:
            closed.append(1)

    with Ledger(CountingStore(), clock=FakeClock()) as ledger:
        assert ledger.charge(A, J).charged
        assert closed == []
    assert closed == [1]
    with pytest.raises(StoreUnavailable):
        ledger.charge(A, J)


def test_store_oserror_becomes_store_unavailable(clock: FakeClock) -> None:
    """A store that lets a connection error through unwrapped still yields
    StoreUnavailable (503), not a bare OSError."""

    class DownStore(MemoryStore):
        def lookup(self, key: object, now: float) -> None:  # type: ignore[override]
            raise ConnectionRefusedError("down")

    ledger = Ledger(DownStore(), clock=clock)
    with pytest.raises(StoreUnavailable) as info:
        ledger.lookup(A, J)
    assert isinstance(info.value.__cause__, ConnectionRefusedError)


def test_lease_longer_than_ttl_is_rejected() -> None:
    """A lease longer than the window is refused: a first call would stay leased
    after its job expired, a state no rule of the ledger can settle."""
    with pytest.raises(ConfigurationError, match="lease"):
        Ledger(ttl=10, lease=60)
    assert Ledger(ttl=10, lease=10).lease == 10


# -- URLs --------------------------------------------------------------------------------


def test_from_url_memory_builds_a_memory_ledger() -> None:
    """Ledger.from_url("memory://") gives a working ledger on a MemoryStore, with
    the keyword arguments going to the ledger."""
    clock = FakeClock()
    ledger = Ledger.from_url("memory://", ttl=10, lease=5, clock=clock)
    assert isinstance(ledger.store, MemoryStore)
    assert ledger.ttl == 10
    c = ledger.charge(A, J)
    assert c.record.expires_at == clock.now + 10


@pytest.mark.parametrize(
    "url",
    [
        "mysql://localhost/db",
        "mongodb://user:secret@db/app",
        "garbage",
        "",
        "memory://somehost",
        "memory://[",
        "http://[::1",
    ],
)
def test_from_url_rejects_bad_urls_listing_accepted_ones(url: str) -> None:
    """Unknown schemes and garbage raise
    ConfigurationError whose message lists the URLs this release accepts (and
    never leaks a password)."""
    with pytest.raises(ConfigurationError) as info:
        Ledger.from_url(url)
    message = str(info.value)
    if url != "memory://somehost":
        assert "memory://" in message
        assert "sqlite:///" in message
    assert "secret" not in message


def test_from_url_knows_the_shared_stores() -> None:
    """redis:// and postgresql:// name stores of this release: the accepted list
    in every URL error says so."""
    with pytest.raises(ConfigurationError) as info:
        Ledger.from_url("mysql://localhost/db")
    assert "redis://" in str(info.value)
    assert "postgresql://" in str(info.value)


def test_from_url_rejects_non_strings() -> None:
    """A URL that is not a string raises ConfigurationError."""
    with pytest.raises(ConfigurationError):
        Ledger.from_url(None)  # type: ignore[arg-type]


# -- constructor validation ----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ttl": 0},
        {"ttl": -1},
        {"ttl": float("nan")},
        {"ttl": float("inf")},
        {"ttl": "3600"},
        {"lease": 0},
        {"lease": -5.0},
        {"lease": True},
        {"max_uses": 0},
        {"max_uses": -1},
        {"max_uses": 1.5},
        {"job_id_pattern": "("},
        {"job_id_pattern": 42},
        {"clock": 12.0},
    ],
)
def test_constructor_rejects_bad_configuration(kwargs: dict[str, object]) -> None:
    """Bad ttl, lease, max_uses, job_id_pattern or clock raise ConfigurationError
    (also a ValueError)."""
    with pytest.raises(ConfigurationError):
        Ledger(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Ledger(**kwargs)  # type: ignore[arg-type]


def test_constructor_rejects_a_store_without_the_protocol() -> None:
    """A store object missing the protocol's methods is refused up front."""
    with pytest.raises(ConfigurationError):
        Ledger(object())  # type: ignore[arg-type]


def test_constructor_defaults() -> None:
    """Defaults: a MemoryStore, ttl 3600 s, lease 60 s, balances off, no max_uses."""
    ledger = Ledger()
    assert isinstance(ledger.store, MemoryStore)
    assert ledger.ttl == 3600.0
    assert ledger.lease == 60.0
    assert ledger.balances is False
    assert ledger.max_uses is None
    assert "Ledger(" in repr(ledger)


def test_custom_job_id_pattern_accepts_its_ids_and_keeps_the_length_limit(
    clock: FakeClock,
) -> None:
    """job_id_pattern replaces the character set (matched in full) but the
    128-character limit still applies."""
    ledger = make_ledger(clock=clock, job_id_pattern=r"job/[0-9]+")
    assert ledger.charge(A, "job/42").charged
    with pytest.raises(InvalidJobId):
        ledger.charge(A, "6f1c2d3e")  # default-valid but not this pattern
    with pytest.raises(InvalidJobId):
        ledger.charge(A, "job/42x")  # a prefix match is not enough
    long_ok = "job/" + "1" * 124
    assert len(long_ok) == 128
    assert ledger.charge(A, long_ok).charged
    with pytest.raises(InvalidJobId):
        ledger.charge(A, "job/" + "1" * 125)


def test_compiled_job_id_pattern_is_accepted(clock: FakeClock) -> None:
    """A compiled pattern works like a string one, limit included."""
    ledger = make_ledger(clock=clock, job_id_pattern=re.compile(r"[a-z ]+"))
    assert ledger.charge(A, "with spaces").charged
    with pytest.raises(InvalidJobId):
        ledger.charge(A, "a" * 129)
