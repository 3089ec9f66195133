"""What every web adapter shares: one HTTP call's trip through the ledger.

The adapters (Flask, Django, FastAPI, the WSGI and ASGI middleware) differ in
how they read a request and write a response, and in nothing else. Everything
with a billing consequence lives here, once: when a call counts as failed
(5xx, an exception, a cancellation) or served (2xx-4xx), which headers tell
the client what happened, and how an error becomes an RFC 9457 problem
document. An adapter reads the account and the job id, calls
:func:`start_call`, runs the handler, calls :meth:`JobCall.finish` with the
status, and copies :meth:`JobCall.headers` onto the response.

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
import fnmatch
import functools
import inspect
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Generic, Protocol, TypeVar

import attrs

from ._decorator import (
    AccountSource,
    _current,
    abegin,
    account_source,
    afinish,
    begin,
    finish,
    header,
    identify,
    resolve_option,
)
from ._decorator import _check_on_missing as check_on_missing
from ._errors import (
    ABOUT_BLANK,
    DEFAULT_RETRY_AFTER_MAX,
    ConfigurationError,
    InvalidArgument,
    JobCreditsError,
    StoreUnavailable,
)
from ._ledger import Ledger
from ._records import Charge
from ._validation import (
    MAX_SECONDS,
    check_cost,
    check_label,
    check_scope,
    configuration,
)
from ._warnings import is_in_process_default, warn_in_process

__all__ = [
    "CREDITS_HEADER",
    "DEFAULT_JOB_HEADER",
    "JOB_CHARGE_HEADER",
    "PROBLEM_CONTENT_TYPE",
    "AsyncWatchedBody",
    "JobCall",
    "Options",
    "Problems",
    "Route",
    "WatchedBody",
    "afinish_raised",
    "app_account",
    "astart_call",
    "bind",
    "bound",
    "check_options",
    "compile_routes",
    "is_failure",
    "isolated",
    "problem_body",
    "problem_headers",
    "problems",
    "reader",
    "render_problem",
    "resolve",
    "route_options",
    "start_call",
    "waits_for_body",
]

DEFAULT_JOB_HEADER = "X-Job-Id"
JOB_CHARGE_HEADER = "X-Job-Charge"
CREDITS_HEADER = "X-Credits-Remaining"
PROBLEM_CONTENT_TYPE = "application/problem+json"


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


def is_failure(status: int | None) -> bool:
    """Whether a call's outcome refunds its charge.

    ``None`` stands for "no response": the handler raised something that is
    not a client error, or the call was cancelled. A 5xx answer is the
    server's failure. A 4xx answer confirms: the client's mistake was served,
    and refunding it would let a client retry a bad request for free forever.
    """
    return status is None or status >= 500


log = logging.getLogger("jobcredits_plugin")

#: The longest problem type base accepted (a URI prefix, not a document).
_TYPE_BASE_MAX = 2000


@attrs.frozen
class Problems:
    """How an adapter renders its errors as problem+json (RFC 9457).

    ``type_base`` None means ``type: about:blank`` (the ``code`` member
    carries the meaning); a base makes the type ``type_base + code``, a page
    of the app's own. ``retry_after_max`` caps ``Retry-After`` (None: no
    cap). Build one with :func:`problems`, which checks the settings.
    """

    type_base: str | None = None
    retry_after_max: int | None = DEFAULT_RETRY_AFTER_MAX

    def document(self, err: JobCreditsError, instance: str | None = None) -> dict[str, Any]:
        """The problem document a client is sent for ``err``."""
        return err.to_problem(
            instance=instance, type_base=self.type_base, retry_after_max=self.retry_after_max
        )

    def body(self, err: JobCreditsError, instance: str | None = None) -> bytes:
        """The problem+json body, as bytes ready to send."""
        return json.dumps(self.document(err, instance), separators=(",", ":")).encode()

    def headers(self, err: JobCreditsError) -> list[tuple[str, str]]:
        """Content-Type plus the error's own headers (``Retry-After``, capped)."""
        return [
            ("Content-Type", PROBLEM_CONTENT_TYPE),
            *err.headers(retry_after_max=self.retry_after_max).items(),
        ]


#: The settings an adapter renders with when the app configured none.
DEFAULT_PROBLEMS = Problems()


def problems(
    type_base: Any = None,
    retry_after_max: Any = DEFAULT_RETRY_AFTER_MAX,
    *,
    type_base_key: str = "problem_type_base",
    retry_after_max_key: str = "retry_after_max",
) -> Problems:
    """Check an adapter's problem settings and bundle them.

    The ``*_key`` arguments name the settings as the app spelled them
    (``JOBCREDITS_PROBLEM_TYPE_BASE``, ``JOBCREDITS["RETRY_AFTER_MAX"]``) in
    the :class:`~jobcredits_plugin.ConfigurationError` a bad value raises.
    ``retry_after_max`` also takes a string of digits (a setting read from
    the environment).
    """
    return Problems(
        type_base=check_type_base(type_base, type_base_key),
        retry_after_max=check_retry_after_max(retry_after_max, retry_after_max_key),
    )


def check_type_base(value: Any, key: str = "problem_type_base") -> str | None:
    """None or ``about:blank`` for about:blank, else a URI prefix of printable
    ASCII without spaces (it is sent to every client of the app)."""
    if value is None or value == "" or value == ABOUT_BLANK:
        return None
    if not isinstance(value, str):
        raise ConfigurationError(
            f"{key} must be a string (a URI prefix), not {type(value).__name__}"
        )
    if len(value) > _TYPE_BASE_MAX or not all("!" <= c <= "~" for c in value):
        raise ConfigurationError(
            f"{key} must be a URI prefix of at most {_TYPE_BASE_MAX} printable ASCII "
            f"characters without spaces, not {value[:80]!r}"
        )
    return value


def check_retry_after_max(value: Any, key: str = "retry_after_max") -> int | None:
    """None (no cap) or a whole number of seconds from 1 to ten years; a
    string (from the environment) may say ``none`` or give the digits."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("none", "off"):
            return None
        if text.isascii() and text.isdigit():
            value = int(text)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SECONDS:
        raise ConfigurationError(
            f"{key} must be a whole number of seconds from 1 to {int(MAX_SECONDS)} "
            f"(or None for no cap), not {value!r}"
        )
    return value


def render_problem(
    err: JobCreditsError,
    instance: str | None = None,
    settings: Problems | None = None,
) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers and body of the answer to ``err``, and a log line for a 5xx.

    A 5xx answer tells the client only a generic sentence (its detail would
    name a store's URL, host, user and database, or echo a driver), so the
    full detail is logged here, once per answer: WARNING for a 503 (the store
    was out of reach: an outage to watch, retried by the client), ERROR for
    any other 5xx (a bug or a misconfiguration to fix). Every adapter renders
    through this function.
    """
    settings = settings if settings is not None else DEFAULT_PROBLEMS
    if err.status >= 500:
        log.log(
            logging.WARNING if err.status == 503 else logging.ERROR,
            "jobcredits answered %d %s to %s: %s",
            err.status,
            err.code,
            instance or "a call",
            err.detail,
            exc_info=err if err.status != 503 else None,
        )
    return err.status, settings.headers(err), settings.body(err, instance)


def problem_body(
    err: JobCreditsError, instance: str | None = None, settings: Problems | None = None
) -> bytes:
    """The problem+json body for an error, as bytes ready to send (logs
    nothing: adapters answer through :func:`render_problem`)."""
    return (settings or DEFAULT_PROBLEMS).body(err, instance)


def problem_headers(
    err: JobCreditsError, settings: Problems | None = None
) -> list[tuple[str, str]]:
    """Content-Type plus the error's own headers (``Retry-After``)."""
    return (settings or DEFAULT_PROBLEMS).headers(err)


@attrs.define(slots=True)
class JobCall:
    """One HTTP call's charge, from the claim to the confirm or refund.

    ``charge`` is None when the store was down and ``fail_open`` let the call
    through uncharged. ``minted`` says the job id was generated because the
    client sent none (it is echoed in the job header so the client can reuse
    it for the job's next calls).
    """

    ledger: Ledger
    charge: Charge | None
    job_id: str
    minted: bool
    refunded: bool = False
    finished: bool = False
    #: The balance read again after a confirm that missed (the charge was
    #: refunded meanwhile, and other charges may have moved the balance).
    fresh_balance: int | None = None

    @property
    def outcome(self) -> str | None:
        """``charged``, ``reused``, ``refunded``, or None (failed open)."""
        if self.charge is None:
            return None
        if self.refunded:
            return "refunded"
        return self.charge.outcome

    @property
    def balance(self) -> int | None:
        """Credits left as far as this call knows (None when balances are off)."""
        if self.charge is None or self.charge.balance is None:
            return None
        if self.fresh_balance is not None:
            return self.fresh_balance
        if self.refunded:
            return self.charge.balance + self.charge.record.debited
        return self.charge.balance

    def headers(self, job_header: str = DEFAULT_JOB_HEADER) -> list[tuple[str, str]]:
        """The headers that tell the client what this call cost."""
        out = [(job_header, self.job_id)]
        outcome = self.outcome
        if outcome is not None:
            out.append((JOB_CHARGE_HEADER, outcome))
        balance = self.balance
        if balance is not None:
            out.append((CREDITS_HEADER, str(balance)))
        return out

    def _missed(self, settled: str | None) -> bool:
        """Record how the call was settled; True when the balance must be read
        again: the confirm missed, so the charge was refunded by another
        caller (a takeover may have charged anew since)."""
        self.refunded = settled in ("refunded", "missed")
        return settled == "missed" and self.charge is not None and self.charge.balance is not None

    def finish(self, status: int | None) -> None:
        """Confirm or refund by the call's outcome (see :func:`is_failure`).

        Idempotent, so an adapter may call it from both its response path and
        its error path without a double refund.
        """
        if self.finished:
            return
        self.finished = True
        if self._missed(finish(self.ledger, self.charge, ok=not is_failure(status))):
            assert self.charge is not None
            with contextlib.suppress(StoreUnavailable):
                self.fresh_balance = self.ledger.balance(self.charge.record.account)

    async def afinish(self, status: int | None) -> None:
        """Async twin of :meth:`finish`."""
        if self.finished:
            return
        self.finished = True
        if self._missed(await afinish(self.ledger, self.charge, ok=not is_failure(status))):
            assert self.charge is not None
            with contextlib.suppress(StoreUnavailable):
                self.fresh_balance = await self.ledger.abalance(self.charge.record.account)


def start_call(
    ledger: Ledger,
    *,
    account: str | None,
    job_id: str | None,
    scope: str = "default",
    cost: int = 1,
    tier: str | None = None,
    backend: str | None = None,
    on_missing: str = "charge",
    fail_open: bool = False,
    account_source: AccountSource = "client",
) -> JobCall:
    """Charge one HTTP call. Raises the :class:`JobCreditsError` to answer with.

    ``account_source`` says where ``account`` came from (see
    :func:`~jobcredits_plugin._decorator.account_source`): ``"app"`` makes an
    invalid one the app's :class:`ConfigurationError` (500) instead of the
    client's 400."""
    acct, jid, minted = identify(account, job_id, on_missing, ledger, scope, account_source)
    charge = begin(
        ledger, acct, jid, scope=scope, cost=cost, tier=tier, backend=backend, fail_open=fail_open
    )
    return JobCall(ledger, charge, jid, minted)


async def astart_call(
    ledger: Ledger,
    *,
    account: str | None,
    job_id: str | None,
    scope: str = "default",
    cost: int = 1,
    tier: str | None = None,
    backend: str | None = None,
    on_missing: str = "charge",
    fail_open: bool = False,
    account_source: AccountSource = "client",
) -> JobCall:
    """Async twin of :func:`start_call`."""
    acct, jid, minted = identify(account, job_id, on_missing, ledger, scope, account_source)
    charge = await abegin(
        ledger, acct, jid, scope=scope, cost=cost, tier=tier, backend=backend, fail_open=fail_open
    )
    return JobCall(ledger, charge, jid, minted)


@contextlib.contextmanager
def bound(call: JobCall) -> Iterator[JobCall]:
    """Make ``call.charge`` what :func:`jobcredits_plugin.current_charge`
    returns while the handler runs (a ContextVar, so it is per request in
    threaded and async servers alike)."""
    token = _current.set(call.charge)
    try:
        yield call
    finally:
        _current.reset(token)


def bind(call: JobCall) -> None:
    """Set the current charge for the rest of this context, for adapters whose
    handler runs in a context of its own (a copied one) where nothing must be
    reset afterwards."""
    _current.set(call.charge)


@contextlib.contextmanager
def isolated() -> Iterator[None]:
    """Undo, when the block ends, whatever the code inside it bound with
    :func:`bind`.

    For adapters whose charge is made deep inside the app (a FastAPI
    dependency binds it in the request's context and cannot reset it there).
    A server gives each request a context of its own, but an in-process
    transport (httpx's ``ASGITransport``, a test client) runs the request in
    the caller's context, where the charge would otherwise outlive the request.
    """
    token = _current.set(None)
    try:
        yield
    finally:
        _current.reset(token)


async def afinish_raised(call: JobCall, exc: BaseException) -> None:
    """Settle a call whose handler raised before its response's first byte: refund.

    A cancellation (any BaseException that is not an Exception) is settled
    with the blocking twin, which has no await to interrupt: anyio and trio
    deliver a cancellation again at every await inside a cancelled scope, so
    an awaited refund could be cut short, leaving the charge pending until its
    lease ran out and, for a store run in a thread, without its refund hook.
    """
    if isinstance(exc, Exception):
        await call.afinish(None)
    else:
        call.finish(None)


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
            await afinish_raised(call, exc)  # a no-op after the first byte
            raise
        await call.afinish(self._status)

    def close(self) -> None:
        close_then_settle(self._body, self._call)


@configuration()
def check_options(
    *,
    scope: Any = "default",
    cost: Any = 1,
    tier: Any = None,
    backend: Any = None,
    on_missing: Any = None,
) -> None:
    """Check a decorator's, dependency's or route's fixed options when the app
    is defined: left to the first request, a typo would answer every client
    400 instead of failing the deploy. Callables can only be checked per
    request, so they pass."""
    check_scope(scope)
    if not callable(cost):
        check_cost(cost)
    for label, value in (("tier", tier), ("backend", backend)):
        if not callable(value):
            check_label(label, value)
    if on_missing is not None:
        check_on_missing(on_missing)


# -- one route's options: a decorator's, a dependency's, a middleware route's ---------

#: One reader per header name for every adapter: the same few names are read
#: on every request, and building a reader checks the name once.
_cached_reader = functools.lru_cache(maxsize=256)(header)


def reader(name: Any) -> Callable[..., str | None]:
    """The job id reader of a header name (the name checked when it is built).

    Only a str reaches the cache: a list from a settings file would make the
    cache raise a bare TypeError ("unhashable") instead of the header check's
    own :class:`~jobcredits_plugin.ConfigurationError`."""
    return _cached_reader(name) if isinstance(name, str) else header(name)


async def app_account(account_of: Callable[..., Any], request: Any) -> Any:
    """What the app's account callable returns for ``request``, awaited when
    the callable is async (the async adapters accept both kinds)."""
    account = account_of(request)
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

    def job_header(self, defaults: Defaults) -> str:
        return self.header or defaults.job_header

    def charge_args(
        self, defaults: Defaults, request: Any, account_of: Callable[..., Any]
    ) -> dict[str, Any]:
        """What :func:`start_call` needs besides the ledger and the account,
        for ``request``; ``account_of`` is the account callable in use (its
        kind decides whose mistake a bad account is)."""
        return {
            "job_id": reader(self.job_header(defaults))(request),
            "scope": self.scope,
            "cost": resolve(self.cost, request, what="cost"),
            "tier": resolve(self.tier, request, what="tier"),
            "backend": resolve(self.backend, request, what="backend"),
            "on_missing": self.on_missing or defaults.on_missing,
            "fail_open": defaults.fail_open if self.fail_open is None else self.fail_open,
            "account_source": account_source(account_of),
        }


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


# -- routes, for the middleware ----------------------------------------------------

_ROUTE_KEY = re.compile(r"^(?:(?P<methods>[A-Z]+(?:\|[A-Z]+)*)\s+)?(?P<path>/\S*)$")


@attrs.frozen
class Route:
    """Which requests a middleware charges, and how.

    ``path`` is an exact path or a shell-style pattern (``/v1/jobs/*``);
    ``methods`` None means every method. ``cost``, ``tier`` and ``backend`` are
    values or callables of the request (the WSGI environ or the ASGI scope).
    ``header`` overrides the middleware's job header for this route.
    """

    path: str
    methods: frozenset[str] | None = None
    scope: str = "default"
    cost: int | Callable[..., int] = 1
    tier: str | Callable[..., str | None] | None = None
    backend: str | Callable[..., str | None] | None = None
    on_missing: str | None = None
    header: str | None = None

    def matches(self, method: str, path: str) -> bool:
        if self.methods is not None and method.upper() not in self.methods:
            return False
        if any(c in self.path for c in "*?["):
            return fnmatch.fnmatchcase(path, self.path)
        return path == self.path


_ROUTE_OPTIONS = {"scope", "cost", "tier", "backend", "on_missing", "header"}


@configuration()
def compile_routes(
    routes: Mapping[str, Any] | Sequence[Route],
) -> tuple[Route, ...]:
    """Turn the middleware's ``routes=`` into :class:`Route` objects.

    Accepts a sequence of routes, or a mapping from ``"[METHOD[|METHOD]] /path"``
    to a cost (int), a dict of route options, or a :class:`Route`::

        {"POST /v1/summarize": {"scope": "summarize", "cost": 2},
         "/v1/transcribe": 1,
         "GET|POST /v1/jobs/*": {"scope": "jobs"}}

    Checked at startup, so a typo fails the deploy, not the first request.
    """
    if not isinstance(routes, Mapping):
        given: Any = routes  # whatever the app passed, typed or not
        if isinstance(given, (str, bytes)) or not isinstance(given, Iterable):
            raise InvalidArgument(
                f"routes must be a dict or a list of Route objects, not {type(given).__name__}"
            )
        out = tuple(given)
        for r in out:
            if not isinstance(r, Route):
                raise InvalidArgument(f"routes must be Route objects, not {type(r).__name__}")
        return out
    compiled: list[Route] = []
    for key, spec in routes.items():
        m = _ROUTE_KEY.match(key.strip()) if isinstance(key, str) else None
        if m is None:
            raise InvalidArgument(
                f"route {key!r} must look like '/path' or 'POST /path' or 'GET|POST /path/*'"
            )
        methods = frozenset(m["methods"].split("|")) if m["methods"] else None
        if isinstance(spec, Route):
            compiled.append(attrs.evolve(spec, path=m["path"], methods=methods or spec.methods))
            continue
        if isinstance(spec, int) and not isinstance(spec, bool):
            options: dict[str, Any] = {"cost": spec}
        elif isinstance(spec, Mapping):
            unknown = set(spec) - _ROUTE_OPTIONS
            if unknown:
                raise InvalidArgument(
                    f"route {key!r}: unknown option(s) {sorted(unknown)}; "
                    f"accepted: {sorted(_ROUTE_OPTIONS)}"
                )
            options = dict(spec)
        else:
            raise InvalidArgument(f"route {key!r}: give a cost (int), a dict of options or a Route")
        check_options(**{k: v for k, v in options.items() if k != "header"})
        compiled.append(Route(path=m["path"], methods=methods, **options))
    return tuple(compiled)


AppT = TypeVar("AppT")


class RoutedMiddleware(Generic[AppT]):
    """What the WSGI and ASGI middleware share: their settings, checked once at
    startup, and the per-request choice of route and charge options. They
    differ only in how a request arrives and a response leaves."""

    @configuration()
    def __init__(
        self,
        app: AppT,
        ledger: Ledger,
        routes: Mapping[str, Any] | Sequence[Route],
        *,
        account: Callable[..., Any],
        job_header: str,
        on_missing: str,
        fail_open: bool,
        request_kind: str,
        problem_type_base: Any = None,
        retry_after_max: Any = DEFAULT_RETRY_AFTER_MAX,
    ) -> None:
        if not isinstance(ledger, Ledger):
            raise InvalidArgument(f"ledger must be a Ledger, not {type(ledger).__name__}")
        if not callable(account):
            raise InvalidArgument(f"account must be a callable of the {request_kind}")
        # Imported here: the settings model builds on this module.
        from ._settings import Settings

        settings = Settings.from_keywords(
            type(self).__name__,
            job_header=job_header,
            on_missing=on_missing,
            fail_open=fail_open,
            problem_type_base=problem_type_base,
            retry_after_max=retry_after_max,
        )
        self.app = app
        self.ledger = ledger
        self.routes = compile_routes(routes)
        for route in self.routes:
            if route.on_missing is not None:
                check_on_missing(route.on_missing)
        self.account = account
        self.job_header = settings.job_header
        self.on_missing = settings.on_missing
        self.fail_open = settings.fail_open
        self.problems = settings.problems
        for route in self.routes:
            if route.header is not None:
                reader(route.header)
        self._options = tuple(
            (
                route,
                Options(
                    scope=route.scope,
                    cost=route.cost,
                    tier=route.tier,
                    backend=route.backend,
                    on_missing=route.on_missing,
                    header=route.header,
                ),
            )
            for route in self.routes
        )
        if is_in_process_default(ledger.store):
            warn_in_process(
                f"{type(self).__module__}.{type(self).__name__}",
                "build its ledger with Ledger.from_url(url)",
            )

    def _render(self, err: JobCreditsError, path: str) -> tuple[int, list[tuple[str, str]], bytes]:
        """Status, headers (Content-Length included) and body of an error's answer."""
        status, headers, body = render_problem(err, path, self.problems)
        return status, [*headers, ("Content-Length", str(len(body)))], body

    def _route(self, method: str, path: str) -> Options | None:
        """The options of the route a request falls under (the first that
        matches), or None for a request to pass through untouched."""
        for route, options in self._options:
            if route.matches(method, path):
                return options
        return None
