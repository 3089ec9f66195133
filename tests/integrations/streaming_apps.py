"""Streaming apps for the real-server tests (``test_streaming_servers.py``),
one per way of charging: the WSGI middleware, Flask and Django (served by
gunicorn), the ASGI middleware and FastAPI (served by uvicorn).

Each app charges ``GET /early``, ``GET /late`` and ``GET /ok`` (one credit,
account from ``X-Account``, on the SQLite ledger ``JOBCREDITS_URL`` names,
balances on) and answers each with a streamed body:

- ``/early`` fails before producing its first byte (the server, having sent
  nothing, answers 500);
- ``/late`` produces a first chunk, then fails (the client got a status and
  some bytes; the connection is cut);
- ``/ok`` streams two chunks.

``GET /healthz`` is uncharged, for the test to know the server is up.
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoint's
# annotations, which name classes imported inside fastapi_app().
import os
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

from jobcredits_plugin import Ledger, header

ACCOUNT_HEADER = "X-Account"
CHARGED = ("/early", "/late", "/ok")


class UpstreamError(RuntimeError):
    """The failure the streamed bodies raise."""


def _url() -> str:
    return os.environ["JOBCREDITS_URL"]


def _ledger() -> Ledger:
    return Ledger.from_url(_url(), balances=True)


def chunks(path: str) -> Iterator[bytes]:
    """The body of ``path``, as a generator: lazy, like a proxied upstream."""
    if path == "/early":
        raise UpstreamError("the upstream failed before the first byte")
    yield b"first chunk;"
    if path == "/late":
        raise UpstreamError("the upstream failed after the first chunk")
    yield b"second chunk"


async def achunks(path: str) -> AsyncIterator[bytes]:
    """:func:`chunks`, asynchronously."""
    for chunk in chunks(path):
        yield chunk


# -- WSGI ---------------------------------------------------------------------------


def wsgi_app() -> Callable[..., Iterable[bytes]]:
    """A plain WSGI app behind :class:`jobcredits_plugin.wsgi.JobCreditsMiddleware`."""
    from jobcredits_plugin.wsgi import JobCreditsMiddleware

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        if environ["PATH_INFO"] == "/healthz":
            return [b"ok"]
        return chunks(environ["PATH_INFO"])

    return JobCreditsMiddleware(
        app,
        _ledger(),
        routes={f"GET {path}": 1 for path in CHARGED},
        account=header(ACCOUNT_HEADER),
    )


def flask_app() -> Any:
    """Flask views decorated with ``charges_credit``, returning generator bodies."""
    import flask

    from jobcredits_plugin.flask import JobCredits, charges_credit

    app = flask.Flask(__name__)
    app.config.update(JOBCREDITS_ACCOUNT=header(ACCOUNT_HEADER))
    JobCredits(app, _ledger())

    @app.get("/healthz")
    def healthz() -> str:
        return "ok"

    for path in CHARGED:

        def view(path: str = path) -> flask.Response:
            return flask.Response(chunks(path), mimetype="text/plain")

        app.add_url_rule(path, endpoint=path, view_func=charges_credit()(view))
    return app


def _django_setup() -> None:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            SECRET_KEY="jobcredits-streaming-tests-only",
            DEBUG=False,
            ALLOWED_HOSTS=["*"],
            INSTALLED_APPS=["jobcredits_plugin.django"],
            MIDDLEWARE=[],
            ROOT_URLCONF=__name__,
            DATABASES={},
            JOBCREDITS={
                "URL": _url(),
                "BALANCES": True,
                "ACCOUNT": f"{__name__}.django_account",
            },
        )
    django.setup()


def django_account(request: Any) -> str | None:
    value: str | None = request.headers.get(ACCOUNT_HEADER)
    return value


def _django_urls() -> list[Any]:
    from django.http import HttpResponse, StreamingHttpResponse
    from django.urls import path as route

    from jobcredits_plugin.django import charges_credit

    def healthz(request: Any) -> HttpResponse:
        return HttpResponse(b"ok")

    @charges_credit()
    def streamed(request: Any) -> StreamingHttpResponse:
        return StreamingHttpResponse(chunks(request.path), content_type="text/plain")

    @charges_credit()
    async def astreamed(request: Any) -> StreamingHttpResponse:
        return StreamingHttpResponse(achunks(request.path[len("/async") :]))

    return [
        route("healthz", healthz),
        *(route(p.lstrip("/"), streamed) for p in CHARGED),
        *(route("async" + p, astreamed) for p in CHARGED),
    ]


def __getattr__(name: str) -> Any:
    # Django reads ROOT_URLCONF's urlpatterns at the first request; built on
    # demand so that importing this module needs no Django.
    if name == "urlpatterns":
        return _django_urls()
    raise AttributeError(name)


def django_app() -> Any:
    """Django views decorated with ``charges_credit`` returning
    ``StreamingHttpResponse``, under Django's WSGI handler (``/async/...``:
    an async view with an async iterator)."""
    _django_setup()
    from django.core.wsgi import get_wsgi_application

    return get_wsgi_application()


def django_asgi_app() -> Any:
    """The same Django project under Django's ASGI handler."""
    _django_setup()
    from django.core.asgi import get_asgi_application

    return get_asgi_application()


# -- ASGI ---------------------------------------------------------------------------


def asgi_app() -> Any:
    """A raw ASGI app behind :class:`jobcredits_plugin.asgi.JobCreditsMiddleware`."""
    from jobcredits_plugin.asgi import JobCreditsMiddleware

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].replace("lifespan.", "")
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        headers = [(b"content-type", b"text/plain")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if scope["path"] == "/healthz":
            await send({"type": "http.response.body", "body": b"ok"})
            return
        async for chunk in achunks(scope["path"]):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return JobCreditsMiddleware(
        app,
        _ledger(),
        routes={f"GET {path}": 1 for path in CHARGED},
        account=header(ACCOUNT_HEADER),
    )


def fastapi_app() -> Any:
    """FastAPI endpoints charged by the ``charge_credit`` dependency,
    answering ``StreamingResponse``."""
    from typing import Annotated

    from fastapi import Depends, FastAPI, Request
    from fastapi.responses import PlainTextResponse, StreamingResponse

    from jobcredits_plugin import Charge
    from jobcredits_plugin.fastapi import JobCredits, charge_credit

    app = FastAPI()
    JobCredits(_ledger(), account=header(ACCOUNT_HEADER)).install(app)

    @app.get("/healthz")
    async def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def streamed(
        request: Request, charge: Annotated[Charge, Depends(charge_credit())]
    ) -> StreamingResponse:
        return StreamingResponse(achunks(request.url.path), media_type="text/plain")

    for path in CHARGED:
        app.add_api_route(path, streamed, methods=["GET"])
    return app
