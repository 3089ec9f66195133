"""Wrapping a callable so that each call is charged per job.

The web adapters are built from the same three steps this module exposes
privately (:func:`begin`, :func:`finish` and their async twins): find the
account and the job id, charge, run, then confirm or refund. Keeping those
steps here is what keeps the adapters thin and every framework's behaviour the
same.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from typing import Any, Literal, ParamSpec, TypeVar, cast

from ._errors import (
    ConfigurationError,
    InvalidArgument,
    JobCreditsError,
    MissingJobId,
    NotAuthenticated,
    StoreUnavailable,
)
from ._ledger import Ledger
from ._records import Charge, JobRecord
from ._validation import (
    check_account,
    check_cost,
    check_flag,
    check_label,
    check_scope,
    configuration,
    configuring,
)

__all__ = ["charges_credit", "current_charge", "header"]

log = logging.getLogger("jobcredits_plugin")

P = ParamSpec("P")
R = TypeVar("R")

OnMissing = Literal["charge", "reject"]

#: An HTTP field name is a token (RFC 9110 §5.1, §5.6.2): anything else can
#: never arrive as a header, and a non-latin-1 one would not even encode.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")

_current: ContextVar[Charge | None] = ContextVar("jobcredits_current_charge", default=None)


def current_charge() -> Charge | None:
    """The :class:`Charge` of the call being handled, or None outside one (or
    when the store was down and the call was let through with ``fail_open``)."""
    return _current.get()


#: Where an account came from: ``"client"`` (read from the request by a
#: :func:`header` reader: a bad value is the client's 400) or ``"app"`` (the
#: app's own callable computed it: a bad value is the app's bug, a 500).
AccountSource = Literal["client", "app"]


def account_source(fn: Any) -> AccountSource:
    """Where the values of an ``account`` callable come from: ``"client"``
    for a :func:`header` reader, ``"app"`` for any other callable."""
    return "client" if getattr(fn, "jobcredits_header", None) is not None else "app"


def _show(value: Any) -> str:
    text = repr(value)
    return (text[:60] + "…" if len(text) > 60 else text) + f" ({type(value).__name__})"


def app_value(what: str, check: Callable[[Any], Any], value: Any) -> Any:
    """``value``, which the app's ``what`` (an account or cost callable)
    returned, if ``check`` passes it. If not, the app has a bug, not the
    client: :class:`ConfigurationError` (answered 500 and logged in full),
    never the 400 that would tell the client to fix its request."""
    try:
        check(value)
    except InvalidArgument as exc:
        raise ConfigurationError(
            f"the app's {what} returned {_show(value)}, which it must not: {exc.detail} "
            f"(a bug in the app's {what}, not in the client's request)"
        ) from exc
    return value


def _text_or_none(name: str) -> Callable[[Any], Any]:
    """The type check of a value an app callable returns where a client may
    have had a say in its text (tier, backend, job id): None or a string; its
    text is checked later, as the client's."""

    def check(value: Any) -> Any:
        if value is not None and not isinstance(value, str):
            raise InvalidArgument(f"{name} must be a string or None, not {type(value).__name__}")
        return value

    return check


#: What each per-call option's callable must return (see :func:`app_value`).
RESULT_CHECKS: dict[str, Callable[[Any], Any]] = {
    "cost": check_cost,
    "tier": _text_or_none("tier"),
    "backend": _text_or_none("backend"),
    "job_id": _text_or_none("job id"),
}


def resolve_option(what: str, value: Any, *args: Any, **kwargs: Any) -> Any:
    """A per-call option that is a value (checked at setup) or a callable of
    the call's arguments, whose result is checked here as the app's."""
    if not callable(value):
        return value
    return app_value(f"{what} callable", RESULT_CHECKS[what], value(*args, **kwargs))


def _resolve(
    value: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any], what: str = "cost"
) -> Any:
    return resolve_option(what, value, *args, **kwargs)


def new_job_id() -> str:
    """A fresh job id for a call that sent none (``on_missing="charge"``)."""
    return str(uuid.uuid4())


def _check_on_missing(on_missing: str) -> None:
    if on_missing not in ("charge", "reject"):
        raise InvalidArgument(f'on_missing must be "charge" or "reject", not {on_missing!r}')


def identify(
    account: Any,
    job_id: Any,
    on_missing: str,
    ledger: Ledger,
    scope: Any,
    account_source: AccountSource = "client",
) -> tuple[str, str, bool]:
    """Turn what the app's callables returned into (account, job_id, minted),
    raising the error the caller must see when either is missing (and
    reporting it to the ledger's ``on_reject`` hook, as the ledger does for
    its own refusals). ``minted`` is True when the job id was generated here.

    ``account_source="app"`` says the account came from the app's own
    callable: a value that is no valid account (a number, an empty string,
    control characters) is then the app's bug, :class:`ConfigurationError`
    (500), where the same value read from the client is its 400."""
    error: JobCreditsError
    if account is not None and account_source == "app":
        try:
            app_value("account callable", check_account, account)
        except ConfigurationError as exc:
            ledger.report_rejection(exc, scope=scope)
            raise
    if account is None:
        error = NotAuthenticated("no account for this call: it must be authenticated")
    elif (job_id is None or job_id == "") and on_missing == "reject":
        error = MissingJobId("this endpoint needs a job id")
    elif job_id is None or job_id == "":
        return account, new_job_id(), True
    else:
        return account, job_id, False
    ledger.report_rejection(error, account=account, scope=scope)
    raise error


def begin(
    ledger: Ledger,
    account: Any,
    job_id: str,
    *,
    scope: str,
    cost: Any,
    tier: Any,
    backend: Any,
    fail_open: bool,
) -> Charge | None:
    """Charge one call; None when the store is down and ``fail_open`` lets the
    call through uncharged."""
    try:
        return ledger.charge(account, job_id, scope=scope, cost=cost, tier=tier, backend=backend)
    except StoreUnavailable as exc:
        if fail_open is not True:
            raise
        log.warning(
            "jobcredits store unavailable (%s); fail_open lets job %r of account %r through "
            "UNCHARGED",
            exc,
            job_id,
            account,
        )
        return None


async def abegin(
    ledger: Ledger,
    account: Any,
    job_id: str,
    *,
    scope: str,
    cost: Any,
    tier: Any,
    backend: Any,
    fail_open: bool,
) -> Charge | None:
    """Async twin of :func:`begin`."""
    try:
        return await ledger.acharge(
            account, job_id, scope=scope, cost=cost, tier=tier, backend=backend
        )
    except StoreUnavailable as exc:
        if fail_open is not True:
            raise
        log.warning(
            "jobcredits store unavailable (%s); fail_open lets job %r of account %r through "
            "UNCHARGED",
            exc,
            job_id,
            account,
        )
        return None


#: What :func:`finish` did: the charge was confirmed, or refunded by this
#: call; ``"missed"`` when the confirm found nothing to confirm (the charge
#: had been refunded meanwhile by a prune or a takeover: the call was served
#: free); None when there was nothing to do or the store failed.
Settled = Literal["confirmed", "refunded", "missed"] | None


def _confirm_missed(r: JobRecord) -> None:
    log.warning(
        "jobcredits: job %r's charge %s was refunded before its call finished (the call "
        "outlived its lease, and a prune or the job's next call settled it): the call "
        "was served free",
        r.job_id,
        r.charge_id,
    )


def finish(ledger: Ledger, charge: Charge | None, ok: bool) -> Settled:
    """Confirm (``ok``) or refund the charging call; follow-ups need neither.

    Never raises: the handler's answer is already decided. If the store fails
    here, the charge stays ``pending`` and the lease settles it later (a refund:
    the client is never charged for a call whose outcome was not recorded).

    A confirm that matches nothing means the charge is gone: the call outlived
    its lease and was refunded meanwhile (a prune, or the job's next call
    taking it over). That is reported as ``"missed"``, so that the response
    says what really happened (refunded). The refund is repeated by charge id (a no-op
    when the charge was refunded already), so that whatever made the confirm
    miss, nothing stays debited for a call answered as refunded.
    """
    if charge is None or not charge.charged:
        return None
    r = charge.record
    try:
        if ok:
            if ledger.confirm(r.account, r.job_id, scope=r.scope, charge_id=r.charge_id):
                return "confirmed"
            _confirm_missed(r)
            ledger.refund(r.account, r.job_id, scope=r.scope, charge_id=r.charge_id)
            return "missed"
        if ledger.refund(r.account, r.job_id, scope=r.scope, charge_id=r.charge_id):
            return "refunded"
        return None
    except StoreUnavailable as exc:
        log.error(
            "jobcredits could not %s job %r (%s); its lease will settle it",
            "confirm" if ok else "refund",
            r.job_id,
            exc,
        )
        return None


async def afinish(ledger: Ledger, charge: Charge | None, ok: bool) -> Settled:
    """Async twin of :func:`finish`."""
    if charge is None or not charge.charged:
        return None
    r = charge.record
    try:
        if ok:
            if await ledger.aconfirm(r.account, r.job_id, scope=r.scope, charge_id=r.charge_id):
                return "confirmed"
            _confirm_missed(r)
            await ledger.arefund(r.account, r.job_id, scope=r.scope, charge_id=r.charge_id)
            return "missed"
        if await ledger.arefund(r.account, r.job_id, scope=r.scope, charge_id=r.charge_id):
            return "refunded"
        return None
    except StoreUnavailable as exc:
        log.error(
            "jobcredits could not %s job %r (%s); its lease will settle it",
            "confirm" if ok else "refund",
            r.job_id,
            exc,
        )
        return None


@configuration()
def charges_credit(
    ledger: Ledger,
    *,
    account: Callable[..., str | None],
    job_id: Callable[..., str | None],
    scope: str = "default",
    cost: int | Callable[..., int] = 1,
    tier: str | Callable[..., str | None] | None = None,
    backend: str | Callable[..., str | None] | None = None,
    on_missing: OnMissing = "charge",
    fail_open: bool = False,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Charge every call of the decorated function per job.

    ``account`` and ``job_id`` are callables that receive the decorated
    function's own arguments and return the account (None: not authenticated,
    :class:`NotAuthenticated`) and the job id (None or empty: see
    ``on_missing``). ``cost``, ``tier`` and ``backend`` are values, or
    callables of the same arguments.

    Each call is charged (or reuses its job's charge), runs, and then its
    charge is confirmed if it returned, or refunded if it raised (any
    exception, cancellation included). Inside the call,
    :func:`current_charge` returns the :class:`Charge`.

    ``on_missing="charge"`` (the default) charges a call without a job id as a
    job of its own under a fresh id; ``"reject"`` raises :class:`MissingJobId`.
    ``fail_open=True`` lets calls through *uncharged* while the store is
    unavailable (logged); by default they get :class:`StoreUnavailable`.
    Works on sync and async functions alike.
    """
    # Every fixed option is checked here, when the app is defined: left to
    # the first call, a typo would refuse every caller (or, for a cost out of
    # range, fail on one store and not another) instead of failing the deploy.
    # These are the app's own mistakes, so ConfigurationError, not the 400
    # that describes a caller's input; callables can only be checked per call.
    if not isinstance(ledger, Ledger):
        raise ConfigurationError(f"charges_credit needs a Ledger, not {type(ledger).__name__}")
    if not callable(account) or not callable(job_id):
        raise ConfigurationError("charges_credit: account and job_id must be callables")
    with configuring("charges_credit"):
        check_flag("fail_open", fail_open)
        _check_on_missing(on_missing)
        check_scope(scope)
        if not callable(cost):
            check_cost(cost)
        for label, value in (("tier", tier), ("backend", backend)):
            if not callable(value):
                check_label(label, value)

    acct_source = account_source(account)
    job_id_source = account_source(job_id)

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        def prepare(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
            jid_value = job_id(*args, **kwargs)
            if job_id_source == "app":
                app_value("job_id callable", RESULT_CHECKS["job_id"], jid_value)
            acct, jid, _ = identify(
                account(*args, **kwargs), jid_value, on_missing, ledger, scope, acct_source
            )
            return {
                "account": acct,
                "job_id": jid,
                "scope": scope,
                "cost": _resolve(cost, args, kwargs, "cost"),
                "tier": _resolve(tier, args, kwargs, "tier"),
                "backend": _resolve(backend, args, kwargs, "backend"),
                "fail_open": fail_open,
            }

        if inspect.iscoroutinefunction(fn):
            afn = cast(Callable[..., Awaitable[Any]], fn)

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                params = prepare(args, kwargs)
                acct, jid = params.pop("account"), params.pop("job_id")
                charge = await abegin(ledger, acct, jid, **params)
                token = _current.set(charge)
                try:
                    result = await afn(*args, **kwargs)
                except BaseException:
                    await afinish(ledger, charge, ok=False)
                    raise
                finally:
                    _current.reset(token)
                await afinish(ledger, charge, ok=True)
                return result

            return cast(Callable[P, R], async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            params = prepare(args, kwargs)
            acct, jid = params.pop("account"), params.pop("job_id")
            charge = begin(ledger, acct, jid, **params)
            token = _current.set(charge)
            try:
                result = fn(*args, **kwargs)
            except BaseException:
                finish(ledger, charge, ok=False)
                raise
            finally:
                _current.reset(token)
            finish(ledger, charge, ok=True)
            return result

        return wrapper

    return decorate


@configuration()
def header(name: str) -> Callable[..., str | None]:
    """A callable that reads header ``name`` from a request, for the ``account=``
    or ``job_id=`` of a decorator.

    It understands a Flask/Werkzeug, Django or Starlette request (anything
    with a case-insensitive ``.headers``), a Django ``request.META``, a WSGI
    environ and an ASGI scope, taken from the first positional argument (or a
    ``request`` keyword). Returns None when the header is absent or blank.

    Reading the *account* from a header trusts whoever set it: do that only
    behind a proxy that authenticates the caller and overwrites the header.
    """
    if not isinstance(name, str) or _TOKEN.fullmatch(name) is None:
        raise InvalidArgument(f"header name must be a non-empty token, not {name!r}")
    lower = name.lower()
    raw = lower.encode("latin-1")
    meta_key = "HTTP_" + name.upper().replace("-", "_")
    if meta_key in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
        meta_key = meta_key[5:]

    def read(*args: Any, **kwargs: Any) -> str | None:
        request = args[0] if args else kwargs.get("request")
        value: Any = None
        if isinstance(request, Mapping):
            if "type" in request and "headers" in request:  # ASGI scope
                for k, v in request["headers"]:
                    if k.lower() == raw:
                        value = v.decode("latin-1")
                        break
            else:  # WSGI environ
                value = request.get(meta_key)
        elif request is not None:
            headers = getattr(request, "headers", None)
            if headers is not None and hasattr(headers, "get"):
                value = headers.get(name)
            else:
                meta = getattr(request, "META", None)
                if isinstance(meta, Mapping):
                    value = meta.get(meta_key)
        if value is None:
            return None
        value = str(value).strip()
        return value or None

    # Marks a reader of client input (see account_source).
    read.jobcredits_header = name  # type: ignore[attr-defined]
    read.__name__ = f"header_{lower.replace('-', '_')}"
    read.__qualname__ = read.__name__
    return read
