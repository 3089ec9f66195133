"""What every web adapter shares besides the call path: one route's
options, and streamed bodies settled at their first byte.

The adapters (Flask, Django, FastAPI, the WSGI and ASGI middleware) differ in
how they read a request and write a response, and in nothing else. A call
goes through :mod:`jobcredits_plugin._call` (identify, begin, finish), its
errors are answered through :mod:`jobcredits_plugin._problems`, and the
middleware's routes come from :mod:`jobcredits_plugin._middleware`. What is
left here: :class:`Options`, what one decorator, dependency or middleware
route says, resolved for a request into the call's
:class:`~jobcredits_plugin._call.CallSpec`; and :class:`WatchedBody`.

An adapter reads the account, calls
:func:`~jobcredits_plugin._call.start_call` with ``options.call_spec(...)``,
runs the handler, calls :meth:`JobCall.finish
<jobcredits_plugin._call.JobCall.finish>` with the status, and copies
:meth:`JobCall.headers <jobcredits_plugin._call.JobCall.headers>` onto the
response.

When: a call is settled once its response's body produces its first byte
(not when the status is known, nor after the whole body). A streamed body
that fails before that byte was never served (the server answers 500) and
is refunded; a long body cannot outlast the lease. The middleware hold the
response's start until that byte, so their headers tell how the call was
settled; the framework adapters wrap a streamed body in :class:`WatchedBody`
(their headers, decided when the view returned, say ``charged``).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any, Literal, Protocol

import attrs

from ._call import CallSpec, JobCall, Terms, check_options, is_failure, resolve_option
from ._errors import InvalidArgument
from ._headers import AccountSource, account_source, reader
from ._ledger import Ledger
from ._validation import configuration

__all__ = [
    "AsyncWatchedBody",
    "Defaults",
    "Options",
    "WatchedBody",
    "app_account",
    "close_then_settle",
    "resolve",
    "route_options",
    "waits_for_body",
]


def resolve(value: Any, *args: Any, what: str | None = None) -> Any:
    """A per-route setting that is either a value or a callable of the request.

    With ``what`` (``"cost"``, ``"tier"``, ``"backend"``), what a callable
    returns is checked as the app's: a cost callable that returns a string is
    the app's bug, :class:`~jobcredits_plugin.ConfigurationError` (500), not
    the client's 400."""
    if not callable(value):
        return value
    if what is None:
        return value(*args)
    return resolve_option(what, value, *args)


# -- one route's options: a decorator's, a dependency's, a middleware route's ---------


async def app_account(account_of: Callable[..., Any], request: Any) -> Any:
    """What the app's account callable returns for ``request``, awaited when
    the callable is async (the async adapters accept both kinds)."""
    account = account_of(request)
    if account is None or type(account) is str:
        return account  # the common answers, without the awaitable check
    return await account if inspect.isawaitable(account) else account


class Defaults(Protocol):
    """The app-wide settings a route falls back on (an adapter's state, the
    Django :class:`~jobcredits_plugin._settings.Settings`, a middleware)."""

    @property
    def job_header(self) -> str: ...
    @property
    def on_missing(self) -> str: ...
    @property
    def fail_open(self) -> bool: ...


@attrs.frozen
class Options:
    """What one decorator, dependency or middleware route says; None means
    "the app's setting" (see :class:`Defaults`), read at each request so that
    a test swapping the app's settings is obeyed."""

    scope: str = "default"
    cost: int | Callable[..., int] = 1
    tier: str | Callable[..., str | None] | None = None
    backend: str | Callable[..., str | None] | None = None
    account: Callable[..., Any] | None = None
    ledger: Ledger | None = None
    on_missing: str | None = None
    fail_open: bool | None = None
    header: str | None = None
    #: The call's terms when no option is a callable, for ``fail_open``
    #: False and True: built once rather than on every request.
    _fixed: tuple[Terms, Terms] | None = attrs.field(init=False, eq=False, repr=False)
    #: What a call spec holds besides the job id, by the app's settings and
    #: the account callable in use, when the terms are fixed (see call_spec).
    _specs: dict[tuple[Any, ...], tuple[Terms, str, AccountSource]] = attrs.field(
        init=False, eq=False, repr=False, factory=dict
    )

    def __attrs_post_init__(self) -> None:
        fixed = None
        if not (callable(self.cost) or callable(self.tier) or callable(self.backend)):
            fixed = tuple(
                Terms(self.scope, self.cost, self.tier, self.backend, flag)
                for flag in (False, True)
            )
        object.__setattr__(self, "_fixed", fixed)

    def job_header(self, defaults: Defaults) -> str:
        return self.header or defaults.job_header

    def terms(self, defaults: Defaults, request: Any) -> Terms:
        """The call's :class:`~jobcredits_plugin._call.Terms` for ``request``."""
        fail_open = defaults.fail_open if self.fail_open is None else self.fail_open
        if self._fixed is not None and type(fail_open) is bool:
            return self._fixed[fail_open]
        return Terms(
            scope=self.scope,
            cost=resolve(self.cost, request, what="cost"),
            tier=resolve(self.tier, request, what="tier"),
            backend=resolve(self.backend, request, what="backend"),
            fail_open=fail_open,
        )

    def call_spec(
        self,
        defaults: Defaults,
        request: Any,
        account_of: Callable[..., Any],
        job_id: str | Literal[False] | None = False,
    ) -> CallSpec:
        """What :func:`~jobcredits_plugin._call.start_call` needs besides the
        ledger and the account, for ``request``; ``account_of`` is the account
        callable in use (its kind decides whose mistake a bad account is).
        ``job_id``: the job header's value when the adapter read it already
        (straight from its framework's raw headers); False: read it here."""
        if job_id is False:
            job_id = reader(self.job_header(defaults))(request)
        if self._fixed is not None:
            # The same for every request until the app's settings change:
            # looked up rather than worked out again (a few entries: one per
            # combination of settings and account callable seen).
            key = (defaults.fail_open, defaults.on_missing, account_of)
            try:
                known = self._specs.get(key)
            except TypeError:  # an unhashable setting or callable: no cache
                known = None
            if known is None:
                known = self._spec_parts(defaults, request, account_of)
                if len(self._specs) < 64:
                    with contextlib.suppress(TypeError):
                        self._specs[key] = known
            return CallSpec(job_id, *known)
        return CallSpec(job_id, *self._spec_parts(defaults, request, account_of))

    def _spec_parts(
        self, defaults: Defaults, request: Any, account_of: Callable[..., Any]
    ) -> tuple[Terms, str, AccountSource]:
        return (
            self.terms(defaults, request),
            self.on_missing or defaults.on_missing,
            account_source(account_of),
        )


@configuration()
def route_options(
    *,
    scope: Any = "default",
    cost: Any = 1,
    tier: Any = None,
    backend: Any = None,
    account: Any = None,
    ledger: Any = None,
    on_missing: Any = None,
    fail_open: Any = None,
    header: Any = None,
    request_kind: str = "request",
) -> Options:
    """Check a decorator's or dependency's options when the app is defined
    (a typo fails the deploy, not the first paying request) and bundle them."""
    check_options(scope=scope, cost=cost, tier=tier, backend=backend, on_missing=on_missing)
    if header is not None:
        reader(header)
    if ledger is not None and not isinstance(ledger, Ledger):
        raise InvalidArgument(f"ledger must be a Ledger, not {type(ledger).__name__}")
    if account is not None and not callable(account):
        raise InvalidArgument(f"account must be a callable of the {request_kind}")
    if fail_open is not None and not isinstance(fail_open, bool):
        raise InvalidArgument(f"fail_open must be True, False or None, not {fail_open!r}")
    return Options(scope, cost, tier, backend, account, ledger, on_missing, fail_open, header)


# -- streamed bodies: settled at their first byte ------------------------------------


def waits_for_body(method: str | None, status: int | None) -> bool:
    """Whether a streamed response's charge waits for its body's first byte.

    Not for a failure (settled, refunded, at once), nor for a response that
    has no body to wait for (``HEAD``, 1xx, 204, 304): a server may close such
    a body without ever reading it, which would count as a failure.
    """
    if status is None or is_failure(status) or status < 200 or status in (204, 304):
        return False
    return (method or "").upper() != "HEAD"


def close_then_settle(body: Any, call: JobCall) -> None:
    """Close a response body (if it can be closed), then settle its call as
    failed: the server is done with the body, so if it never produced its
    first byte the client was not served (a no-op once the call settled)."""
    try:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    finally:
        call.finish(None)


class WatchedBody:
    """A streamed response body that settles its call at its first byte.

    The framework adapters (Flask, Django) build the response, headers
    included, when the view returns, and hand it to the server to stream. A
    generator body does its work only as the server reads it, and if it
    fails before producing anything, the server answers 500 (or drops the
    connection): the client got nothing and must not pay. So the call is
    confirmed (or, for a 5xx, refunded) when the first non-empty chunk is
    produced or the body ends cleanly, and refunded when the body raises, or
    is closed, before that. A failure after the first byte leaves the charge
    standing: the client was answered.

    The response's headers were decided before the body ran, so on a
    streamed response they say what the charge was when the view returned
    (``charged``), not how it was settled.
    """

    def __init__(self, body: Iterable[Any], call: JobCall, status: int) -> None:
        self._body = body
        self._call = call
        self._status = status

    def __iter__(self) -> Iterator[Any]:
        call = self._call
        try:
            for chunk in self._body:
                if chunk and not call.finished:
                    call.finish(self._status)
                yield chunk
        except BaseException:
            call.finish(None)  # a no-op after the first byte
            raise
        call.finish(self._status)  # an empty body, ended cleanly

    def close(self) -> None:
        close_then_settle(self._body, self._call)


class AsyncWatchedBody:
    """:class:`WatchedBody` for an asynchronous body (an async generator
    behind Django's ``StreamingHttpResponse`` under ASGI)."""

    def __init__(self, body: Any, call: JobCall, status: int) -> None:
        self._body = body
        self._call = call
        self._status = status

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        call = self._call
        try:
            async for chunk in self._body:
                if chunk and not call.finished:
                    await call.afinish(self._status)
                yield chunk
        except BaseException as exc:
            await call.afinish_raised(exc)  # a no-op after the first byte
            raise
        await call.afinish(self._status)

    def close(self) -> None:
        close_then_settle(self._body, self._call)
