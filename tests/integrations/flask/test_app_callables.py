"""Flask: an account (or cost) callable that returns what it must not is the
app's bug: 500 problem+json with a generic detail, the full story in the log,
nothing charged. The same value from the client (a header() reader) is 400."""

from __future__ import annotations

import logging
from typing import Any

import pytest

flask = pytest.importorskip("flask")

from jobcredits_plugin import Ledger, header  # noqa: E402
from jobcredits_plugin.flask import JobCredits, charges_credit  # noqa: E402
from jobcredits_plugin.stores import MemoryStore  # noqa: E402
from jobcredits_plugin.testing import FakeClock  # noqa: E402

BAD = [42, b"acct", "", "a" * 300, "acct\r\n", "gold\ud800"]


def _ledger() -> Ledger:
    ledger = Ledger(MemoryStore(), clock=FakeClock(), balances=True)
    ledger.grant("acct", 5)
    return ledger


def _app(ledger: Ledger, account: Any, **options: Any) -> Any:
    app = flask.Flask(__name__)
    app.testing = True
    app.config["JOBCREDITS_ACCOUNT"] = account
    JobCredits(app, ledger)
    ran: list[int] = []

    @app.post("/run")
    @charges_credit(**options)
    def run() -> str:
        ran.append(1)
        return "ok"

    app.ran = ran  # type: ignore[attr-defined]
    return app


def _nothing_charged(ledger: Ledger) -> None:
    assert ledger.snapshot() == []
    assert ledger.balance("acct") == 5


@pytest.mark.parametrize("value", BAD)
def test_account_callable_bug_is_a_logged_500(value: Any, caplog: pytest.LogCaptureFixture) -> None:
    ledger = _ledger()
    app = _app(ledger, lambda request: value)
    with caplog.at_level(logging.ERROR, logger="jobcredits_plugin"):
        response = app.test_client().post("/run", headers={"X-Job-Id": "job-1"})
    assert response.status_code == 500
    assert response.mimetype == "application/problem+json"
    doc = response.get_json()
    assert doc["code"] == "configuration_error"
    assert "account callable" not in doc.get("detail", "")
    assert any("account callable" in r.getMessage() for r in caplog.records)
    assert app.ran == []
    _nothing_charged(ledger)


def test_header_account_stays_a_400() -> None:
    ledger = _ledger()
    app = _app(ledger, header("X-Account"))
    response = app.test_client().post("/run", headers={"X-Job-Id": "job-1", "X-Account": "a" * 300})
    assert response.status_code == 400
    assert response.get_json()["code"] == "invalid_account"
    _nothing_charged(ledger)


def test_cost_callable_bug_is_a_500() -> None:
    ledger = _ledger()
    app = _app(ledger, lambda request: "acct", cost=lambda request: "3")
    response = app.test_client().post("/run", headers={"X-Job-Id": "job-1"})
    assert response.status_code == 500
    assert response.get_json()["code"] == "configuration_error"
    assert app.ran == []
    _nothing_charged(ledger)


def test_a_good_account_callable_still_charges() -> None:
    ledger = _ledger()
    app = _app(ledger, lambda request: "acct")
    response = app.test_client().post("/run", headers={"X-Job-Id": "job-1"})
    assert response.status_code == 200
    assert ledger.balance("acct") == 4
