"""What the ledger needs from a store, written once.

:class:`Store` is the contract: nine operations, each one atomic step that
reports what it committed, and (through :class:`AsyncStore`) the awaitable twin
of each. :class:`JournalStore` is optional: a store that keeps the journal
offers it too. The ledger checks both with ``isinstance`` (the protocols are
runtime-checkable) when it is built, so a store needs no base class:
:class:`~jobcredits_plugin.stores.BaseStore` only saves writing the async
twins.

Since Python 3.12, ``isinstance`` against a protocol looks the members up on
the class, not through ``__getattr__``: a store that forwards to another one
must define the methods it forwards.
"""

from __future__ import annotations

import inspect
from typing import Protocol, runtime_checkable

from .._records import JobRecord, JournalEntry
from ._rules import ClaimRequest, ClaimResult, Event, Key

__all__ = [
    "JOURNAL_OPERATIONS",
    "STORE_OPERATIONS",
    "AsyncStore",
    "JournalStore",
    "Store",
    "lacking",
]


@runtime_checkable
class AsyncStore(Protocol):
    """The async twins of :class:`Store`'s operations: the same arguments, the
    same results, awaitable. They must never block the event loop (run a
    blocking driver in a worker thread, as ``BaseStore``'s twins do).

    ``cancel_safe`` says whether awaiting a twin can be interrupted between
    the commit and its answer. When it can (False: a worker thread, a network
    round trip), the ledger runs each call in a task of its own, so that a
    cancelled caller's committed change still has its hooks fired and a new
    charge nobody will settle is taken back; stores whose twins never suspend
    (True) skip that task.
    """

    cancel_safe: bool

    async def aclaim(self, req: ClaimRequest) -> ClaimResult: ...
    async def aconfirm(self, key: Key, charge_id: str | None, now: float) -> JobRecord | None: ...
    async def arefund(self, key: Key, charge_id: str | None, now: float) -> Event | None: ...
    async def alookup(self, key: Key, now: float) -> JobRecord | None: ...
    async def aprune(self, now: float, limit: int | None = None) -> list[Event]: ...
    async def asnapshot(self, now: float) -> list[JobRecord]: ...
    async def agrant(
        self, account: str, amount: int, now: float = 0.0, grant_id: str = ""
    ) -> int: ...
    async def abalance(self, account: str) -> int: ...
    async def aclose(self) -> None: ...


@runtime_checkable
class Store(AsyncStore, Protocol):
    """What the ledger needs from a store: each method is one atomic operation.

    Each write reads the job's record (and the balance), asks the ``plan_*``
    rules what to do, writes that and returns what it committed, all in one
    step (a lock, a transaction, a script), so that of several callers racing
    on one job exactly one is told of each change. See :doc:`/custom-stores`.
    """

    def claim(self, req: ClaimRequest) -> ClaimResult:
        """Decide and commit one call of ``Ledger.charge`` (:func:`plan_claim`),
        settling the job's stale or expired record on the way."""
        ...

    def confirm(self, key: Key, charge_id: str | None, now: float) -> JobRecord | None:
        """Turn a pending charge into a charged one (:func:`plan_confirm`)."""
        ...

    def refund(self, key: Key, charge_id: str | None, now: float) -> Event | None:
        """Delete a live charge and credit back what it debited
        (:func:`plan_refund`); the event only for the caller that did it."""
        ...

    def lookup(self, key: Key, now: float) -> JobRecord | None:
        """The job's record if it is live at ``now``, else None."""
        ...

    def prune(self, now: float, limit: int | None = None) -> list[Event]:
        """Settle up to ``limit`` records that are due (:func:`plan_settle`)
        and forget grant ids past :data:`GRANT_ID_RETENTION`. A store that
        commits in batches attaches the events of the batches it committed to
        a later batch's error with :func:`with_settled`."""
        ...

    def snapshot(self, now: float) -> list[JobRecord]:
        """Every record live at ``now``, oldest charge first."""
        ...

    def grant(self, account: str, amount: int, now: float = 0.0, grant_id: str = "") -> int:
        """Add ``amount`` credits (never below zero) and return the balance.

        ``grant_id`` is the grant's id: the ``charge_id`` of its journal entry
        and its idempotency key. A store applies one ``(account, grant_id)``
        at most once while ``grant_id_live``: a repeat with the same
        amount writes nothing (no credit, no journal entry) and returns the
        balance the first one returned; a repeat with another amount raises
        ``grant_conflict_error``, also writing nothing. The id check comes
        before the balance cap's (``grant_exceeds_cap``). ``""`` means no id:
        applied every time."""
        ...

    def balance(self, account: str) -> int:
        """The account's stored balance (0 for an account never seen)."""
        ...

    def close(self) -> None:
        """Release connections. The ledger calls it once."""
        ...


@runtime_checkable
class JournalStore(Protocol):
    """A store that keeps the journal: an entry for each change, written in
    the same atomic step, and named cursors over it. Optional: on a store
    without it the ledger's journal methods raise
    :class:`~jobcredits_plugin.InvalidArgument`.

    ``journal_max_age`` is how many seconds
    :meth:`~jobcredits_plugin.Ledger.trim_journal` keeps entries when it is
    called without bounds (None: until a bound is given).
    """

    journal_max_age: float | None

    def read_journal(self, after: int, limit: int) -> list[JournalEntry]:
        """Up to ``limit`` entries with ``seq > after``, in order. Never returns
        an entry while one with a lower ``seq`` could still commit."""
        ...

    def trim_journal(self, through: int | None, cutoff: float | None) -> int:
        """Delete entries with ``seq <= through`` (no bound when None) and
        ``at < cutoff`` (no bound when None), but none that a stored cursor has
        not read (``seq`` above the lowest cursor's position). Returns how many
        went. Both bounds None deletes nothing."""
        ...

    def get_cursor(self, name: str) -> int | None:
        """The named cursor's position (the last ``seq`` its reader finished),
        or None when there is no such cursor."""
        ...

    def set_cursor(self, name: str, position: int, force: bool = False) -> int:
        """Store a cursor's position, creating it if needed, and return the
        stored position. Without ``force`` a cursor only moves forward, so two
        exporters racing on one cursor can never move it back over entries
        one of them already sent."""
        ...

    def delete_cursor(self, name: str) -> bool:
        """Forget a cursor (so it no longer holds entries back); True if it existed."""
        ...

    def cursors(self) -> dict[str, int]:
        """Every stored cursor and its position."""
        ...

    async def aread_journal(self, after: int, limit: int) -> list[JournalEntry]: ...
    async def atrim_journal(self, through: int | None, cutoff: float | None) -> int: ...
    async def aget_cursor(self, name: str) -> int | None: ...
    async def aset_cursor(self, name: str, position: int, force: bool = False) -> int: ...
    async def adelete_cursor(self, name: str) -> bool: ...
    async def acursors(self) -> dict[str, int]: ...


def lacking(obj: object, protocol: type) -> list[str]:
    """The members of ``protocol`` that ``obj`` lacks (or has set to None),
    by name: what an error message about a store that is none should say."""
    members: set[str] = set()
    for klass in protocol.__mro__:
        if klass.__module__ == __name__:  # not Protocol, Generic, object
            members.update(vars(klass), getattr(klass, "__annotations__", {}))
    return sorted(
        name for name in members if not name.startswith("_") and getattr(obj, name, None) is None
    )


def _sync_methods(protocol: type) -> tuple[str, ...]:
    return tuple(
        name
        for name, value in vars(protocol).items()
        if not name.startswith("_") and callable(value) and not inspect.iscoroutinefunction(value)
    )


#: The operations of :class:`Store` (each has an async twin named ``"a" + name``).
STORE_OPERATIONS = _sync_methods(Store)
#: The operations of :class:`JournalStore`, twinned the same way.
JOURNAL_OPERATIONS = _sync_methods(JournalStore)
