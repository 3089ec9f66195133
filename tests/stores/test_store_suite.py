"""The rules of DESIGN §2, checked through the Ledger on every store kind.

Each test runs once per entry of ``tests/stores/conftest.py::STORES``, so a new
store passes this file before it is trusted with money.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
from collections.abc import Callable

import attrs
import pytest

from jobcredits_plugin import (
    Charge,
    ConfigurationError,
    InsufficientCredits,
    InvalidArgument,
    JobExhausted,
    JobInProgress,
    Ledger,
)
from jobcredits_plugin._ledger import grant_charge_id
from jobcredits_plugin.stores import GRANT_ID_RETENTION, BaseStore, MemoryStore
from jobcredits_plugin.testing import DEFAULT_START, FakeClock, RecordingPlugin

MakeLedger = Callable[..., Ledger]


# -- a new job, follow-ups, the window -------------------------------------------------


def test_first_call_charges_a_new_pending_record(
    make_ledger: MakeLedger, events: RecordingPlugin
) -> None:
    """No live record: the call opens a pending record, fires on_charge, outcome charged."""
    ledger = make_ledger()
    c = ledger.charge("acct", "job-1", cost=2, tier="pro", backend="gpu")
    assert c.outcome == "charged"
    assert c.charged
    assert c.balance is None
    r = c.record
    assert (r.account, r.scope, r.job_id) == ("acct", "default", "job-1")
    assert r.state == "pending"
    assert (r.cost, r.tier, r.backend, r.uses) == (2, "pro", "gpu", 1)
    assert r.charged_at == DEFAULT_START
    assert r.expires_at == DEFAULT_START + 3600
    assert r.lease_until == DEFAULT_START + 60
    assert events.kinds() == ["charge"]
    assert events.of("charge") == [r]
    assert ledger.lookup("acct", "job-1") == r


def test_follow_up_of_a_charged_job_is_reused_free(
    make_ledger: MakeLedger, clock: FakeClock, events: RecordingPlugin
) -> None:
    """A live charged record: uses += 1, on_reuse fires, nothing is debited."""
    ledger = make_ledger(balances=True)
    ledger.grant("acct", 5)
    first = ledger.charge("acct", "job-1", cost=3)
    assert first.balance == 2
    confirmed = ledger.confirm("acct", "job-1", charge_id=first.record.charge_id)
    assert confirmed == attrs.evolve(first.record, state="charged")
    clock.advance(100)
    second = ledger.charge("acct", "job-1", cost=3)
    third = ledger.charge("acct", "job-1", cost=3)
    assert (second.outcome, third.outcome) == ("reused", "reused")
    assert not second.charged
    assert third.record.uses == 3
    assert third.record.charge_id == first.record.charge_id
    assert third.record.charged_at == first.record.charged_at
    assert third.balance == 2
    assert ledger.balance("acct") == 2
    assert events.kinds() == ["charge", "reuse", "reuse"]
    assert [r.uses for r in events.of("reuse")] == [2, 3]


def test_follow_ups_never_extend_the_window(make_ledger: MakeLedger, clock: FakeClock) -> None:
    """expires_at is charged_at + ttl: a reuse just before it does not move it."""
    ledger = make_ledger()
    c = ledger.charge("acct", "job-1")
    ledger.confirm("acct", "job-1")
    clock.advance(3599)
    assert ledger.charge("acct", "job-1").record.expires_at == c.record.expires_at
    clock.advance(1)
    again = ledger.charge("acct", "job-1")
    assert again.charged
    assert again.record.charge_id != c.record.charge_id


def test_pending_job_answers_in_progress_with_the_lease_left(
    make_ledger: MakeLedger, clock: FakeClock, events: RecordingPlugin
) -> None:
    """A pending record within its lease: JobInProgress, retry_after = lease left (rounded up)."""
    ledger = make_ledger()
    c = ledger.charge("acct", "job-1")
    clock.advance(20)
    with pytest.raises(JobInProgress) as info:
        ledger.charge("acct", "job-1")
    assert info.value.retry_after == 40
    assert info.value.status == 409
    clock.advance(39.5)
    with pytest.raises(JobInProgress) as info:
        ledger.charge("acct", "job-1")
    assert info.value.retry_after == 1
    assert events.kinds() == ["charge"]
    assert ledger.lookup("acct", "job-1") == c.record


def test_lease_over_refunds_the_stale_charge_and_charges_anew(
    make_ledger: MakeLedger, clock: FakeClock, events: RecordingPlugin
) -> None:
    """A pending record at its lease end: on_refund for it, then on_charge for the new one."""
    ledger = make_ledger(balances=True)
    ledger.grant("acct", 1)
    old = ledger.charge("acct", "job-1")
    assert old.balance == 0
    clock.advance(60)
    new = ledger.charge("acct", "job-1")
    assert new.charged
    assert new.balance == 0  # the stale charge's credit paid for the new one
    assert new.record.charge_id != old.record.charge_id
    assert new.record.charged_at == old.record.charged_at + 60
    assert events.kinds() == ["charge", "refund", "charge"]
    refunded = events.of("refund")[0]
    assert refunded == attrs.evolve(old.record, state="refunded")
    assert ledger.lookup("acct", "job-1") == new.record


def test_pending_record_past_its_expiry_is_refunded_not_expired(
    make_ledger: MakeLedger, clock: FakeClock, events: RecordingPlugin
) -> None:
    """A pending record whose worker died long ago is a stale charge: refund, then charge."""
    ledger = make_ledger()
    ledger.charge("acct", "job-1")
    clock.advance(10_000)
    assert ledger.charge("acct", "job-1").charged
    assert events.kinds() == ["charge", "refund", "charge"]


def test_expired_record_fires_expire_then_charges_anew(
    make_ledger: MakeLedger, clock: FakeClock, events: RecordingPlugin
) -> None:
    """A charged record past expires_at, not yet pruned: on_expire for it, then a new charge."""
    ledger = make_ledger()
    old = ledger.charge("acct", "job-1")
    confirmed = ledger.confirm("acct", "job-1")
    clock.advance(3600)
    new = ledger.charge("acct", "job-1")
    assert new.charged
    assert events.kinds() == ["charge", "expire", "charge"]
    assert events.of("expire") == [confirmed]
    assert new.record.charge_id != old.record.charge_id
    assert ledger.prune() == []


def test_refunded_job_is_absent_and_charged_again(
    make_ledger: MakeLedger, events: RecordingPlugin
) -> None:
    """After a refund, lookup sees nothing and the next call is a new charge."""
    ledger = make_ledger()
    old = ledger.charge("acct", "job-1")
    assert ledger.refund("acct", "job-1") is True
    assert ledger.lookup("acct", "job-1") is None
    assert ledger.snapshot() == []
    new = ledger.charge("acct", "job-1")
    assert new.charged
    assert new.record.charge_id != old.record.charge_id
    assert events.kinds() == ["charge", "refund", "charge"]


# -- balances ----------------------------------------------------------------------------


def test_insufficient_credits_records_nothing(
    make_ledger: MakeLedger, events: RecordingPlugin
) -> None:
    """Balance below cost: InsufficientCredits (402) with balance and cost; no record, no event."""
    ledger = make_ledger(balances=True)
    ledger.grant("acct", 1)
    with pytest.raises(InsufficientCredits) as info:
        ledger.charge("acct", "job-1", cost=2)
    assert (info.value.balance, info.value.cost, info.value.status) == (1, 2, 402)
    assert ledger.lookup("acct", "job-1") is None
    assert ledger.snapshot() == []
    assert ledger.balance("acct") == 1
    assert events.kinds() == []
    assert ledger.prune() == []


def test_zero_cost_job_needs_no_credits(make_ledger: MakeLedger) -> None:
    """cost=0 is never short of credits, even on an empty balance."""
    ledger = make_ledger(balances=True)
    c = ledger.charge("acct", "free-job", cost=0)
    assert c.charged
    assert c.balance == 0
    assert c.record.debited == 0


def test_insufficient_after_stale_charge_still_commits_its_refund(
    make_ledger: MakeLedger, clock: FakeClock, events: RecordingPlugin
) -> None:
    """A takeover that the balance cannot pay for still refunds the stale charge (once)."""
    ledger = make_ledger(balances=True)
    ledger.grant("acct", 1)
    ledger.charge("acct", "job-1", cost=1)
    clock.advance(61)
    with pytest.raises(InsufficientCredits) as info:
        ledger.charge("acct", "job-1", cost=5)
    assert info.value.balance == 1
    assert events.kinds() == ["charge", "refund"]
    assert ledger.lookup("acct", "job-1") is None
    assert ledger.balance("acct") == 1
    assert ledger.prune() == []
    assert events.kinds() == ["charge", "refund"]


def test_refund_gives_back_what_was_debited(make_ledger: MakeLedger) -> None:
    """A refund credits exactly the record's debited amount, not the current price."""
    ledger = make_ledger(balances=True)
    ledger.grant("acct", 5)
    c = ledger.charge("acct", "job-1", cost=3)
    assert (c.balance, c.record.debited) == (2, 3)
    assert ledger.refund("acct", "job-1") is True
    assert ledger.balance("acct") == 5


def test_charge_made_with_balances_off_refunds_nothing(make_ledger: MakeLedger) -> None:
    """debited is 0 when balances were off at charge time; a balances-on refund adds nothing."""
    off = make_ledger(balances=False)
    on = make_ledger(balances=True)
    off.grant("acct", 4)
    c = off.charge("acct", "job-1", cost=3)
    assert c.record.debited == 0
    assert c.balance is None
    assert on.refund("acct", "job-1") is True
    assert on.balance("acct") == 4


def test_grant_clamps_at_zero(make_ledger: MakeLedger) -> None:
    """A negative grant never takes a balance below zero, and the clamp is not remembered."""
    ledger = make_ledger(balances=True)
    assert ledger.grant("acct", -5) == 0
    assert ledger.grant("acct", 3) == 3
    assert ledger.grant("acct", -10) == 0
    assert ledger.balance("acct") == 0
    assert ledger.grant("acct", 2) == 2
    assert ledger.balance("acct") == 2
    assert ledger.balance("nobody") == 0


def test_balances_off_still_stores_grants(make_ledger: MakeLedger) -> None:
    """balances=False: balance() is None; grant() stores the amount for a balances-on ledger."""
    off = make_ledger(balances=False)
    assert off.grant("acct", 7) == 7
    assert off.balance("acct") is None
    assert off.charge("acct", "job-1", cost=3).balance is None
    on = make_ledger(balances=True)
    assert on.balance("acct") == 7
    assert on.charge("acct", "job-2", cost=3).balance == 4


def test_balances_are_per_account(make_ledger: MakeLedger) -> None:
    """A debit touches only the charged account's balance."""
    ledger = make_ledger(balances=True)
    ledger.grant("a", 2)
    ledger.grant("b", 2)
    ledger.charge("a", "job-1", cost=2)
    assert (ledger.balance("a"), ledger.balance("b")) == (0, 2)


# -- max_uses ----------------------------------------------------------------------------


def test_max_uses_reached_raises_job_exhausted(
    make_ledger: MakeLedger, clock: FakeClock, events: RecordingPlugin
) -> None:
    """uses counts the charging call; at max_uses the next call is JobExhausted, nothing changes."""
    ledger = make_ledger(max_uses=2)
    ledger.charge("acct", "job-1")
    ledger.confirm("acct", "job-1")
    assert ledger.charge("acct", "job-1").record.uses == 2
    with pytest.raises(JobExhausted) as info:
        ledger.charge("acct", "job-1")
    assert info.value.status == 409
    assert info.value.max_uses == 2
    assert info.value.retry_after is None
    record = ledger.lookup("acct", "job-1")
    assert record is not None
    assert record.uses == 2
    assert events.kinds() == ["charge", "reuse"]
    clock.advance(3600)
    assert ledger.charge("acct", "job-1").charged  # a new window, a new job


def test_max_uses_one_allows_only_the_charging_call(make_ledger: MakeLedger) -> None:
    """max_uses=1: the first follow-up is already exhausted."""
    ledger = make_ledger(max_uses=1)
    ledger.charge("acct", "job-1")
    ledger.confirm("acct", "job-1")
    with pytest.raises(JobExhausted):
        ledger.charge("acct", "job-1")


# -- confirm and refund --------------------------------------------------------------------


def test_confirm_and_refund_with_a_stale_charge_id_do_nothing(
    make_ledger: MakeLedger, clock: FakeClock, events: RecordingPlugin
) -> None:
    """After a takeover, the old worker's confirm/refund (old charge_id) leave the new charge be."""
    ledger = make_ledger()
    old = ledger.charge("acct", "job-1")
    clock.advance(61)
    new = ledger.charge("acct", "job-1")
    assert ledger.confirm("acct", "job-1", charge_id=old.record.charge_id) is None
    assert ledger.refund("acct", "job-1", charge_id=old.record.charge_id) is False
    assert ledger.lookup("acct", "job-1") == new.record
    confirmed = ledger.confirm("acct", "job-1", charge_id=new.record.charge_id)
    assert confirmed == attrs.evolve(new.record, state="charged")
    assert ledger.refund("acct", "job-1", charge_id=new.record.charge_id) is True
    assert events.kinds() == ["charge", "refund", "charge", "refund"]


def test_confirm_is_idempotent_and_reports_the_live_record(make_ledger: MakeLedger) -> None:
    """Confirming twice returns the same charged record; confirming no job returns None."""
    ledger = make_ledger()
    c = ledger.charge("acct", "job-1")
    first = ledger.confirm("acct", "job-1")
    second = ledger.confirm("acct", "job-1", charge_id=c.record.charge_id)
    assert first == second == attrs.evolve(c.record, state="charged")
    assert ledger.confirm("acct", "nope") is None


def test_confirm_after_the_lease_ran_out_keeps_the_charge(
    make_ledger: MakeLedger, clock: FakeClock, events: RecordingPlugin
) -> None:
    """A slow first call confirmed after its lease, before any takeover, stands charged."""
    ledger = make_ledger()
    c = ledger.charge("acct", "job-1")
    clock.advance(120)
    assert ledger.confirm("acct", "job-1", charge_id=c.record.charge_id) is not None
    assert ledger.charge("acct", "job-1").outcome == "reused"
    assert ledger.prune() == []
    assert events.kinds() == ["charge", "reuse"]


def test_confirm_of_an_expired_record_returns_none(
    make_ledger: MakeLedger, clock: FakeClock
) -> None:
    """A charged record past its window is not confirmable (it is absent for every read)."""
    ledger = make_ledger()
    ledger.charge("acct", "job-1")
    ledger.confirm("acct", "job-1")
    clock.advance(3600)
    assert ledger.confirm("acct", "job-1") is None


def test_refund_is_idempotent_and_fires_once(
    make_ledger: MakeLedger, events: RecordingPlugin
) -> None:
    """Only the refund call that did it returns True; on_refund fires once."""
    ledger = make_ledger(balances=True)
    ledger.grant("acct", 1)
    c = ledger.charge("acct", "job-1")
    ledger.confirm("acct", "job-1")
    assert ledger.refund("acct", "job-1", charge_id=c.record.charge_id) is True
    assert ledger.refund("acct", "job-1", charge_id=c.record.charge_id) is False
    assert ledger.refund("acct", "job-1") is False
    assert ledger.balance("acct") == 1
    assert events.kinds() == ["charge", "refund"]
    assert events.of("refund")[0] == attrs.evolve(c.record, state="refunded")


def test_refund_of_an_unknown_or_expired_job_returns_false(
    make_ledger: MakeLedger, clock: FakeClock, events: RecordingPlugin
) -> None:
    """Nothing to refund: no job, or a window that already closed (that one expires instead)."""
    ledger = make_ledger()
    assert ledger.refund("acct", "nope") is False
    ledger.charge("acct", "job-1")
    ledger.confirm("acct", "job-1")
    clock.advance(3600)
    assert ledger.refund("acct", "job-1") is False
    assert [r.job_id for r in ledger.prune()] == ["job-1"]
    assert events.kinds() == ["charge", "expire"]


# -- reads hide what is gone ----------------------------------------------------------------


def test_lookup_and_snapshot_hide_expired_records_before_prune(
    make_ledger: MakeLedger, clock: FakeClock, events: RecordingPlugin
) -> None:
    """A record past expires_at is absent for lookup and snapshot while still unpruned."""
    ledger = make_ledger()
    ledger.charge("acct", "old")
    ledger.confirm("acct", "old")
    clock.advance(3000)
    young = ledger.charge("acct", "young")
    clock.advance(600)
    assert ledger.lookup("acct", "old") is None
    assert ledger.snapshot() == [young.record]
    assert events.kinds() == ["charge", "charge"]  # nothing settled by reading
    settled = sorted((r.job_id, r.state) for r in ledger.prune())
    assert settled == [("old", "charged"), ("young", "refunded")]


def test_prune_returns_removed_records_and_fires_once(
    make_ledger: MakeLedger, clock: FakeClock, events: RecordingPlugin
) -> None:
    """prune removes expired records (on_expire once each) and returns them; then finds none."""
    ledger = make_ledger()
    confirmed = []
    for n in range(3):
        ledger.charge("acct", f"job-{n}")
        confirmed.append(ledger.confirm("acct", f"job-{n}"))
    clock.advance(1800)
    ledger.charge("acct", "young")
    young = ledger.confirm("acct", "young")
    clock.advance(1800)
    events.clear()
    removed = ledger.prune()
    assert sorted(removed, key=lambda r: r.job_id) == confirmed
    assert sorted(events.of("expire"), key=lambda r: r.job_id) == confirmed
    assert events.kinds() == ["expire"] * 3
    assert ledger.prune() == []
    assert events.kinds() == ["expire"] * 3
    assert ledger.snapshot() == [young]


def test_prune_settles_stale_pending_records_by_refunding(
    make_ledger: MakeLedger, clock: FakeClock, events: RecordingPlugin
) -> None:
    """A pending record whose lease ran out is refunded by prune (on_refund), credit given back."""
    ledger = make_ledger(balances=True)
    ledger.grant("acct", 2)
    stale = ledger.charge("acct", "stale", cost=2)
    clock.advance(60)
    removed = ledger.prune()
    assert removed == [attrs.evolve(stale.record, state="refunded")]
    assert events.kinds() == ["charge", "refund"]
    assert ledger.balance("acct") == 2
    assert ledger.lookup("acct", "stale") is None
    assert ledger.refund("acct", "stale") is False


def test_prune_leaves_live_records_alone(
    make_ledger: MakeLedger, clock: FakeClock, events: RecordingPlugin
) -> None:
    """Pending within lease and charged within window survive prune untouched."""
    ledger = make_ledger()
    pending = ledger.charge("acct", "pending")
    ledger.charge("acct", "charged")
    charged = ledger.confirm("acct", "charged")
    clock.advance(59)
    assert ledger.prune() == []
    assert ledger.snapshot() == sorted([pending.record, charged], key=lambda r: r.job_id)
    assert events.kinds() == ["charge", "charge"]


def test_prune_with_a_limit_removes_at_most_that_many(
    make_ledger: MakeLedger, clock: FakeClock, events: RecordingPlugin
) -> None:
    """prune(limit=n) settles at most n records; repeated calls settle each exactly once."""
    ledger = make_ledger()
    for n in range(5):
        ledger.charge("acct", f"job-{n}")
        ledger.confirm("acct", f"job-{n}")
    clock.advance(3600)
    seen: list[str] = []
    for _ in range(10):
        batch = ledger.prune(limit=2)
        assert len(batch) <= 2
        seen += [r.job_id for r in batch]
    assert sorted(seen) == [f"job-{n}" for n in range(5)]
    assert len(events.of("expire")) == 5


def test_snapshot_orders_by_charge_time_then_key(make_ledger: MakeLedger, clock: FakeClock) -> None:
    """snapshot lists live records oldest charge first, ties broken by (account, scope, job_id)."""
    ledger = make_ledger()
    ledger.charge("b", "job-2")
    ledger.charge("a", "job-9", scope="z")
    ledger.charge("a", "job-9", scope="a")
    clock.advance(1)
    ledger.charge("a", "job-1")
    clock.advance(1)
    ledger.charge("c", "job-0")
    order = [(r.account, r.scope, r.job_id) for r in ledger.snapshot()]
    assert order == [
        ("a", "a", "job-9"),
        ("a", "z", "job-9"),
        ("b", "default", "job-2"),
        ("a", "default", "job-1"),
        ("c", "default", "job-0"),
    ]


def test_scopes_keep_jobs_apart(make_ledger: MakeLedger, events: RecordingPlugin) -> None:
    """The same job id in two scopes is two jobs, each charged."""
    ledger = make_ledger()
    assert ledger.charge("acct", "job-1", scope="summarize").charged
    assert ledger.charge("acct", "job-1", scope="translate").charged
    assert ledger.charge("other", "job-1", scope="summarize").charged
    assert events.kinds() == ["charge"] * 3


# -- keys and values are stored exactly ----------------------------------------------------

#: Keys that a store joining (account, scope, job_id) with a separator, or
#: building keys by string formatting, would confuse with one another.
CONFUSABLE_KEYS = [
    ("a:b", "c", "d"),
    ("a", "b:c", "d"),
    ("a", "b", "c:d"),
    ("a|b", "c", "d"),
    ("a", "b.c", "d"),
    ("a.b", "c", "d"),
    ("3:a", "b", "c"),
    ("3", "a:b", "c"),
    ("{a}", "b", "c"),
    ("a", "b", "c"),
    ("a b", "c", "d"),
    ("a\\b", "c", "d"),
    ("a%s", "c", "d"),
    ("*", "c", "d"),
    ("a'; DROP TABLE jobcredits_jobs; --", "c", "d"),
]


def test_keys_a_joined_string_would_confuse_stay_distinct(
    make_ledger: MakeLedger, events: RecordingPlugin
) -> None:
    """Every (account, scope, job_id) tuple is its own job, however its parts concatenate."""
    ledger = make_ledger(balances=True)
    assert len(set(CONFUSABLE_KEYS)) == len(CONFUSABLE_KEYS)
    for account, _, _ in CONFUSABLE_KEYS:
        ledger.grant(account, 10)
    charges = {}
    for account, scope, job_id in CONFUSABLE_KEYS:
        c = ledger.charge(account, job_id, scope=scope)
        assert c.charged, (account, scope, job_id)
        charges[(account, scope, job_id)] = c.record
    assert len(events.of("charge")) == len(CONFUSABLE_KEYS)
    for key, record in charges.items():
        assert ledger.lookup(key[0], key[2], scope=key[1]) == record
    assert {r.key for r in ledger.snapshot()} == set(CONFUSABLE_KEYS)
    # Refunding one leaves every look-alike in place.
    assert ledger.refund("a", "d", scope="b:c") is True
    assert ledger.lookup("a:b", "d", scope="c") is not None
    assert ledger.lookup("a", "c:d", scope="b") is not None
    assert len(ledger.snapshot()) == len(CONFUSABLE_KEYS) - 1


UNICODE_ACCOUNTS = [
    "José",
    "Jose\u0301",  # the same name, decomposed: a different account (no normalisation)
    "用户",
    "👩‍💻",
    "עברית",
    "Ω",
    "\u03a9",
    "\u2126",  # OHM SIGN, NFC-equivalent to Ω but a different string
    "🙂" * 256,
]


def test_unicode_accounts_round_trip_and_stay_distinct(
    make_ledger: MakeLedger, events: RecordingPlugin
) -> None:
    """Accounts are stored as given: non-ASCII, astral, unnormalised look-alikes are distinct."""
    ledger = make_ledger(balances=True)
    accounts = list(dict.fromkeys(UNICODE_ACCOUNTS))
    for n, account in enumerate(accounts):
        ledger.grant(account, n + 1)
    for account in accounts:
        c = ledger.charge(account, "job-1")
        assert c.charged
        assert c.record.account == account
        looked = ledger.lookup(account, "job-1")
        assert looked is not None
        assert looked.account == account
    assert [ledger.balance(a) for a in accounts] == list(range(len(accounts)))
    assert sorted(r.account for r in ledger.snapshot()) == sorted(accounts)
    assert len(events.of("charge")) == len(accounts)


@pytest.mark.parametrize(
    ("tier", "backend"),
    [(None, None), ("pro", None), (None, "whisper-large"), ("tier ü", "backend/β")],
)
def test_records_round_trip_every_field(
    store: BaseStore, events: RecordingPlugin, tier: str | None, backend: str | None
) -> None:
    """What the store gives back equals what it was given: every field, floats to the bit."""
    clock = FakeClock(1_700_000_000.123456789)
    ledger = Ledger(store, clock=clock, ttl=0.1 + 0.2 + 3600, lease=1 / 3, plugins=[events])
    c = ledger.charge("acct", "job-1", cost=7, tier=tier, backend=backend)
    r = c.record
    assert (r.tier, r.backend, r.cost, r.debited) == (tier, backend, 7, 0)
    assert r.charged_at == clock.now
    assert r.expires_at == clock.now + (0.1 + 0.2 + 3600)
    assert r.lease_until == clock.now + 1 / 3
    assert ledger.lookup("acct", "job-1") == r
    assert ledger.snapshot() == [r]
    confirmed = ledger.confirm("acct", "job-1")
    assert confirmed == attrs.evolve(r, state="charged")
    assert ledger.lookup("acct", "job-1") == confirmed
    reused = ledger.charge("acct", "job-1", cost=99, tier="other", backend="other")
    assert reused.record == attrs.evolve(confirmed, uses=2)  # the first call's tier/backend
    assert ledger.lookup("acct", "job-1") == reused.record
    assert events.of("charge") == [r]
    assert events.of("reuse") == [reused.record]
    clock.advance(3601)
    assert ledger.prune() == [reused.record]


def test_debited_round_trips(make_ledger: MakeLedger) -> None:
    """The debited amount of a balances-on charge is stored and read back exactly."""
    ledger = make_ledger(balances=True)
    ledger.grant("acct", 10**12)
    c = ledger.charge("acct", "job-1", cost=10**12 - 1)
    assert c.record.debited == 10**12 - 1
    assert ledger.lookup("acct", "job-1") == c.record
    assert c.balance == 1


def test_two_ledgers_with_different_policies_share_a_store(
    make_ledger: MakeLedger, clock: FakeClock
) -> None:
    """Policy travels with each call: a short-ttl ledger and a long-ttl one read one store."""
    short = make_ledger(ttl=10, lease=5)
    long = make_ledger(ttl=3600)
    short.charge("acct", "job-1")
    short.confirm("acct", "job-1")
    clock.advance(11)
    # The record holds its own expiry: both ledgers now see it expired.
    assert long.lookup("acct", "job-1") is None
    c = long.charge("acct", "job-1")
    assert c.record.expires_at == clock.now + 3600


# -- the async twins -------------------------------------------------------------------------


def test_async_twins_follow_the_same_rules(
    make_ledger: MakeLedger, clock: FakeClock, events: RecordingPlugin
) -> None:
    """acharge/aconfirm/arefund/alookup/asnapshot/aprune/agrant/abalance behave as the sync ones."""

    async def scenario() -> None:
        ledger = make_ledger(balances=True)
        assert await ledger.agrant("acct", 3) == 3
        c = await ledger.acharge("acct", "job-1", tier="t")
        assert c.charged
        assert c.balance == 2
        with pytest.raises(JobInProgress) as info:
            await ledger.acharge("acct", "job-1")
        assert info.value.retry_after == 60
        confirmed = await ledger.aconfirm("acct", "job-1", charge_id=c.record.charge_id)
        assert confirmed == attrs.evolve(c.record, state="charged")
        reused = await ledger.acharge("acct", "job-1")
        assert reused.outcome == "reused"
        assert await ledger.alookup("acct", "job-1") == reused.record
        assert await ledger.asnapshot() == [reused.record]
        assert await ledger.arefund("acct", "job-1") is True
        assert await ledger.arefund("acct", "job-1") is False
        assert await ledger.abalance("acct") == 3
        await ledger.acharge("acct", "job-2", cost=3)
        with pytest.raises(InsufficientCredits):
            await ledger.acharge("acct", "job-3")
        await ledger.aconfirm("acct", "job-2")
        clock.advance(3600)
        assert await ledger.alookup("acct", "job-2") is None
        removed = await ledger.aprune()
        assert [r.job_id for r in removed] == ["job-2"]
        assert await ledger.aprune() == []

    asyncio.run(scenario())
    assert events.kinds() == ["charge", "reuse", "refund", "charge", "expire"]


def test_async_stale_lease_takeover_and_stale_charge_id(
    make_ledger: MakeLedger, clock: FakeClock, events: RecordingPlugin
) -> None:
    """The async path refunds a stale pending charge, and ignores the old worker's charge_id."""

    async def scenario() -> None:
        ledger = make_ledger()
        old = await ledger.acharge("acct", "job-1")
        clock.advance(60)
        new = await ledger.acharge("acct", "job-1")
        assert new.charged
        assert await ledger.aconfirm("acct", "job-1", charge_id=old.record.charge_id) is None
        assert await ledger.arefund("acct", "job-1", charge_id=old.record.charge_id) is False
        assert await ledger.alookup("acct", "job-1") == new.record

    asyncio.run(scenario())
    assert events.kinds() == ["charge", "refund", "charge"]


def test_async_max_uses_and_close(make_ledger: MakeLedger) -> None:
    """acharge raises JobExhausted at max_uses; async with closes the ledger."""

    async def scenario() -> None:
        async with make_ledger(max_uses=1) as ledger:
            await ledger.acharge("acct", "job-1")
            await ledger.aconfirm("acct", "job-1")
            with pytest.raises(JobExhausted):
                await ledger.acharge("acct", "job-1")

    asyncio.run(scenario())


def test_concurrent_async_charges_of_one_job_charge_once(
    make_ledger: MakeLedger, events: RecordingPlugin
) -> None:
    """Many acharge calls of one job gathered at once: one charged, the rest in progress."""

    async def scenario() -> list[object]:
        ledger = make_ledger()
        calls = [ledger.acharge("acct", "job-1") for _ in range(10)]
        return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(scenario())
    charges = [r for r in results if isinstance(r, Charge)]
    assert [c.outcome for c in charges] == ["charged"]
    assert sum(isinstance(r, JobInProgress) for r in results) == 9
    assert events.kinds() == ["charge"]


def test_retry_after_is_whole_seconds_rounded_up(make_ledger: MakeLedger, clock: FakeClock) -> None:
    """JobInProgress.retry_after = ceil(lease_until - now), never 0."""
    ledger = make_ledger(lease=7.25)
    ledger.charge("acct", "job-1")
    clock.advance(0.5)
    with pytest.raises(JobInProgress) as info:
        ledger.charge("acct", "job-1")
    assert info.value.retry_after == math.ceil(6.75)


def test_expired_records_of_one_key_do_not_hide_others(
    make_ledger: MakeLedger, clock: FakeClock
) -> None:
    """Expiry is per record: a job charged later stays live when an earlier one expires."""
    ledger = make_ledger()
    ledger.charge("acct", "a")
    ledger.confirm("acct", "a")
    clock.advance(1800)
    ledger.charge("acct", "b")
    b = ledger.confirm("acct", "b")
    clock.advance(1800)
    assert ledger.lookup("acct", "a") is None
    assert b is not None
    assert ledger.lookup("acct", "b") == b
    assert ledger.charge("acct", "b").outcome == "reused"


# -- the credit range (issue 12, item 4) ------------------------------------------------

MAX_CREDITS = 2**53 - 1
OUT_OF_RANGE = [2**53, 2**63, 2**64, 2**200]


def _nothing_recorded(ledger: Ledger, store: BaseStore, balance: int, journal: int) -> None:
    assert ledger.lookup("acct", "job-1") is None
    assert ledger.snapshot() == []
    assert store.balance("acct") == balance
    if getattr(store, "journal", False):
        assert len(ledger.journal(limit=1000)) == journal


def _journal_size(ledger: Ledger, store: BaseStore) -> int:
    return len(ledger.journal(limit=1000)) if getattr(store, "journal", False) else 0


def test_the_largest_amounts_every_store_holds_are_accepted(
    make_ledger: MakeLedger, store: BaseStore
) -> None:
    """MAX_CREDITS (2**53 - 1) as a grant, a cost and max_uses: exact everywhere."""
    ledger = make_ledger(balances=True, max_uses=MAX_CREDITS)
    assert ledger.grant("acct", MAX_CREDITS) == MAX_CREDITS
    c = ledger.charge("acct", "job-1", cost=MAX_CREDITS)
    assert c.balance == 0
    assert c.record.cost == MAX_CREDITS
    assert ledger.refund("acct", "job-1", charge_id=c.record.charge_id)
    assert ledger.balance("acct") == MAX_CREDITS
    assert ledger.charge("acct", "job-2", cost=MAX_CREDITS - 1).balance == 1
    assert ledger.grant("acct", -MAX_CREDITS) == 0


@pytest.mark.parametrize("figure", OUT_OF_RANGE)
def test_out_of_range_cost_is_a_400_with_nothing_recorded(
    make_ledger: MakeLedger, store: BaseStore, events: RecordingPlugin, figure: int
) -> None:
    ledger = make_ledger(balances=True)
    ledger.grant("acct", 5)
    before = _journal_size(ledger, store)
    with pytest.raises(InvalidArgument, match="cost must be an int from 0 to 9007199254740991"):
        ledger.charge("acct", "job-1", cost=figure)
    _nothing_recorded(ledger, store, 5, before)
    assert events.kinds() == []


@pytest.mark.parametrize("figure", OUT_OF_RANGE)
def test_out_of_range_grant_is_a_400_with_nothing_recorded(
    make_ledger: MakeLedger, store: BaseStore, figure: int
) -> None:
    ledger = make_ledger(balances=True)
    ledger.grant("acct", 5)
    before = _journal_size(ledger, store)
    for amount in (figure, -figure):
        with pytest.raises(InvalidArgument, match="amount must be an int from"):
            ledger.grant("acct", amount)
    _nothing_recorded(ledger, store, 5, before)


@pytest.mark.parametrize("figure", OUT_OF_RANGE)
def test_out_of_range_max_uses_is_refused_at_construction(
    make_ledger: MakeLedger, figure: int
) -> None:
    with pytest.raises(ConfigurationError, match="max_uses must be None or an int from 1"):
        make_ledger(max_uses=figure)


def test_a_grant_past_the_cap_is_a_400_with_nothing_recorded(
    make_ledger: MakeLedger, store: BaseStore
) -> None:
    """The store checks the cap in the same atomic step as the write."""
    ledger = make_ledger(balances=True)
    ledger.grant("acct", MAX_CREDITS - 3)
    before = _journal_size(ledger, store)
    with pytest.raises(InvalidArgument, match="past 9007199254740991") as info:
        ledger.grant("acct", 4)
    assert info.value.status == 400
    _nothing_recorded(ledger, store, MAX_CREDITS - 3, before)
    assert ledger.grant("acct", 3) == MAX_CREDITS  # up to the cap is fine
    with pytest.raises(InvalidArgument):
        ledger.grant("acct", 1)
    assert ledger.grant("acct", 0) == MAX_CREDITS
    assert ledger.grant("acct", -1) == MAX_CREDITS - 1  # taking away is never refused


def test_an_async_grant_past_the_cap_is_a_400_with_nothing_recorded(
    make_ledger: MakeLedger, store: BaseStore
) -> None:
    ledger = make_ledger(balances=True)
    journaled = getattr(store, "journal", False)

    async def scenario() -> None:
        await ledger.agrant("acct", MAX_CREDITS)
        before = len(await ledger.ajournal(limit=1000)) if journaled else 0
        with pytest.raises(InvalidArgument, match="past 9007199254740991"):
            await ledger.agrant("acct", 1)
        assert await ledger.abalance("acct") == MAX_CREDITS
        if journaled:
            assert len(await ledger.ajournal(limit=1000)) == before

    asyncio.run(scenario())


def test_a_refund_is_never_lost_even_past_the_cap(
    make_ledger: MakeLedger, store: BaseStore, events: RecordingPlugin
) -> None:
    """A refund gives back what was charged even when a grant filled the
    balance to the cap meanwhile (docs: concepts, credit range); a further
    grant that adds is then refused, one that takes away is not."""
    ledger = make_ledger(balances=True)
    ledger.grant("acct", 10)
    c = ledger.charge("acct", "job-1", cost=10)
    assert ledger.grant("acct", MAX_CREDITS) == MAX_CREDITS
    assert ledger.refund("acct", "job-1", charge_id=c.record.charge_id)
    assert ledger.balance("acct") == MAX_CREDITS + 10
    with pytest.raises(InvalidArgument):
        ledger.grant("acct", 1)
    assert ledger.grant("acct", -20) == MAX_CREDITS - 10
    assert events.kinds() == ["charge", "refund"]


# -- grant ids: a grant safe to retry (issue 13, item 6) ---------------------------------


def _grant_entries(ledger: Ledger, store: BaseStore) -> list[tuple[str, int, int, int]]:
    """The journal's grant entries as (charge_id, cost, delta, balance)."""
    if not getattr(store, "journal", False):
        return []
    return [
        (e.charge_id, e.cost, e.delta, e.balance)
        for e in ledger.journal(limit=1000)
        if e.kind == "grant"
    ]


def test_the_same_grant_id_credits_once_and_journals_once(
    make_ledger: MakeLedger, store: BaseStore, clock: FakeClock
) -> None:
    """A retry answers the balance the first grant answered (what its lost
    answer said), writes nothing and journals nothing; the entry's
    idempotency key derives from the account and the grant_id."""
    ledger = make_ledger(balances=True)
    assert ledger.grant("acct", 5, grant_id="pay-1") == 5
    clock.advance(30)
    assert ledger.grant("acct", 5, grant_id="pay-1") == 5
    assert ledger.balance("acct") == 5
    assert ledger.grant("acct", 7) == 12  # no id: applied
    assert ledger.grant("acct", 5, grant_id="pay-1") == 5  # the first answer, not 12
    assert ledger.grant("acct", 5, grant_id="pay-2") == 17  # another id: another grant
    assert ledger.charge("acct", "job-1", cost=4).balance == 13
    assert ledger.grant("acct", 5, grant_id="pay-2") == 17
    assert asyncio.run(ledger.agrant("acct", 5, grant_id="pay-1")) == 5
    assert asyncio.run(ledger.agrant("acct", 5, grant_id="pay-3")) == 18
    assert asyncio.run(ledger.agrant("acct", 5, grant_id="pay-3")) == 18
    assert ledger.balance("acct") == 18
    if getattr(store, "journal", False):
        entries = [e for e in ledger.journal(limit=1000) if e.kind == "grant"]
        assert [(e.cost, e.delta, e.balance) for e in entries] == [
            (5, 5, 5),
            (7, 7, 12),
            (5, 5, 17),
            (5, 5, 18),
        ]
        first = entries[0]
        assert first.charge_id == grant_charge_id("acct", "pay-1")
        assert first.charge_id.startswith("g-")
        assert len(first.charge_id) == 34
        assert first.idempotency_key == first.charge_id + ":grant"
        assert entries[2].charge_id == grant_charge_id("acct", "pay-2")


def test_a_grant_id_is_per_account(make_ledger: MakeLedger, store: BaseStore) -> None:
    """Two accounts may use the same grant_id: two grants, two distinct
    idempotency keys."""
    ledger = make_ledger(balances=True)
    assert ledger.grant("alice", 3, grant_id="welcome") == 3
    assert ledger.grant("bob", 4, grant_id="welcome") == 4
    assert ledger.grant("alice", 3, grant_id="welcome") == 3
    assert ledger.grant("bob", 4, grant_id="welcome") == 4
    assert (ledger.balance("alice"), ledger.balance("bob")) == (3, 4)
    entries = _grant_entries(ledger, store)
    if entries:
        assert len(entries) == 2
        assert entries[0][0] != entries[1][0]
    assert grant_charge_id("alice", "welcome") != grant_charge_id("bob", "welcome")
    # the parts cannot be shifted into one another
    assert grant_charge_id("a:b", "c") != grant_charge_id("a", "b:c")


def test_a_grant_id_is_remembered_for_the_retention_then_forgotten(
    make_ledger: MakeLedger, store: BaseStore, clock: FakeClock
) -> None:
    """At least GRANT_ID_RETENTION (7 days) by the ledger's clock, prune or
    not; once it has passed the id is forgotten (prune removes it) and a grant
    with it is a new grant."""
    assert GRANT_ID_RETENTION >= 7 * 86400
    ledger = make_ledger(balances=True)
    assert ledger.grant("acct", 5, grant_id="pay-1") == 5
    clock.advance(GRANT_ID_RETENTION - 1)
    ledger.prune()
    assert ledger.grant("acct", 5, grant_id="pay-1") == 5
    assert ledger.grant("acct", 6, grant_id="pay-2") == 11
    clock.advance(1)
    assert ledger.prune() == []
    if isinstance(store, MemoryStore):
        assert store.remembered_grants() == 1  # pay-1 went; pay-2 is a day younger
    assert ledger.grant("acct", 5, grant_id="pay-1") == 16  # forgotten: granted again
    assert ledger.grant("acct", 5, grant_id="pay-1") == 16  # and remembered anew
    assert ledger.grant("acct", 6, grant_id="pay-2") == 11
    assert ledger.balance("acct") == 16
    clock.advance(2 * GRANT_ID_RETENTION)
    ledger.prune()
    if isinstance(store, MemoryStore):
        assert store.remembered_grants() == 0
    assert len(_grant_entries(ledger, store)) in (0, 3)


def test_a_grant_id_reused_for_another_amount_is_a_400_with_nothing_recorded(
    make_ledger: MakeLedger, store: BaseStore
) -> None:
    ledger = make_ledger(balances=True)
    assert ledger.grant("acct", 5, grant_id="pay-1") == 5
    before = _journal_size(ledger, store)
    for amount in (7, -5, 0):
        with pytest.raises(InvalidArgument, match="already used for a grant of 5") as info:
            ledger.grant("acct", amount, grant_id="pay-1")
        assert info.value.status == 400
    with pytest.raises(InvalidArgument, match="already used for a grant of 5"):
        asyncio.run(ledger.agrant("acct", 6, grant_id="pay-1"))
    _nothing_recorded(ledger, store, 5, before)
    assert ledger.grant("acct", 5, grant_id="pay-1") == 5  # the right retry still answers
    assert ledger.grant("other", 7, grant_id="pay-1") == 7  # another account: its own id


def test_a_grant_id_is_checked_before_the_cap(make_ledger: MakeLedger, store: BaseStore) -> None:
    """A retry of a grant that filled the balance to the cap answers as the
    first one did; it is not refused as if it would add more."""
    ledger = make_ledger(balances=True)
    assert ledger.grant("acct", MAX_CREDITS, grant_id="big") == MAX_CREDITS
    assert ledger.grant("acct", MAX_CREDITS, grant_id="big") == MAX_CREDITS
    assert ledger.grant("acct", -3, grant_id="take") == MAX_CREDITS - 3
    assert ledger.grant("acct", -3, grant_id="take") == MAX_CREDITS - 3
    assert ledger.balance("acct") == MAX_CREDITS - 3


@pytest.mark.parametrize(
    "bad",
    ["", "x" * 129, "has space", "a\nb", "nul\x00", "\ud800", "caf\u00e9", "a/b", 5, b"id"],
)
def test_a_bad_grant_id_is_a_400_with_nothing_recorded(
    make_ledger: MakeLedger, store: BaseStore, bad: object
) -> None:
    ledger = make_ledger(balances=True)
    with pytest.raises(InvalidArgument, match="grant_id") as info:
        ledger.grant("acct", 5, grant_id=bad)  # type: ignore[arg-type]
    assert info.value.status == 400
    with pytest.raises(InvalidArgument, match="grant_id"):
        asyncio.run(ledger.agrant("acct", 5, grant_id=bad))  # type: ignore[arg-type]
    _nothing_recorded(ledger, store, 0, 0)
    assert ledger.grant("acct", 5, grant_id="x" * 128) == 5
    assert ledger.grant("acct", 5, grant_id="A-z.0_9:x") == 10


def test_concurrent_retries_of_one_grant_id_credit_once(
    make_ledger: MakeLedger, store: BaseStore
) -> None:
    """Clients retrying one grant at once (a timeout fired while the first
    attempt was still on its way): one credit, one journal entry, and every
    attempt answers the same balance."""
    ledger = make_ledger(balances=True)
    ledger.grant("acct", 1)
    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda _: ledger.grant("acct", 10, grant_id="race"), range(24)))
    assert answers == [11] * 24
    assert ledger.balance("acct") == 11
    assert len(_grant_entries(ledger, store)) in (0, 2)
