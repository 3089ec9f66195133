"""Wrapping a callable so that each call is charged per job.

A thin user of :mod:`jobcredits_plugin._call`, the one call path the web
adapters take too: it finds the account and the job id among the wrapped
function's arguments, charges, runs the function, and settles by exception
(confirmed when it returned, refunded when it raised).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Literal, ParamSpec, TypeVar, cast

import attrs

from ._call import (
    RESULT_CHECKS,
    Terms,
    abegin,
    app_value,
    begin,
    bound,
    check_on_missing,
    check_options,
    current_charge,
    identify,
    resolve_option,
)
from ._errors import ConfigurationError
from ._headers import AccountSource, account_source, header
from ._ledger import Ledger
from ._validation import (
    check_flag,
    configuration,
    configuring,
)

# current_charge and header are defined in _call and _headers; they are
# importable from here too, where they used to be defined.
__all__ = ["charges_credit", "current_charge", "header"]

P = ParamSpec("P")
R = TypeVar("R")

OnMissing = Literal["charge", "reject"]


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
    # Every fixed option is checked when the app is defined (see
    # check_options); a mistake is the app's own, ConfigurationError.
    if not isinstance(ledger, Ledger):
        raise ConfigurationError(f"charges_credit needs a Ledger, not {type(ledger).__name__}")
    if not callable(account) or not callable(job_id):
        raise ConfigurationError("charges_credit: account and job_id must be callables")
    with configuring("charges_credit"):
        check_flag("fail_open", fail_open)
        check_on_missing(on_missing)  # not None: the decorator has no app setting to fall back on
        check_options(scope=scope, cost=cost, tier=tier, backend=backend)

    caller = _Caller(ledger, account, job_id, on_missing, scope, cost, tier, backend, fail_open)

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        if inspect.iscoroutinefunction(fn):
            return cast(Callable[P, R], _async_wrapper(fn, caller))
        return _wrapper(fn, caller)

    return decorate


@attrs.frozen
class _Caller:
    """How one decorated function's calls are charged: its checked options,
    and how to find a call's account, job id and terms among its arguments."""

    ledger: Ledger
    account: Callable[..., str | None]
    job_id: Callable[..., str | None]
    on_missing: str
    scope: str
    cost: Any
    tier: Any
    backend: Any
    fail_open: bool
    # Worked out once, when the function is decorated (every call needs them):
    # whose mistake a bad account or job id is, and the terms of every call
    # when no option is a callable.
    account_from: AccountSource = attrs.field(init=False)
    job_id_from: AccountSource = attrs.field(init=False)
    fixed: Terms | None = attrs.field(init=False)

    @account_from.default
    def _account_from(self) -> AccountSource:
        return account_source(self.account)

    @job_id_from.default
    def _job_id_from(self) -> AccountSource:
        return account_source(self.job_id)

    @fixed.default
    def _fixed(self) -> Terms | None:
        if any(callable(o) for o in (self.cost, self.tier, self.backend)):
            return None
        return Terms(self.scope, self.cost, self.tier, self.backend, self.fail_open)

    def prepare(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, str, Terms]:
        """The account, the job id and the terms of one call. Identified
        before the options are resolved: a call with no account is refused
        before the app's cost callable runs."""
        jid_value = self.job_id(*args, **kwargs)
        if self.job_id_from == "app":
            app_value("job_id callable", RESULT_CHECKS["job_id"], jid_value)
        account, source = self.account(*args, **kwargs), self.account_from
        acct, jid, _ = identify(
            account, jid_value, self.on_missing, self.ledger, self.scope, source
        )
        terms = self.fixed or Terms(
            scope=self.scope,
            cost=resolve_option("cost", self.cost, *args, **kwargs),
            tier=resolve_option("tier", self.tier, *args, **kwargs),
            backend=resolve_option("backend", self.backend, *args, **kwargs),
            fail_open=self.fail_open,
        )
        return acct, jid, terms


def _wrapper(fn: Callable[P, R], caller: _Caller) -> Callable[P, R]:
    """``fn`` charged: confirmed when it returns, refunded when it raises."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        call = begin(caller.ledger, *caller.prepare(args, kwargs))
        with bound(call):
            try:
                result = fn(*args, **kwargs)
            except BaseException:
                call.settle(ok=False)
                raise
        call.settle(ok=True)
        return result

    return wrapper


def _async_wrapper(fn: Callable[..., Awaitable[Any]], caller: _Caller) -> Callable[..., Any]:
    """:func:`_wrapper` for a coroutine function (a cancellation refunds too)."""

    @functools.wraps(fn)
    async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
        call = await abegin(caller.ledger, *caller.prepare(args, kwargs))
        with bound(call):
            try:
                result = await fn(*args, **kwargs)
            except BaseException:
                await call.asettle(ok=False)
                raise
        await call.asettle(ok=True)
        return result

    return async_wrapper
