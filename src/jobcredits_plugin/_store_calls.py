"""One store call of the ledger, with nothing it committed left unreported.

Every ledger operation is one atomic store call whose result carries the events
it committed; the ledger fires their hooks once it has the result. This module
is what keeps that exactly-once when the result never reaches the ledger's
caller although the store committed it: the store could not be reached (a
bounded 503), an ``on_store_call`` observer interrupted the call after the
commit, or an async caller was cancelled while the call was in flight. In the
last two cases a ``late`` callback settles the result: it fires the events,
and takes back a new charge whose :class:`~jobcredits_plugin.Charge` nobody
received (nobody would confirm or refund it).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ._errors import StoreUnavailable
from ._hooks import Hooks
from .stores import ClaimResult, Store, settled_so_far
from .stores._urls import redact_text

__all__ = ["StoreCalls"]

log = logging.getLogger("jobcredits_plugin")

T = TypeVar("T")

#: Errors from a store that mean "could not reach it", in case a store lets
#: one through unwrapped: they must still become a bounded 503, not a 500.
_UNREACHABLE = (OSError, ConnectionError, TimeoutError)


class StoreCalls:
    """Makes a ledger's store calls: ``on_store_call`` timing, unreachable
    stores as :class:`~jobcredits_plugin.StoreUnavailable`, and late
    settlement of results whose caller is gone."""

    def __init__(self, store: Store, hooks: Hooks, now: Callable[[], float]) -> None:
        self._store = store
        self._hooks = hooks
        self._impls = hooks.impls  # bound once: every call asks it
        self._now = now
        #: Set by ``Ledger.close``: no call reaches the store afterwards.
        self.closed = False

    def _check_open(self) -> None:
        if self.closed:
            raise StoreUnavailable("this ledger is closed")

    def _unreachable(self, exc: BaseException) -> StoreUnavailable:
        # A driver's message may echo the connection string: one redactor.
        return StoreUnavailable(redact_text(f"store {self._store!r} unreachable: {exc}"))

    def call(
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
        if self.closed:  # _check_open, inline: every operation passes here
            self._check_open()
        impls = self._impls("on_store_call")
        if not impls:
            try:
                return fn(*args)
            except _UNREACHABLE as exc:
                raise self._unreachable(exc) from exc
        notify = self._hooks.notify
        start = time.perf_counter()
        try:
            result = fn(*args)
        except _UNREACHABLE as exc:
            error = self._unreachable(exc)
            notify("on_store_call", impls, (op, time.perf_counter() - start, error))
            raise error from exc
        except BaseException as exc:
            notify("on_store_call", impls, (op, time.perf_counter() - start, exc))
            raise
        try:
            notify("on_store_call", impls, (op, time.perf_counter() - start, None))
        except BaseException:
            if late is not None:
                self._settle_late(late, result)
            raise
        return result

    async def acall(
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
        if self.closed:  # _check_open, inline: every async operation passes here
            self._check_open()
        impls = self._impls("on_store_call")
        if not impls and self._store.cancel_safe:
            # Nothing to time and nothing to shield (the call never suspends,
            # so no cancellation can land between its commit and its return).
            try:
                return await fn(*args)
            except _UNREACHABLE as exc:
                raise self._unreachable(exc) from exc
        error: BaseException | None = None
        result: T | None = None
        start = time.perf_counter()
        try:
            if self._store.cancel_safe:
                result = await fn(*args)
                return result
            task = asyncio.ensure_future(fn(*args))
            try:
                result = await asyncio.shield(task)
                return result
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
                    self._hooks.notify(
                        "on_store_call", impls, (op, time.perf_counter() - start, error)
                    )
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
            self._settle_late(self._hooks.fire, settled_so_far(error))
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

    def take_back(self, result: ClaimResult) -> None:
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
            event = self.call(
                "refund",
                self._store.refund,
                key,
                record.charge_id,
                self._now(),
                late=self._hooks.fire_one,
            )
            self._hooks.fire_one(event)
        except BaseException:  # see the docstring
            with contextlib.suppress(Exception):
                log.warning(
                    "jobcredits: taking back charge %s of job %r (its caller never received "
                    "it) failed or was interrupted; if it was not refunded, its lease will be",
                    record.charge_id,
                    record.job_id,
                    exc_info=True,
                )

    def abandon_claim(self, result: ClaimResult) -> None:
        """``late`` for a claim: report its events, then take its charge back."""
        try:
            self._hooks.fire(result.events)
        finally:
            self.take_back(result)
