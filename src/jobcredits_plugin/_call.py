"""One call's trip through the ledger: identify, begin, finish.

Every way into the ledger from application code goes through here, once:
the core decorator (:func:`~jobcredits_plugin.charges_credit`) and every web
adapter (Flask, Django, FastAPI, the WSGI and ASGI middleware).

1. **identify**: turn what the app's callables returned into the account
   and the job id, or the error the caller must see (no account: 401; no
   job id: a fresh one, or 400 with ``on_missing="reject"``);
2. **begin**: charge the call (:func:`begin`), or let it through uncharged
   when the store is down and the app chose ``fail_open``; the result is a
   :class:`JobCall`, which :func:`bound` makes the
   :func:`current_charge` while the handler runs;
3. **finish**: confirm the charging call when it was served, refund it when
   it failed (:meth:`JobCall.settle`). The decorator knows the outcome by
   exception (it returned or raised); a web adapter by the answer's status
   (:meth:`JobCall.finish`, see :func:`is_failure`), and it sends
   :meth:`JobCall.headers` to tell the client what the call cost.

The confirm-or-refund decision is written once (:func:`settle_outcome`) and
asked by a blocking and an awaiting runner, so the sync and async paths
can never disagree about what a call is charged.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from contextvars import ContextVar, Token
from typing import Any, Literal

import attrs

from ._errors import (
    ConfigurationError,
    InvalidArgument,
    JobCreditsError,
    MissingJobId,
    NotAuthenticated,
    StoreUnavailable,
)
from ._headers import AccountSource
from ._ledger import Ledger
from ._records import Charge, JobRecord
from ._validation import check_account, check_cost, check_label, check_scope

__all__ = [
    "CREDITS_HEADER",
    "DEFAULT_JOB_HEADER",
    "JOB_CHARGE_HEADER",
    "RESULT_CHECKS",
    "CallSpec",
    "JobCall",
    "Settled",
    "Terms",
    "abegin",
    "app_value",
    "astart_call",
    "begin",
    "bind_charge",
    "bound",
    "check_on_missing",
    "check_options",
    "current_charge",
    "identify",
    "is_failure",
    "isolate",
    "new_job_id",
    "resolve_option",
    "restore",
    "settle_outcome",
    "start_call",
]

log = logging.getLogger("jobcredits_plugin")

DEFAULT_JOB_HEADER = "X-Job-Id"
JOB_CHARGE_HEADER = "X-Job-Charge"
CREDITS_HEADER = "X-Credits-Remaining"
_RAW_CHARGE_HEADER = JOB_CHARGE_HEADER.lower().encode("latin-1")
_RAW_CREDITS_HEADER = CREDITS_HEADER.lower().encode("latin-1")

# -- the current charge ------------------------------------------------------------

_current: ContextVar[Charge | None] = ContextVar("jobcredits_current_charge", default=None)


def current_charge() -> Charge | None:
    """The :class:`Charge` of the call being handled, or None outside one (or
    when the store was down and the call was let through with ``fail_open``)."""
    return _current.get()


class bound:  # lower case: it reads as a function, `with bound(call):`
    """Make ``call.charge`` what :func:`current_charge` returns while the
    handler runs (a ContextVar, so it is per request in threaded and async
    servers alike).

    A class rather than a ``@contextmanager`` generator: it is on the path of
    every charged call, and this is several times cheaper."""

    __slots__ = ("_call", "_token")

    def __init__(self, call: JobCall) -> None:
        self._call = call

    def __enter__(self) -> JobCall:
        self._token = _current.set(self._call.charge)
        return self._call

    def __exit__(self, *exc_info: object) -> None:
        _current.reset(self._token)


# For an adapter whose charge is made deep inside the app, in a context it
# cannot reset afterwards: a FastAPI dependency binds the charge where the
# endpoint will run, and the middleware around the request undoes it. A
# server gives each request a context of its own, but an in-process transport
# (httpx's ``ASGITransport``, a test client) runs the request in the caller's
# context, where the charge would otherwise outlive the request. The
# ContextVar's own methods, without a Python frame in between: they are on
# the path of every request.

#: ``bind_charge(call.charge)``: make it what :func:`current_charge` returns
#: for the rest of this context.
bind_charge: Callable[[Charge | None], Token[Charge | None]] = _current.set
#: ``token = isolate()``: no current charge from here on; ``restore(token)``
#: undoes that and whatever :data:`bind_charge` did since, in the same context.
isolate: Callable[[], Token[Charge | None]] = functools.partial(_current.set, None)
restore: Callable[[Token[Charge | None]], None] = _current.reset


# -- identify: what the app's callables returned --------------------------------------


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


def new_job_id() -> str:
    """A fresh job id for a call that sent none (``on_missing="charge"``)."""
    return str(uuid.uuid4())


def check_on_missing(on_missing: str) -> None:
    """``on_missing`` is ``"charge"`` or ``"reject"``."""
    if on_missing not in ("charge", "reject"):
        raise InvalidArgument(f'on_missing must be "charge" or "reject", not {on_missing!r}')


def check_options(
    *,
    scope: Any = "default",
    cost: Any = 1,
    tier: Any = None,
    backend: Any = None,
    on_missing: Any = None,
) -> None:
    """Check the fixed options of a decorator, dependency or route when the
    app is defined: left to the first call, a typo would refuse every caller
    (or, for a cost out of range, fail on one store and not another) instead
    of failing the deploy. Callables can only be checked per call, so they
    pass. Raises :class:`InvalidArgument`: call it inside
    :func:`~jobcredits_plugin._validation.configuring`, which makes that the
    app's :class:`ConfigurationError`."""
    check_scope(scope)
    if not callable(cost):
        check_cost(cost)
    for label, value in (("tier", tier), ("backend", backend)):
        if not callable(value):
            check_label(label, value)
    if on_missing is not None:
        check_on_missing(on_missing)


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
            try:
                check_account(account)
            except InvalidArgument:  # the app's bug: app_value says so
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


# -- begin: charge one call ---------------------------------------------------------


@attrs.frozen
class Terms:
    """What one call is charged, and whether it may pass uncharged while the
    store is down: the options a decorator, dependency or route gave, with
    any callable among them already resolved for this call."""

    scope: str = "default"
    cost: int = 1
    tier: str | None = None
    backend: str | None = None
    fail_open: bool = False


@attrs.define(slots=True)
class CallSpec:
    """One web call as its adapter read it, before :func:`identify`: the job
    id as sent (None: none), the charge's :class:`Terms`, what to do without
    a job id, and whose mistake a bad account is (see
    :func:`~jobcredits_plugin._headers.account_source`).

    Read-only by contract, not frozen by attrs: one is built for every web
    call (see :class:`~jobcredits_plugin.stores.ClaimRequest` for the cost)."""

    job_id: str | None
    terms: Terms = Terms()
    on_missing: str = "charge"
    account_source: AccountSource = "client"


def _fail_open(exc: StoreUnavailable, terms: Terms, account: str, job_id: str) -> None:
    """The store was out of reach for a charge: raise, unless the app chose
    to let calls through uncharged (then say so, loudly)."""
    if terms.fail_open is not True:
        raise exc
    log.warning(
        "jobcredits store unavailable (%s); fail_open lets job %r of account %r through UNCHARGED",
        exc,
        job_id,
        account,
    )


def begin(
    ledger: Ledger, account: str, job_id: str, terms: Terms, *, minted: bool = False
) -> JobCall:
    """Charge one identified call. Its charge is None when the store is down
    and ``terms.fail_open`` lets the call through uncharged."""
    charge: Charge | None = None
    try:
        t = terms  # each keyword spelled out: no dict built per call
        charge = ledger.charge(
            account, job_id, scope=t.scope, cost=t.cost, tier=t.tier, backend=t.backend
        )
    except StoreUnavailable as exc:
        _fail_open(exc, terms, account, job_id)
    return JobCall(ledger, charge, job_id, minted)


async def abegin(
    ledger: Ledger, account: str, job_id: str, terms: Terms, *, minted: bool = False
) -> JobCall:
    """Async twin of :func:`begin`."""
    charge: Charge | None = None
    try:
        t = terms  # as in begin
        charge = await ledger.acharge(
            account, job_id, scope=t.scope, cost=t.cost, tier=t.tier, backend=t.backend
        )
    except StoreUnavailable as exc:
        _fail_open(exc, terms, account, job_id)
    return JobCall(ledger, charge, job_id, minted)


def start_call(ledger: Ledger, account: str | None, spec: CallSpec) -> JobCall:
    """Identify and charge one web call. Raises the :class:`JobCreditsError`
    to answer with."""
    terms = spec.terms  # identify's arguments spelled out: on every web call
    acct, jid, minted = identify(
        account, spec.job_id, spec.on_missing, ledger, terms.scope, spec.account_source
    )
    return begin(ledger, acct, jid, terms, minted=minted)


def astart_call(ledger: Ledger, account: str | None, spec: CallSpec) -> Awaitable[JobCall]:
    """Async twin of :func:`start_call`: ``await astart_call(...)``.

    A plain function that identifies at once and returns :func:`abegin`'s
    coroutine, rather than a coroutine awaiting it: one coroutine fewer on
    every async web call. Its caller awaits at once, so an identify error is
    raised where an awaited one would be."""
    terms = spec.terms  # as in start_call
    acct, jid, minted = identify(
        account, spec.job_id, spec.on_missing, ledger, terms.scope, spec.account_source
    )
    return abegin(ledger, acct, jid, terms, minted=minted)


# -- finish: confirm or refund ------------------------------------------------------

#: What settling a call did: the charge was confirmed, or refunded by this
#: call; ``"missed"`` when the confirm found nothing to confirm (the charge
#: had been refunded meanwhile by a prune or a takeover: the call was served
#: free); None when there was nothing to do or the store failed.
Settled = Literal["confirmed", "refunded", "missed"] | None


def settle_outcome(record: JobRecord, ok: bool, answer: object) -> tuple[Settled, bool]:
    """Decide what settling the charging call ``record`` did, given what its
    first step answered: the confirm (``ok``) or the refund (not ``ok``).
    Returns the outcome and whether the charge must also be refunded.
    :meth:`JobCall.settle` and its async twin both run the first step, ask
    this, and refund when told to, so that they decide alike.

    A confirm that matches nothing means the charge is gone: the call outlived
    its lease and was refunded meanwhile (a prune, or the job's next call
    taking it over). That is reported as ``"missed"``, so that the response
    says what really happened (refunded). The refund is repeated by charge id
    (a no-op when the charge was refunded already), so that whatever made
    the confirm miss, nothing stays debited for a call answered as refunded.

    (A function of the first answer rather than a generator of steps: it runs
    on every charged call, and driving a generator to its return costs more
    than the decision.)
    """
    if not ok:
        return ("refunded" if answer else None), False
    if answer:
        return "confirmed", False
    log.warning(
        "jobcredits: job %r's charge %s was refunded before its call finished (the call "
        "outlived its lease, and a prune or the job's next call settled it): the call "
        "was served free",
        record.job_id,
        record.charge_id,
    )
    return "missed", True


def is_failure(status: int | None) -> bool:
    """Whether a call's outcome refunds its charge.

    ``None`` stands for "no response": the handler raised something that is
    not a client error, or the call was cancelled. A 5xx answer is the
    server's failure. A 4xx answer confirms: the client's mistake was served,
    and refunding it would let a client retry a bad request for free forever.
    """
    return status is None or status >= 500


@attrs.define(slots=True)
class JobCall:
    """One call's charge, from the claim to the confirm or refund.

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
        charge = self.charge
        if charge is None:  # failed open: nothing was charged
            return [(job_header, self.job_id)]
        # outcome and balance, read without their properties: every charged
        # response asks for these
        outcome = "refunded" if self.refunded else charge.outcome
        out = [(job_header, self.job_id), (JOB_CHARGE_HEADER, outcome)]
        if charge.balance is not None:
            out.append((CREDITS_HEADER, str(self.balance)))
        return out

    def asgi_headers(self, raw_job_header: bytes) -> list[tuple[bytes, bytes]]:
        """:meth:`headers` as an ASGI response start carries them: lower-case
        names, latin-1 bytes; ``raw_job_header`` is the job header's name so
        (:func:`~jobcredits_plugin._headers.raw_name`). Built directly rather
        than by encoding :meth:`headers`: every charged ASGI response asks for
        them (a test in tests/test_decorator.py checks that the two always agree)."""
        charge = self.charge
        job = self.job_id.encode("latin-1")
        if charge is None:
            return [(raw_job_header, job)]
        outcome = "refunded" if self.refunded else charge.outcome
        out = [(raw_job_header, job), (_RAW_CHARGE_HEADER, outcome.encode("latin-1"))]
        if charge.balance is not None:
            out.append((_RAW_CREDITS_HEADER, str(self.balance).encode("latin-1")))
        return out

    # -- settling: by exception (the decorator) or by status (the web) -------------

    def _to_settle(self) -> JobRecord | None:
        """The record of the charge to settle; None when there is nothing to
        settle: it was settled already (settling is idempotent, so an adapter
        may settle from both its response path and its error path without a
        double refund), it failed open, or it is a follow-up (which needs
        neither confirm nor refund)."""
        done, self.finished = self.finished, True
        charge = self.charge
        if done or charge is None or not charge.charged:
            return None
        return charge.record

    def _settled(self, settled: Settled) -> Settled:
        if settled == "refunded" or settled == "missed":
            self.refunded = True
        return settled

    def _failed(self, ok: bool, exc: StoreUnavailable) -> Settled:
        """The store failed while settling: the charge stays ``pending`` and
        its lease settles it later (a refund: the client is never charged for
        a call whose outcome was not recorded)."""
        log.error(
            "jobcredits could not %s job %r (%s); its lease will settle it",
            "confirm" if ok else "refund",
            self.job_id,
            exc,
        )
        return self._settled(None)

    def settle(self, ok: bool) -> Settled:
        """Confirm (``ok``) or refund the charging call (see
        :func:`settle_outcome`), by its charge id only. Never raises: the
        call's answer is decided."""
        r = self._to_settle()
        return None if r is None else self._settle(r, ok)

    def _settle(self, r: JobRecord, ok: bool) -> Settled:
        ledger = self.ledger
        try:
            first = ledger.confirm if ok else ledger.refund
            answer = first(r.account, r.job_id, scope=r.scope, charge_id=r.charge_id)
            settled, refund = settle_outcome(r, ok, answer)
            if refund:
                ledger.refund(r.account, r.job_id, scope=r.scope, charge_id=r.charge_id)
        except StoreUnavailable as exc:
            return self._failed(ok, exc)
        return self._settled(settled)

    async def asettle(self, ok: bool) -> Settled:
        """Async twin of :meth:`settle`."""
        r = self._to_settle()
        return None if r is None else await self._asettle(r, ok)

    async def _asettle(self, r: JobRecord, ok: bool) -> Settled:
        ledger = self.ledger
        try:
            first = ledger.aconfirm if ok else ledger.arefund
            answer = await first(r.account, r.job_id, scope=r.scope, charge_id=r.charge_id)
            settled, refund = settle_outcome(r, ok, answer)
            if refund:
                await ledger.arefund(r.account, r.job_id, scope=r.scope, charge_id=r.charge_id)
        except StoreUnavailable as exc:
            return self._failed(ok, exc)
        return self._settled(settled)

    @property
    def _balance_account(self) -> str | None:
        """The account whose balance the headers show (None: balances are
        off, or the call failed open)."""
        if self.charge is None or self.charge.balance is None:
            return None
        return self.charge.record.account

    def finish(self, status: int | None) -> None:
        """Settle by an HTTP answer's status (see :func:`is_failure`). After a
        confirm that missed, the balance is read again for the headers: the
        charge was refunded by another caller, and a takeover may have
        charged anew since."""
        r = self._to_settle()  # None for a follow-up: settled without asking its status
        if r is not None and self._settle(r, not is_failure(status)) == "missed":
            account = self._balance_account  # (only asked when needed: rarely)
            if account is not None:
                with contextlib.suppress(StoreUnavailable):
                    self.fresh_balance = self.ledger.balance(account)

    async def afinish(self, status: int | None) -> None:
        """Async twin of :meth:`finish`."""
        r = self._to_settle()  # as in finish
        if r is not None and await self._asettle(r, not is_failure(status)) == "missed":
            account = self._balance_account
            if account is not None:
                with contextlib.suppress(StoreUnavailable):
                    self.fresh_balance = await self.ledger.abalance(account)

    async def afinish_raised(self, exc: BaseException) -> None:
        """Settle a call whose handler raised before its response's first
        byte: refund.

        A cancellation (any BaseException that is not an Exception) is settled
        with the blocking twin, which has no await to interrupt: anyio and trio
        deliver a cancellation again at every await inside a cancelled scope,
        so an awaited refund could be cut short, leaving the charge pending
        until its lease ran out and, for a store run in a thread, without its
        refund hook.
        """
        if isinstance(exc, Exception):
            await self.afinish(None)
        else:
            self.finish(None)
