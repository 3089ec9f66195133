"""The store protocol and the one set of rules every store applies.

A store's job is atomicity, not policy. Each ledger operation becomes exactly
one atomic store operation; inside it the store reads the job's current record
(and the account's balance), asks the pure ``plan_*`` functions below what the
semantics of DESIGN §2 say must happen, writes that, and reports what it did as
a list of :class:`Event`. Because the decision is made inside the atomic step
and the events come out of it, the caller that gets an event is the only caller
that will ever get it: that is what lets the ledger fire each hook exactly once
across threads, processes and hosts.

Keeping the rules in one pure module means the memory and SQLite stores cannot
drift apart; stores that must decide on the server (a Lua script, a SQL
statement) are tested against the same store suite.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import attrs

from .._errors import InvalidArgument, JobCreditsError
from .._records import CHARGED, PENDING, REFUNDED, JobRecord, JournalEntry, JournalKind
from .._validation import MAX_CREDITS, configuring

__all__ = [
    "GRANT_ID_RETENTION",
    "AsyncStore",
    "BaseStore",
    "ClaimRequest",
    "ClaimResult",
    "Event",
    "EventKind",
    "JournalRow",
    "Key",
    "Store",
    "balance_cap_error",
    "claim_from_server",
    "entry_delta",
    "entry_from_row",
    "grant_conflict_error",
    "grant_exceeds_cap",
    "grant_id_live",
    "grant_row",
    "journal_rows",
    "plan_claim",
    "plan_confirm",
    "plan_refund",
    "plan_settle",
    "settled_so_far",
    "with_settled",
]

log = logging.getLogger("jobcredits_plugin")

Key = tuple[str, str, str]
EventKind = Literal["charge", "reuse", "refund", "expire"]
ClaimStatus = Literal["charged", "reused", "in_progress", "exhausted", "insufficient"]


@attrs.frozen(slots=True)
class Event:
    """One committed change, reported by the store to the one caller that made it."""

    kind: EventKind
    record: JobRecord


@attrs.frozen(slots=True)
class ClaimRequest:
    """Everything a store needs to decide one call, policy included.

    The ledger passes its policy (ttl, lease, max_uses, balances) with every
    call so that stores hold data only and two ledgers with different policies
    can share one store.
    """

    account: str
    scope: str
    job_id: str
    charge_id: str
    cost: int
    tier: str | None
    backend: str | None
    now: float
    ttl: float
    lease: float
    max_uses: int | None
    balances: bool

    @property
    def key(self) -> Key:
        return (self.account, self.scope, self.job_id)


@attrs.frozen(slots=True)
class ClaimResult:
    """The outcome of one claim, as committed.

    ``record`` is the job's record after the call (for ``in_progress`` and
    ``exhausted``, the record that blocked it; for ``insufficient``, ``None``).
    ``balance`` is the account's balance after the call when balances are on.
    ``events`` lists every committed change in order; a claim that settles a
    stale or expired record reports that settlement before its own charge.
    """

    status: ClaimStatus
    record: JobRecord | None
    balance: int | None = None
    events: tuple[Event, ...] = ()
    retry_after: float = 0.0


@attrs.frozen(slots=True)
class ClaimPlan:
    """What a store must write to carry out a claim (see :func:`plan_claim`)."""

    result: ClaimResult
    #: The record to store under the key, or None to leave the key as it is
    #: (``delete`` says whether the old record must go).
    write: JobRecord | None
    delete: bool
    #: Credits to add to the account's balance (negative for a debit).
    balance_delta: int


def plan_claim(existing: JobRecord | None, balance: int, req: ClaimRequest) -> ClaimPlan:
    """Decide one call of ``Ledger.charge`` against the key's current record.

    ``balance`` is the account's current balance (only read when
    ``req.balances``). This function is the table of DESIGN §2, row by row.
    """
    now = req.now
    events: list[Event] = []
    delta = 0
    settled = False
    if existing is not None:
        if existing.state == PENDING:
            if now < existing.lease_until:
                # The first call is still running: the client must wait.
                return ClaimPlan(
                    ClaimResult(
                        "in_progress",
                        existing,
                        balance if req.balances else None,
                        retry_after=existing.lease_until - now,
                    ),
                    write=None,
                    delete=False,
                    balance_delta=0,
                )
            # The worker died or overran its lease: refund its charge, then
            # this call takes the job over as a new charge.
            events.append(Event("refund", existing.with_state(REFUNDED)))
            delta += existing.debited
            settled = True
        elif existing.state == CHARGED and now < existing.expires_at:
            if req.max_uses is not None and existing.uses >= req.max_uses:
                return ClaimPlan(
                    ClaimResult("exhausted", existing, balance if req.balances else None),
                    write=None,
                    delete=False,
                    balance_delta=0,
                )
            reused = existing.used_once_more()
            return ClaimPlan(
                ClaimResult(
                    "reused", reused, balance if req.balances else None, (Event("reuse", reused),)
                ),
                write=reused,
                delete=False,
                balance_delta=0,
            )
        elif existing.state == CHARGED:
            events.append(Event("expire", existing))
            settled = True
        else:  # a refunded record left behind counts as absent
            settled = True

    available = balance + delta
    debit = 0
    if req.balances:
        if available < req.cost:
            return ClaimPlan(
                ClaimResult("insufficient", None, available, tuple(events)),
                write=None,
                delete=settled,
                balance_delta=delta,
            )
        debit = req.cost
    record = JobRecord(
        account=req.account,
        scope=req.scope,
        job_id=req.job_id,
        charge_id=req.charge_id,
        state=PENDING,
        cost=req.cost,
        tier=req.tier,
        backend=req.backend,
        charged_at=now,
        expires_at=now + req.ttl,
        uses=1,
        lease_until=now + req.lease,
        debited=debit,
    )
    events.append(Event("charge", record))
    return ClaimPlan(
        ClaimResult("charged", record, available - debit if req.balances else None, tuple(events)),
        write=record,
        delete=False,
        balance_delta=delta - debit,
    )


def claim_from_server(
    store: str, status: str, existing: JobRecord | None, balance: int, req: ClaimRequest
) -> ClaimResult:
    """The result of a claim a server decided (a SQL function, a Lua script).

    The server reports the record it found, the balance it decided on and its
    decision; replaying :func:`plan_claim` on those inputs builds the events
    every store reports. Should the rules name another row of the table than
    the server applied (a bug in one of them), the server's decision is the
    truth: it has committed, and the caller's hooks, status code and books
    must follow what was written, not what the rules would have written. The
    disagreement is logged at ERROR and the result is built from the server's
    status (``store`` names the store in that log line). A status that is no
    row of the table at all cannot be turned into a result: that raises a
    :class:`JobCreditsError` (a 500 with the generic detail for clients).
    """
    plan = plan_claim(existing, balance, req)
    if plan.result.status == status:
        return plan.result
    log.error(
        "%s: the server decided %r where the rules decide %r for %r (found %r, balance %d); "
        "reporting what the server committed",
        store,
        status,
        plan.result.status,
        req,
        existing,
        balance,
    )
    balance_or_none = balance if req.balances else None
    if status == "in_progress" and existing is not None:
        return ClaimResult(
            "in_progress",
            existing,
            balance_or_none,
            retry_after=max(0.0, existing.lease_until - req.now),
        )
    if status == "exhausted" and existing is not None:
        return ClaimResult("exhausted", existing, balance_or_none)
    if status == "reused" and existing is not None:
        reused = existing.used_once_more()
        return ClaimResult("reused", reused, balance_or_none, (Event("reuse", reused),))
    if status in ("charged", "insufficient"):
        # What was there (if anything) was settled first: a stale pending
        # charge refunded, an expired one ended.
        events: list[Event] = []
        delta = 0
        if existing is not None and existing.state == PENDING:
            events.append(Event("refund", existing.with_state(REFUNDED)))
            delta = existing.debited
        elif existing is not None and existing.state == CHARGED:
            events.append(Event("expire", existing))
        available = balance + delta
        if status == "insufficient":
            return ClaimResult("insufficient", None, available, tuple(events))
        debit = req.cost if req.balances else 0
        record = JobRecord(
            account=req.account,
            scope=req.scope,
            job_id=req.job_id,
            charge_id=req.charge_id,
            state=PENDING,
            cost=req.cost,
            tier=req.tier,
            backend=req.backend,
            charged_at=req.now,
            expires_at=req.now + req.ttl,
            uses=1,
            lease_until=req.now + req.lease,
            debited=debit,
        )
        events.append(Event("charge", record))
        return ClaimResult(
            "charged", record, available - debit if req.balances else None, tuple(events)
        )
    raise JobCreditsError(
        f"{store}: the server answered the claim with {status!r} (found {existing!r}), "
        "which is no outcome of a claim"
    )


def plan_confirm(
    existing: JobRecord | None, charge_id: str | None, now: float
) -> tuple[JobRecord | None, bool]:
    """Decide ``confirm``: returns (the record to report, whether to write it).

    A pending charge is confirmed even after its lease ran out, as long as no
    other call took it over: the work was done, so the charge stands.
    """
    if existing is None or (charge_id is not None and existing.charge_id != charge_id):
        return None, False
    if existing.state == PENDING:
        return existing.with_state(CHARGED), True
    if existing.is_live(now):
        return existing, False
    return None, False


def plan_refund(existing: JobRecord | None, charge_id: str | None, now: float) -> Event | None:
    """Decide ``refund``: the refund event to commit (delete the record, give
    ``debited`` back), or None when there is nothing this call may refund."""
    if existing is None or (charge_id is not None and existing.charge_id != charge_id):
        return None
    if not existing.is_live(now):
        return None
    return Event("refund", existing.with_state(REFUNDED))


def plan_settle(existing: JobRecord, now: float) -> Event | None:
    """Decide what ``prune`` does with one record: expire it, refund a stale
    pending charge, or leave it (None)."""
    if existing.state == PENDING:
        if now >= existing.lease_until:
            return Event("refund", existing.with_state(REFUNDED))
        return None
    if existing.state == REFUNDED:  # stores delete these at once; never report twice
        return None
    if now >= existing.expires_at:
        return Event("expire", existing)
    return None


#: One journal entry before the store gives it its sequence number: kind,
#: account, scope, job_id, charge_id, cost, tier, backend, delta, balance, at
#: (the fields of :class:`JournalEntry` after ``seq``, in order).
JournalRow = tuple[
    JournalKind,
    str,
    "str | None",
    "str | None",
    str,
    int,
    "str | None",
    "str | None",
    int,
    int,
    float,
]


def entry_delta(event: Event) -> int:
    """What an event did to its account's stored balance: a charge took what it
    debited, a refund gave that back, reuses and expiries move nothing."""
    if event.kind == "charge":
        return -event.record.debited
    if event.kind == "refund":
        return event.record.debited
    return 0


def journal_rows(
    events: Iterable[Event],
    balance_before: Callable[[str], int],
    now: float,
    reuses: bool,
) -> list[JournalRow]:
    """The journal rows for events committed in one atomic step, in order.

    ``balance_before`` gives an account's balance before the step; each row's
    balance is that plus the deltas of the rows before it (a claim that takes
    over a stale charge refunds, then charges: two rows, two balances). No
    clamping is needed: a charge only debits what the balance holds, and
    refunds only add. Reuses are left out unless ``reuses``.
    """
    running: dict[str, int] = {}
    rows: list[JournalRow] = []
    for event in events:
        if event.kind == "reuse" and not reuses:
            continue
        r = event.record
        delta = entry_delta(event)
        balance = running.get(r.account)
        if balance is None:
            balance = balance_before(r.account)
        balance += delta
        running[r.account] = balance
        rows.append(
            (
                event.kind,
                r.account,
                r.scope,
                r.job_id,
                r.charge_id,
                r.cost,
                r.tier,
                r.backend,
                delta,
                balance,
                now,
            )
        )
    return rows


def grant_row(
    account: str, amount: int, grant_id: str, before: int, after: int, now: float
) -> JournalRow:
    """The journal row of a grant: ``cost`` is the amount asked for, ``delta``
    what the (never negative) balance really moved."""
    return ("grant", account, None, None, grant_id, amount, None, None, after - before, after, now)


def grant_exceeds_cap(before: int, amount: int) -> bool:
    """Whether a grant of ``amount`` onto a balance of ``before`` would take it
    past :data:`~jobcredits_plugin._validation.MAX_CREDITS`.

    Only a grant that adds is refused: one that takes credits away is always
    allowed, also from a balance that refunds took past the cap (see the
    "credit range" section of the concepts docs). Every store makes this check
    inside the atomic step that would write the grant.
    """
    return amount > 0 and before + amount > MAX_CREDITS


#: How long, in seconds by the clock the ledger passes in (the server's, for a
#: store with ``server_clock``), a store remembers a
#: grant id: a grant repeated with the same ``(account, grant_id)`` within this
#: time of the first one is not applied again (see :meth:`Store.grant`).
#: Seven days: a client retrying a grant whose answer it lost retries within
#: minutes, a batch job re-run after a failure within days.
GRANT_ID_RETENTION = 7 * 86400.0


def grant_id_live(at: float, now: float) -> bool:
    """Whether a grant id first applied at ``at`` is still remembered at ``now``
    (expired ones are treated as never seen, and pruned)."""
    return now < at + GRANT_ID_RETENTION


def grant_conflict_error(first: int, amount: int) -> InvalidArgument:
    """The 400 a store raises, having written nothing, for a grant that repeats
    a remembered ``(account, grant_id)`` with another amount: a grant id names
    one grant, and reusing it for another is the caller's bug (applying it
    would lose either the first grant's meaning or the second's credits)."""
    return InvalidArgument(
        f"this grant_id was already used for a grant of {first} credits to this account, "
        f"not {amount}: a retry must repeat the same amount, a new grant needs a new "
        "grant_id; nothing was granted"
    )


def balance_cap_error(before: int, amount: int) -> InvalidArgument:
    """The 400 a store raises, having written nothing, for a grant that
    :func:`grant_exceeds_cap` refuses."""
    return InvalidArgument(
        f"granting {amount} credits would take the balance ({before}) past {MAX_CREDITS}, "
        "the most a balance may hold; nothing was granted"
    )


_SETTLED = "jobcredits_settled"


def with_settled(exc: BaseException, events: list[Event]) -> BaseException:
    """Attach the events a multi-step operation (``prune``, which commits one
    batch at a time) had already committed when a later step failed, so the
    ledger still fires their hooks before it re-raises ``exc``."""
    setattr(exc, _SETTLED, list(events))
    return exc


def settled_so_far(exc: BaseException) -> list[Event]:
    """The committed events :func:`with_settled` attached to ``exc`` (or to
    the error it was raised from), else an empty list."""
    seen: BaseException | None = exc
    while seen is not None:
        events = getattr(seen, _SETTLED, None)
        if events is not None:
            return list(events)
        seen = seen.__cause__
    return []


def entry_from_row(seq: int, row: Sequence[Any]) -> JournalEntry:
    """A :class:`JournalEntry` from its sequence number and a row laid out as
    :data:`JournalRow` (stores that keep rows as tuples read them back so)."""
    return JournalEntry(
        seq=int(seq),
        kind=row[0],
        account=row[1],
        scope=row[2],
        job_id=row[3],
        charge_id=row[4],
        cost=int(row[5]),
        tier=row[6],
        backend=row[7],
        delta=int(row[8]),
        balance=int(row[9]),
        at=float(row[10]),
    )


def deadline(record: JobRecord) -> float:
    """When the record next needs attention: its lease end while pending, its
    expiry once charged. Stores index this one number for pruning."""
    return record.lease_until if record.state == PENDING else record.expires_at


@runtime_checkable
class Store(Protocol):
    """What the ledger needs from a store. Each method is one atomic operation."""

    def claim(self, req: ClaimRequest) -> ClaimResult: ...
    def confirm(self, key: Key, charge_id: str | None, now: float) -> JobRecord | None: ...
    def refund(self, key: Key, charge_id: str | None, now: float) -> Event | None: ...
    def lookup(self, key: Key, now: float) -> JobRecord | None: ...
    def prune(self, now: float, limit: int | None = None) -> list[Event]: ...
    def snapshot(self, now: float) -> list[JobRecord]: ...
    def grant(self, account: str, amount: int, now: float = 0.0, grant_id: str = "") -> int:
        """Add ``amount`` credits (never below zero) and return the balance.

        ``grant_id`` is the grant's id: the ``charge_id`` of its journal entry
        and its idempotency key. A store applies one ``(account, grant_id)``
        at most once while ``grant_id_live``: a repeat with the same
        amount writes nothing (no credit, no journal entry) and returns the
        balance the first one returned; a repeat with another amount raises
        ``grant_conflict_error``, also writing nothing. The id check comes
        before the balance cap's. ``""`` means no id: applied every time."""
        ...

    def balance(self, account: str) -> int: ...
    def read_journal(self, after: int, limit: int) -> list[JournalEntry]: ...
    def trim_journal(self, through: int | None, cutoff: float | None) -> int: ...
    def get_cursor(self, name: str) -> int | None: ...
    def set_cursor(self, name: str, position: int, force: bool = False) -> int: ...
    def delete_cursor(self, name: str) -> bool: ...
    def cursors(self) -> dict[str, int]: ...
    def close(self) -> None: ...


@runtime_checkable
class AsyncStore(Protocol):
    """The async twin of :class:`Store`: the same operations, awaitable."""

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
    async def aread_journal(self, after: int, limit: int) -> list[JournalEntry]: ...
    async def atrim_journal(self, through: int | None, cutoff: float | None) -> int: ...
    async def aget_cursor(self, name: str) -> int | None: ...
    async def aset_cursor(self, name: str, position: int, force: bool = False) -> int: ...
    async def adelete_cursor(self, name: str) -> bool: ...
    async def acursors(self) -> dict[str, int]: ...
    async def aclose(self) -> None: ...


def _configuring(fn: Callable[..., Any], what: str) -> Callable[..., Any]:
    """``fn``, raising the InvalidArgument of a failed check as ConfigurationError."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with configuring(what):
            return fn(*args, **kwargs)

    wrapper._configuring = True  # type: ignore[attr-defined]
    return wrapper


class BaseStore:
    """Shared plumbing: async twins that run the blocking operation in a worker
    thread, so that a store built on a blocking driver never stalls the event
    loop. Stores whose operations never block (memory) or that have a native
    async driver override these."""

    #: The URL scheme(s) of this store, for error messages and ``from_url``.
    schemes: Sequence[str] = ()
    #: True when the async twins never suspend mid-operation, so a cancelled
    #: caller cannot leave a committed change behind unreported; the ledger
    #: then awaits them directly instead of shielding them in a task.
    cancel_safe: bool = False
    #: Whether the store writes a journal entry with every change (see
    #: :class:`~jobcredits_plugin.JournalEntry`); stores take it as ``journal=``.
    journal: bool = True
    #: Whether reuses get journal entries too (off by default: one job can
    #: have many, and no balance moves).
    journal_reuses: bool = False
    #: Seconds a journal entry is kept by
    #: :meth:`~jobcredits_plugin.Ledger.trim_journal` when it is called with no
    #: bound (``jobcredits prune`` does), unless a cursor has not read it yet.
    journal_max_age: float | None = 7 * 86400.0
    #: Whether the store ignores the ``now`` it is passed and decides by its
    #: server's clock, read inside each atomic operation (the shared stores'
    #: ``server_clock=True``). Stores on the ledger's host have one clock
    #: only, the ledger's, and keep this False.
    server_clock: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Make every store's constructor and ``from_url`` report a bad option
        as the app's :class:`~jobcredits_plugin.ConfigurationError`, not as the
        400 that describes a client's input: a store is only ever built by
        the app's own setup code. The stores reuse the input checks
        (:func:`~jobcredits_plugin._validation.configuring` does the rest)."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if callable(init) and not getattr(init, "_configuring", False):
            setattr(cls, "__init__", _configuring(init, cls.__name__))  # noqa: B010
        from_url = cls.__dict__.get("from_url")
        if isinstance(from_url, classmethod) and not getattr(
            from_url.__func__, "_configuring", False
        ):
            setattr(  # noqa: B010
                cls, "from_url", classmethod(_configuring(from_url.__func__, cls.__name__))
            )

    def claim(self, req: ClaimRequest) -> ClaimResult:
        raise NotImplementedError

    def confirm(self, key: Key, charge_id: str | None, now: float) -> JobRecord | None:
        raise NotImplementedError

    def refund(self, key: Key, charge_id: str | None, now: float) -> Event | None:
        raise NotImplementedError

    def lookup(self, key: Key, now: float) -> JobRecord | None:
        raise NotImplementedError

    def prune(self, now: float, limit: int | None = None) -> list[Event]:
        raise NotImplementedError

    def snapshot(self, now: float) -> list[JobRecord]:
        raise NotImplementedError

    def grant(self, account: str, amount: int, now: float = 0.0, grant_id: str = "") -> int:
        raise NotImplementedError

    def balance(self, account: str) -> int:
        raise NotImplementedError

    # -- the journal -------------------------------------------------------------

    def read_journal(self, after: int, limit: int) -> list[JournalEntry]:
        """Up to ``limit`` entries with ``seq > after``, in order. Never returns
        an entry while one with a lower ``seq`` could still commit."""
        raise NotImplementedError

    def trim_journal(self, through: int | None, cutoff: float | None) -> int:
        """Delete entries with ``seq <= through`` (no bound when None) and
        ``at < cutoff`` (no bound when None), but none that a stored cursor has
        not read (``seq`` above the lowest cursor's position). Returns how many
        went. Both bounds None deletes nothing."""
        raise NotImplementedError

    def get_cursor(self, name: str) -> int | None:
        """The named cursor's position (the last ``seq`` its reader finished),
        or None when there is no such cursor."""
        raise NotImplementedError

    def set_cursor(self, name: str, position: int, force: bool = False) -> int:
        """Store a cursor's position, creating it if needed, and return the
        stored position. Without ``force`` a cursor only moves forward, so two
        exporters racing on one cursor can never move it back over entries
        one of them already sent."""
        raise NotImplementedError

    def delete_cursor(self, name: str) -> bool:
        """Forget a cursor (so it no longer holds entries back); True if it existed."""
        raise NotImplementedError

    def cursors(self) -> dict[str, int]:
        """Every stored cursor and its position."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections; the default has nothing to release."""

    async def aclaim(self, req: ClaimRequest) -> ClaimResult:
        return await asyncio.to_thread(self.claim, req)

    async def aconfirm(self, key: Key, charge_id: str | None, now: float) -> JobRecord | None:
        return await asyncio.to_thread(self.confirm, key, charge_id, now)

    async def arefund(self, key: Key, charge_id: str | None, now: float) -> Event | None:
        return await asyncio.to_thread(self.refund, key, charge_id, now)

    async def alookup(self, key: Key, now: float) -> JobRecord | None:
        return await asyncio.to_thread(self.lookup, key, now)

    async def aprune(self, now: float, limit: int | None = None) -> list[Event]:
        return await asyncio.to_thread(self.prune, now, limit)

    async def asnapshot(self, now: float) -> list[JobRecord]:
        return await asyncio.to_thread(self.snapshot, now)

    async def agrant(self, account: str, amount: int, now: float = 0.0, grant_id: str = "") -> int:
        return await asyncio.to_thread(self.grant, account, amount, now, grant_id)

    async def abalance(self, account: str) -> int:
        return await asyncio.to_thread(self.balance, account)

    async def aread_journal(self, after: int, limit: int) -> list[JournalEntry]:
        return await asyncio.to_thread(self.read_journal, after, limit)

    async def atrim_journal(self, through: int | None, cutoff: float | None) -> int:
        return await asyncio.to_thread(self.trim_journal, through, cutoff)

    async def aget_cursor(self, name: str) -> int | None:
        return await asyncio.to_thread(self.get_cursor, name)

    async def aset_cursor(self, name: str, position: int, force: bool = False) -> int:
        return await asyncio.to_thread(self.set_cursor, name, position, force)

    async def adelete_cursor(self, name: str) -> bool:
        return await asyncio.to_thread(self.delete_cursor, name)

    async def acursors(self) -> dict[str, int]:
        return await asyncio.to_thread(self.cursors)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)
