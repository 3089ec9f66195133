"""The ledger: validation, policy and hooks around one atomic store operation.

The ledger itself holds no job state. Each public method checks its input
(before any store is touched, so bad input records nothing), reads the clock
once, makes exactly one atomic store call, and then fires the hooks for the
events that call reports as committed. Since only the caller whose store
operation made a change receives its event, every hook fires exactly once per
change, however many threads, processes or hosts share the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, TypeVar

import pluggy

from . import hookspecs
from ._errors import (
    ConfigurationError,
    InsufficientCredits,
    InvalidArgument,
    JobCreditsError,
    JobExhausted,
    JobInProgress,
    StoreUnavailable,
)
from ._journal import JournalCursor
from ._records import Charge, JobRecord, JournalEntry
from ._validation import (
    CLOCK_MAX,
    check_account,
    check_amount,
    check_charge_id,
    check_clock_reading,
    check_cost,
    check_cursor_name,
    check_flag,
    check_grant_id,
    check_job_id,
    check_journal_limit,
    check_label,
    check_optional_count,
    check_position,
    check_positive_seconds,
    check_scope,
    compile_job_id_pattern,
    configuration,
)
from ._warnings import mark_in_process
from .stores import BaseStore, ClaimRequest, ClaimResult, Event, MemoryStore
from .stores import from_url as store_from_url
from .stores._base import Key, settled_so_far
from .stores._urls import redact_text

__all__ = ["Ledger"]

log = logging.getLogger("jobcredits_plugin")

T = TypeVar("T")

#: Errors from a store that mean "could not reach it", in case a store lets
#: one through unwrapped: they must still become a bounded 503, not a 500.
_UNREACHABLE = (OSError, ConnectionError, TimeoutError)


def _new_charge_id() -> str:
    # 64 random bits: a charge id only has to differ from the other charges of
    # the same job key, and short ids keep the memory store lean.
    return secrets.token_hex(8)


def grant_charge_id(account: str, grant_id: str) -> str:
    """The id a grant made with ``grant_id`` is stored and journaled under:
    ``"g-"`` and the first 32 hex digits of the SHA-256 of
    ``account + "\\n" + grant_id``. The same for every retry, on every host;
    different for each account (two accounts may use the same grant_id), so
    the journal entry's idempotency key (``"<charge_id>:grant"``) names one
    grant of one account. Neither part may contain a newline."""
    digest = hashlib.sha256(f"{account}\n{grant_id}".encode()).hexdigest()
    return "g-" + digest[:32]


def _valid_or_none(check: Callable[..., Any], *args: Any) -> Any:
    try:
        return check(*args)
    except JobCreditsError:
        return None


#: One hook implementation, ready to call: (function, which of the spec's
#: arguments it takes as indexes, None when it takes all of them in order,
#: plugin name).
_Impl = tuple[Callable[..., Any], "tuple[int, ...] | None", str]


class _PluginManager(pluggy.PluginManager):
    """pluggy's manager, counting registrations so the ledger can cache which
    implementations each hook has (looking them up on every call is most of
    what an unobserved charge would otherwise spend on hooks)."""

    generation = 0

    def register(self, plugin: object, name: str | None = None) -> str | None:
        self.generation += 1
        return super().register(plugin, name)

    def unregister(self, plugin: object | None = None, name: str | None = None) -> Any:
        self.generation += 1
        return super().unregister(plugin, name)


class Ledger:
    """Charges a job once, lets its follow-up calls through free, refunds
    failures and expires old jobs.

    :param store: where jobs live; ``None`` means a new
        :class:`~jobcredits_plugin.stores.MemoryStore`.
    :param ttl: seconds a charged job's follow-ups ride free, counted from the
        charge and never extended.
    :param lease: seconds a first call may run before it is presumed dead, its
        charge refunded and taken over by the next call. Must outlast the
        slowest handler, and may not exceed ``ttl``.
    :param balances: debit a per-account balance at each charge and answer
        :class:`InsufficientCredits` when it is short.
    :param max_uses: calls one job may serve, the charging call included
        (``None``: unlimited within the window).
    :param job_id_pattern: a regular expression job ids must match in full,
        instead of ``[A-Za-z0-9._:-]+``; the 128-character limit stays, and
        control characters and lone surrogates are refused whatever it admits.
    :param clock: returns the time in seconds; the one time source for every
        store (tests pass :class:`jobcredits_plugin.testing.FakeClock`),
        except a Redis or PostgreSQL store built with ``server_clock=True``,
        which decides by its server's clock so that hosts sharing it share
        one clock. Each reading is checked (see :meth:`now`): anything but a
        finite number from 0 to below 2**33 is a
        :class:`~jobcredits_plugin.ConfigurationError`.
    :param plugins: plugin objects to register (see :mod:`~jobcredits_plugin.hookspecs`).
    :param entry_points: also load the plugins installed packages declare in
        the ``jobcredits_plugin`` entry point group. Off by default: installed
        code should not start seeing billing events without the app asking.

    A bad option raises :class:`~jobcredits_plugin.ConfigurationError` (the
    app's setup mistake), not :class:`~jobcredits_plugin.InvalidArgument`.
    """

    @configuration()
    def __init__(
        self,
        store: BaseStore | None = None,
        *,
        ttl: float = 3600.0,
        lease: float = 60.0,
        balances: bool = False,
        max_uses: int | None = None,
        job_id_pattern: str | re.Pattern[str] | None = None,
        clock: Callable[[], float] = time.time,
        plugins: Iterable[object] = (),
        entry_points: bool = False,
    ) -> None:
        self._ttl = check_positive_seconds("ttl", ttl)
        self._lease = check_positive_seconds("lease", lease)
        if self._lease > self._ttl:
            # A first call still leased after its window closed would be
            # neither live nor settled; no useful policy needs that state.
            raise InvalidArgument(
                f"lease ({self._lease:g}s) must not exceed ttl ({self._ttl:g}s): "
                "lower the lease, or pass both"
            )
        self._max_uses = check_optional_count("max_uses", max_uses)
        self._pattern = compile_job_id_pattern(job_id_pattern)
        if not callable(clock):
            raise InvalidArgument("clock must be a callable returning seconds")
        if store is None:
            store = MemoryStore()
            mark_in_process(store)  # the adapters warn about this one
        for method in ("claim", "confirm", "refund", "lookup", "prune", "snapshot"):
            if not callable(getattr(store, method, None)):
                raise InvalidArgument(f"store {store!r} has no {method}() method")
        self._store = store
        self._balances = check_flag("balances", balances)
        # "no" from a settings file must not load every installed plugin.
        entry_points = check_flag("entry_points", entry_points)
        self._clock = clock
        self._closed = False
        self._pm = _PluginManager(hookspecs.PROJECT_NAME)
        self._pm.add_hookspecs(hookspecs)
        self._impl_cache: dict[str, tuple[_Impl, ...]] = {}
        self._impl_generation = -1
        if isinstance(plugins, (str, bytes)) or not isinstance(plugins, Iterable):
            # A string would register each of its characters as a "plugin".
            raise ConfigurationError(
                f"plugins must be a list of plugin objects, not {type(plugins).__name__}"
            )
        for plugin in plugins:
            try:
                self.register(plugin)
            except ValueError as exc:  # pluggy: the same object or name twice
                raise ConfigurationError(f"plugins: {exc}") from exc
        if entry_points:
            # Not pluggy's own loader: it registers an object a second time
            # (and raises) when the app also passed it in ``plugins``.
            from ._plugins import load_entry_points

            load_entry_points(self)

    @classmethod
    @configuration()
    def from_url(cls, url: str, **kwargs: Any) -> Ledger:
        """A ledger on the store a URL names: ``memory://``, ``sqlite:///jobs.db``
        (relative), ``sqlite:////var/lib/app/jobs.db`` (absolute). Store options
        go in the query string (``?timeout=2``); ``kwargs`` are the ledger's."""
        return cls(store_from_url(url), **kwargs)

    def __repr__(self) -> str:
        return (
            f"Ledger(store={self._store!r}, ttl={self._ttl}, lease={self._lease}, "
            f"balances={self._balances}, max_uses={self._max_uses})"
        )

    # -- configuration, read-only ------------------------------------------------

    @property
    def store(self) -> BaseStore:
        return self._store

    @property
    def ttl(self) -> float:
        return self._ttl

    @property
    def lease(self) -> float:
        return self._lease

    @property
    def balances(self) -> bool:
        return self._balances

    @property
    def max_uses(self) -> int | None:
        return self._max_uses

    @property
    def clock(self) -> Callable[[], float]:
        return self._clock

    def now(self) -> float:
        """The clock's reading, checked: seconds since the epoch as a finite
        float from 0 to below 2**33. A clock that returns anything else (None,
        NaN, infinity, a negative or a millisecond reading) is the app's bug:
        :class:`~jobcredits_plugin.ConfigurationError`, before any store is
        touched, so nothing is recorded on a time that means nothing."""
        now = self._clock()
        if type(now) is float and 0.0 <= now < CLOCK_MAX:
            return now  # the charge path's case: no call, one comparison
        return check_clock_reading(now)

    @property
    def plugin_manager(self) -> pluggy.PluginManager:
        """This ledger's own pluggy manager (never shared with another ledger)."""
        return self._pm

    # -- plugins -----------------------------------------------------------------

    def register(self, plugin: object, name: str | None = None) -> str | None:
        """Register a plugin object whose ``@hookimpl`` methods get this ledger's
        events. Returns the name it was registered under (None if it was
        blocked)."""
        return self._pm.register(plugin, name)

    def unregister(self, plugin: object) -> None:
        """Stop sending events to a plugin registered earlier."""
        self._pm.unregister(plugin)

    def check_pending(self) -> None:
        """Raise :class:`pluggy.PluginValidationError` if a registered plugin
        implements a hook this version does not know (usually a typo), unless
        it marked it ``optionalhook=True``. Call it in your tests."""
        self._pm.check_pending()

    def _impls(self, hook_name: str) -> tuple[_Impl, ...]:
        """The implementations of one hook, in pluggy's calling order (LIFO,
        tryfirst first), cached until a plugin is registered or unregistered."""
        if self._impl_generation == self._pm.generation:
            impls = self._impl_cache.get(hook_name)
            if impls is not None:
                return impls
        return self._load_impls(hook_name)

    def _load_impls(self, hook_name: str) -> tuple[_Impl, ...]:
        pm = self._pm
        if self._impl_generation != pm.generation:
            self._impl_cache = {}
            self._impl_generation = pm.generation
        impls = self._impl_cache.get(hook_name)
        if impls is None:
            caller = getattr(pm.hook, hook_name)
            spec = tuple(caller.spec.argnames) if caller.spec is not None else ()
            found = []
            for impl in reversed(caller.get_hookimpls()):
                if impl.hookwrapper or impl.wrapper:
                    continue  # notifications have no result to wrap
                names = tuple(impl.argnames)
                picks = None if names == spec else tuple(spec.index(n) for n in names)
                found.append((impl.function, picks, impl.plugin_name))
            impls = self._impl_cache[hook_name] = tuple(found)
        return impls

    def _notify(self, hook_name: str, impls: tuple[_Impl, ...], values: tuple[Any, ...]) -> None:
        """Call each implementation with the spec's argument ``values``, each
        in isolation: pluggy would stop at the first one that raises, and a
        metrics bug must not hide the event from the audit log plugin.

        An ``Exception`` is logged and skipped. A ``BaseException`` (a
        cancellation, ``KeyboardInterrupt``, ``SystemExit``) must reach the
        caller, but only after every other implementation has seen the event:
        the first one is re-raised once all of them ran.
        """
        interrupt: BaseException | None = None
        for function, picks, plugin_name in impls:
            try:
                if picks is None:
                    function(*values)
                else:
                    function(*[values[i] for i in picks])
            except Exception:
                # Logging can raise too (a broken handler): the change is
                # committed, so nothing may escape to the caller from here.
                with contextlib.suppress(Exception):
                    log.exception(
                        "jobcredits hook %s of plugin %r raised; it was skipped "
                        "(whatever it reports stays committed)",
                        hook_name,
                        plugin_name,
                    )
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                if interrupt is None:
                    interrupt = exc
        if interrupt is not None:
            raise interrupt

    def _fire(self, events: Iterable[Event]) -> None:
        """Call each hook implementation for each committed event; an
        interrupting hook (see :meth:`_notify`) is re-raised after every
        event was reported."""
        interrupt: BaseException | None = None
        for event in events:
            name = "on_" + event.kind
            impls = self._impls(name)
            if impls:
                try:
                    self._notify(name, impls, (event.record,))
                except BaseException as exc:  # noqa: BLE001 - re-raised below
                    if interrupt is None:
                        interrupt = exc
        if interrupt is not None:
            raise interrupt

    def report_rejection(
        self,
        error: JobCreditsError,
        *,
        account: Any = None,
        job_id: Any = None,
        scope: Any = None,
        cost: Any = None,
    ) -> None:
        """Fire :func:`~jobcredits_plugin.hookspecs.on_reject` for a call refused
        before it reached the ledger (no account, no job id). The ledger's own
        refusals fire it by themselves; adapters call this for theirs. Values
        that do not pass validation are reported as None."""
        impls = self._impls("on_reject")
        if not impls:
            return
        self._notify(
            "on_reject",
            impls,
            (
                error,
                _valid_or_none(check_account, account),
                _valid_or_none(check_scope, scope),
                _valid_or_none(check_job_id, job_id, self._pattern),
                _valid_or_none(check_cost, cost),
            ),
        )

    # -- validation ----------------------------------------------------------------

    def _key(self, account: Any, job_id: Any, scope: Any) -> Key:
        return (check_account(account), check_scope(scope), check_job_id(job_id, self._pattern))

    def _claim_request(
        self,
        account: Any,
        job_id: Any,
        scope: Any,
        cost: Any,
        tier: Any,
        backend: Any,
    ) -> ClaimRequest:
        key = self._key(account, job_id, scope)
        return ClaimRequest(
            account=key[0],
            scope=key[1],
            job_id=key[2],
            charge_id=_new_charge_id(),
            cost=check_cost(cost),
            tier=check_label("tier", tier),
            backend=check_label("backend", backend),
            now=self.now(),
            ttl=self._ttl,
            lease=self._lease,
            max_uses=self._max_uses,
            balances=self._balances,
        )

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable("this ledger is closed")

    def _unreachable(self, exc: BaseException) -> StoreUnavailable:
        # A driver's message may echo the connection string: one redactor.
        return StoreUnavailable(redact_text(f"store {self._store!r} unreachable: {exc}"))

    def _call(
        self,
        op: str,
        fn: Callable[..., T],
        *args: Any,
        late: Callable[[T], None] | None = None,
    ) -> T:
        """Make one store call, turning "could not reach it" into
        StoreUnavailable and timing it for ``on_store_call`` when observed.

        ``late`` settles a committed result that will not reach the caller
        (an ``on_store_call`` implementation interrupted the call after the
        commit): it fires the result's hooks and takes back a new charge.
        """
        self._check_open()
        impls = self._impls("on_store_call")
        if not impls:
            try:
                return fn(*args)
            except _UNREACHABLE as exc:
                raise self._unreachable(exc) from exc
        start = time.perf_counter()
        try:
            result = fn(*args)
        except _UNREACHABLE as exc:
            error = self._unreachable(exc)
            self._notify("on_store_call", impls, (op, time.perf_counter() - start, error))
            raise error from exc
        except BaseException as exc:
            self._notify("on_store_call", impls, (op, time.perf_counter() - start, exc))
            raise
        try:
            self._notify("on_store_call", impls, (op, time.perf_counter() - start, None))
        except BaseException:
            if late is not None:
                self._settle_late(late, result)
            raise
        return result

    async def _acall(
        self,
        op: str,
        fn: Callable[..., Awaitable[T]],
        *args: Any,
        late: Callable[[T], None] | None = None,
    ) -> T:
        """Await one store operation, keeping its hooks exactly once even when
        the caller is cancelled mid-way.

        A store whose async twin runs in a worker thread (or on a network
        round trip) commits whether or not its awaiting task is cancelled. So
        the operation is shielded, and if the caller is cancelled, ``late``
        settles what it commits later: the events still fire, and a new
        charge, whose Charge never reaches the cancelled caller, is refunded.
        Stores that never suspend (``cancel_safe``) skip the extra task.
        """
        self._check_open()
        impls = self._impls("on_store_call")
        error: BaseException | None = None
        result: Any = None
        start = time.perf_counter()
        try:
            if getattr(self._store, "cancel_safe", False):
                result = await fn(*args)
                return result  # type: ignore[no-any-return]
            task = asyncio.ensure_future(fn(*args))
            try:
                result = await asyncio.shield(task)
                return result  # type: ignore[no-any-return]
            except asyncio.CancelledError:
                if late is not None:
                    task.add_done_callback(functools.partial(self._late_done, late))
                raise
        except _UNREACHABLE as exc:
            error = self._unreachable(exc)
            raise error from exc
        except BaseException as exc:
            error = exc
            raise
        finally:
            if impls:
                try:
                    self._notify("on_store_call", impls, (op, time.perf_counter() - start, error))
                except BaseException:
                    if error is None and late is not None:
                        self._settle_late(late, result)
                    raise

    def _late_done(self, late: Callable[[Any], None], task: asyncio.Future[Any]) -> None:
        """The done callback of a store operation whose caller was cancelled."""
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            # Batches a failed prune committed before the failure.
            self._settle_late(self._fire, settled_so_far(error))
            return
        self._settle_late(late, task.result())

    def _settle_late(self, late: Callable[[Any], None], result: Any) -> None:
        """Run ``late`` for a committed result whose caller is gone or already
        leaving with an exception of its own: that exception is the one the
        caller sees, so nothing ``late`` raises may replace it."""
        try:
            late(result)
        except BaseException:  # the caller's own exception wins
            with contextlib.suppress(Exception):
                log.warning(
                    "jobcredits: settling a store result its caller never received was interrupted",
                    exc_info=True,
                )

    def _take_back(self, result: ClaimResult) -> None:
        """Refund a charge that committed but whose :class:`Charge` never
        reached the caller (a hook interrupted it, or the caller was cancelled
        while the claim was in flight): nobody would confirm or refund it, so
        the credit would stay debited until its lease ran out. The refund
        fires ``on_refund`` like any other. Never raises: the caller is
        already leaving with an exception of its own; if the store fails
        here, the lease still settles the charge."""
        if result.status != "charged" or result.record is None:
            return  # a reuse or a refusal debited nothing
        record = result.record
        key = (record.account, record.scope, record.job_id)
        try:
            event = self._call(
                "refund",
                self._store.refund,
                key,
                record.charge_id,
                self.now(),
                late=self._fire_one,
            )
            if event is not None:
                self._fire((event,))
        except BaseException:  # see the docstring
            with contextlib.suppress(Exception):
                log.warning(
                    "jobcredits: taking back charge %s of job %r (its caller never received "
                    "it) failed or was interrupted; if it was not refunded, its lease will be",
                    record.charge_id,
                    record.job_id,
                    exc_info=True,
                )

    def _abandon_claim(self, req: ClaimRequest, result: ClaimResult) -> None:
        """``late`` for a claim: report its events, then take its charge back."""
        try:
            self._fire(result.events)
        finally:
            self._take_back(result)

    def _fire_one(self, event: Event | None) -> None:
        """``late`` for a refund."""
        if event is not None:
            self._fire((event,))

    def _settle_claim(self, req: ClaimRequest, result: ClaimResult) -> Charge:
        """Fire the hooks of a committed claim, then turn its status into a
        Charge or the error the caller must see. A hook that interrupts the
        call (see :meth:`_notify`) takes the new charge back before its
        exception goes on: the caller never gets the Charge to settle."""
        try:
            self._fire(result.events)
        except BaseException:
            self._take_back(result)
            raise
        status = result.status
        if status == "charged" or status == "reused":
            assert result.record is not None
            return Charge(status, result.record, result.balance)
        if status == "in_progress":
            raise JobInProgress(
                f"job {req.job_id!r} is still running its first call; retry later",
                retry_after=result.retry_after,
            )
        if status == "exhausted":
            raise JobExhausted(
                f"job {req.job_id!r} has served its {self._max_uses} calls; start a new job",
                max_uses=self._max_uses,
            )
        raise InsufficientCredits(
            f"account balance {result.balance} is below the cost {req.cost} of a new job",
            balance=result.balance,
            cost=req.cost,
        )

    # -- the operations --------------------------------------------------------------

    def charge(
        self,
        account: str,
        job_id: str,
        *,
        scope: str = "default",
        cost: int = 1,
        tier: str | None = None,
        backend: str | None = None,
    ) -> Charge:
        """Account for one call of a job: charge it if it is the job's first
        call, reuse the charge if not.

        :raises JobInProgress: the first call is still running (409).
        :raises JobExhausted: the job has served ``max_uses`` calls (409).
        :raises InsufficientCredits: balances are on and too low (402).
        :raises InvalidJobId, InvalidAccount, InvalidArgument: bad input (400).
        :raises StoreUnavailable: the store could not be reached (503).
        :raises ConfigurationError: the clock returned what it must not (500).
        """
        try:
            req = self._claim_request(account, job_id, scope, cost, tier, backend)
            result = self._call(
                "claim", self._store.claim, req, late=functools.partial(self._abandon_claim, req)
            )
            return self._settle_claim(req, result)
        except JobCreditsError as exc:
            self.report_rejection(exc, account=account, job_id=job_id, scope=scope, cost=cost)
            raise

    def confirm(
        self, account: str, job_id: str, *, scope: str = "default", charge_id: str | None = None
    ) -> JobRecord | None:
        """Mark the job's first call as done: ``pending`` becomes ``charged``.

        Returns the record, or None when there is no such job or its live
        charge is not ``charge_id`` (it was refunded and taken over).
        """
        key = self._key(account, job_id, scope)
        cid = check_charge_id(charge_id)
        return self._call("confirm", self._store.confirm, key, cid, self.now())

    def refund(
        self, account: str, job_id: str, *, scope: str = "default", charge_id: str | None = None
    ) -> bool:
        """Give the job's charge back; the next call with its id is charged anew.

        Idempotent: returns True only for the call that did the refund.
        """
        key = self._key(account, job_id, scope)
        cid = check_charge_id(charge_id)
        event = self._call("refund", self._store.refund, key, cid, self.now(), late=self._fire_one)
        if event is None:
            return False
        self._fire((event,))
        return True

    def lookup(self, account: str, job_id: str, *, scope: str = "default") -> JobRecord | None:
        """The job's live record, or None (never a refunded or expired one)."""
        key = self._key(account, job_id, scope)
        return self._call("lookup", self._store.lookup, key, self.now())

    def prune(self, *, limit: int | None = None) -> list[JobRecord]:
        """Remove expired jobs (``on_expire``) and refund first calls whose lease
        ran out (``on_refund``); returns the records removed.

        Safe to run from several processes at once: each record is settled by
        exactly one of them. ``limit`` caps how many records one call settles
        (run it again for the rest).
        """
        limit = check_optional_count("limit", limit)
        try:
            events = self._call("prune", self._store.prune, self.now(), limit, late=self._fire)
        except BaseException as exc:
            # A store that prunes in batches commits each one: the hooks of
            # the batches done before the failure still fire, exactly once.
            self._fire(settled_so_far(exc))
            raise
        self._fire(events)
        return [e.record for e in events]

    def snapshot(self) -> list[JobRecord]:
        """Every live job, oldest charge first. Reads the whole store: for
        operators, not for the request path."""
        return self._call("snapshot", self._store.snapshot, self.now())

    def _grant_args(
        self, account: str, amount: int, grant_id: str | None
    ) -> tuple[str, int, float, str]:
        account = check_account(account)
        amount = check_amount(amount)
        gid = check_grant_id(grant_id)
        store_id = _new_charge_id() if gid is None else grant_charge_id(account, gid)
        return account, amount, self.now(), store_id

    def grant(self, account: str, amount: int, *, grant_id: str | None = None) -> int:
        """Add ``amount`` credits (negative to take some away; a balance never
        goes below zero). Stored even while balances are off, so balances can
        be loaded before they are switched on. Returns the new balance.

        ``grant_id`` makes the grant safe to retry: the same ``grant_id`` for
        the same account is applied once, however often it is sent, for at
        least seven days (``jobcredits_plugin.stores.GRANT_ID_RETENTION``)
        on every store. A repeat writes nothing, journals nothing and returns
        the balance the first grant returned (what its lost answer said), not
        the current one. 1-128 characters of ``[A-Za-z0-9._:-]``; its journal
        entry's ``charge_id`` is derived from the account and the grant_id
        (``"g-"`` + 32 hex digits of SHA-256, see the journal docs), so its
        idempotency key is the same for every retry.

        :raises InvalidArgument: a bad amount or grant_id; the grant_id was
            already used for this account with another amount (nothing is
            granted); the balance would pass the cap.
        :raises StoreUnavailable: the store could not be reached: retry with
            the same ``grant_id``.
        """
        return self._call("grant", self._store.grant, *self._grant_args(account, amount, grant_id))

    def balance(self, account: str) -> int | None:
        """The account's credits, or None when balances are off."""
        account = check_account(account)
        if not self._balances:
            return None
        return self._call("balance", self._store.balance, account)

    # -- the journal ---------------------------------------------------------------

    def _journal_call(self, op: str, method: str, *args: Any) -> Any:
        fn = getattr(self._store, method, None)
        if fn is None:
            raise InvalidArgument(f"store {self._store!r} keeps no journal")
        try:
            return self._call(op, fn, *args)
        except NotImplementedError as exc:
            raise InvalidArgument(f"store {self._store!r} keeps no journal") from exc

    async def _ajournal_call(self, op: str, method: str, *args: Any) -> Any:
        fn = getattr(self._store, method, None)
        if fn is None:
            raise InvalidArgument(f"store {self._store!r} keeps no journal")
        try:
            return await self._acall(op, fn, *args)
        except NotImplementedError as exc:
            raise InvalidArgument(f"store {self._store!r} keeps no journal") from exc

    def journal(self, *, after: int = 0, limit: int = 100) -> list[JournalEntry]:
        """Journal entries with ``seq`` above ``after``, oldest first, at most
        ``limit`` (1 to 10,000).

        Every committed charge, refund, expiry and grant (and reuse, when the
        store journals them) has exactly one entry, written in the same atomic
        step as the change, so a reader that keeps the last ``seq`` it handled
        and asks again from there sees every entry exactly once, in order:
        no entry can turn up later below a ``seq`` already returned. Keep the
        position in a named :meth:`cursor` so trimming never drops what the
        reader has not seen.
        """
        return self._journal_call(  # type: ignore[no-any-return]
            "journal",
            "read_journal",
            check_position("after", after),
            check_journal_limit(limit),
        )

    def _trim_bounds(self, before: Any, max_age: Any) -> tuple[int | None, float | None]:
        through = None if before is None else check_position("before", before)
        if max_age is None and through is None:
            max_age = getattr(self._store, "journal_max_age", None)
            if max_age is None:
                return None, None
        cutoff = None
        if max_age is not None:
            cutoff = self.now() - check_positive_seconds("max_age", max_age)
        return through, cutoff

    def trim_journal(self, before: int | None = None, *, max_age: float | None = None) -> int:
        """Delete journal entries that are done with; returns how many went.

        ``before`` deletes the entries up to and including that seq (the
        position of a reader that has handled them); ``max_age`` those older
        than that many seconds; both together, those that are both. With
        neither, the store's ``journal_max_age`` applies (``jobcredits prune``
        calls this). Whatever the bounds, an entry that a stored cursor has not
        read yet is never deleted.
        """
        through, cutoff = self._trim_bounds(before, max_age)
        if through is None and cutoff is None:
            return 0
        return self._journal_call(  # type: ignore[no-any-return]
            "trim_journal", "trim_journal", through, cutoff
        )

    def cursor(self, name: str) -> JournalCursor:
        """The named journal cursor, created at position 0 (the start of what
        the journal still holds) if the store has none by that name. From then
        on it holds back trimming of every entry it has not read."""
        name = check_cursor_name(name)
        self._journal_call("cursor", "set_cursor", name, 0, False)
        return JournalCursor(self, name)

    def cursors(self) -> dict[str, int]:
        """Every stored cursor and its position."""
        return self._journal_call("cursors", "cursors")  # type: ignore[no-any-return]

    def cursor_exists(self, name: str) -> bool:
        """Whether the store has a cursor by that name (without creating it,
        as :meth:`cursor` would)."""
        name = check_cursor_name(name)
        return self._journal_call("cursor", "get_cursor", name) is not None

    def delete_cursor(self, name: str) -> bool:
        """Forget a stored cursor, so it no longer holds entries back from
        trimming (a retired exporter's). True if it existed."""
        return self._delete_cursor(check_cursor_name(name))

    def _cursor_position(self, name: str) -> int:
        position = self._journal_call("cursor", "get_cursor", name)
        if position is None:
            raise InvalidArgument(f"journal cursor {name!r} does not exist (it was deleted)")
        return int(position)

    def _set_cursor(self, name: str, position: int, force: bool) -> int:
        return int(self._journal_call("cursor", "set_cursor", name, position, force))

    def _delete_cursor(self, name: str) -> bool:
        return bool(self._journal_call("cursor", "delete_cursor", name))

    def close(self) -> None:
        """Release the store's connections. Idempotent."""
        if not self._closed:
            self._closed = True
            self._store.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- async twins -------------------------------------------------------------------

    async def acharge(
        self,
        account: str,
        job_id: str,
        *,
        scope: str = "default",
        cost: int = 1,
        tier: str | None = None,
        backend: str | None = None,
    ) -> Charge:
        """Async twin of :meth:`charge`; never blocks the event loop."""
        try:
            req = self._claim_request(account, job_id, scope, cost, tier, backend)
            result = await self._acall(
                "claim", self._store.aclaim, req, late=functools.partial(self._abandon_claim, req)
            )
            return self._settle_claim(req, result)
        except JobCreditsError as exc:
            self.report_rejection(exc, account=account, job_id=job_id, scope=scope, cost=cost)
            raise

    async def aconfirm(
        self, account: str, job_id: str, *, scope: str = "default", charge_id: str | None = None
    ) -> JobRecord | None:
        """Async twin of :meth:`confirm`."""
        key = self._key(account, job_id, scope)
        cid = check_charge_id(charge_id)
        return await self._acall("confirm", self._store.aconfirm, key, cid, self.now())

    async def arefund(
        self, account: str, job_id: str, *, scope: str = "default", charge_id: str | None = None
    ) -> bool:
        """Async twin of :meth:`refund`."""
        key = self._key(account, job_id, scope)
        cid = check_charge_id(charge_id)
        event = await self._acall(
            "refund", self._store.arefund, key, cid, self.now(), late=self._fire_one
        )
        if event is None:
            return False
        self._fire((event,))
        return True

    async def alookup(
        self, account: str, job_id: str, *, scope: str = "default"
    ) -> JobRecord | None:
        """Async twin of :meth:`lookup`."""
        key = self._key(account, job_id, scope)
        return await self._acall("lookup", self._store.alookup, key, self.now())

    async def aprune(self, *, limit: int | None = None) -> list[JobRecord]:
        """Async twin of :meth:`prune`."""
        limit = check_optional_count("limit", limit)
        try:
            events = await self._acall(
                "prune", self._store.aprune, self.now(), limit, late=self._fire
            )
        except asyncio.CancelledError:
            raise  # the late callback fires what the shielded prune commits
        except BaseException as exc:
            self._fire(settled_so_far(exc))
            raise
        self._fire(events)
        return [e.record for e in events]

    async def asnapshot(self) -> list[JobRecord]:
        """Async twin of :meth:`snapshot`."""
        return await self._acall("snapshot", self._store.asnapshot, self.now())

    async def agrant(self, account: str, amount: int, *, grant_id: str | None = None) -> int:
        """Async twin of :meth:`grant`."""
        return await self._acall(
            "grant", self._store.agrant, *self._grant_args(account, amount, grant_id)
        )

    async def abalance(self, account: str) -> int | None:
        """Async twin of :meth:`balance`."""
        account = check_account(account)
        if not self._balances:
            return None
        return await self._acall("balance", self._store.abalance, account)

    async def ajournal(self, *, after: int = 0, limit: int = 100) -> list[JournalEntry]:
        """Async twin of :meth:`journal`."""
        return await self._ajournal_call(  # type: ignore[no-any-return]
            "journal",
            "aread_journal",
            check_position("after", after),
            check_journal_limit(limit),
        )

    async def atrim_journal(
        self, before: int | None = None, *, max_age: float | None = None
    ) -> int:
        """Async twin of :meth:`trim_journal`."""
        through, cutoff = self._trim_bounds(before, max_age)
        if through is None and cutoff is None:
            return 0
        return await self._ajournal_call(  # type: ignore[no-any-return]
            "trim_journal", "atrim_journal", through, cutoff
        )

    async def acursor(self, name: str) -> JournalCursor:
        """Async twin of :meth:`cursor`."""
        name = check_cursor_name(name)
        await self._ajournal_call("cursor", "aset_cursor", name, 0, False)
        return JournalCursor(self, name)

    async def acursors(self) -> dict[str, int]:
        """Async twin of :meth:`cursors`."""
        return await self._ajournal_call("cursors", "acursors")  # type: ignore[no-any-return]

    async def _acursor_position(self, name: str) -> int:
        position = await self._ajournal_call("cursor", "aget_cursor", name)
        if position is None:
            raise InvalidArgument(f"journal cursor {name!r} does not exist (it was deleted)")
        return int(position)

    async def _aset_cursor(self, name: str, position: int, force: bool) -> int:
        return int(await self._ajournal_call("cursor", "aset_cursor", name, position, force))

    async def _adelete_cursor(self, name: str) -> bool:
        return bool(await self._ajournal_call("cursor", "adelete_cursor", name))

    async def aclose(self) -> None:
        """Async twin of :meth:`close`."""
        if not self._closed:
            self._closed = True
            await self._store.aclose()

    async def __aenter__(self) -> Ledger:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
