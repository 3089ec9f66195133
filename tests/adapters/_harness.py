"""What every adapter's test app shares: the routes' behaviour, the answer a
client gets, and framework-free WSGI and ASGI drivers.

Each adapter module (``_flask``, ``_django``, ``_fastapi``, ``_middleware``)
builds the same tiny app on a ledger it is given, with these routes:

- ``POST /run``: runs :attr:`Behaviour.during`, then answers
  ``{"outcome": ...}`` (what ``current_charge()`` said) as JSON with the
  status of ``?status=N`` (default 200); ``?raise=N`` raises the framework's
  HTTP exception for N instead (the middleware have no such thing: their
  app answers N);
- ``POST /raise``: raises :class:`HandlerFailed`;
- ``GET /stream`` (and ``HEAD``): a streamed body of :data:`CHUNKS`, which
  calls :attr:`Behaviour.on_chunk` before each chunk is produced, and breaks
  where :attr:`Behaviour.breaks` says.

Every route charges :data:`COST` credits in :data:`SCOPE`.

and returns a :class:`Client`, whose answers are :class:`Answer` objects
whatever the framework.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import parse_qs

import attrs

from jobcredits_plugin import Charge, current_charge

ACCT = "acct-1"
JOB = "job-1"
PROBLEM = "application/problem+json"
#: What every charging route of the test apps costs, and its scope.
COST = 2
SCOPE = "summarize"
#: What the streamed route produces, an empty chunk first (no byte yet).
CHUNKS = (b"", b"part 1,", b"part 2")


class HandlerFailed(RuntimeError):
    """What ``POST /raise`` raises: a bug in the app's handler."""


class StreamBroke(RuntimeError):
    """What a streamed body raises where :attr:`Behaviour.breaks` says."""


@attrs.define
class Behaviour:
    """What a test app's handlers report to the test.

    ``seen`` collects what ``current_charge()`` returned inside each call of
    ``POST /run``; ``during`` runs there before it answers (a test sets it to
    let the call outlive its lease); ``on_chunk`` runs before each streamed
    chunk is produced (a test sets it to read the ledger as the body is
    being sent); ``breaks`` makes the streamed body raise
    :class:`StreamBroke` ``"before"`` its first byte (after the empty chunk)
    or ``"after"`` it.
    """

    seen: list[Charge | None] = attrs.Factory(list)
    during: Callable[[], None] = lambda: None
    on_chunk: Callable[[], None] = lambda: None
    breaks: str | None = None

    def saw(self) -> dict[str, Any]:
        """Note the handler's charge, run ``during``; the JSON body ``POST
        /run`` answers."""
        charge = current_charge()
        self.seen.append(charge)
        self.during()
        return {"outcome": charge.outcome if charge else None}

    def chunks(self) -> Iterator[bytes]:
        for chunk in CHUNKS:
            self.on_chunk()
            yield chunk
            if (self.breaks, chunk) in (("before", b""), ("after", CHUNKS[1])):
                raise StreamBroke(f"the stream broke {self.breaks} its first byte")

    async def achunks(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks():
            yield chunk


def query(text: str | bytes) -> dict[str, str]:
    """A query string as a flat dict (first value of each name)."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    return {k: v[0] for k, v in parse_qs(text).items()}


def run_status(params: Mapping[str, str]) -> int:
    """The status ``POST /run`` answers."""
    return int(params.get("status", "200"))


@attrs.frozen
class Answer:
    """One response as the client got it (header names lower-case).

    ``charge_after`` is what ``current_charge()`` returned in the context the
    request was sent from, once it was answered: the charge must not outlive
    its request there (an in-process client runs the app in that context).
    """

    status: int
    headers: Mapping[str, str]
    body: bytes
    charge_after: Charge | None = None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        return json.loads(self.body)


#: How a client sends one request: method, path (with its query), headers,
#: raise_exceptions; see :meth:`AppClient.request`.
Send = Callable[[str, str, Mapping[str, str], bool], Answer]


@attrs.define
class AppClient:
    """The uniform client of a test app, whatever its framework."""

    send: Send
    behaviour: Behaviour

    def request(
        self,
        method: str,
        path: str,
        *,
        job: str | None = JOB,
        account: str | None = ACCT,
        headers: Mapping[str, str] | None = None,
        raise_exceptions: bool = True,
    ) -> Answer:
        """Send one request and read its whole body, as a server would.

        ``job`` and ``account`` go in ``X-Job-Id`` and ``X-Account`` (None:
        not sent). With ``raise_exceptions`` an exception the app lets out
        reaches the caller; without, the caller gets the 500 the framework
        (or, behind a middleware, the server) answers.
        """
        sent = dict(headers or {})
        if job is not None:
            sent["X-Job-Id"] = job
        if account is not None:
            sent["X-Account"] = account
        return self.send(method, path, sent, raise_exceptions)

    def post(self, path: str = "/run", **kwargs: Any) -> Answer:
        return self.request("POST", path, **kwargs)


def headers_of(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Response headers as a dict with lower-case names; a header sent twice
    is a bug of the adapter."""
    out: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower()
        assert key not in out, f"{name} sent twice"
        out[key] = value
    return out


# -- a WSGI server, played ----------------------------------------------------------


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def wsgi_environ(method: str, path: str, headers: Mapping[str, str]) -> dict[str, Any]:
    import io

    path, _, qs = path.partition("?")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": qs,
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in headers.items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    return environ


def wsgi_request(
    app: WSGIApp,
    method: str,
    path: str,
    headers: Mapping[str, str],
    *,
    raise_exceptions: bool = True,
) -> Answer:
    """Call a WSGI app as a server does: call, iterate the body, close it.

    A failure before the response started is the server's 500 (with none of
    the app's headers) unless ``raise_exceptions``.
    """
    started: list[tuple[str, list[tuple[str, str]]]] = []
    written: list[bytes] = []

    def start_response(
        status: str, response_headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        started.append((status, response_headers))
        return written.append

    try:
        body = app(wsgi_environ(method, path, headers), start_response)
        try:
            written.extend(body)
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
    except Exception:
        if raise_exceptions or started:
            raise
        return Answer(500, {}, b"", current_charge())
    status, response_headers = started[-1]
    code = int(status.split()[0])
    return Answer(code, headers_of(response_headers), b"".join(written), current_charge())


# -- an ASGI server, played -----------------------------------------------------------


ASGIApp = Callable[..., Awaitable[None]]


def asgi_scope(method: str, path: str, headers: Mapping[str, str]) -> dict[str, Any]:
    path, _, qs = path.partition("?")
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": qs.encode(),
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


async def asgi_arequest(
    app: ASGIApp,
    method: str,
    path: str,
    headers: Mapping[str, str],
    *,
    raise_exceptions: bool = True,
) -> Answer:
    """Call an ASGI app as a server does, on the running loop.

    The request body is empty; after it, ``receive`` waits until the
    response is complete and then says the client disconnected. As httpx's
    ``ASGITransport``: an exception reaches the caller with
    ``raise_exceptions``, else the response the app started (or a bare 500).
    """
    sent: list[dict[str, Any]] = []
    complete = asyncio.Event()
    request_read = False

    async def receive() -> dict[str, Any]:
        nonlocal request_read
        if not request_read:
            request_read = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await complete.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            complete.set()

    try:
        await app(asgi_scope(method, path, headers), receive, send)
    except Exception:
        if raise_exceptions:
            raise
        if not sent:
            return Answer(500, {}, b"", current_charge())
    finally:
        complete.set()
    start = next(m for m in sent if m["type"] == "http.response.start")
    pairs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start.get("headers", [])]
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return Answer(start["status"], headers_of(pairs), body, current_charge())


def asgi_request(
    app: ASGIApp,
    method: str,
    path: str,
    headers: Mapping[str, str],
    *,
    raise_exceptions: bool = True,
) -> Answer:
    """:func:`asgi_arequest` on a fresh event loop."""
    return asyncio.run(asgi_arequest(app, method, path, headers, raise_exceptions=raise_exceptions))
