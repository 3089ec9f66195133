"""The contract apps behind the WSGI and ASGI middleware: plain apps, no
framework, so that these run where no framework is installed."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from typing import Any

from jobcredits_plugin import Ledger, header

from ._harness import (
    COST,
    SCOPE,
    Answer,
    AppClient,
    Behaviour,
    HandlerFailed,
    asgi_request,
    query,
    run_status,
    wsgi_request,
)

#: The middleware's routes: the same three the framework apps decorate.
ROUTES = {
    f"{methods} {path}": {"cost": COST, "scope": SCOPE}
    for methods, path in [("POST", "/run"), ("POST", "/raise"), ("GET|HEAD", "/stream")]
}


def _answer(params: Mapping[str, str]) -> int:
    """The status ``POST /run`` answers: with no HTTP exceptions to raise,
    the app answers ``?raise=N`` with N itself."""
    return int(params["raise"]) if "raise" in params else run_status(params)


def _status_line(code: int) -> str:
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return f"{code} Unknown"


def build_wsgi(
    ledger: Ledger,
    behaviour: Behaviour,
    stack: contextlib.ExitStack,
    *,
    on_missing: str = "charge",
    fail_open: bool = False,
) -> AppClient:
    from jobcredits_plugin.wsgi import JobCreditsMiddleware

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        if path == "/raise":
            raise HandlerFailed("the handler failed")
        if path == "/stream":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return behaviour.chunks()
        code = _answer(query(environ.get("QUERY_STRING", "")))
        start_response(_status_line(code), [("Content-Type", "application/json")])
        return [json.dumps(behaviour.saw()).encode()]

    wrapped = JobCreditsMiddleware(
        app,
        ledger,
        ROUTES,
        account=header("X-Account"),
        on_missing=on_missing,
        fail_open=fail_open,
    )

    def send(method: str, path: str, headers: Mapping[str, str], raising: bool) -> Answer:
        return wsgi_request(wrapped, method, path, headers, raise_exceptions=raising)

    return AppClient(send, behaviour)


def build_asgi(
    ledger: Ledger,
    behaviour: Behaviour,
    stack: contextlib.ExitStack,
    *,
    on_missing: str = "charge",
    fail_open: bool = False,
) -> AppClient:
    from jobcredits_plugin.asgi import JobCreditsMiddleware

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope["path"]
        if path == "/raise":
            raise HandlerFailed("the handler failed")
        if path == "/stream":
            headers = [(b"content-type", b"text/plain")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            async for chunk in behaviour.achunks():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        code = _answer(query(scope["query_string"]))
        body = json.dumps(behaviour.saw()).encode()
        headers = [(b"content-type", b"application/json")]
        await asyncio.sleep(0)  # a real handler awaits something
        await send({"type": "http.response.start", "status": code, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    wrapped = JobCreditsMiddleware(
        app,
        ledger,
        ROUTES,
        account=header("X-Account"),
        on_missing=on_missing,
        fail_open=fail_open,
    )

    def send(method: str, path: str, headers: Mapping[str, str], raising: bool) -> Answer:
        return asgi_request(wrapped, method, path, headers, raise_exceptions=raising)

    return AppClient(send, behaviour)
