"""The ASGI middleware: per-job charging in front of any ASGI app.

What it shares with every adapter (charged once, refunds, problem answers,
streamed bodies) is the adapter contract, tests/adapters; here is what only
the middleware has: routes, pass-through, lifespan and websockets, an app
that returns without answering or is cancelled, two calls really
overlapping, its options. The apps are raw ASGI callables (no framework),
driven through httpx's ``ASGITransport`` or by hand, plus one Starlette app
to show a real framework behind the middleware.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import pytest

httpx = pytest.importorskip("httpx")

from jobcredits_plugin import Charge, Ledger, current_charge, header  # noqa: E402
from jobcredits_plugin.asgi import JobCreditsMiddleware  # noqa: E402
from jobcredits_plugin.testing import FakeClock, RecordingPlugin, make_ledger  # noqa: E402

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

ACCOUNT = header("X-Account")
ROUTES = {"POST /v1/summarize": {"scope": "summarize"}, "/v1/echo": 1}


def start(status: int = 200, headers: list[tuple[bytes, bytes]] | None = None) -> Message:
    return {
        "type": "http.response.start",
        "status": status,
        "headers": headers or [(b"content-type", b"application/json")],
    }


def body(data: bytes, more: bool = False) -> Message:
    return {"type": "http.response.body", "body": data, "more_body": more}


class App:
    """A raw ASGI app: ``?status=N`` answers N, ``?mode=silent`` returns
    without answering; lifespan and websocket sessions are played through."""

    def __init__(self) -> None:
        self.charges: list[Charge | None] = []
        self.scopes: list[Scope] = []
        self.lifespan: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(scope)
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                self.lifespan.append(message["type"])
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] == "websocket":
            assert (await receive())["type"] == "websocket.connect"
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.send", "text": "hello"})
            await send({"type": "websocket.close", "code": 1000})
            return
        charge = current_charge()
        self.charges.append(charge)
        query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
        if query.get("mode") == "silent":
            return
        await send(start(int(query.get("status", "200"))))
        payload = {"outcome": charge.outcome if charge else None}
        await send(body(json.dumps(payload).encode()))


def client(app: Any, *, raise_app_exceptions: bool = True) -> Any:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


def call(
    app: Any,
    path: str = "/v1/summarize",
    *,
    job: str | None = "job-1",
    account: str | None = "acct",
    method: str = "POST",
    extra: dict[str, str] | None = None,
) -> Any:
    """One request through the app, synchronously (a fresh event loop)."""
    headers = dict(extra or {})
    if job is not None:
        headers["X-Job-Id"] = job
    if account is not None:
        headers["X-Account"] = account

    async def go() -> Any:
        async with client(app) as c:
            return await c.request(method, path, headers=headers)

    return asyncio.run(go())


def middleware(app: Any, ledger: Ledger, routes: Any = None, **kwargs: Any) -> JobCreditsMiddleware:
    kwargs.setdefault("account", ACCOUNT)
    return JobCreditsMiddleware(app, ledger, ROUTES if routes is None else routes, **kwargs)


# -- charging ----------------------------------------------------------------------


def test_returning_without_a_response_refunds(ledger: Ledger, events: RecordingPlugin) -> None:
    """An app that returns without answering served nothing: refunded."""
    app = middleware(App(), ledger)

    async def go() -> None:
        scope = http_scope("/v1/summarize", query="mode=silent")
        await app(scope, empty_receive, drop)

    asyncio.run(go())
    assert ledger.snapshot() == []
    assert events.kinds() == ["charge", "refund"]


def test_cancelled_call_refunds(ledger: Ledger, events: RecordingPlugin) -> None:
    """A call cancelled while the app runs (the client went away, the server
    shut down) is refunded."""
    entered = asyncio.Event()

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        entered.set()
        await asyncio.sleep(3600)

    app = middleware(slow, ledger)

    async def go() -> None:
        task = asyncio.create_task(app(http_scope("/v1/summarize"), empty_receive, drop))
        await entered.wait()
        assert ledger.lookup("acct", "job-1", scope="summarize") is not None
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert ledger.snapshot() == []
    assert events.kinds() == ["charge", "refund"]


def test_second_first_call_gets_409_with_retry_after(ledger: Ledger) -> None:
    """While a job's first call runs, another call of the job is answered 409
    problem+json with Retry-After, without reaching the app."""
    release = asyncio.Event()
    entered = asyncio.Event()
    reached: list[str] = []

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(scope["path"])
        entered.set()
        await release.wait()
        await send(start())
        await send(body(b"{}"))

    app = middleware(slow, ledger)
    headers = {"X-Job-Id": "job-1", "X-Account": "acct"}

    async def go() -> tuple[Any, Any]:
        async with client(app) as c:
            first = asyncio.create_task(c.post("/v1/summarize", headers=headers))
            await entered.wait()
            second = await c.post("/v1/summarize", headers=headers)
            release.set()
            return await first, second

    first, second = asyncio.run(go())
    assert first.headers["X-Job-Charge"] == "charged"
    assert second.status_code == 409
    assert second.headers["Content-Type"] == "application/problem+json"
    assert second.headers["Retry-After"] == "5"  # the 60 s lease left, capped (retry_after_max)
    assert second.json()["code"] == "job_in_progress"
    assert "X-Job-Charge" not in second.headers
    assert reached == ["/v1/summarize"]


# -- routes and pass-through -------------------------------------------------------------


def test_unmatched_request_passes_through_untouched(ledger: Ledger) -> None:
    """A request that matches no route (other path or method) reaches the app
    uncharged and without billing headers."""
    inner = App()
    app = middleware(inner, ledger)
    other_path = call(app, "/v1/other")
    other_method = call(app, "/v1/summarize", method="GET")
    for response in (other_path, other_method):
        assert response.status_code == 200
        assert "X-Job-Charge" not in response.headers
        assert "X-Job-Id" not in response.headers
    assert inner.charges == [None, None]
    assert ledger.snapshot() == []


def test_route_without_method_matches_every_method(ledger: Ledger) -> None:
    """A route key without a method charges whatever the method."""
    app = middleware(App(), ledger)
    assert call(app, "/v1/echo", method="GET").headers["X-Job-Charge"] == "charged"
    assert call(app, "/v1/echo", method="PUT").headers["X-Job-Charge"] == "reused"


def test_pattern_route_and_callable_cost() -> None:
    """``*`` patterns match, and a cost may be a callable of the scope."""
    ledger = make_ledger(balances=True)
    ledger.grant("acct", 10)

    def cost(scope: Scope) -> int:
        return 3 if scope["path"].endswith("/big") else 1

    app = middleware(App(), ledger, {"POST /v1/jobs/*": {"cost": cost, "scope": "jobs"}})
    assert call(app, "/v1/jobs/big").headers["X-Credits-Remaining"] == "7"
    assert call(app, "/v1/jobs/small", job="job-2").headers["X-Credits-Remaining"] == "6"


def test_routes_match_below_the_root_path(ledger: Ledger) -> None:
    """Behind a mount prefix (``root_path``) routes are matched on the path
    below it, as the app's own router does."""
    sent: list[Message] = []

    async def collect(message: Message) -> None:
        sent.append(message)

    app = middleware(App(), ledger)
    scope = http_scope("/api/v1/summarize", root_path="/api")
    asyncio.run(app(scope, empty_receive, collect))
    headers = dict(sent[0]["headers"])
    assert headers[b"x-job-charge"] == b"charged"


def test_lifespan_passes_through(ledger: Ledger) -> None:
    """Lifespan startup and shutdown reach the app and its answers reach the
    server, untouched."""
    inner = App()
    app = middleware(inner, ledger)
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send))
    assert inner.lifespan == ["lifespan.startup", "lifespan.shutdown"]
    assert sent == [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}]


def test_websocket_passes_through_even_on_a_charged_path(ledger: Ledger) -> None:
    """A websocket connection is not an HTTP request: it passes through
    uncharged, its messages untouched, even on a path that a route matches."""
    inner = App()
    app = middleware(inner, ledger, {"/v1/summarize": 1})
    incoming = [{"type": "websocket.connect"}]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    scope = http_scope("/v1/summarize")
    scope["type"] = "websocket"
    asyncio.run(app(scope, receive, send))
    assert sent == [
        {"type": "websocket.accept"},
        {"type": "websocket.send", "text": "hello"},
        {"type": "websocket.close", "code": 1000},
    ]
    assert inner.scopes == [scope]
    assert ledger.snapshot() == []


# -- identification and errors -------------------------------------------------------------


def test_async_account_callable(ledger: Ledger) -> None:
    """The account callable may be async (an account looked up in a database)."""

    async def account(scope: Scope) -> str | None:
        await asyncio.sleep(0)
        return "acct-async"

    app = middleware(App(), ledger, account=account)
    assert call(app).headers["X-Job-Charge"] == "charged"
    assert ledger.lookup("acct-async", "job-1", scope="summarize") is not None


def test_on_missing_reject_per_route(ledger: Ledger) -> None:
    """A route with on_missing="reject" answers a call without a job id 400."""
    routes = {"/v1/summarize": {"on_missing": "reject"}, "/v1/echo": 1}
    app = middleware(App(), ledger, routes)
    response = call(app, job=None)
    assert response.status_code == 400
    assert response.json()["code"] == "missing_job_id"
    assert call(app, "/v1/echo", job=None).status_code == 200


def test_job_header_per_middleware_and_per_route(ledger: Ledger) -> None:
    """The job header is configurable for the middleware and per route, and is
    echoed under its own name."""
    routes = {"/v1/summarize": {"header": "X-Recap-Job-Id"}, "/v1/echo": 1}
    app = middleware(App(), ledger, routes, job_header="X-Task")
    recap = call(app, job=None, extra={"X-Recap-Job-Id": "recap-1"})
    task = call(app, "/v1/echo", job=None, extra={"X-Task": "task-1"})
    assert recap.headers["X-Recap-Job-Id"] == "recap-1"
    assert task.headers["X-Task"] == "task-1"
    assert {r.job_id for r in ledger.snapshot()} == {"recap-1", "task-1"}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ledger": object()}, "ledger must be a Ledger"),
        ({"account": "acct"}, "account must be a callable"),
        ({"on_missing": "ignore"}, "on_missing"),
        ({"routes": {"summarize": 1}}, "must look like"),
        ({"routes": {"/x": {"price": 1}}}, "unknown option"),
        ({"routes": {"/x": {"on_missing": "maybe"}}}, "on_missing"),
    ],
)
def test_bad_configuration_fails_at_construction(
    ledger: Ledger, kwargs: dict[str, Any], match: str
) -> None:
    """Configuration mistakes raise when the middleware is built, not on the
    first paying request."""
    options: dict[str, Any] = {"ledger": ledger, "routes": ROUTES, "account": ACCOUNT}
    options.update(kwargs)
    with pytest.raises(ValueError, match=match):
        JobCreditsMiddleware(App(), options.pop("ledger"), options.pop("routes"), **options)


# -- a real framework behind it -------------------------------------------------------------


def test_starlette_app_behind_the_middleware() -> None:
    """A Starlette app with a sync endpoint (run in a threadpool) sees the
    charge; its 5xx answer refunds it."""
    pytest.importorskip("starlette")
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    def summarize(request: Request) -> JSONResponse:
        charge = current_charge()
        status = 502 if request.query_params.get("fail") else 200
        return JSONResponse({"outcome": charge.outcome if charge else None}, status)

    clock = FakeClock()
    ledger = make_ledger(clock=clock)
    app = middleware(
        Starlette(routes=[Route("/v1/summarize", summarize, methods=["POST"])]), ledger
    )
    failed = call(app, "/v1/summarize?fail=1")
    first = call(app)
    again = call(app)
    assert (failed.status_code, failed.headers["X-Job-Charge"]) == (502, "refunded")
    assert first.json() == {"outcome": "charged"}
    assert again.json() == {"outcome": "reused"}
    clock.advance(3601)  # the window closes: the next call is a new charge
    assert call(app).headers["X-Job-Charge"] == "charged"


# -- helpers for driving the middleware by hand ----------------------------------------------


def http_scope(path: str, *, root_path: str = "", query: str = "", job: str = "job-1") -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": root_path,
        "query_string": query.encode(),
        "headers": [(b"x-job-id", job.encode()), (b"x-account", b"acct")],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
    }


async def empty_receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def drop(message: Message) -> None:
    return None
