"""The FastAPI adapter: JobCredits.install, the charge_credit dependency and the
charges_credit decorator, driven in-process through httpx's ASGITransport (and
by hand where a test must act between the response's start and its body).

What it shares with every adapter (charged once, refunds, problem answers,
streamed bodies) is the adapter contract, tests/adapters, which runs on the
dependency and on the decorator; here is what is FastAPI's own: validation
before or after the charge, its parameters, routers, OpenAPI-facing names,
installation, lifespan and websockets, two calls really overlapping.
"""

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from fastapi import Depends, FastAPI, Header, HTTPException, Request, WebSocket  # noqa: E402
from fastapi.responses import StreamingResponse  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from jobcredits_plugin import Charge, Ledger, current_charge, header  # noqa: E402
from jobcredits_plugin.fastapi import JobCredits, charge_credit, charges_credit  # noqa: E402
from jobcredits_plugin.testing import RecordingPlugin, make_ledger  # noqa: E402

ACCOUNT = header("X-Account")


class Text(BaseModel):
    text: str


def make_app(ledger: Ledger, **kwargs: Any) -> FastAPI:
    app = FastAPI()
    kwargs.setdefault("account", ACCOUNT)
    JobCredits(ledger, **kwargs).install(app)
    return app


def client(app: FastAPI, *, raise_app_exceptions: bool = True) -> Any:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


def call(
    app: FastAPI,
    path: str = "/run",
    *,
    job: str | None = "job-1",
    account: str | None = "acct",
    method: str = "POST",
    json_body: Any = None,
    extra: dict[str, str] | None = None,
    raise_app_exceptions: bool = True,
) -> Any:
    """One request through the app, on a fresh event loop."""
    headers = dict(extra or {})
    if job is not None:
        headers["X-Job-Id"] = job
    if account is not None:
        headers["X-Account"] = account

    async def go() -> Any:
        async with client(app, raise_app_exceptions=raise_app_exceptions) as c:
            return await c.request(method, path, headers=headers, json=json_body)

    return asyncio.run(go())


# -- the dependency ---------------------------------------------------------------


def test_dependency_charges_the_first_call_and_reuses_the_next(ledger: Ledger) -> None:
    """The dependency returns the Charge: charged on the job's first call,
    reused on the next; the response headers say so and echo the job id."""
    app = make_app(ledger)

    @app.post("/run")
    async def run(
        charge: Annotated[Charge, Depends(charge_credit(scope="summarize"))],
    ) -> dict[str, Any]:
        current = current_charge()
        return {"outcome": charge.outcome, "same": current is charge}

    first = call(app)
    second = call(app)
    assert first.json() == {"outcome": "charged", "same": True}
    assert second.json() == {"outcome": "reused", "same": True}
    assert first.headers["X-Job-Charge"] == "charged"
    assert second.headers["X-Job-Charge"] == "reused"
    assert first.headers["X-Job-Id"] == "job-1"
    (record,) = ledger.snapshot()
    assert (record.scope, record.state, record.uses) == ("summarize", "charged", 2)


def test_follow_up_sent_after_the_first_response_is_reused(ledger: Ledger) -> None:
    """A follow-up sent as soon as the first response has arrived is reused,
    not 409: the charge was confirmed when that response started."""
    app = make_app(ledger)

    @app.post("/run")
    async def run(charge: Annotated[Charge, Depends(charge_credit())]) -> dict[str, str]:
        return {"outcome": charge.outcome}

    async def go() -> list[str]:
        async with client(app) as c:
            headers = {"X-Job-Id": "job-1", "X-Account": "acct"}
            first = await c.post("/run", headers=headers)
            second = await c.post("/run", headers=headers)
            return [first.headers["X-Job-Charge"], second.headers["X-Job-Charge"]]

    assert asyncio.run(go()) == ["charged", "reused"]


def test_follow_up_sent_while_the_first_body_still_streams_is_reused(ledger: Ledger) -> None:
    """The moment the first response's first bytes arrive (its body still
    streaming) a follow-up of the job is already reused: confirmed at the
    body's first byte, not after the whole body."""
    app = make_app(ledger)
    release = asyncio.Event()

    @app.post("/run")
    async def run(charge: Annotated[Charge, Depends(charge_credit())]) -> StreamingResponse:
        async def stream() -> AsyncIterator[bytes]:
            yield b"first part;"
            if charge.charged:  # the first call: held until the follow-up has its answer
                await release.wait()
            yield b"rest"

        return StreamingResponse(stream())

    started = asyncio.Event()
    sent: list[dict[str, Any]] = []

    async def capture(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.start":
            started.set()

    async def go() -> Any:
        first = asyncio.create_task(app(http_scope("/run"), receiver(), capture))
        await started.wait()
        async with client(app) as c:
            follow_up = await c.post("/run", headers={"X-Job-Id": "job-1", "X-Account": "acct"})
        assert not first.done()  # the first body has not finished
        release.set()
        await first
        return follow_up

    follow_up = asyncio.run(go())
    assert follow_up.status_code == 200
    assert follow_up.headers["X-Job-Charge"] == "reused"
    start_headers = dict(sent[0]["headers"])
    assert start_headers[b"x-job-charge"] == b"charged"
    assert b"".join(m.get("body", b"") for m in sent[1:]) == b"first part;rest"


def test_sync_endpoint_sees_the_charge_of_the_dependency(ledger: Ledger) -> None:
    """A plain def endpoint (run in the threadpool) reads current_charge()."""
    app = make_app(ledger)

    @app.post("/run")
    def run(charge: Annotated[Charge, Depends(charge_credit())]) -> dict[str, Any]:
        current = current_charge()
        return {"outcome": current.outcome if current else None}

    assert call(app).json() == {"outcome": "charged"}


def test_router_level_dependency_charges_every_route(ledger: Ledger) -> None:
    """charge_credit() works as a route's or router's ``dependencies=``."""
    from fastapi import APIRouter

    router = APIRouter(dependencies=[Depends(charge_credit(scope="r"))])

    @router.post("/run")
    async def run() -> dict[str, Any]:
        charge = current_charge()
        return {"outcome": charge.outcome if charge else None}

    app = make_app(ledger)
    app.include_router(router)
    assert call(app).json() == {"outcome": "charged"}
    assert ledger.lookup("acct", "job-1", scope="r") is not None


# -- the decorator ------------------------------------------------------------------


def test_decorator_on_async_and_sync_endpoints(ledger: Ledger) -> None:
    """@charges_credit charges async and plain def endpoints alike; both see
    current_charge(), and the endpoint's own parameters still arrive."""
    app = make_app(ledger)

    @app.post("/async/{item}")
    @charges_credit(scope="s")
    async def run_async(item: str, body: Text, n: int = 1) -> dict[str, Any]:
        charge = current_charge()
        return {"outcome": charge.outcome if charge else None, "item": item, "n": n}

    @app.post("/sync/{item}")
    @charges_credit(scope="s")
    def run_sync(item: str, body: Text, n: int = 1) -> dict[str, Any]:
        charge = current_charge()
        return {"outcome": charge.outcome if charge else None, "text": body.text, "n": n}

    first = call(app, "/async/a?n=3", json_body={"text": "hi"})
    second = call(app, "/sync/b?n=4", json_body={"text": "hi"})
    assert first.json() == {"outcome": "charged", "item": "a", "n": 3}
    assert second.json() == {"outcome": "reused", "text": "hi", "n": 4}
    assert second.headers["X-Job-Charge"] == "reused"


def test_decorator_charges_only_requests_that_pass_validation(ledger: Ledger) -> None:
    """A request FastAPI rejects (422) never reaches the decorated endpoint and
    is not charged."""
    app = make_app(ledger)

    @app.post("/run")
    @charges_credit()
    async def run(body: Text) -> dict[str, str]:
        return {"text": body.text}

    response = call(app, json_body={"text": ["not", "a", "string"]})
    assert response.status_code == 422
    assert "X-Job-Charge" not in response.headers
    assert ledger.snapshot() == []


@pytest.mark.parametrize("where", ["body", "query", "header"])
def test_dependency_refunds_a_request_failing_validation(
    ledger: Ledger, events: RecordingPlugin, where: str
) -> None:
    """FastAPI runs the dependency (which charges) before it validates the
    other parameters; a request it then answers 422 never reached the
    endpoint, so its charge is refunded and the answer says so."""
    app = make_app(ledger)
    reached: list[str] = []

    if where == "body":

        @app.post("/run")
        async def run(body: Text, charge: Annotated[Charge, Depends(charge_credit())]) -> Any:
            reached.append("run")
            return {}

        response = call(app, json_body={"text": ["not", "a", "string"]})
    elif where == "query":

        @app.post("/run")
        async def run(charge: Annotated[Charge, Depends(charge_credit())], n: int) -> Any:
            reached.append("run")
            return {}

        response = call(app, "/run?n=many")
    else:

        @app.post("/run")
        async def run(
            charge: Annotated[Charge, Depends(charge_credit())],
            x_count: Annotated[int, Header()],
        ) -> Any:
            reached.append("run")
            return {}

        response = call(app, extra={"X-Count": "many"})
    assert response.status_code == 422
    assert reached == []
    assert response.headers["X-Job-Charge"] == "refunded"
    assert ledger.snapshot() == []
    assert events.kinds() == ["charge", "refund"]


def test_dependency_refund_on_422_gives_the_credits_back(events: RecordingPlugin) -> None:
    """With balances on, the 422's X-Credits-Remaining is the refunded balance."""
    ledger = make_ledger(balances=True, plugins=[events])
    ledger.grant("acct", 3)
    app = make_app(ledger)

    @app.post("/run")
    async def run(body: Text, charge: Annotated[Charge, Depends(charge_credit())]) -> Any:
        return {}

    response = call(app, json_body={"text": 1.5})
    assert response.status_code == 422
    assert response.headers["X-Credits-Remaining"] == "3"
    assert ledger.balance("acct") == 3
    assert call(app, json_body={"text": "ok"}).headers["X-Job-Charge"] == "charged"


def test_an_endpoints_own_422_still_confirms(ledger: Ledger) -> None:
    """Only FastAPI's validation failure is refunded: a 422 the endpoint
    answers itself served the client, and confirms like any 4xx."""
    app = make_app(ledger)

    @app.post("/run")
    async def run(charge: Annotated[Charge, Depends(charge_credit())]) -> Any:
        raise HTTPException(status_code=422, detail="the text is unreadable")

    response = call(app)
    assert response.status_code == 422
    assert response.headers["X-Job-Charge"] == "charged"
    assert ledger.lookup("acct", "job-1").state == "charged"  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_an_apps_own_validation_handler_still_refunds(
    ledger: Ledger, events: RecordingPlugin, kind: str
) -> None:
    """The app's own handler of RequestValidationError, registered after
    install(), answers the failed validation, and the dependency's charge is
    refunded all the same (the refund wraps whatever handler the app has
    when it builds its middleware)."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    app = make_app(ledger)

    async def ahandle(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"bad": True}, status_code=400)

    def handle(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"bad": True}, status_code=400)

    app.add_exception_handler(RequestValidationError, ahandle if kind == "async" else handle)

    @app.post("/run")
    async def run(body: Text, charge: Annotated[Charge, Depends(charge_credit())]) -> Any:
        return {}

    response = call(app, json_body={"text": 7})
    assert response.status_code == 400
    assert response.json() == {"bad": True}
    assert response.headers["X-Job-Charge"] == "refunded"
    assert events.kinds() == ["charge", "refund"]
    assert call(app, json_body={"text": "ok"}).headers["X-Job-Charge"] == "charged"


def test_a_decorated_endpoint_raising_validation_errors_is_confirmed(ledger: Ledger) -> None:
    """Only the dependency's charge is refunded by a failed validation: the
    decorator charges inside the endpoint, so a RequestValidationError the
    endpoint raises itself is a 4xx it answered, confirmed like any other."""
    from fastapi.exceptions import RequestValidationError

    app = make_app(ledger)

    @app.post("/run")
    @charges_credit()
    async def run() -> Any:
        raise RequestValidationError([{"loc": ("body",), "msg": "no", "type": "value_error"}])

    response = call(app)
    assert response.status_code == 422
    assert response.headers["X-Job-Charge"] == "charged"
    assert ledger.lookup("acct", "job-1").state == "charged"  # type: ignore[union-attr]


def test_streaming_response_failing_before_its_first_byte_is_refunded(
    ledger: Ledger, events: RecordingPlugin
) -> None:
    """A StreamingResponse whose body raises before its first byte: nothing
    was sent (the start is held until the first byte), the server answers
    500, and the charge is refunded."""
    app = make_app(ledger)

    @app.post("/run")
    async def run(charge: Annotated[Charge, Depends(charge_credit())]) -> StreamingResponse:
        async def stream() -> AsyncIterator[bytes]:
            yield b""
            raise RuntimeError("the upstream failed before the first byte")

        return StreamingResponse(stream())

    response = call(app, raise_app_exceptions=False)
    assert response.status_code == 500
    assert ledger.snapshot() == []
    assert events.kinds() == ["charge", "refund"]


def test_decorator_uses_the_endpoints_own_request_parameter(ledger: Ledger) -> None:
    """An endpoint that takes the Request gets it, and the charge reads it."""
    app = make_app(ledger)

    @app.post("/run")
    @charges_credit()
    async def run(req: Request) -> dict[str, Any]:
        return {"path": req.url.path, "account": req.headers["X-Account"]}

    assert call(app).json() == {"path": "/run", "account": "acct"}
    assert ledger.lookup("acct", "job-1") is not None


def test_decorator_with_a_body_parameter_named_request(ledger: Ledger) -> None:
    """An endpoint parameter named ``request`` that is not the Request (a body
    model) is left alone; the decorator takes the Request under another name."""
    app = make_app(ledger)

    @app.post("/run")
    @charges_credit()
    async def run(request: Text) -> dict[str, str]:
        return {"text": request.text}

    response = call(app, json_body={"text": "hello"})
    assert response.json() == {"text": "hello"}
    assert response.headers["X-Job-Charge"] == "charged"


def test_decorated_endpoint_keeps_its_name_and_docs() -> None:
    """The decorated endpoint keeps its name and docstring (FastAPI's operation
    id and description come from them)."""

    @charges_credit()
    async def summarize_text() -> None:
        """Summarize a text."""

    assert summarize_text.__name__ == "summarize_text"
    assert summarize_text.__doc__ == "Summarize a text."


# -- what counts as failure ------------------------------------------------------------------


def failing_app(ledger: Ledger, **kwargs: Any) -> FastAPI:
    """An app whose /run raises HTTPException(503), charged through the
    dependency, and /dec the same through the decorator."""
    app = make_app(ledger, **kwargs)

    @app.post("/run")
    async def run(charge: Annotated[Charge, Depends(charge_credit())]) -> Any:
        raise HTTPException(503, "upstream down")

    @app.post("/dec")
    @charges_credit()
    async def dec() -> Any:
        raise HTTPException(503, "upstream down")

    return app


@pytest.mark.parametrize("path", ["/run", "/dec"])
def test_5xx_http_exception_refunds(path: str, events: RecordingPlugin) -> None:
    """A 5xx answer raised as HTTPException refunds the charge and says
    X-Job-Charge: refunded with the credits given back (a 5xx returned: the
    adapter contract, tests/adapters)."""
    ledger = make_ledger(balances=True, plugins=[events])
    ledger.grant("acct", 2)
    response = call(failing_app(ledger), path)
    assert response.status_code == 503
    assert response.headers["X-Job-Charge"] == "refunded"
    assert response.headers["X-Credits-Remaining"] == "2"
    assert ledger.lookup("acct", "job-1") is None
    assert events.kinds() == ["charge", "refund"]


def test_cancelled_request_refunds(ledger: Ledger, events: RecordingPlugin) -> None:
    """A request cancelled while its endpoint runs is refunded."""
    app = make_app(ledger)
    entered = asyncio.Event()

    @app.post("/run")
    async def run(charge: Annotated[Charge, Depends(charge_credit())]) -> None:
        entered.set()
        await asyncio.sleep(3600)

    async def go() -> None:
        task = asyncio.create_task(app(http_scope("/run"), receiver(), drop))
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert ledger.snapshot() == []
    assert events.kinds() == ["charge", "refund"]


# -- errors as problem+json ------------------------------------------------------------------


def test_job_in_progress_is_409_with_retry_after(ledger: Ledger) -> None:
    """A second call while the job's first call runs answers 409 problem+json
    with Retry-After."""
    app = make_app(ledger)
    entered = asyncio.Event()
    release = asyncio.Event()

    @app.post("/run")
    async def run(charge: Annotated[Charge, Depends(charge_credit())]) -> dict[str, str]:
        entered.set()
        await release.wait()
        return {"outcome": charge.outcome}

    async def go() -> tuple[Any, Any]:
        headers = {"X-Job-Id": "job-1", "X-Account": "acct"}
        async with client(app) as c:
            first = asyncio.create_task(c.post("/run", headers=headers))
            await entered.wait()
            second = await c.post("/run", headers=headers)
            release.set()
            return await first, second

    first, second = asyncio.run(go())
    assert first.json() == {"outcome": "charged"}
    assert second.status_code == 409
    assert second.headers["Content-Type"] == "application/problem+json"
    assert second.headers["Retry-After"] == "5"  # the 60 s lease left, capped (retry_after_max)
    assert second.json()["code"] == "job_in_progress"


# -- per-route options ----------------------------------------------------------------------


def test_per_route_options_override_the_apps(ledger: Ledger) -> None:
    """ledger=, account=, header=, fail_open= and on_missing= on a dependency or
    decorator override the JobCredits settings for that route."""
    other = make_ledger()
    down = make_ledger()
    down.close()
    app = make_app(ledger, on_missing="reject")

    async def account(request: Request) -> str | None:
        return request.headers.get("X-Team")

    @app.post("/other-ledger")
    async def other_ledger(charge: Annotated[Charge, Depends(charge_credit(ledger=other))]) -> None:
        return None

    @app.post("/team")
    @charges_credit(account=account, header="X-Task", on_missing="charge")
    async def team() -> None:
        return None

    @app.post("/open")
    @charges_credit(ledger=down, fail_open=True)
    async def open_() -> None:
        return None

    assert call(app, "/other-ledger").headers["X-Job-Charge"] == "charged"
    assert other.lookup("acct", "job-1") is not None
    assert ledger.snapshot() == []
    team_call = call(app, "/team", job=None, extra={"X-Team": "team-7", "X-Task": "t-1"})
    assert team_call.headers["X-Task"] == "t-1"
    assert ledger.lookup("team-7", "t-1") is not None
    minted = call(app, "/team", job=None, extra={"X-Team": "team-7"})
    assert minted.status_code == 200  # on_missing="charge" for this route
    assert call(app, "/open").status_code == 200


def test_cost_tier_backend_from_the_request() -> None:
    """cost, tier and backend may be callables of the request."""
    ledger = make_ledger(balances=True)
    ledger.grant("acct", 10)
    app = make_app(ledger)

    @app.post("/run")
    async def run(
        charge: Annotated[
            Charge,
            Depends(
                charge_credit(
                    cost=lambda r: int(r.query_params.get("cost", "1")),
                    tier=lambda r: r.query_params.get("tier"),
                    backend="gpu",
                )
            ),
        ],
    ) -> dict[str, Any]:
        return {"tier": charge.record.tier, "backend": charge.record.backend}

    response = call(app, "/run?cost=4&tier=pro")
    assert response.json() == {"tier": "pro", "backend": "gpu"}
    assert response.headers["X-Credits-Remaining"] == "6"


# -- installation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ledger": object()}, "ledger must be a Ledger"),
        ({"account": "acct"}, "account must be a callable"),
        ({"on_missing": "ignore"}, "on_missing"),
        ({"fail_open": 1}, "fail_open"),
        ({"job_header": "X Job"}, "header name"),
    ],
)
def test_bad_app_settings_fail_at_construction(
    ledger: Ledger, kwargs: dict[str, Any], match: str
) -> None:
    """JobCredits checks its settings when it is built."""
    settings: dict[str, Any] = {"ledger": ledger, **kwargs}
    with pytest.raises(ValueError, match=match):
        JobCredits(settings.pop("ledger"), **settings)


def test_install_puts_the_adapter_on_app_state(ledger: Ledger) -> None:
    """install() returns the adapter and keeps it on app.state.jobcredits."""
    app = FastAPI()
    ext = JobCredits(ledger, account=ACCOUNT)
    assert ext.install(app) is ext
    assert app.state.jobcredits is ext
    assert not hasattr(ext, "app")


def test_without_install_the_request_fails_loudly(ledger: Ledger) -> None:
    """A charging route on an app where install() was not called raises a
    RuntimeError that names the fix, rather than serving free."""
    app = FastAPI()

    @app.post("/run")
    async def run(charge: Annotated[Charge, Depends(charge_credit())]) -> None:
        return None

    @app.post("/decorated")
    @charges_credit()
    async def decorated() -> None:
        return None

    for path in ("/run", "/decorated"):
        with pytest.raises(RuntimeError, match=r"did not pass through .*install\(app\)"):
            call(app, path)
    assert ledger.snapshot() == []


def test_two_charges_in_one_request_are_refused(ledger: Ledger, events: RecordingPlugin) -> None:
    """A route charged twice (a dependency and the decorator) fails, and the
    first charge is refunded."""
    app = make_app(ledger)

    @app.post("/run")
    @charges_credit(scope="b")
    async def run(charge: Annotated[Charge, Depends(charge_credit(scope="a"))]) -> None:
        return None

    with pytest.raises(RuntimeError, match="already charged"):
        call(app)
    assert ledger.snapshot() == []
    assert events.kinds() == ["charge", "refund"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scope": "bad scope"}, "scope"),
        ({"cost": -1}, "cost"),
        ({"ledger": object()}, "ledger must be a Ledger"),
        ({"account": "acct"}, "account must be a callable"),
        ({"on_missing": "ignore"}, "on_missing"),
        ({"header": "X Job"}, "header name"),
        ({"fail_open": "yes"}, "fail_open"),
    ],
)
def test_bad_options_fail_when_the_app_is_defined(kwargs: dict[str, Any], match: str) -> None:
    """A mistake in the dependency's or decorator's options raises at import,
    not on the first paying request."""
    with pytest.raises(ValueError, match=match):
        charge_credit(**kwargs)
    with pytest.raises(ValueError, match=match):
        charges_credit(**kwargs)


def test_lifespan_and_websockets_pass_through(ledger: Ledger) -> None:
    """The installed middleware leaves the app's lifespan and its websocket
    routes alone."""
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    app = FastAPI(lifespan=lifespan)
    JobCredits(ledger, account=ACCOUNT).install(app)

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(json.dumps({"charge": repr(current_charge())}))
        await websocket.close()

    async def session(scope: dict[str, Any], incoming: list[dict[str, Any]]) -> list[Any]:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return incoming.pop(0)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)
        return [m["type"] for m in sent] + [m["text"] for m in sent if "text" in m]

    lifespan_scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    ws_scope = {**http_scope("/ws"), "type": "websocket", "scheme": "ws", "subprotocols": []}
    del ws_scope["method"]
    life = session(lifespan_scope, [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    socket = session(ws_scope, [{"type": "websocket.connect"}])
    assert asyncio.run(life) == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert asyncio.run(socket) == [
        "websocket.accept",
        "websocket.send",
        "websocket.close",
        '{"charge": "None"}',
    ]
    assert events == ["startup", "shutdown"]
    assert ledger.snapshot() == []


# -- driving the app by hand ------------------------------------------------------------------


def http_scope(path: str, *, job: str = "job-1") -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"x-job-id", job.encode()), (b"x-account", b"acct")],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
    }


def receiver() -> Any:
    """An ASGI receive: the (empty) request body once, then nothing until the
    request is over, as a server whose client stays connected."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return receive


async def drop(message: dict[str, Any]) -> None:
    return None
