"""FastAPI: an account (or cost) callable that returns what it must not is
the app's bug: 500 problem+json with a generic detail, the full story in the
log, nothing charged. The same value from the client (a header() reader) is
400."""

import asyncio
import logging
from typing import Annotated, Any

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from fastapi import Depends, FastAPI  # noqa: E402

from jobcredits_plugin import Charge, Ledger, header  # noqa: E402
from jobcredits_plugin.fastapi import JobCredits, charge_credit  # noqa: E402
from jobcredits_plugin.stores import MemoryStore  # noqa: E402
from jobcredits_plugin.testing import FakeClock  # noqa: E402

BAD = [42, b"acct", "", "a" * 300, "acct\n", "gold\ud800"]


def _ledger() -> Ledger:
    ledger = Ledger(MemoryStore(), clock=FakeClock(), balances=True)
    ledger.grant("acct", 5)
    return ledger


def _app(ledger: Ledger, account: Any, **options: Any) -> tuple[FastAPI, list[int]]:
    app = FastAPI()
    JobCredits(ledger, account=account).install(app)
    ran: list[int] = []

    dependency = charge_credit(**options)

    @app.post("/run")
    async def run(charge: Annotated[Charge, Depends(dependency)]) -> str:
        ran.append(1)
        return "ok"

    return app, ran


def _post(app: FastAPI, headers: dict[str, str]) -> Any:
    async def go() -> Any:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.post("/run", headers=headers)

    return asyncio.run(go())


def _nothing_charged(ledger: Ledger) -> None:
    assert ledger.snapshot() == []
    assert ledger.balance("acct") == 5


@pytest.mark.parametrize("value", BAD)
@pytest.mark.parametrize("is_async", [False, True])
def test_account_callable_bug_is_a_logged_500(
    value: Any, is_async: bool, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = _ledger()

    async def aaccount(request: Any) -> Any:
        return value

    app, ran = _app(ledger, aaccount if is_async else (lambda request: value))
    with caplog.at_level(logging.ERROR, logger="jobcredits_plugin"):
        response = _post(app, {"X-Job-Id": "job-1"})
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("application/problem+json")
    doc = response.json()
    assert doc["code"] == "configuration_error"
    assert "account callable" not in doc.get("detail", "")
    assert any("account callable" in r.getMessage() for r in caplog.records)
    assert ran == []
    _nothing_charged(ledger)


def test_header_account_stays_a_400() -> None:
    ledger = _ledger()
    app, ran = _app(ledger, header("X-Account"))
    response = _post(app, {"X-Job-Id": "job-1", "X-Account": "a" * 300})
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_account"
    assert ran == []
    _nothing_charged(ledger)


def test_cost_callable_bug_is_a_500() -> None:
    ledger = _ledger()
    app, ran = _app(ledger, lambda request: "acct", cost=lambda request: -3)
    response = _post(app, {"X-Job-Id": "job-1"})
    assert response.status_code == 500
    assert response.json()["code"] == "configuration_error"
    assert ran == []
    _nothing_charged(ledger)
