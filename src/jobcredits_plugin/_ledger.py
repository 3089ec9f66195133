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
import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

import pluggy

from . import hookspecs
from ._errors import (
    ConfigurationError,
    InsufficientCredits,
    InvalidArgument,
    JobCreditsError,
    JobExhausted,
    JobInProgress,
)
from ._hooks import Hooks, PluginManager
from ._journal import LedgerJournal
from ._records import Charge, JobRecord
from ._store_calls import StoreCalls
from ._validation import (
    CLOCK_MAX,
    MAX_CREDITS,
    check_account,
    check_amount,
    check_charge_id,
    check_clock_reading,
    check_cost,
    check_flag,
    check_grant_id,
    check_job_id,
    check_label,
    check_optional_count,
    check_positive_seconds,
    check_scope,
    compile_job_id_pattern,
    configuration,
)
from ._warnings import mark_in_process
from .stores import (
    ClaimRequest,
    ClaimResult,
    JournalStore,
    Key,
    MemoryStore,
    Store,
    settled_so_far,
)
from .stores import from_url as store_from_url
from .stores._protocol import lacking

__all__ = ["Ledger"]

log = logging.getLogger("jobcredits_plugin")


def _new_charge_id() -> str:
    # 64 random bits: a charge id only has to differ from the other charges of
    # the same job key, and short ids keep the memory store lean. os.urandom
    # is the source secrets.token_hex reads too, without its three calls in
    # between (a tenth of a follow-up's charge on the memory store).
    return os.urandom(8).hex()


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


class Ledger(LedgerJournal):
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
        store: Store | None = None,
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
        if not isinstance(store, Store):
            raise InvalidArgument(
                f"store {store!r} is not a jobcredits_plugin.stores.Store: it lacks "
                f"{', '.join(lacking(store, Store))}"
            )
        self._store: Store = store
        self._journal_store = store if isinstance(store, JournalStore) else None
        self._balances = check_flag("balances", balances)
        self._clock = clock
        self._pm = PluginManager(hookspecs.PROJECT_NAME)
        self._pm.add_hookspecs(hookspecs)
        self._hooks = Hooks(self._pm)
        self._calls = StoreCalls(store, self._hooks, self.now)
        # Bound once: every charge calls these.
        self._call = self._calls.call
        self._acall = self._calls.acall
        self._abandon_claim = self._calls.abandon_claim
        self._fire = self._hooks.fire
        self._fire_one = self._hooks.fire_one
        # "no" from a settings file must not load every installed plugin.
        self._register_all(plugins, check_flag("entry_points", entry_points))

    def _register_all(self, plugins: Iterable[object], entry_points: bool) -> None:
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
    def store(self) -> Store:
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
        impls = self._hooks.impls("on_reject")
        if not impls:
            return
        self._hooks.notify(
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
        # Positional, in ClaimRequest's field order: this runs on every charge.
        # The common cost (an int in range) and labels (None) pass without a call.
        return ClaimRequest(
            check_account(account),
            check_scope(scope),
            check_job_id(job_id, self._pattern),
            _new_charge_id(),
            cost if type(cost) is int and 0 <= cost <= MAX_CREDITS else check_cost(cost),
            None if tier is None else check_label("tier", tier),
            None if backend is None else check_label("backend", backend),
            self.now(),
            self._ttl,
            self._lease,
            self._max_uses,
            self._balances,
        )

    def _settle_claim(self, req: ClaimRequest, result: ClaimResult) -> Charge:
        """Fire the hooks of a committed claim, then turn its status into a
        Charge or the error the caller must see. A hook that interrupts the
        call (a ``BaseException``) takes the new charge back before its
        exception goes on: the caller never gets the Charge to settle."""
        try:
            self._fire(result.events)
        except BaseException:
            self._calls.take_back(result)
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
            result = self._call("claim", self._store.claim, req, late=self._abandon_claim)
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

    def close(self) -> None:
        """Release the store's connections. Idempotent."""
        if not self._calls.closed:
            self._calls.closed = True
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
            result = await self._acall("claim", self._store.aclaim, req, late=self._abandon_claim)
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

    async def aclose(self) -> None:
        """Async twin of :meth:`close`."""
        if not self._calls.closed:
            self._calls.closed = True
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
