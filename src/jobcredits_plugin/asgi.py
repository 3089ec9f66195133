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
untouched. The charge is confirmed when the wrapped app starts its response
(``http.response.start``: status and headers decided), not after a streamed
body has been sent; it is refunded when that status is 5xx, or when the app
raises or is cancelled before starting a response.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any

from ._errors import JobCreditsError
from ._ledger import Ledger
from ._web import (
    DEFAULT_JOB_HEADER,
    JobCall,
    Route,
    RoutedMiddleware,
    afinish_raised,
    astart_call,
    bound,
    problem_body,
    problem_headers,
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


async def _send_problem(send: Send, err: JobCreditsError, instance: str | None) -> None:
    """Answer a request with ``err`` as an RFC 9457 problem document."""
    body = problem_body(err, instance=instance)
    headers = _encode_headers([*problem_headers(err), ("Content-Length", str(len(body)))])
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _Watch:
    """One request's charge, as the ASGI layer follows it to the response.

    The call is known at once in the middleware, but only once a dependency
    has run in the FastAPI adapter, which puts an empty watch in the scope and
    lets the dependency :meth:`attach` the call.
    """

    __slots__ = ("call", "job_header", "started")

    def __init__(self, call: JobCall | None = None, job_header: str = DEFAULT_JOB_HEADER) -> None:
        self.call = call
        self.job_header = job_header
        self.started = False

    def attach(self, call: JobCall, job_header: str) -> None:
        self.call = call
        self.job_header = job_header


async def _run_watched(
    app: ASGIApp, scope: Scope, receive: Receive, send: Send, watch: _Watch
) -> None:
    """Run ``app``, settling the watched call when its response starts.

    The status of ``http.response.start`` decides (see
    ``_web.is_failure``), and the call's headers are
    added to that message. Confirming there rather than after the body is
    what lets a follow-up sent the moment the client has the headers be
    ``reused`` instead of 409, and what keeps a long stream from outliving the
    lease. A failure after the start (a stream that breaks) leaves the charge
    as the status decided: the client was answered. If the app raises, is
    cancelled or returns before starting a response, the call is refunded.
    """

    async def watched_send(message: Message) -> None:
        if message["type"] == "http.response.start" and not watch.started:
            watch.started = True
            call = watch.call
            if call is not None:
                await call.afinish(message.get("status"))
                message = dict(message)
                message["headers"] = [
                    *message.get("headers", ()),
                    *_encode_headers(call.headers(watch.job_header)),
                ]
        await send(message)

    try:
        await app(scope, receive, watched_send)
    except BaseException as exc:
        if watch.call is not None:
            await afinish_raised(watch.call, exc)  # a no-op once the response started
        raise
    if watch.call is not None:
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
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan, websocket: not ours
            await self.app(scope, receive, send)
            return
        matched = self._route(scope["method"], _route_path(scope))
        if matched is None:
            await self.app(scope, receive, send)
            return
        route, job_header = matched
        try:
            account = self.account(scope)
            if inspect.isawaitable(account):
                account = await account
            call = await astart_call(
                self.ledger, account=account, **self._charge_options(route, job_header, scope)
            )
        except JobCreditsError as err:
            await _send_problem(send, err, instance=scope.get("path"))
            return
        with bound(call):
            await _run_watched(self.app, scope, receive, send, _Watch(call, job_header))
