"""``@charges_credit`` for Django views: sync, async and class-based.

The decorator only translates between Django and :mod:`jobcredits_plugin._web`,
which holds every billing decision: it reads the account and the job id from
the request, lets ``_web`` charge, runs the view, hands ``_web`` the status
that decides between confirm and refund, and copies ``_web``'s headers onto
the response. What is Django's own is which exceptions are a client's
mistake: Django turns ``Http404``, ``PermissionDenied``, ``BadRequest``,
``SuspiciousOperation`` and ``MultiPartParserError`` into 4xx pages, so a
view raising them served the client, and the charge is confirmed.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar, cast

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.core.exceptions import (  # type: ignore[import-untyped]
    BadRequest,
    PermissionDenied,
    SuspiciousOperation,
)
from django.http import (  # type: ignore[import-untyped]
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
)
from django.http.multipartparser import MultiPartParserError  # type: ignore[import-untyped]

from .._call import JobCall, astart_call, bound, start_call
from .._errors import JobCreditsError
from .._ledger import Ledger
from .._problems import Problems, render_problem
from .._records import Charge
from .._validation import configuration
from .._web import (
    AsyncWatchedBody,
    Options,
    WatchedBody,
    app_account,
    route_options,
    waits_for_body,
)
from ._conf import aget_ledger, get_config, get_ledger

__all__ = ["charges_credit", "default_account"]

V = TypeVar("V", bound=Callable[..., Any])

#: The exceptions Django answers with a 4xx page (django.core.handlers.exception).
_CLIENT_ERRORS: tuple[tuple[type[BaseException], int], ...] = (
    (Http404, 404),
    (PermissionDenied, 403),
    (MultiPartParserError, 400),
    (BadRequest, 400),
    (SuspiciousOperation, 400),
)


def client_error_status(exc: BaseException) -> int | None:
    """The 4xx status an exception will be answered with, or None when it is
    a failure (anything else: Django answers 500, or the call was cancelled).

    Besides Django's own, an exception with a 4xx ``status_code`` counts:
    that is how Django REST framework's ``APIException`` family (and other
    libraries' HTTP errors) carry the status they are answered with.
    """
    for cls, status in _CLIENT_ERRORS:
        if isinstance(exc, cls):
            return status
    code = getattr(exc, "status_code", None)
    if isinstance(code, int) and not isinstance(code, bool) and 400 <= code < 500:
        return code
    return None


def _user_account(user: Any) -> str | None:
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return str(user.pk)


def default_account(request: Any) -> str | None:
    """The account when neither the decorator nor ``JOBCREDITS["ACCOUNT"]``
    names one: the authenticated user's primary key, as a string.

    Works on Django's ``HttpRequest`` (``request.user`` from the
    ``AuthenticationMiddleware``) and on a Django REST framework ``Request``,
    whose ``.user`` is the one DRF's authentication classes found. An
    anonymous user, or no ``request.user`` at all, gives None: answered 401.
    """
    return _user_account(getattr(request, "user", None))


async def adefault_account(request: Any) -> str | None:
    """:func:`default_account` for async views, which must not touch the
    database from the event loop: ``await request.auser()`` (Django 5.0+),
    else ``request.user`` read in a worker thread."""
    auser = getattr(request, "auser", None) if isinstance(request, HttpRequest) else None
    if auser is not None:
        return _user_account(await auser())
    return await sync_to_async(default_account)(request)


def problem_response(
    err: JobCreditsError, request: Any, settings: Problems | None = None
) -> HttpResponse:
    """The ``application/problem+json`` answer for an error (RFC 9457), with
    ``Retry-After`` where the error has one, rendered as
    ``JOBCREDITS["PROBLEM_TYPE_BASE"]`` and ``JOBCREDITS["RETRY_AFTER_MAX"]``
    say (a 5xx tells the client a generic sentence and logs the detail)."""
    if settings is None:
        settings = get_config().problems
    status, headers, body = render_problem(err, getattr(request, "path", None), settings)
    response = HttpResponse(body)
    response.status_code = status
    for name, value in headers:
        response[name] = value
    return response


def _require_request(request: Any, view: Callable[..., Any]) -> None:
    # Decorating a method directly passes `self` where the request belongs;
    # say what to do instead of failing later on a missing attribute.
    if not hasattr(request, "META"):
        raise TypeError(
            f"{getattr(view, '__qualname__', view)!r} got {type(request).__name__} where "
            "charges_credit expects the request; on a method of a class-based view use "
            "django.utils.decorators.method_decorator(charges_credit(...), name='post')"
        )


def _attach(request: Any, charge: Charge | None) -> None:
    """Expose the charge as ``request.job_credit``; on a DRF ``Request``
    also on the ``HttpRequest`` it wraps, so code that sees either finds it."""
    request.job_credit = charge
    inner = getattr(request, "_request", None)
    if isinstance(inner, HttpRequest):
        inner.job_credit = charge


def _status(response: Any) -> int | None:
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def _watch_stream(request: Any, response: Any, call: JobCall) -> bool:
    """A streaming response (``StreamingHttpResponse``, ``FileResponse``) is
    settled at its body's first byte (see
    :class:`~jobcredits_plugin._web.WatchedBody`): True when its content is
    now watched, False when the call must be settled now."""
    status = _status(response)
    if not getattr(response, "streaming", False) or not waits_for_body(
        getattr(request, "method", None), status
    ):
        return False
    assert status is not None
    watched = AsyncWatchedBody if getattr(response, "is_async", False) else WatchedBody
    response.streaming_content = watched(response.streaming_content, call, status)
    return True


def _add_headers(response: Any, call: JobCall, job_header: str) -> None:
    if isinstance(response, HttpResponseBase):
        for name, value in call.headers(job_header):
            response[name] = value


async def _afinish_raised(call: JobCall, exc: BaseException) -> None:
    """Settle an async view that raised: confirm a client error, else refund
    the way every async adapter does (a cancellation without an await)."""
    status = client_error_status(exc)
    if status is None:
        await call.afinish_raised(exc)
    else:
        await call.afinish(status)


async def _settle_async(
    run: Callable[[], Awaitable[Any]], request: Any, call: JobCall, job_header: str
) -> Any:
    """Run an async view (``run`` calls it) and settle its charge by what it
    answered or raised; a cancellation refunds."""
    with bound(call):
        try:
            response = await run()
        except BaseException as exc:  # cancellation included: it refunds
            await _afinish_raised(call, exc)
            raise
    if not _watch_stream(request, response, call):
        await call.afinish(_status(response))
    _add_headers(response, call, job_header)
    return response


def _settle_later(pending: Awaitable[Any], request: Any, call: JobCall, job_header: str) -> Any:
    """Finish a sync-wrapped call whose view returned a coroutine (a sync
    function handing over to an async one, which Django then awaits). The
    charge was taken synchronously; the confirm or refund waits for the real
    response, since the coroutine object says nothing about success."""
    return _settle_async(lambda: pending, request, call, job_header)


def _is_async_class_view(view: Callable[..., Any]) -> bool:
    """Whether ``view`` is the bound ``dispatch`` (or handler) of an async
    class-based view, as ``method_decorator`` hands it over: a partial of a
    bound method. Its ``dispatch`` is a sync method returning a coroutine,
    and Django awaits whatever it returns, so it takes the async path."""
    bound_method = getattr(view, "func", view)
    owner = getattr(bound_method, "__self__", None)
    return owner is not None and bool(getattr(type(owner), "view_is_async", False))


def _sync_view(view: Callable[..., Any], opts: Options) -> Callable[..., Any]:
    @functools.wraps(view)
    def wrapper(request: Any, *args: Any, **kwargs: Any) -> Any:
        _require_request(request, view)
        config = get_config()
        job_header = opts.job_header(config)
        try:
            account_of = opts.account or config.account or default_account
            account = account_of(request)
            ledger = opts.ledger if opts.ledger is not None else get_ledger()
            call = start_call(ledger, account, opts.call_spec(config, request, account_of))
        except JobCreditsError as err:
            return problem_response(err, request, config.problems)
        _attach(request, call.charge)
        with bound(call):
            try:
                response = view(request, *args, **kwargs)
            except BaseException as exc:
                call.finish(client_error_status(exc))
                raise
        if inspect.isawaitable(response):
            return _settle_later(response, request, call, job_header)
        if not _watch_stream(request, response, call):
            call.finish(_status(response))
        _add_headers(response, call, job_header)
        return response

    return wrapper


def _async_view(view: Callable[..., Awaitable[Any]], opts: Options) -> Callable[..., Any]:
    @functools.wraps(view)
    async def wrapper(request: Any, *args: Any, **kwargs: Any) -> Any:
        _require_request(request, view)
        config = get_config()
        job_header = opts.job_header(config)
        try:
            account_of = opts.account or config.account or adefault_account
            account = await app_account(account_of, request)
            ledger = opts.ledger if opts.ledger is not None else await aget_ledger()
            call = await astart_call(ledger, account, opts.call_spec(config, request, account_of))
        except JobCreditsError as err:
            return problem_response(err, request, config.problems)
        _attach(request, call.charge)
        return await _settle_async(
            lambda: view(request, *args, **kwargs), request, call, job_header
        )

    return wrapper


@configuration()
def charges_credit(
    cost: int | Callable[..., int] = 1,
    *,
    scope: str = "default",
    tier: str | Callable[..., str | None] | None = None,
    backend: str | Callable[..., str | None] | None = None,
    account: Callable[..., Any] | None = None,
    ledger: Ledger | None = None,
    on_missing: Literal["charge", "reject"] | None = None,
    fail_open: bool | None = None,
    header: str | None = None,
) -> Callable[[V], V]:
    """Charge a Django view once per job.

    Works on sync and async function views, and on class-based views through
    ``method_decorator(charges_credit(...), name="post")`` (or
    ``name="dispatch"``). Arguments left None come from
    ``settings.JOBCREDITS`` at each request, so ``override_settings`` applies.

    :param cost: credits a new job costs; an int or a callable of the request.
    :param scope: the product whose calls share jobs (``"summarize"``).
    :param tier: recorded with the charge; a string or a callable of the request.
    :param backend: recorded with the charge; a string or a callable of the request.
    :param account: a callable of the request returning the account string, or
        None when not authenticated (401); may be async on async views.
        Default: ``JOBCREDITS["ACCOUNT"]``, else :func:`default_account`.
    :param ledger: charge this ledger instead of :func:`get_ledger`'s.
    :param on_missing: ``"charge"`` a call without a job id as a job of its
        own, or ``"reject"`` it (400). Default: ``JOBCREDITS["ON_MISSING"]``.
    :param fail_open: let calls through *uncharged* while the store is
        unreachable, instead of answering 503. Default: ``JOBCREDITS["FAIL_OPEN"]``.
    :param header: the header carrying the job id. Default:
        ``JOBCREDITS["JOB_HEADER"]`` (``X-Job-Id``).

    The view sees the :class:`~jobcredits_plugin.Charge` as
    ``request.job_credit`` and through
    :func:`~jobcredits_plugin.current_charge` (None when it failed open).
    The charge is confirmed when the view returns a response below 500 or
    raises one of Django's 4xx exceptions, and refunded when the view answers
    5xx, raises anything else, or is cancelled. A streaming response
    (``StreamingHttpResponse``, ``FileResponse``) is settled when its content
    produces its first byte: refunded if it raises (or is closed) before
    that, when the client got nothing; its headers, sent first, say
    ``charged``.
    """
    opts = route_options(
        scope=scope,
        cost=cost,
        tier=tier,
        backend=backend,
        account=account,
        ledger=ledger,
        on_missing=on_missing,
        fail_open=fail_open,
        header=header,
    )

    def decorate(view: V) -> V:
        if iscoroutinefunction(view) or _is_async_class_view(view):
            return cast(V, _async_view(view, opts))
        return cast(V, _sync_view(view, opts))

    return decorate
