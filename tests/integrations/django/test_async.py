"""The Django decorator on async function views (AsyncClient under asyncio.run).

The adapter contract (tests/adapters) runs on async function views too;
here is what is their own: the async twins, the settings' ledger, the
account callables, cancellation, a sync view returning a coroutine.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

pytest.importorskip("django")

from django.http import HttpResponse
from django.test import AsyncClient, RequestFactory

from jobcredits_plugin import Ledger, current_charge
from jobcredits_plugin.django import charges_credit
from jobcredits_plugin.testing import make_ledger

from . import views


def new_job() -> str:
    return str(uuid.uuid4())


def apost(path: str, job: str | None, account: str | None = "acct", **extra: Any) -> Any:
    """One POST through Django's ASGI handler."""
    headers = {"X-Job-Id": job} if job is not None else {}
    if account is not None:
        headers["X-Account"] = account

    async def go() -> Any:
        return await AsyncClient(**extra).post(path, headers=headers)

    return asyncio.run(go())


class AsyncOnlyLedger(Ledger):
    """A ledger that fails the test if an async view calls its blocking methods."""

    def charge(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an async view called the blocking charge()")

    def confirm(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an async view called the blocking confirm()")

    def refund(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an async view called the blocking refund()")


def test_async_view_charges_then_reuses(dj_ledger: Ledger) -> None:
    """An async view: charged on the first call, reused on the next, with headers."""
    dj_ledger.grant("acct", 3)
    job = new_job()
    first = apost("/async/charged", job)
    second = apost("/async/charged", job)
    assert (first.status_code, second.status_code) == (200, 200)
    assert (first["X-Job-Charge"], second["X-Job-Charge"]) == ("charged", "reused")
    assert first["X-Credits-Remaining"] == "2"
    assert first["X-Job-Id"] == job
    assert views.SEEN["acharged"] is not None
    assert views.SEEN["acharged"].outcome == "reused"


def test_async_view_uses_the_ledgers_async_twins() -> None:
    """Async views charge, confirm and refund through acharge/aconfirm/arefund only."""
    ledger = AsyncOnlyLedger()

    @charges_credit(ledger=ledger, account=lambda request: "acct")
    async def view(request: Any) -> HttpResponse:
        return HttpResponse(status=int(request.GET.get("status", 200)))

    factory = RequestFactory()

    async def go() -> tuple[int, int]:
        ok = await view(factory.post("/", headers={"X-Job-Id": "j1"}))
        failed = await view(factory.post("/?status=500", headers={"X-Job-Id": "j2"}))
        return ok.status_code, failed.status_code

    assert asyncio.run(go()) == (200, 500)
    assert ledger.lookup("acct", "j1").state == "charged"  # type: ignore[union-attr]
    assert ledger.lookup("acct", "j2") is None


def test_async_invalid_and_rejected_job_ids(jc_settings: Any) -> None:
    """Invalid job id: 400; missing with ON_MISSING reject: 400 missing_job_id."""
    jc_settings(ON_MISSING="reject")
    invalid = apost("/async/charged", "a b")
    missing = apost("/async/charged", None)
    assert json.loads(invalid.content)["code"] == "invalid_job_id"
    assert json.loads(missing.content)["code"] == "missing_job_id"


def test_cancelled_async_view_refunds() -> None:
    """A cancelled call (the client went away) refunds its charge."""
    ledger = make_ledger()
    started = asyncio.Event()

    @charges_credit(ledger=ledger, account=lambda request: "acct")
    async def view(request: Any) -> HttpResponse:
        assert current_charge() is request.job_credit
        started.set()
        await asyncio.sleep(3600)
        raise AssertionError("not reached")

    async def go() -> None:
        task = asyncio.ensure_future(view(RequestFactory().post("/", headers={"X-Job-Id": "j"})))
        await started.wait()
        assert ledger.lookup("acct", "j").state == "pending"  # type: ignore[union-attr]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert ledger.lookup("acct", "j") is None


def test_async_account_callable_may_be_a_coroutine() -> None:
    """On async views the account callable may be async (awaited)."""
    ledger = make_ledger()

    async def account(request: Any) -> str:
        await asyncio.sleep(0)
        return "async-acct"

    @charges_credit(ledger=ledger, account=account)
    async def view(request: Any) -> HttpResponse:
        return HttpResponse()

    asyncio.run(view(RequestFactory().post("/", headers={"X-Job-Id": "j"})))
    assert ledger.lookup("async-acct", "j") is not None


def test_async_default_account_awaits_auser(jc_settings: Any) -> None:
    """With no ACCOUNT, an async view takes the account from `await request.auser()`."""
    jc_settings(ACCOUNT=None)
    ledger = make_ledger()

    @charges_credit(ledger=ledger)
    async def view(request: Any) -> HttpResponse:
        return HttpResponse()

    class User:
        pk = 7
        is_authenticated = True

    async def auser() -> User:
        return User()

    request = RequestFactory().post("/", headers={"X-Job-Id": "j"})
    request.auser = auser  # what AuthenticationMiddleware sets
    asyncio.run(view(request))
    assert ledger.lookup("7", "j") is not None


def test_async_default_account_anonymous_is_401(jc_settings: Any) -> None:
    """Through the real AuthenticationMiddleware, an anonymous async call gets 401."""
    jc_settings(ACCOUNT=None)
    response = apost("/async/charged", "job-1", account=None)
    assert response.status_code == 401


def test_sync_callable_returning_a_coroutine_is_settled_when_it_completes() -> None:
    """A sync-declared view that returns a coroutine is confirmed (or refunded) by the
    status the coroutine finally answers, not by the coroutine object."""
    ledger = make_ledger()

    async def real(request: Any) -> HttpResponse:
        return HttpResponse(status=int(request.GET.get("status", 200)))

    @charges_credit(ledger=ledger, account=lambda request: "acct")
    def view(request: Any) -> Any:
        return real(request)

    async def go(query: str, job: str) -> HttpResponse:
        pending = view(RequestFactory().post(f"/{query}", headers={"X-Job-Id": job}))
        assert ledger.lookup("acct", job).state == "pending"  # type: ignore[union-attr]
        return await pending

    ok = asyncio.run(go("", "j1"))
    failed = asyncio.run(go("?status=503", "j2"))
    assert (ok["X-Job-Charge"], failed["X-Job-Charge"]) == ("charged", "refunded")
    assert ledger.lookup("acct", "j1").state == "charged"  # type: ignore[union-attr]
    assert ledger.lookup("acct", "j2") is None
