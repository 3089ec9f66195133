"""An app callable that returns what it must not is the app's bug (issue 12,
item 7): a 500 ConfigurationError, logged in full, with nothing charged; not
the 400 that would tell the client to fix a request it cannot fix. The same
bad value read from the client (a header() reader) stays the client's 400.

This file covers the generic decorator and the WSGI and ASGI middleware; the
framework adapters have their own test_app_callables.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from jobcredits_plugin import (
    ConfigurationError,
    InvalidAccount,
    InvalidArgument,
    Ledger,
    NotAuthenticated,
    charges_credit,
    header,
)
from jobcredits_plugin._headers import account_source
from jobcredits_plugin.asgi import JobCreditsMiddleware as AsgiMiddleware
from jobcredits_plugin.stores import MemoryStore
from jobcredits_plugin.testing import FakeClock, RecordingPlugin
from jobcredits_plugin.wsgi import JobCreditsMiddleware as WsgiMiddleware

#: What an account callable may wrongly return, and a word its error names.
BAD_ACCOUNTS = [
    pytest.param(42, "int", id="int"),
    pytest.param(b"acct", "bytes", id="bytes"),
    pytest.param(["acct"], "list", id="list"),
    pytest.param("", "empty", id="empty"),
    pytest.param("a" * 300, "characters long", id="too-long"),
    pytest.param("acct\n", "control", id="newline"),
    pytest.param("gold\ud800", "surrogate", id="surrogate"),
]


@pytest.fixture
def ledger() -> Ledger:
    led = Ledger(MemoryStore(), clock=FakeClock(), balances=True)
    led.grant("acct", 5)
    return led


def _nothing_charged(ledger: Ledger) -> None:
    assert ledger.snapshot() == []
    assert ledger.balance("acct") == 5


def test_account_source_tells_header_readers_from_app_callables() -> None:
    assert account_source(header("X-Account")) == "client"
    assert account_source(lambda request: "acct") == "app"
    assert account_source(None) == "app"


# -- the decorator ---------------------------------------------------------------------


@pytest.mark.parametrize(("value", "word"), BAD_ACCOUNTS)
def test_decorator_account_callable_returning_a_bad_value_is_a_configuration_error(
    ledger: Ledger, value: Any, word: str
) -> None:
    events = RecordingPlugin()
    ledger.register(events)
    ran: list[int] = []

    @charges_credit(ledger, account=lambda: value, job_id=lambda: "job-1")
    def handler() -> str:
        ran.append(1)
        return "ok"

    with pytest.raises(ConfigurationError, match="account callable") as info:
        handler()
    assert word in str(info.value)
    assert info.value.status == 500
    assert not isinstance(info.value, InvalidArgument)
    assert ran == []
    _nothing_charged(ledger)
    assert [k for k in events.kinds() if k != "reject"] == []


def test_decorator_account_none_is_still_not_authenticated(ledger: Ledger) -> None:
    @charges_credit(ledger, account=lambda: None, job_id=lambda: "job-1")
    def handler() -> str:
        return "ok"

    with pytest.raises(NotAuthenticated):
        handler()


def test_decorator_header_reader_account_stays_a_client_error(ledger: Ledger) -> None:
    """A header() reader reads the client's input: its bad value is the 400."""

    @charges_credit(ledger, account=header("X-Account"), job_id=header("X-Job-Id"))
    def handler(request: Mapping[str, Any]) -> str:
        return "ok"

    with pytest.raises(InvalidAccount):
        handler({"HTTP_X_ACCOUNT": "a" * 300, "HTTP_X_JOB_ID": "job-1"})
    _nothing_charged(ledger)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("cost", "3"),
        ("cost", -1),
        ("cost", 2.5),
        ("cost", None),
        ("cost", 2**60),
        ("tier", 7),
        ("backend", b"gpu"),
    ],
)
def test_decorator_option_callable_returning_a_bad_value_is_a_configuration_error(
    ledger: Ledger, option: str, value: Any
) -> None:
    kwargs: dict[str, Any] = {option: lambda: value}

    @charges_credit(ledger, account=lambda: "acct", job_id=lambda: "job-1", **kwargs)
    def handler() -> str:
        return "ok"

    with pytest.raises(ConfigurationError, match=f"{option} callable"):
        handler()
    _nothing_charged(ledger)


def test_decorator_job_id_callable_returning_a_non_string_is_a_configuration_error(
    ledger: Ledger,
) -> None:
    @charges_credit(ledger, account=lambda: "acct", job_id=lambda: 12345)
    def handler() -> str:
        return "ok"

    with pytest.raises(ConfigurationError, match="job_id callable"):
        handler()
    _nothing_charged(ledger)


def test_decorator_fail_open_does_not_pass_an_app_bug(ledger: Ledger) -> None:
    ran: list[int] = []

    @charges_credit(ledger, account=lambda: 42, job_id=lambda: "job-1", fail_open=True)
    def handler() -> str:
        ran.append(1)
        return "ok"

    with pytest.raises(ConfigurationError):
        handler()
    assert ran == []


def test_decorator_async_account_callable_bug(ledger: Ledger) -> None:
    @charges_credit(ledger, account=lambda: 42, job_id=lambda: "job-1")
    async def handler() -> str:
        return "ok"

    with pytest.raises(ConfigurationError, match="account callable"):
        asyncio.run(handler())
    _nothing_charged(ledger)


# -- WSGI and ASGI middleware ----------------------------------------------------------


def _wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def _wsgi_call(app: Any, headers: dict[str, str]) -> tuple[str, dict[str, str], bytes]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/run",
        "wsgi.input": None,
        **{"HTTP_" + k.upper().replace("-", "_"): v for k, v in headers.items()},
    }
    seen: dict[str, Any] = {}

    def start_response(status: str, hdrs: list[tuple[str, str]], exc_info: Any = None) -> None:
        seen["status"] = status
        seen["headers"] = dict(hdrs)

    body = b"".join(app(environ, start_response))
    return seen["status"], seen["headers"], body


@pytest.mark.parametrize(("value", "word"), BAD_ACCOUNTS)
def test_wsgi_account_callable_bug_is_a_logged_500(
    ledger: Ledger, value: Any, word: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = WsgiMiddleware(_wsgi_app, ledger, {"POST /run": 1}, account=lambda environ: value)
    with caplog.at_level(logging.ERROR, logger="jobcredits_plugin"):
        status, headers, body = _wsgi_call(app, {"X-Job-Id": "job-1"})
    assert status.startswith("500")
    assert headers["Content-Type"] == "application/problem+json"
    doc = json.loads(body)
    assert doc["status"] == 500
    assert doc["code"] == "configuration_error"
    assert "account callable" not in doc.get("detail", "")  # generic to the client
    assert any(
        "account callable" in r.getMessage() and word in r.getMessage() for r in caplog.records
    )
    _nothing_charged(ledger)


def test_wsgi_header_account_stays_a_400(ledger: Ledger) -> None:
    app = WsgiMiddleware(_wsgi_app, ledger, {"POST /run": 1}, account=header("X-Account"))
    status, _, body = _wsgi_call(app, {"X-Job-Id": "job-1", "X-Account": "a" * 300})
    assert status.startswith("400")
    assert json.loads(body)["code"] == "invalid_account"
    _nothing_charged(ledger)


def test_wsgi_cost_callable_bug_is_a_500(ledger: Ledger) -> None:
    app = WsgiMiddleware(
        _wsgi_app,
        ledger,
        {"POST /run": {"cost": lambda environ: "2"}},
        account=lambda environ: "acct",
    )
    status, _, body = _wsgi_call(app, {"X-Job-Id": "job-1"})
    assert status.startswith("500")
    assert json.loads(body)["code"] == "configuration_error"
    _nothing_charged(ledger)


async def _asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _asgi_call(app: Any, headers: dict[str, str]) -> tuple[int, bytes]:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/run",
        "raw_path": b"/run",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body


@pytest.mark.parametrize(("value", "word"), BAD_ACCOUNTS)
def test_asgi_account_callable_bug_is_a_logged_500(
    ledger: Ledger, value: Any, word: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def account(scope: Any) -> Any:
        return value

    app = AsgiMiddleware(_asgi_app, ledger, {"POST /run": 1}, account=account)
    with caplog.at_level(logging.ERROR, logger="jobcredits_plugin"):
        status, body = _asgi_call(app, {"X-Job-Id": "job-1"})
    assert status == 500
    assert json.loads(body)["code"] == "configuration_error"
    assert any("account callable" in r.getMessage() for r in caplog.records)
    _nothing_charged(ledger)


def test_asgi_header_account_stays_a_400(ledger: Ledger) -> None:
    app = AsgiMiddleware(_asgi_app, ledger, {"POST /run": 1}, account=header("X-Account"))
    status, body = _asgi_call(app, {"X-Job-Id": "job-1", "X-Account": "a" * 300})
    assert status == 400
    assert json.loads(body)["code"] == "invalid_account"
    _nothing_charged(ledger)
