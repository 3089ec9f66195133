"""Input validation: bad input raises before any store is touched and records
nothing; distinct job keys never collide (DESIGN §2, "Validation" and "job key")."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from jobcredits_plugin import (
    ConfigurationError,
    InvalidAccount,
    InvalidArgument,
    InvalidJobId,
    JobCreditsError,
    Ledger,
)
from jobcredits_plugin.stores import ClaimRequest, ClaimResult, Event, MemoryStore, SQLiteStore
from jobcredits_plugin.testing import FakeClock, RecordingPlugin, make_ledger

A = "acct-1"
J = "job-1"


class SpyStore(MemoryStore):
    """A memory store that records every operation the ledger asks of it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def claim(self, req: ClaimRequest) -> ClaimResult:
        self.calls.append("claim")
        return super().claim(req)

    def confirm(self, key: Any, charge_id: str | None, now: float) -> Any:
        self.calls.append("confirm")
        return super().confirm(key, charge_id, now)

    def refund(self, key: Any, charge_id: str | None, now: float) -> Event | None:
        self.calls.append("refund")
        return super().refund(key, charge_id, now)

    def lookup(self, key: Any, now: float) -> Any:
        self.calls.append("lookup")
        return super().lookup(key, now)

    def grant(self, account: str, amount: int) -> int:
        self.calls.append("grant")
        return super().grant(account, amount)

    def balance(self, account: str) -> int:
        self.calls.append("balance")
        return super().balance(account)


@pytest.fixture
def spy() -> SpyStore:
    return SpyStore()


@pytest.fixture
def checked(spy: SpyStore, clock: FakeClock, events: RecordingPlugin) -> Iterator[Ledger]:
    """A balances-on ledger over a spy store; after the test, nothing may have
    reached the store or fired a hook."""
    ledger = make_ledger(store=spy, clock=clock, balances=True, plugins=[events])
    yield ledger
    assert spy.calls == []
    assert events.events == []
    assert len(spy) == 0


BAD_JOB_IDS = [
    pytest.param("", id="empty"),
    pytest.param("j" * 129, id="129-chars"),
    pytest.param("a\nb", id="newline"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("a b", id="space"),
    pytest.param("a|b", id="pipe"),
    pytest.param("a/b", id="slash"),
    pytest.param("a*", id="wildcard"),
    pytest.param("jöb", id="non-ascii"),
    pytest.param(None, id="None"),
    pytest.param(42, id="int"),
    pytest.param(b"job-1", id="bytes"),
]

BAD_ACCOUNTS = [
    pytest.param("", id="empty"),
    pytest.param("a" * 257, id="257-chars"),
    pytest.param("a\nb", id="newline"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("a\tb", id="tab"),
    pytest.param("a\x7fb", id="del"),
    pytest.param("a\x85b", id="c1-nel"),
    pytest.param("a\u2028b", id="line-separator"),
    pytest.param("a\u2029b", id="paragraph-separator"),
    pytest.param(None, id="None"),
    pytest.param(42, id="int"),
    pytest.param(b"acct", id="bytes"),
]

BAD_SCOPES = [
    pytest.param("", id="empty"),
    pytest.param("s" * 65, id="65-chars"),
    pytest.param("a b", id="space"),
    pytest.param("a|b", id="pipe"),
    pytest.param("a/b", id="slash"),
    pytest.param("a\nb", id="newline"),
    pytest.param(None, id="None"),
    pytest.param(1, id="int"),
]

BAD_COSTS = [
    pytest.param(-1, id="negative"),
    pytest.param(1.5, id="float"),
    pytest.param(1.0, id="integral-float"),
    pytest.param(True, id="bool"),
    pytest.param("1", id="str"),
    pytest.param(None, id="None"),
]

BAD_LABELS = [
    pytest.param(5, id="int"),
    pytest.param(b"pro", id="bytes"),
    pytest.param("", id="empty"),
    pytest.param("x" * 65, id="65-chars"),
    pytest.param("a\nb", id="newline"),
]

# Every operation that takes a job key, as a function of (ledger, account, job_id, scope).
KEY_OPS: dict[str, Callable[[Ledger, Any, Any, Any], object]] = {
    "charge": lambda led, a, j, s: led.charge(a, j, scope=s),
    "confirm": lambda led, a, j, s: led.confirm(a, j, scope=s),
    "refund": lambda led, a, j, s: led.refund(a, j, scope=s),
    "lookup": lambda led, a, j, s: led.lookup(a, j, scope=s),
}


@pytest.mark.parametrize("op", sorted(KEY_OPS))
@pytest.mark.parametrize("job_id", BAD_JOB_IDS)
def test_bad_job_id_raises_invalid_job_id_and_records_nothing(
    checked: Ledger, op: str, job_id: Any
) -> None:
    """A malformed job id raises InvalidJobId (400) before the store is touched."""
    with pytest.raises(InvalidJobId) as info:
        KEY_OPS[op](checked, A, job_id, "default")
    assert info.value.status == 400
    assert info.value.code == "invalid_job_id"


@pytest.mark.parametrize("op", sorted(KEY_OPS))
@pytest.mark.parametrize("account", BAD_ACCOUNTS)
def test_bad_account_raises_invalid_account_and_records_nothing(
    checked: Ledger, op: str, account: Any
) -> None:
    """A malformed account raises InvalidAccount (400) before the store is touched."""
    with pytest.raises(InvalidAccount) as info:
        KEY_OPS[op](checked, account, J, "default")
    assert info.value.status == 400
    assert info.value.code == "invalid_account"


@pytest.mark.parametrize("account", BAD_ACCOUNTS)
def test_bad_account_in_grant_and_balance_records_nothing(checked: Ledger, account: Any) -> None:
    """grant and balance validate the account before the store is touched."""
    with pytest.raises(InvalidAccount):
        checked.grant(account, 5)
    with pytest.raises(InvalidAccount):
        checked.balance(account)


@pytest.mark.parametrize("op", sorted(KEY_OPS))
@pytest.mark.parametrize("scope", BAD_SCOPES)
def test_bad_scope_raises_invalid_argument_and_records_nothing(
    checked: Ledger, op: str, scope: Any
) -> None:
    """A malformed scope raises an InvalidArgument (400) before the store is touched."""
    with pytest.raises(InvalidArgument) as info:
        KEY_OPS[op](checked, A, J, scope)
    assert info.value.status == 400


@pytest.mark.parametrize("cost", BAD_COSTS)
def test_bad_cost_raises_invalid_argument_and_records_nothing(checked: Ledger, cost: Any) -> None:
    """cost must be an int >= 0 (not a bool, float or string)."""
    with pytest.raises(InvalidArgument) as info:
        checked.charge(A, J, cost=cost)
    assert info.value.code == "invalid_argument"


@pytest.mark.parametrize("field", ["tier", "backend"])
@pytest.mark.parametrize("value", BAD_LABELS)
def test_bad_tier_or_backend_raises_and_records_nothing(
    checked: Ledger, field: str, value: Any
) -> None:
    """tier and backend are None or a short printable string."""
    with pytest.raises(InvalidArgument):
        checked.charge(A, J, **{field: value})


@pytest.mark.parametrize("amount", [1.5, True, "3", None])
def test_bad_grant_amount_raises_and_records_nothing(checked: Ledger, amount: Any) -> None:
    """A grant amount must be an int."""
    with pytest.raises(InvalidArgument):
        checked.grant(A, amount)


@pytest.mark.parametrize("charge_id", [5, "", "c" * 65, b"abc"])
def test_bad_charge_id_raises_and_records_nothing(checked: Ledger, charge_id: Any) -> None:
    """confirm and refund validate charge_id before the store is touched."""
    with pytest.raises(InvalidArgument):
        checked.confirm(A, J, charge_id=charge_id)
    with pytest.raises(InvalidArgument):
        checked.refund(A, J, charge_id=charge_id)


def test_bad_input_in_async_twins_records_nothing(checked: Ledger) -> None:
    """The async twins validate exactly like the sync ones."""

    async def scenario() -> None:
        with pytest.raises(InvalidJobId):
            await checked.acharge(A, "bad id")
        with pytest.raises(InvalidAccount):
            await checked.aconfirm("", J)
        with pytest.raises(InvalidAccount):
            await checked.arefund(None, J)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument):
            await checked.alookup(A, J, scope="")
        with pytest.raises(InvalidArgument):
            await checked.acharge(A, J, cost=-1)
        with pytest.raises(InvalidAccount):
            await checked.agrant("a\n", 1)
        with pytest.raises(InvalidAccount):
            await checked.abalance("")

    asyncio.run(scenario())


def test_error_classes_form_the_documented_hierarchy() -> None:
    """InvalidJobId and InvalidAccount are InvalidArgument, which is both a
    JobCreditsError and a ValueError."""
    for cls in (InvalidJobId, InvalidAccount, InvalidArgument):
        assert issubclass(cls, InvalidArgument)
        assert issubclass(cls, ValueError)
        assert issubclass(cls, JobCreditsError)


def test_bad_job_id_is_catchable_as_value_error(ledger: Ledger) -> None:
    """Plain Python code catching ValueError catches a bad job id."""
    with pytest.raises(ValueError):
        ledger.charge(A, "")


def test_limits_are_inclusive(ledger: Ledger) -> None:
    """A 128-character job id, a 256-character account, a 64-character scope and
    a 64-character tier/backend are accepted."""
    job_id = "j" * 128
    account = "a" * 256
    scope = "s" * 64
    c = ledger.charge(account, job_id, scope=scope, tier="t" * 64, backend="b" * 64)
    assert c.charged
    assert ledger.lookup(account, job_id, scope=scope) == c.record


@pytest.mark.parametrize(
    "job_id",
    ["6f1c2d3e-8a4b-4c5d-9e6f-7a8b9c0d1e2f", "01ARZ3NDEKTSV4RRFFQ69G5FAV", "ns:counter.42_x-y"],
)
def test_common_job_id_shapes_are_accepted(ledger: Ledger, job_id: str) -> None:
    """UUIDs, ULIDs and namespaced counters fit the default pattern."""
    assert ledger.charge(A, job_id).charged


@pytest.mark.parametrize("account", ["user:42", "Zoë Ødegård", "a|b", "team/7 (admin)", "42"])
def test_printable_accounts_are_accepted(ledger: Ledger, account: str) -> None:
    """Accounts are any non-empty printable string, separators and non-ASCII included."""
    c = ledger.charge(account, J)
    assert c.record.account == account


def test_cost_zero_and_none_labels_are_accepted(ledger: Ledger) -> None:
    """cost=0 and tier/backend None are valid."""
    c = ledger.charge(A, J, cost=0, tier=None, backend=None)
    assert c.record.cost == 0
    assert c.record.tier is None


# -- key collisions ----------------------------------------------------------------------


def _memory() -> MemoryStore:
    return MemoryStore()


def _sqlite() -> SQLiteStore:
    return SQLiteStore(":memory:")


COLLIDING = [
    # Joined with the separator, both tuples give the same string.
    pytest.param(("a:b", "default", "c"), ("a", "b", "default:c"), None, id="colon"),
    pytest.param(("a.b", "default", "c"), ("a", "b", "default.c"), None, id="dot"),
    pytest.param(("a-b", "default", "c"), ("a", "b", "default-c"), None, id="dash"),
    # "|" is allowed in accounts only (by default): with a job id pattern that
    # lets it in job ids too, "a|b"+"s"+"c" and "a"+"b"+"s|c" would join alike.
    pytest.param(("a|b", "s", "c"), ("a", "b", "s|c"), r"[a-z|]+", id="pipe-3-part"),
    # The original's two-part key: install "a|b" + job "c" vs install "a" + job "b|c".
    pytest.param(("a|b", "default", "c"), ("a", "default", "b|c"), r"[a-z|]+", id="pipe-original"),
]


@pytest.mark.parametrize("make_store", [_memory, _sqlite], ids=["memory", "sqlite"])
@pytest.mark.parametrize(("first", "second", "pattern"), COLLIDING)
def test_keys_that_a_joined_string_would_confuse_stay_distinct(
    make_store: Callable[[], Any],
    first: tuple[str, str, str],
    second: tuple[str, str, str],
    pattern: str | None,
) -> None:
    """Distinct (account, scope, job_id) tuples are distinct jobs: each is charged
    on its first call, and looking one up never finds the other."""
    sep = next(c for c in ":.-|" if c in first[0])
    assert sep.join(first) == sep.join(second) or sep.join(first[::2]) == sep.join(second[::2])
    with make_ledger(store=make_store(), clock=FakeClock(), job_id_pattern=pattern) as ledger:
        a = ledger.charge(first[0], first[2], scope=first[1])
        b = ledger.charge(second[0], second[2], scope=second[1])
        assert a.charged
        assert b.charged
        assert a.record.charge_id != b.record.charge_id
        found_a = ledger.lookup(first[0], first[2], scope=first[1])
        found_b = ledger.lookup(second[0], second[2], scope=second[1])
        assert found_a is not None
        assert found_b is not None
        assert found_a.key == first
        assert found_b.key == second
        assert sorted(r.key for r in ledger.snapshot()) == sorted([first, second])
        # refunding one leaves the other alone
        assert ledger.refund(first[0], first[2], scope=first[1]) is True
        assert ledger.lookup(second[0], second[2], scope=second[1]) == b.record


# -- hostile input found by tests/test_hostile_input.py ------------------------------------


@pytest.mark.parametrize("pattern", ["x{99999999999}", "a{5,3}", re.compile(b"x")])
def test_job_id_pattern_that_cannot_work_is_refused(pattern: Any) -> None:
    """A repeat count beyond re's limit raised a bare OverflowError, and a
    bytes pattern made every charge raise TypeError: both are a bad pattern."""
    with pytest.raises(JobCreditsError) as info:
        Ledger(job_id_pattern=pattern)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "charge_id", ["\x00", "a\nb", "\x1b[31m", "\x7f", "\x85", "\u2028", "\ud800", "c\udc80"]
)
def test_charge_id_with_control_characters_or_surrogates_is_refused(charge_id: str) -> None:
    """The ledger's charge ids are hex: one with a control character (a log
    line splitter) or a lone surrogate (no store can encode it) is a 400, and
    nothing changes."""
    ledger = make_ledger(balances=True)
    ledger.grant(A, 5)
    charge = ledger.charge(A, J)
    with pytest.raises(InvalidArgument):
        ledger.confirm(A, J, charge_id=charge_id)
    with pytest.raises(InvalidArgument):
        ledger.refund(A, J, charge_id=charge_id)
    assert ledger.lookup(A, J) == charge.record
    assert ledger.balance(A) == 4


@pytest.mark.parametrize("plugins", [5, "abc", b"ab", None])
def test_plugins_that_are_not_a_list_of_objects_are_a_configuration_error(plugins: Any) -> None:
    """plugins=5 raised a bare TypeError and plugins="%s%n" registered each
    character, then pluggy's ValueError on the repeated one: the app's
    setup mistake, said as such."""
    with pytest.raises(ConfigurationError):
        Ledger(plugins=plugins)


def test_the_same_plugin_twice_is_a_configuration_error() -> None:
    plugin = RecordingPlugin()
    with pytest.raises(ConfigurationError):
        Ledger(plugins=[plugin, plugin])


@pytest.mark.parametrize("value", ["no", "false", 0, 1, None, "yes"])
def test_entry_points_must_be_a_bool(value: Any) -> None:
    """entry_points="no" (a settings string) loaded every installed plugin."""
    with pytest.raises(JobCreditsError):
        Ledger(entry_points=value)


@pytest.mark.parametrize(
    "job_id", ["\x00", "a\x00b", "a\nb", "\x1b[31m", "\x7f", "\u2028", "\ud800"]
)
def test_a_permissive_job_id_pattern_still_refuses_control_characters(job_id: str) -> None:
    """job_id_pattern=r"(?s).+" admitted a NUL (PostgreSQL then raised a raw
    DataError) and newlines (a forged line in every log naming the job): the
    control characters and lone surrogates are refused whatever the pattern
    admits, with nothing recorded."""
    ledger = make_ledger(balances=True, job_id_pattern=r"(?s).+")
    ledger.grant(A, 5)
    with pytest.raises(InvalidJobId):
        ledger.charge(A, job_id)
    assert ledger.snapshot() == []
    assert ledger.balance(A) == 5
    assert ledger.charge(A, "any text / even spaces").charged  # the pattern still widens
