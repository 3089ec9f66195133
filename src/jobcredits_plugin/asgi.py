"""ASGI middleware: per-job charging for any ASGI framework, by method and path.

For Starlette, Litestar, Quart, Django's ASGI handler or a FastAPI app you
would rather not annotate endpoint by endpoint::

    from jobcredits_plugin import Ledger, header
    from jobcredits_plugin.asgi import JobCreditsMiddleware

    app = JobCreditsMiddleware(
        app,
        Ledger.from_url("sqlite:///jobs.db"),
        routes={"POST /v1/summarize": {"scope": "summarize", "cost": 2}},
        account=header("X-Authenticated-User"),  # set by a trusted proxy
    )

A pure ASGI middleware: it imports no framework, and passes ``lifespan`` and
``websocket`` connections, and HTTP requests that match no route, through
untouched. The charge is settled when the response's first body byte is
produced (the first non-empty ``http.response.body``, or the last one when
the body is empty), not after a streamed body has been sent: confirmed for a
status below 500, refunded for a 5xx. It is refunded when the app raises, is
cancelled or returns before that first byte: a streamed response that fails
before producing anything is answered 500 by the server and costs nothing.
A body that fails after its first byte stays charged (the client was
answered). The app's ``http.response.start`` is held back until then, so
that ``X-Job-Charge`` always says what really happened.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any

from ._errors import DEFAULT_RETRY_AFTER_MAX, JobCreditsError
from ._ledger import Ledger
from ._web import (
    DEFAULT_JOB_HEADER,
    JobCall,
    Problems,
    Route,
    RoutedMiddleware,
    afinish_raised,
    app_account,
    astart_call,
    bound,
    render_problem,
)

__all__ = ["JobCreditsMiddleware"]

# The ASGI callable's shapes, spelled out so that this module needs no
# framework (they are the same as Starlette's ``starlette.types``).
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
#: The account callable: receives the scope, returns the account (or None),
#: or an awaitable of it (an account looked up in a database).
AccountFn = Callable[[Scope], "str | Awaitable[str | None] | None"]


def _route_path(scope: Scope) -> str:
    """The request's path below the app's ``root_path``, as routers match it.

    ASGI servers put the mount prefix both in ``root_path`` and at the head of
    ``path``; routes are written for the app, not for where it is mounted (the
    WSGI middleware matches ``PATH_INFO`` alike).
    """
    path: str = scope.get("path") or "/"
    root: str = scope.get("root_path") or ""
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root) :] or "/"
    return path


def _encode_headers(pairs: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """Header pairs as ASGI wants them: lower-case names, latin-1 bytes."""
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in pairs]


async def _send_problem(
    send: Send, err: JobCreditsError, instance: str | None, settings: Problems | None = None
) -> None:
    """Answer a request with ``err`` as an RFC 9457 problem document."""
    status, headers, body = render_problem(err, instance, settings)
    encoded = _encode_headers([*headers, ("Content-Length", str(len(body)))])
    await send({"type": "http.response.start", "status": status, "headers": encoded})
    await send({"type": "http.response.body", "body": body})


class _Watch:
    """One request's charge, as the ASGI layer follows it to the response.

    The call is known at once in the middleware, but only once a dependency
    has run in the FastAPI adapter, which puts an empty watch in the scope and
    lets the dependency :meth:`attach` the call.
    """

    __slots__ = ("call", "held", "job_header", "started")

    def __init__(self, call: JobCall | None = None, job_header: str = DEFAULT_JOB_HEADER) -> None:
        self.call = call
        self.job_header = job_header
        self.started = False
        #: The app's ``http.response.start``, held back until the first byte.
        self.held: Message | None = None

    def attach(self, call: JobCall, job_header: str) -> None:
        self.call = call
        self.job_header = job_header


def _is_first_byte(message: Message) -> bool:
    """Whether a message held behind ``http.response.start`` releases it: a
    body chunk with data, the body's end, or anything other than a body chunk
    (a ``pathsend``, trailers: the response is under way)."""
    if message["type"] != "http.response.body":
        return True
    return bool(message.get("body")) or not message.get("more_body", False)


async def _run_watched(
    app: ASGIApp, scope: Scope, receive: Receive, send: Send, watch: _Watch
) -> None:
    """Run ``app``, settling the watched call at its response's first byte.

    The app's ``http.response.start`` is held until the first non-empty body
    chunk (or the body's end); then the start's status decides (see
    ``_web.is_failure``), the call's headers are added to the start, and
    both go to the server. Settling there rather than after the body is what
    lets a follow-up sent the moment the client has the first bytes be
    ``reused`` instead of 409, and keeps a long stream from outliving the
    lease; settling no earlier is what keeps a stream that fails before its
    first byte (the server answers 500) from being charged. A failure after
    the first byte leaves the charge as the status decided: the client was
    answered. If the app raises, is cancelled or returns before its first
    byte, the call is refunded (and, nothing having been sent, the server
    answers the failure itself); so is a response the app started but never
    ended (no body message at all: a stream cut before its first byte).
    """

    async def release(*, completed: bool = True) -> None:
        start, watch.held = watch.held, None
        assert start is not None
        assert watch.call is not None
        await watch.call.afinish(start.get("status") if completed else None)
        start = dict(start)
        start["headers"] = [
            *start.get("headers", ()),
            *_encode_headers(watch.call.headers(watch.job_header)),
        ]
        await send(start)

    async def watched_send(message: Message) -> None:
        if message["type"] == "http.response.start" and not watch.started:
            watch.started = True
            if watch.call is not None:
                watch.held = message
                return
        elif watch.held is not None:
            if not _is_first_byte(message):
                return  # an empty chunk: nothing produced yet
            await release()
        await send(message)

    try:
        await app(scope, receive, watched_send)
    except BaseException as exc:
        watch.held = None  # never sent: the server answers the failure
        if watch.call is not None:
            await afinish_raised(watch.call, exc)  # a no-op after the first byte
        raise
    if watch.held is not None:
        # Started, then returned without ending its body (not even an empty
        # last chunk): the response never completed, as when Starlette's
        # StreamingResponse stops a stream whose client disconnected before
        # its first byte. Nothing was served: refunded.
        await release(completed=False)
    elif watch.call is not None:
        await watch.call.afinish(None)  # returned without answering: nothing was served


class JobCreditsMiddleware(RoutedMiddleware[ASGIApp]):
    """Charge the HTTP requests that match ``routes`` once per job.

    :param app: the ASGI application to wrap.
    :param ledger: the :class:`~jobcredits_plugin.Ledger` to charge.
    :param routes: which requests cost what, as a mapping from
        ``"[METHOD[|METHOD]] /path"`` (``*`` patterns allowed) to a cost or a
        dict of options (``scope``, ``cost``, ``tier``, ``backend``,
        ``on_missing``, ``header``; see :ref:`middleware-routes`). Requests
        that match no route pass through untouched.
    :param account: a callable of the ASGI scope returning the account (or
        an awaitable of it), or None for an unauthenticated request (answered
        401). :func:`jobcredits_plugin.header` reads a scope's headers.
    :param job_header: the header carrying the job id (per route: ``header``).
    :param on_missing: ``"charge"`` a call without a job id as a job of its own
        (the fresh id is echoed in the job header), or ``"reject"`` it (400).
    :param fail_open: let calls through *uncharged* while the store is down,
        instead of answering 503.
    :param problem_type_base: the base of the problem ``type`` URIs (the type
        is the base followed by the error's ``code``); None: ``about:blank``.
    :param retry_after_max: the cap, in seconds, on a 409's ``Retry-After``
        (None: the whole lease left).

    While the app handles a charged request,
    :func:`jobcredits_plugin.current_charge` returns its
    :class:`~jobcredits_plugin.Charge`.
    """

    def __init__(
        self,
        app: ASGIApp,
        ledger: Ledger,
        routes: Mapping[str, Any] | Sequence[Route],
        *,
        account: AccountFn,
        job_header: str = DEFAULT_JOB_HEADER,
        on_missing: str = "charge",
        fail_open: bool = False,
        problem_type_base: str | None = None,
        retry_after_max: int | None = DEFAULT_RETRY_AFTER_MAX,
    ) -> None:
        super().__init__(
            app,
            ledger,
            routes,
            account=account,
            job_header=job_header,
            on_missing=on_missing,
            fail_open=fail_open,
            request_kind="ASGI scope",
            problem_type_base=problem_type_base,
            retry_after_max=retry_after_max,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan, websocket: not ours
            await self.app(scope, receive, send)
            return
        options = self._route(scope["method"], _route_path(scope))
        if options is None:
            await self.app(scope, receive, send)
            return
        job_header = options.job_header(self)
        try:
            call = await astart_call(
                self.ledger,
                account=await app_account(self.account, scope),
                **options.charge_args(self, scope, self.account),
            )
        except JobCreditsError as err:
            await _send_problem(send, err, scope.get("path"), self.problems)
            return
        with bound(call):
            await _run_watched(self.app, scope, receive, send, _Watch(call, job_header))
