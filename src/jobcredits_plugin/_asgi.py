"""What the ASGI middleware and the FastAPI adapter share: the ASGI shapes,
and following one charged request to its response's first body byte.

Both settle a call the same way: the app's ``http.response.start`` is held
back until the first non-empty body chunk (or the body's end), then the
call is settled by the start's status and its headers go out with the
start. The middleware knows the call before the app runs; the FastAPI
adapter learns it only once a dependency or decorator has charged, so a
:class:`Watch` starts empty and the call is attached to it later.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from ._call import DEFAULT_JOB_HEADER, JobCall
from ._errors import JobCreditsError
from ._headers import raw_name
from ._problems import Problems, render_problem

__all__ = [
    "ASGIApp",
    "AccountFn",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "Watch",
    "encode_headers",
    "route_path",
    "run_watched",
    "send_problem",
]

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

_RAW_JOB_HEADER = raw_name(DEFAULT_JOB_HEADER)


def route_path(scope: Scope) -> str:
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


def encode_headers(pairs: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """Header pairs as ASGI wants them: lower-case names, latin-1 bytes."""
    out = []  # a loop, not a comprehension: on every charged response
    for k, v in pairs:
        out.append((k.lower().encode("latin-1"), v.encode("latin-1")))
    return out


async def send_problem(
    send: Send, err: JobCreditsError, instance: str | None, settings: Problems | None = None
) -> None:
    """Answer a request with ``err`` as an RFC 9457 problem document."""
    status, headers, body = render_problem(err, instance, settings)
    encoded = encode_headers([*headers, ("Content-Length", str(len(body)))])
    await send({"type": "http.response.start", "status": status, "headers": encoded})
    await send({"type": "http.response.body", "body": body})


class Watch:
    """One request's charge, as the ASGI layer follows it to the response.

    The call is known at once in the middleware, but only once a dependency
    has run in the FastAPI adapter, which puts an empty watch in the scope and
    lets the dependency :meth:`attach` the call.
    """

    __slots__ = ("call", "held", "raw_job_header", "refund_invalid", "started")

    def __init__(
        self, call: JobCall | None = None, raw_job_header: bytes = _RAW_JOB_HEADER
    ) -> None:
        self.call = call
        #: The job header's name as the response carries it (``raw_name``).
        self.raw_job_header = raw_job_header
        self.started = False
        #: The app's ``http.response.start``, held back until the first byte.
        self.held: Message | None = None
        #: Whether the framework's request validation failing refunds the
        #: call (the FastAPI dependency charges before that validation).
        self.refund_invalid = False

    def attach(self, call: JobCall, raw_job_header: bytes, *, refund_invalid: bool = False) -> None:
        self.call = call
        self.raw_job_header = raw_job_header
        self.refund_invalid = refund_invalid


async def run_watched(
    app: ASGIApp, scope: Scope, receive: Receive, send: Send, watch: Watch
) -> None:
    """Run ``app``, settling the watched call at its response's first byte.

    The app's ``http.response.start`` is held until the first non-empty body
    chunk (or the body's end); then the start's status decides (see
    ``_call.is_failure``), the call's headers are added to the start, and
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
            *watch.call.asgi_headers(watch.raw_job_header),
        ]
        await send(start)

    async def watched_send(message: Message) -> None:
        if message["type"] == "http.response.start" and not watch.started:
            watch.started = True
            if watch.call is not None:
                watch.held = message
                return
        elif watch.held is not None:
            # Released by a body chunk with data, the body's end, or anything
            # other than a body chunk (a pathsend, trailers: the response is
            # under way); tested inline, as every held message passes here.
            if (
                message["type"] == "http.response.body"
                and not message.get("body")
                and message.get("more_body", False)
            ):
                return  # an empty chunk: nothing produced yet
            await release()
        await send(message)

    try:
        await app(scope, receive, watched_send)
    except BaseException as exc:
        watch.held = None  # never sent: the server answers the failure
        if watch.call is not None:
            await watch.call.afinish_raised(exc)  # a no-op after the first byte
        raise
    if watch.held is not None:
        # Started, then returned without ending its body (not even an empty
        # last chunk): the response never completed, as when Starlette's
        # StreamingResponse stops a stream whose client disconnected before
        # its first byte. Nothing was served: refunded.
        await release(completed=False)
    elif watch.call is not None and not watch.call.finished:
        await watch.call.afinish(None)  # returned without answering: nothing was served
