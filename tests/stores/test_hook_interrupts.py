"""A hook that raises a BaseException (a cancellation, KeyboardInterrupt,
SystemExit) interrupts the call, but only after every other hook has seen the
event, and never leaves a charge debited that its caller never received
(issue 12, item 11). Run on every store."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from jobcredits_plugin import InvalidArgument, JobRecord, Ledger, hookimpl
from jobcredits_plugin.stores import BaseStore
from jobcredits_plugin.testing import FakeClock, RecordingPlugin
from tests.stores._forwarding import forwarding

MakeLedger = Callable[..., Ledger]

A = "acct"
J = "job-1"

INTERRUPTS = [KeyboardInterrupt, SystemExit, asyncio.CancelledError]
IDS = ["KeyboardInterrupt", "SystemExit", "CancelledError"]


class Interrupting:
    """A plugin whose hooks of the given kinds raise ``exc``; it counts its calls."""

    def __init__(self, exc: type[BaseException], *kinds: str) -> None:
        self.exc = exc
        self.kinds = set(kinds)
        self.calls: list[str] = []

    def _hit(self, kind: str) -> None:
        self.calls.append(kind)
        if kind in self.kinds:
            raise self.exc(f"interrupted in on_{kind}")

    @hookimpl
    def on_charge(self, record: JobRecord) -> None:
        self._hit("charge")

    @hookimpl
    def on_refund(self, record: JobRecord) -> None:
        self._hit("refund")


class StoreCallInterrupting:
    """An ``on_store_call`` observer that raises ``exc`` after one operation
    succeeded (the store has committed it)."""

    def __init__(self, exc: type[BaseException], *operations: str) -> None:
        self.exc = exc
        self.operations = set(operations)

    @hookimpl
    def on_store_call(self, operation: str, seconds: float, error: BaseException | None) -> None:
        if operation in self.operations and error is None:
            raise self.exc("interrupted in on_store_call")


def _journal_kinds(ledger: Ledger) -> list[str] | None:
    """The journal's entries other than grants; None where the store keeps
    no journal (a store of one's own may not)."""
    try:
        entries = ledger.journal()
    except InvalidArgument:
        return None
    return [e.kind for e in entries if e.kind != "grant"]


def _ledger(make_ledger: MakeLedger, *plugins: object) -> Ledger:
    """A ledger with balances on, 5 credits for A, and ``plugins`` registered
    after the test's RecordingPlugin, so pluggy calls them first."""
    ledger = make_ledger(balances=True)
    for plugin in plugins:
        ledger.register(plugin)
    ledger.grant(A, 5)
    return ledger


@pytest.mark.parametrize("exc", INTERRUPTS, ids=IDS)
def test_interrupted_on_charge_runs_every_hook_reraises_and_refunds(
    make_ledger: MakeLedger, events: RecordingPlugin, exc: type[BaseException]
) -> None:
    """on_charge raising a BaseException: the other plugins still see the
    charge, the exception reaches the caller, and the charge (which the caller
    never received) is refunded, with its on_refund."""
    bad = Interrupting(exc, "charge")
    ledger = _ledger(make_ledger, bad)
    with pytest.raises(exc):
        ledger.charge(A, J)
    assert bad.calls == ["charge", "refund"]
    assert events.kinds() == ["charge", "refund"]
    assert ledger.balance(A) == 5
    assert ledger.lookup(A, J) is None
    assert _journal_kinds(ledger) in (["charge", "refund"], None)
    ledger.unregister(bad)
    assert ledger.charge(A, J).charged  # the job is new again


@pytest.mark.parametrize("exc", INTERRUPTS, ids=IDS)
def test_interrupted_on_charge_in_acharge_refunds_too(
    make_ledger: MakeLedger, events: RecordingPlugin, exc: type[BaseException]
) -> None:
    """The async twin behaves the same."""
    bad = Interrupting(exc, "charge")
    ledger = _ledger(make_ledger, bad)

    async def scenario() -> None:
        with pytest.raises(exc):
            await ledger.acharge(A, J)

    asyncio.run(scenario())
    assert events.kinds() == ["charge", "refund"]
    assert ledger.balance(A) == 5
    assert ledger.lookup(A, J) is None


def test_first_interrupt_is_reraised_after_all_hooks_ran(
    make_ledger: MakeLedger, events: RecordingPlugin
) -> None:
    """Two interrupting plugins: both run, then the first one's exception
    (pluggy calls the last registered first) is the one raised."""
    first = Interrupting(SystemExit, "charge")
    second = Interrupting(KeyboardInterrupt, "charge")
    ledger = _ledger(make_ledger, first, second)
    with pytest.raises(KeyboardInterrupt):
        ledger.charge(A, J)
    assert first.calls[0] == second.calls[0] == "charge"
    assert events.kinds() == ["charge", "refund"]
    assert ledger.balance(A) == 5


def test_interrupted_on_refund_still_reports_to_the_others(
    make_ledger: MakeLedger, events: RecordingPlugin
) -> None:
    """A refund is what the caller asked for: an interrupting on_refund is
    re-raised after the other plugins saw it, and the refund stands."""
    bad = Interrupting(KeyboardInterrupt, "refund")
    ledger = _ledger(make_ledger, bad)
    c = ledger.charge(A, J)
    with pytest.raises(KeyboardInterrupt):
        ledger.refund(A, J, charge_id=c.record.charge_id)
    assert events.kinds() == ["charge", "refund"]
    assert ledger.balance(A) == 5
    assert ledger.lookup(A, J) is None


def test_interrupted_on_charge_of_a_reuse_takes_nothing_back(
    make_ledger: MakeLedger, events: RecordingPlugin
) -> None:
    """Only a new charge is taken back: a reuse debited nothing."""
    ledger = _ledger(make_ledger)
    c = ledger.charge(A, J)
    ledger.confirm(A, J, charge_id=c.record.charge_id)

    class InterruptingReuse:
        @hookimpl
        def on_reuse(self, record: JobRecord) -> None:
            raise KeyboardInterrupt

    ledger.register(InterruptingReuse())
    with pytest.raises(KeyboardInterrupt):
        ledger.charge(A, J)
    assert events.kinds() == ["charge", "reuse"]
    assert ledger.balance(A) == 4
    record = ledger.lookup(A, J)
    assert record is not None
    assert record.state == "charged"


@pytest.mark.parametrize("operations", [("claim",), ("claim", "refund")], ids=["claim", "both"])
@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_interrupted_on_store_call_after_a_claim_fires_and_takes_back(
    make_ledger: MakeLedger,
    events: RecordingPlugin,
    asynchronous: bool,
    operations: tuple[str, ...],
) -> None:
    """on_store_call interrupting a claim that committed: the claim's events
    still fire, and its charge is refunded (with its on_refund, also when the
    take-back's own refund is interrupted the same way)."""
    ledger = _ledger(make_ledger, StoreCallInterrupting(KeyboardInterrupt, *operations))

    def charge() -> object:
        if asynchronous:
            return asyncio.run(ledger.acharge(A, J))
        return ledger.charge(A, J)

    with pytest.raises(KeyboardInterrupt):
        charge()
    assert events.kinds() == ["charge", "refund"]
    assert ledger.balance(A) == 5
    assert ledger.lookup(A, J) is None


@forwarding
class _GatedStore:
    """Any store, with its ``aclaim`` held at a gate: lets a test cancel an
    ``acharge`` while its claim is in flight, then let the claim commit."""

    #: It suspends at the gate, whatever the store under it does.
    cancel_safe = False

    def __init__(self, inner: BaseStore) -> None:
        self._inner = inner
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def aclaim(self, req: Any) -> Any:
        self.entered.set()
        await self.gate.wait()
        return await self._inner.aclaim(req)


def test_acharge_cancelled_in_flight_is_refunded(
    store: BaseStore, clock: FakeClock, events: RecordingPlugin
) -> None:
    """acharge cancelled while its claim is in flight: the claim commits
    later, its on_charge fires, and since nobody will ever confirm or refund
    that charge, it is refunded at once rather than left to its lease."""
    gated = _GatedStore(store)
    ledger = Ledger(gated, clock=clock, balances=True, plugins=[events])  # type: ignore[arg-type]
    ledger.grant(A, 5)

    async def scenario() -> None:
        task = asyncio.create_task(ledger.acharge(A, J))
        await gated.entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gated.gate.set()
        for _ in range(500):  # bounded wait for the late commit to be settled
            if len(events.kinds()) >= 2:
                break
            await asyncio.sleep(0.01)

    asyncio.run(scenario())
    assert events.kinds() == ["charge", "refund"]
    assert ledger.balance(A) == 5
    assert ledger.lookup(A, J) is None
