"""Django: an account (or cost) callable that returns what it must not is the
app's bug: 500 problem+json with a generic detail, the full story in the log,
nothing charged. The same value from the client (a header() reader) is 400.
A wrong settings.JOBCREDITS is both Django's ImproperlyConfigured and the
library's ConfigurationError."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

pytest.importorskip("django")

from django.core.exceptions import ImproperlyConfigured
from django.http import HttpResponse
from django.test import RequestFactory

from jobcredits_plugin import ConfigurationError, Ledger, header
from jobcredits_plugin.django import charges_credit, get_ledger
from jobcredits_plugin.stores import MemoryStore
from jobcredits_plugin.testing import FakeClock

BAD = [42, b"acct", "", "a" * 300, "acct\n", "gold\ud800"]


def _ledger() -> Ledger:
    ledger = Ledger(MemoryStore(), clock=FakeClock(), balances=True)
    ledger.grant("acct", 5)
    return ledger


def _nothing_charged(ledger: Ledger) -> None:
    assert ledger.snapshot() == []
    assert ledger.balance("acct") == 5


@pytest.mark.parametrize("value", BAD)
def test_account_callable_bug_is_a_logged_500(value: Any, caplog: pytest.LogCaptureFixture) -> None:
    ledger = _ledger()
    ran: list[int] = []

    @charges_credit(ledger=ledger, account=lambda request: value)
    def view(request: Any) -> HttpResponse:
        ran.append(1)
        return HttpResponse("ok")

    with caplog.at_level(logging.ERROR, logger="jobcredits_plugin"):
        response = view(RequestFactory().post("/", headers={"X-Job-Id": "job-1"}))
    assert response.status_code == 500
    assert response["Content-Type"] == "application/problem+json"
    doc = json.loads(response.content)
    assert doc["code"] == "configuration_error"
    assert "account callable" not in doc.get("detail", "")
    assert any("account callable" in r.getMessage() for r in caplog.records)
    assert ran == []
    _nothing_charged(ledger)


@pytest.mark.parametrize("value", [42, "gold\ud800"])
def test_async_view_account_callable_bug_is_a_500(value: Any) -> None:
    ledger = _ledger()

    async def account(request: Any) -> Any:
        return value

    @charges_credit(ledger=ledger, account=account)
    async def view(request: Any) -> HttpResponse:
        return HttpResponse("ok")

    response = asyncio.run(view(RequestFactory().post("/", headers={"X-Job-Id": "job-1"})))
    assert response.status_code == 500
    assert json.loads(response.content)["code"] == "configuration_error"
    _nothing_charged(ledger)


def test_header_account_stays_a_400() -> None:
    ledger = _ledger()

    @charges_credit(ledger=ledger, account=header("X-Account"))
    def view(request: Any) -> HttpResponse:
        return HttpResponse("ok")

    response = view(
        RequestFactory().post("/", headers={"X-Job-Id": "job-1", "X-Account": "a" * 300})
    )
    assert response.status_code == 400
    assert json.loads(response.content)["code"] == "invalid_account"
    _nothing_charged(ledger)


def test_cost_callable_bug_is_a_500() -> None:
    ledger = _ledger()

    @charges_credit(ledger=ledger, account=lambda request: "acct", cost=lambda request: 1.5)
    def view(request: Any) -> HttpResponse:
        return HttpResponse("ok")

    response = view(RequestFactory().post("/", headers={"X-Job-Id": "job-1"}))
    assert response.status_code == 500
    assert json.loads(response.content)["code"] == "configuration_error"
    _nothing_charged(ledger)


def test_bad_settings_are_improperly_configured_and_a_configuration_error(
    jc_settings: Any,
) -> None:
    jc_settings(URL="sqlite:///jobs.db?timeout=inf")
    with pytest.raises(ImproperlyConfigured) as info:
        get_ledger()
    assert isinstance(info.value, ConfigurationError)
    assert info.value.status == 500
