"""What every adapter tells a client when a call is refused (issue 12, items 1, 3, 14).

- A 5xx body is generic: the store's URL, host, port, user, database, password
  and the driver's message go to the log (WARNING for a 503, ERROR for other
  5xx), never to the client; the 503 keeps its ``Retry-After``.
- The problem ``type`` is ``about:blank`` (title: the status phrase) unless the
  app configures a base, then ``base + code``.
- A 409's ``Retry-After`` is capped: 5 s by default, configurable.

Each case runs through Flask, FastAPI and the WSGI and ASGI middleware (Django:
``tests/integrations/django/test_problems.py``), against a real PostgreSQL URL
that points at a closed port with a password in it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from jobcredits_plugin import ConfigurationError, Ledger, header
from jobcredits_plugin.stores import ClaimRequest, ClaimResult, MemoryStore
from jobcredits_plugin.testing import make_ledger

from ._secrets import CANARY, HOST, POSTGRES_URL, assert_no_secret, assert_nothing_internal

pytest.importorskip("psycopg")

GENERIC_503 = "the credit ledger is unavailable; retry later"
BASE = "https://api.example.com/problems/"

#: One answer as a client sees it: status, headers (lower-case names), JSON body.
Answer = tuple[int, dict[str, str], dict[str, Any], bytes]
#: Builds an app around ``ledger`` with the adapter's problem settings, sends one
#: charged call for ``job`` and returns the answer.
Adapter = Callable[..., Answer]


def _flask(ledger: Ledger, job: str, **settings: Any) -> Answer:
    flask = pytest.importorskip("flask")
    from jobcredits_plugin.flask import JobCredits, charges_credit

    app = flask.Flask(__name__)
    app.config["JOBCREDITS_ACCOUNT"] = header("X-Account")
    if "problem_type_base" in settings:
        app.config["JOBCREDITS_PROBLEM_TYPE_BASE"] = settings["problem_type_base"]
    if "retry_after_max" in settings:
        app.config["JOBCREDITS_RETRY_AFTER_MAX"] = settings["retry_after_max"]
    JobCredits(app, ledger)

    @app.post("/run")
    @charges_credit()
    def run() -> str:
        return "ran"

    r = app.test_client().post("/run", headers={"X-Job-Id": job, "X-Account": "acct"})
    return r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.get_json(), r.data


def _asgi_call(app: Any, job: str) -> Answer:
    httpx = pytest.importorskip("httpx")

    async def go() -> Any:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            return await c.post("/run", headers={"X-Job-Id": job, "X-Account": "acct"})

    r = asyncio.run(go())
    return r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.json(), r.content


def _fastapi(ledger: Ledger, job: str, **settings: Any) -> Answer:
    fastapi = pytest.importorskip("fastapi")
    from jobcredits_plugin.fastapi import JobCredits, charge_credit

    app = fastapi.FastAPI()
    JobCredits(ledger, account=header("X-Account"), **settings).install(app)

    @app.post("/run", dependencies=[fastapi.Depends(charge_credit())])
    async def run() -> str:
        return "ran"

    return _asgi_call(app, job)


def _asgi(ledger: Ledger, job: str, **settings: Any) -> Answer:
    from jobcredits_plugin.asgi import JobCreditsMiddleware

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b'"ran"'})

    app = JobCreditsMiddleware(
        inner, ledger, {"POST /run": 1}, account=header("X-Account"), **settings
    )
    return _asgi_call(app, job)


def _wsgi(ledger: Ledger, job: str, **settings: Any) -> Answer:
    from jobcredits_plugin.wsgi import JobCreditsMiddleware

    def inner(environ: Any, start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'"ran"']

    app = JobCreditsMiddleware(
        inner, ledger, {"POST /run": 1}, account=header("X-Account"), **settings
    )
    started: list[Any] = []
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/run",
        "HTTP_X_JOB_ID": job,
        "HTTP_X_ACCOUNT": "acct",
        "wsgi.input": None,
    }
    body = b"".join(
        app(environ, lambda status, headers, exc_info=None: started.append((status, headers)))
    )
    status, headers = started[0]
    return int(status.split()[0]), {k.lower(): v for k, v in headers}, json.loads(body), body


ADAPTERS: dict[str, Adapter] = {
    "flask": _flask,
    "fastapi": _fastapi,
    "wsgi": _wsgi,
    "asgi": _asgi,
}


@pytest.fixture(params=list(ADAPTERS))
def adapter(request: pytest.FixtureRequest) -> Adapter:
    return ADAPTERS[request.param]


class MisconfiguredStore(MemoryStore):
    """A store that finds, at the first claim, that the app set it up wrongly,
    and says so naming its secrets (as a driver's message would)."""

    def claim(self, req: ClaimRequest) -> ClaimResult:
        raise ConfigurationError(f"schema 'x' rejected by {POSTGRES_URL}")


def test_a_503_body_is_generic_and_the_detail_goes_to_the_log(
    adapter: Adapter, caplog: pytest.LogCaptureFixture
) -> None:
    """The store is unreachable: 503 with Retry-After and a generic detail; the
    body names no host, port, user, database, password or driver; the log
    (WARNING) has the full detail for the operator."""
    ledger = Ledger.from_url(POSTGRES_URL)
    try:
        with caplog.at_level(logging.WARNING, logger="jobcredits_plugin"):
            status, headers, doc, raw = adapter(ledger, "job-503")
    finally:
        ledger.close()
    assert status == 503
    assert headers["retry-after"].isdigit()
    assert doc["detail"] == GENERIC_503
    assert doc["code"] == "store_unavailable"
    assert doc["type"] == "about:blank"
    assert doc["title"] == "Service Unavailable"
    assert_nothing_internal(raw, *headers.values())
    logged = [
        r for r in caplog.records if r.name == "jobcredits_plugin" and "503" in r.getMessage()
    ]
    assert logged, "the full detail of a 503 must be logged"
    assert all(r.levelno == logging.WARNING for r in logged)
    assert HOST in logged[0].getMessage()
    assert "cannot connect" in logged[0].getMessage()


def test_another_5xx_body_is_generic_and_logged_as_an_error(
    adapter: Adapter, caplog: pytest.LogCaptureFixture
) -> None:
    """A server-side error other than 503 (a configuration error found while
    serving): 500, a generic detail, the full detail at ERROR in the log."""
    ledger = Ledger(MisconfiguredStore())
    with caplog.at_level(logging.WARNING, logger="jobcredits_plugin"):
        status, headers, doc, raw = adapter(ledger, "job-500")
    assert status == 500
    assert doc["code"] == "configuration_error"
    assert doc["type"] == "about:blank"
    assert doc["title"] == "Internal Server Error"
    assert "not the client's error" in doc["detail"]
    assert_nothing_internal(raw, *headers.values())
    logged = [
        r for r in caplog.records if r.name == "jobcredits_plugin" and "500" in r.getMessage()
    ]
    assert [r.levelno for r in logged] == [logging.ERROR]
    assert "schema 'x' rejected" in logged[0].getMessage()


def test_a_4xx_detail_stays_specific(adapter: Adapter) -> None:
    """A client's own mistake is described to it: 402 with the balance."""
    ledger = make_ledger(balances=True)
    status, _, doc, _ = adapter(ledger, "job-402")
    assert status == 402
    assert doc["code"] == "insufficient_credits"
    assert doc["detail"] != doc["title"]
    assert "balance" in doc["detail"] or "credit" in doc["detail"]
    assert doc["type"] == "about:blank"
    assert doc["title"] == "Payment Required"


def test_the_problem_type_base_is_configurable(adapter: Adapter) -> None:
    """With a base configured, type = base + code and the title is the error's own;
    no type ever points at the library's documentation host."""
    ledger = make_ledger(balances=True)
    status, _, doc, raw = adapter(ledger, "job-base", problem_type_base=BASE)
    assert status == 402
    assert doc["type"] == BASE + "insufficient_credits"
    assert doc["title"] == "Insufficient credits"
    assert b"readthedocs" not in raw


def test_a_409_retry_after_is_capped_at_5_seconds_by_default(adapter: Adapter) -> None:
    """A follow-up while the first call holds its 60 s lease: Retry-After 5, not 60."""
    ledger = make_ledger()
    ledger.charge("acct", "job-409")  # the first call, still running
    status, headers, doc, _ = adapter(ledger, "job-409")
    assert status == 409
    assert doc["code"] == "job_in_progress"
    assert headers["retry-after"] == "5"
    assert doc["retry_after"] == 5


@pytest.mark.parametrize(("cap", "expected"), [(20, "20"), (None, "60"), ("2", "2")])
def test_the_retry_after_cap_is_configurable(adapter: Adapter, cap: Any, expected: str) -> None:
    """retry_after_max (or its setting) moves the cap, or lifts it (None)."""
    ledger = make_ledger()
    ledger.charge("acct", "job-409")
    status, headers, doc, _ = adapter(ledger, "job-409", retry_after_max=cap)
    assert status == 409
    assert headers["retry-after"] == expected
    assert doc["retry_after"] == int(expected)


@pytest.mark.parametrize(
    "settings",
    [
        {"retry_after_max": 0},
        {"retry_after_max": -1},
        {"retry_after_max": 2.5},
        {"retry_after_max": True},
        {"retry_after_max": "soon"},
        {"problem_type_base": "https://x.example/has space/"},
        {"problem_type_base": 42},
    ],
    ids=repr,
)
def test_bad_problem_settings_fail_at_setup(adapter: Adapter, settings: dict[str, Any]) -> None:
    """A bad setting is the app's ConfigurationError when the app is built."""
    with pytest.raises(ConfigurationError):
        adapter(make_ledger(), "job-x", **settings)


def test_logged_5xx_detail_carries_no_password(
    adapter: Adapter, caplog: pytest.LogCaptureFixture
) -> None:
    """The log gets the full detail, but a URL in it is redacted."""
    ledger = Ledger.from_url(POSTGRES_URL)
    try:
        with caplog.at_level(logging.DEBUG):
            adapter(ledger, "job-log")
    finally:
        ledger.close()
    assert_no_secret(caplog.text, *(r.getMessage() for r in caplog.records))
    assert CANARY not in caplog.text
