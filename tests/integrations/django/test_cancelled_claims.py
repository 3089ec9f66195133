"""Issue 13, item 9, through Django's async decorator: a view call cancelled
while its claim is in flight (the client went away) is refunded by its charge
id, and the client's retry of the same job is charged at once, not 409."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import pytest

pytest.importorskip("django")

from django.http import HttpResponse
from django.test import RequestFactory

from jobcredits_plugin import Ledger
from jobcredits_plugin.django import charges_credit
from jobcredits_plugin.stores import BaseStore, SQLiteStore
from jobcredits_plugin.testing import FakeClock, RecordingPlugin
from tests.stores.test_cancelled_claims import GatedStore


def test_async_view_cancelled_mid_claim_then_retry_is_charged(tmp_path: Path) -> None:
    events = RecordingPlugin()
    gated = GatedStore(SQLiteStore(tmp_path / "jobs.db", timeout=30), commit_first=False)
    ledger = Ledger(cast(BaseStore, gated), clock=FakeClock(), plugins=[events], balances=True)
    ledger.grant("acct", 5)

    @charges_credit(ledger=ledger, account=lambda request: "acct")
    async def view(request: Any) -> HttpResponse:
        return HttpResponse("ok")

    def request() -> Any:
        return RequestFactory().post("/", headers={"X-Job-Id": "job-1"})

    async def go() -> HttpResponse:
        task = asyncio.ensure_future(view(request()))
        await asyncio.wait_for(gated.entered.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gated.gate.set()
        await asyncio.wait_for(gated.committed.wait(), 10)
        for _ in range(500):
            if len(events.kinds()) >= 2:
                break
            await asyncio.sleep(0.01)
        return cast(HttpResponse, await view(request()))

    retry = asyncio.run(go())
    assert retry.status_code == 200
    assert retry["X-Job-Charge"] == "charged"
    assert retry["X-Credits-Remaining"] == "4"
    assert events.kinds() == ["charge", "refund", "charge"]
    first, second = events.of("charge")
    (refunded,) = events.of("refund")
    assert refunded.charge_id == first.charge_id
    assert second.charge_id != first.charge_id
    ledger.close()
