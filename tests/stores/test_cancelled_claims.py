"""Issue 13, item 9: a cancelled first call must not block its job for the lease.

An async first call cancelled while its claim is in flight (the client went
away, the request task was cancelled) must not leave a pending charge nobody
will settle: the ledger takes that charge back by its charge id, so the
client's retry with the same job id is charged normally instead of 409.

The claim is held in flight by a store wrapper whose ``aclaim`` waits at a
gate: either before the real claim (the claim commits *after* the caller was
cancelled) or after it (it committed, but its answer reaches nobody). Runs on
every store of the suite.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, cast

import pytest

from jobcredits_plugin import Ledger
from jobcredits_plugin.stores import BaseStore, ClaimRequest, ClaimResult
from jobcredits_plugin.testing import RecordingPlugin
from tests.stores._forwarding import forwarding


@forwarding
class GatedStore:
    """Delegates everything to ``inner``; its first ``aclaim`` waits at a gate.

    ``commit_first``: the real claim runs before the gate (committed, answer
    held back) rather than after it (committed only once the gate opens).
    """

    cancel_safe = False  # it suspends: the ledger must shield it

    def __init__(self, inner: BaseStore, *, commit_first: bool) -> None:
        self._inner = inner
        self.commit_first = commit_first
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()
        self.committed = asyncio.Event()
        self.gated = 1  # how many claims still wait at the gate

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def aclaim(self, req: ClaimRequest) -> ClaimResult:
        if self.gated <= 0:
            return await self._inner.aclaim(req)
        self.gated -= 1
        if self.commit_first:
            result = await self._inner.aclaim(req)
            self.committed.set()
            self.entered.set()
            await self.gate.wait()
            return result
        self.entered.set()
        await self.gate.wait()
        try:
            return await self._inner.aclaim(req)
        finally:
            self.committed.set()


async def _settled(events: RecordingPlugin, count: int) -> None:
    """Wait (bounded) until ``count`` hooks have fired."""
    for _ in range(500):
        if len(events.kinds()) >= count:
            return
        await asyncio.sleep(0.01)


def _gated_ledger(
    make_ledger: Callable[..., Ledger], store: BaseStore, commit_first: bool
) -> tuple[Ledger, GatedStore]:
    gated = GatedStore(store, commit_first=commit_first)
    ledger = make_ledger(store=cast(BaseStore, gated), balances=True)
    ledger.grant("acct", 5)
    return ledger, gated


def _assert_taken_back_by_id(events: RecordingPlugin) -> None:
    assert events.kinds() == ["charge", "refund"]
    (charged,) = events.of("charge")
    (refunded,) = events.of("refund")
    assert refunded.charge_id == charged.charge_id


@pytest.mark.parametrize("commit_first", [False, True], ids=["commit-after", "answer-lost"])
def test_cancelled_first_call_is_refunded_and_retry_is_charged(
    make_ledger: Callable[..., Ledger],
    store: BaseStore,
    events: RecordingPlugin,
    commit_first: bool,
) -> None:
    """acharge cancelled while its claim is in flight: the claim's charge is
    refunded by its id (on_refund once, for that charge), the balance is back,
    and an immediate retry of the same job is charged, not 409."""
    ledger, gated = _gated_ledger(make_ledger, store, commit_first)

    async def scenario() -> str:
        task = asyncio.create_task(ledger.acharge("acct", "job-1"))
        await asyncio.wait_for(gated.entered.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gated.gate.set()  # the claim goes on (commits, or answers) without its caller
        await asyncio.wait_for(gated.committed.wait(), 10)
        await _settled(events, 2)
        _assert_taken_back_by_id(events)
        assert await ledger.abalance("acct") == 5
        retry = await ledger.acharge("acct", "job-1")  # at once: no 409
        return retry.outcome

    assert asyncio.run(scenario()) == "charged"
    assert events.kinds() == ["charge", "refund", "charge"]
    first, second = events.of("charge")
    assert second.charge_id != first.charge_id
    assert ledger.balance("acct") == 4
    record = ledger.lookup("acct", "job-1")
    assert record is not None
    assert record.charge_id == second.charge_id


@pytest.mark.parametrize("commit_first", [False, True], ids=["commit-after", "answer-lost"])
def test_take_back_survives_repeated_cancellation(
    make_ledger: Callable[..., Ledger],
    store: BaseStore,
    events: RecordingPlugin,
    commit_first: bool,
) -> None:
    """The refund is shielded: the caller sits in an anyio cancel scope that is
    cancelled mid-claim, which (unlike a plain task.cancel()) cancels again at
    every await the caller reaches, and the task is cancelled once more while
    the claim is still out; the charge is still taken back exactly once."""
    # anyio comes with the web frameworks, not with the core (tox's noframework).
    anyio = pytest.importorskip("anyio")
    ledger, gated = _gated_ledger(make_ledger, store, commit_first)

    async def caller(scope: Any) -> None:
        with scope:
            await ledger.acharge("acct", "job-1")
            raise AssertionError("acharge was not cancelled")  # pragma: no cover
        # The scope swallowed the cancellation; try to await in it again.
        with scope:
            await asyncio.sleep(5)  # pragma: no cover - cancelled at once

    async def scenario() -> str:
        scope = anyio.CancelScope()
        task = asyncio.create_task(caller(scope))
        await asyncio.wait_for(gated.entered.wait(), 10)
        scope.cancel()
        await asyncio.sleep(0)
        task.cancel()  # a second, plain cancellation on top
        with contextlib.suppress(asyncio.CancelledError):
            await task
        gated.gate.set()
        await asyncio.wait_for(gated.committed.wait(), 10)
        await _settled(events, 2)
        await asyncio.sleep(0.05)  # nothing more may fire
        _assert_taken_back_by_id(events)
        retry = await ledger.acharge("acct", "job-1")
        return retry.outcome

    assert asyncio.run(scenario()) == "charged"
    assert events.kinds() == ["charge", "refund", "charge"]
    assert ledger.balance("acct") == 4
