"""Text no store can hold, and clock readings that mean nothing (issue 12,
items 6 and 8), on every store kind.

A lone surrogate (``"gold\\ud800"``, valid in a JSON string) is refused like a
control character: 400, nothing recorded (UTF-8 cannot encode it, so SQLite,
Redis and PostgreSQL used to raise a bare UnicodeEncodeError). A clock that
returns NaN, None, infinity, a negative or a millisecond reading is the app's
bug: ConfigurationError before any store is touched (a NaN compares false with
every lease, so a retry during the lease was charged again).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

import pytest

from jobcredits_plugin import (
    ConfigurationError,
    InvalidAccount,
    InvalidArgument,
    InvalidJobId,
    JobInProgress,
    Ledger,
    charges_credit,
)
from jobcredits_plugin.stores import BaseStore
from jobcredits_plugin.testing import DEFAULT_START, FakeClock, RecordingPlugin
from tests.stores._forwarding import forwarding

MakeLedger = Callable[..., Ledger]

SURROGATES = ["gold\ud800", "\udfff", "a\udc80b", "\ud83d"]


class SettableClock:
    """A clock that returns whatever it is told to, broken readings included."""

    def __init__(self, value: Any = DEFAULT_START) -> None:
        self.value = value

    def __call__(self) -> Any:
        return self.value


def _nothing_recorded(ledger: Ledger, *accounts: str) -> None:
    good = Ledger(ledger.store, clock=FakeClock(), balances=True)
    assert good.snapshot() == []
    for account in accounts:
        assert good.balance(account) == 0


# -- lone surrogates -----------------------------------------------------------------


@pytest.mark.parametrize("text", SURROGATES)
def test_surrogate_in_account_is_a_400_and_records_nothing(
    make_ledger: MakeLedger, events: RecordingPlugin, text: str
) -> None:
    ledger = make_ledger(balances=True)
    with pytest.raises(InvalidAccount, match="surrogate"):
        ledger.charge(text, "job-1")
    with pytest.raises(InvalidAccount, match="surrogate"):
        ledger.grant(text, 5)
    with pytest.raises(InvalidAccount, match="surrogate"):
        ledger.balance(text)
    with pytest.raises(InvalidAccount, match="surrogate"):
        ledger.lookup(text, "job-1")
    assert events.kinds() == []
    _nothing_recorded(ledger)


@pytest.mark.parametrize("field", ["tier", "backend"])
@pytest.mark.parametrize("text", SURROGATES)
def test_surrogate_in_tier_or_backend_is_a_400_and_records_nothing(
    make_ledger: MakeLedger, events: RecordingPlugin, field: str, text: str
) -> None:
    ledger = make_ledger(balances=True)
    ledger.grant("acct", 5)
    with pytest.raises(InvalidArgument, match="surrogate") as info:
        ledger.charge("acct", "job-1", **{field: text})
    assert info.value.status == 400
    assert events.kinds() == ["grant"] or events.kinds() == []
    assert ledger.snapshot() == []
    assert ledger.balance("acct") == 5


@pytest.mark.parametrize("text", SURROGATES)
def test_surrogate_in_job_id_or_scope_is_a_400(make_ledger: MakeLedger, text: str) -> None:
    ledger = make_ledger()
    with pytest.raises(InvalidJobId):
        ledger.charge("acct", text)
    with pytest.raises(InvalidJobId):
        ledger.charge("acct", "job-1", scope=text)
    _nothing_recorded(ledger)


@pytest.mark.parametrize("text", SURROGATES)
def test_surrogate_in_job_id_is_refused_under_a_custom_pattern_too(
    make_ledger: MakeLedger, text: str
) -> None:
    """An app's own pattern may admit anything (``.+``); no store can hold a
    lone surrogate, so it is refused whatever the pattern says."""
    ledger = make_ledger(job_id_pattern=r".+")
    assert ledger.charge("acct", "job ünïcode ✓").charged
    with pytest.raises(InvalidJobId, match="surrogate"):
        ledger.charge("acct", text)
    assert [r.job_id for r in ledger.snapshot()] == ["job ünïcode ✓"]


@pytest.mark.parametrize("text", SURROGATES)
def test_surrogate_in_charge_id_is_a_400(make_ledger: MakeLedger, text: str) -> None:
    ledger = make_ledger()
    c = ledger.charge("acct", "job-1")
    with pytest.raises(InvalidArgument, match="surrogate"):
        ledger.confirm("acct", "job-1", charge_id=text)
    with pytest.raises(InvalidArgument, match="surrogate"):
        ledger.refund("acct", "job-1", charge_id=text)
    record = ledger.lookup("acct", "job-1")
    assert record is not None
    assert record.state == "pending"
    assert record.charge_id == c.record.charge_id


def test_surrogate_in_async_charge_is_a_400(make_ledger: MakeLedger) -> None:
    ledger = make_ledger()
    with pytest.raises(InvalidAccount, match="surrogate"):
        asyncio.run(ledger.acharge("gold\ud800", "job-1"))
    with pytest.raises(InvalidArgument, match="surrogate"):
        asyncio.run(ledger.acharge("acct", "job-1", tier="\udfff"))
    _nothing_recorded(ledger)


def test_valid_non_ascii_text_still_passes(make_ledger: MakeLedger) -> None:
    """Only lone surrogates go: astral characters (a proper pair in UTF-16,
    one code point here) and other non-ASCII text are fine."""
    ledger = make_ledger(balances=True)
    ledger.grant("kunde-ü-😀", 3)
    c = ledger.charge("kunde-ü-😀", "job-1", tier="gold-✓", backend="gpu-😀")
    assert c.record.account == "kunde-ü-😀"
    assert (c.record.tier, c.record.backend) == ("gold-✓", "gpu-😀")
    assert ledger.balance("kunde-ü-😀") == 2


def test_redis_prefix_with_a_surrogate_is_a_configuration_error(store_kind: str) -> None:
    if store_kind != "redis":
        pytest.skip("the key prefix is a Redis option")
    pytest.importorskip("redis")
    from jobcredits_plugin.stores import RedisStore

    with pytest.raises(ConfigurationError, match="surrogate"):
        RedisStore(url="redis://127.0.0.1:6379/3", prefix="jc\ud800")


# -- the clock -----------------------------------------------------------------------

BROKEN = [
    pytest.param(math.nan, id="nan"),
    pytest.param(None, id="none"),
    pytest.param(math.inf, id="inf"),
    pytest.param(-math.inf, id="-inf"),
    pytest.param(-1.0, id="negative"),
    pytest.param(float(2**33), id="2**33"),
    pytest.param(DEFAULT_START * 1000, id="milliseconds"),
    pytest.param(10**400, id="huge-int"),
    pytest.param("1700000000", id="string"),
    pytest.param(True, id="bool"),
]


@pytest.mark.parametrize("reading", BROKEN)
def test_broken_clock_is_a_configuration_error_and_records_nothing(
    make_ledger: MakeLedger, events: RecordingPlugin, reading: Any
) -> None:
    ledger = make_ledger(balances=True, clock=SettableClock(reading))
    with pytest.raises(ConfigurationError, match="clock") as info:
        ledger.charge("acct", "job-1")
    assert info.value.status == 500
    assert not isinstance(info.value, InvalidArgument)
    for op in (
        lambda: ledger.grant("acct", 5),
        lambda: ledger.lookup("acct", "job-1"),
        lambda: ledger.confirm("acct", "job-1"),
        lambda: ledger.refund("acct", "job-1"),
        ledger.prune,
        ledger.snapshot,
    ):
        with pytest.raises(ConfigurationError, match="clock"):
            op()
    with pytest.raises(ConfigurationError, match="clock"):
        asyncio.run(ledger.acharge("acct", "job-1"))
    assert [k for k in events.kinds() if k != "reject"] == []
    _nothing_recorded(ledger, "acct")


@pytest.mark.parametrize("reading", [0, 0.0, DEFAULT_START, int(DEFAULT_START), 2**33 - 1])
def test_good_clock_readings_pass(make_ledger: MakeLedger, reading: Any) -> None:
    ledger = make_ledger(clock=SettableClock(reading))
    c = ledger.charge("acct", "job-1")
    assert c.record.charged_at == float(reading)
    assert isinstance(ledger.now(), float)


@pytest.mark.parametrize("reading", [math.nan, None, math.inf])
def test_broken_clock_cannot_charge_a_job_again_during_its_lease(
    make_ledger: MakeLedger, events: RecordingPlugin, reading: Any
) -> None:
    """A NaN compares false with every lease: a retry during the lease used
    to be charged a second time (memory, PostgreSQL)."""
    clock = SettableClock()
    ledger = make_ledger(balances=True, clock=clock)
    ledger.grant("acct", 5)
    first = ledger.charge("acct", "job-1")
    assert ledger.balance("acct") == 4
    clock.value = reading
    with pytest.raises(ConfigurationError):
        ledger.charge("acct", "job-1")
    clock.value = DEFAULT_START + 1
    with pytest.raises(JobInProgress):
        ledger.charge("acct", "job-1")
    assert ledger.balance("acct") == 4
    assert [r.charge_id for r in ledger.snapshot()] == [first.record.charge_id]
    assert events.kinds().count("charge") == 1


def test_fail_open_does_not_pass_a_broken_clock(make_ledger: MakeLedger) -> None:
    """fail_open lets calls through only when the store is unavailable; a
    broken clock is a bug and must never turn into free service."""
    ledger = make_ledger(clock=SettableClock(math.nan))
    calls = []

    @charges_credit(ledger, account=lambda: "acct", job_id=lambda: "job-1", fail_open=True)
    def handler() -> str:
        calls.append(1)
        return "ok"

    with pytest.raises(ConfigurationError):
        handler()
    assert calls == []


@pytest.mark.parametrize("value", ["yes", 1, "false", None])
def test_fail_open_must_be_a_bool(value: Any) -> None:
    ledger = Ledger()
    with pytest.raises(ConfigurationError, match="fail_open"):
        charges_credit(ledger, account=lambda: "a", job_id=lambda: "j", fail_open=value)


def test_store_is_untouched_by_a_broken_clock(store: BaseStore) -> None:
    """The check runs before the store call: the store never sees the reading."""
    seen: list[str] = []

    @forwarding
    class Spy:
        def __getattr__(self, name: str) -> Any:
            seen.append(name)
            return getattr(store, name)

    ledger = Ledger(Spy(), clock=SettableClock(math.nan))  # type: ignore[arg-type]
    seen.clear()
    with pytest.raises(ConfigurationError):
        ledger.charge("acct", "job-1")
    assert "claim" not in seen
