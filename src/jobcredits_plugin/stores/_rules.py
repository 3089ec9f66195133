"""The one set of rules every store applies, as pure functions.

A store's job is atomicity, not policy. Each ledger operation becomes exactly
one atomic store operation; inside it the store reads the job's current record
(and the account's balance), asks the ``plan_*`` functions below what the
semantics of DESIGN §2 say must happen, writes that, and reports what it did as
:class:`Event` values. Because the decision is made inside the atomic step and
the events come out of it, the caller that gets an event is the only caller
that will ever get it: that is what lets the ledger fire each hook exactly once
across threads, processes and hosts.

Keeping the rules in one pure module means the stores cannot drift apart;
stores that must decide on the server (a Lua script, a SQL function) replay
their decision through :func:`claim_from_server` and run the same store suite.
Everything here is public (re-exported by :mod:`jobcredits_plugin.stores`) so
that a store of one's own is built from the same rules.
"""

from __future__ import annotations

import logging
from typing import Literal

import attrs

from .._errors import InvalidArgument, JobCreditsError
from .._records import CHARGED, PENDING, REFUNDED, JobRecord
from .._validation import MAX_CREDITS

__all__ = [
    "GRANT_ID_RETENTION",
    "ClaimPlan",
    "ClaimRequest",
    "ClaimResult",
    "ClaimStatus",
    "Event",
    "EventKind",
    "Key",
    "balance_cap_error",
    "charge_from_server",
    "claim_from_server",
    "deadline",
    "grant_conflict_error",
    "grant_exceeds_cap",
    "grant_id_live",
    "plan_claim",
    "plan_confirm",
    "plan_refund",
    "plan_settle",
    "reuse_from_server",
    "settled_so_far",
    "with_settled",
]

log = logging.getLogger("jobcredits_plugin")

#: A job's key, ``(account, scope, job_id)``: three parts a store keeps apart
#: (separate columns, or an unambiguous encoding), never joined into one string.
Key = tuple[str, str, str]
#: What an :class:`Event` reports: the hook it fires is ``"on_" + kind``.
EventKind = Literal["charge", "reuse", "refund", "expire"]
#: The outcome of a claim, one row of the table in DESIGN §2.
ClaimStatus = Literal["charged", "reused", "in_progress", "exhausted", "insufficient"]


@attrs.define(slots=True, eq=True)
class Event:
    """One committed change, reported by the store to the one caller that made it.

    Read-only by contract, not frozen by attrs, for the reason
    :class:`ClaimRequest` gives (its record is a frozen
    :class:`~jobcredits_plugin.JobRecord`)."""

    kind: EventKind
    record: JobRecord


@attrs.define(slots=True, eq=True)
class ClaimRequest:
    """Everything a store needs to decide one call, policy included.

    The ledger passes its policy (ttl, lease, max_uses, balances) with every
    call so that stores hold data only and two ledgers with different policies
    can share one store.

    Read-only by contract, not frozen by attrs: one is built for every charge,
    and attrs builds a frozen instance through a setter call per field, about
    six times the cost of these twelve plain slot writes (2.2 µs against
    0.4 µs, the largest single item of a charge on the memory store). A store
    that needs another value builds a new one (``attrs.evolve``).
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


@attrs.define(slots=True, eq=True)
class ClaimResult:
    """The outcome of one claim, as committed (read-only by contract, not
    frozen by attrs, for the reason :class:`ClaimRequest` gives).

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


@attrs.define(slots=True, eq=True)
class ClaimPlan:
    """What a store must write to carry out a claim (see :func:`plan_claim`).

    Read-only by contract, not frozen by attrs, for the reason
    :class:`ClaimRequest` gives: one is built for every charge."""

    #: What to return to the ledger once the writes below are committed.
    result: ClaimResult
    #: The record to store under the key, or None to leave the key as it is
    #: (``delete`` says whether the old record must go).
    write: JobRecord | None
    delete: bool
    #: Credits to add to the account's balance (negative for a debit).
    balance_delta: int


def _unchanged(result: ClaimResult) -> ClaimPlan:
    """A plan that writes nothing: the claim was refused."""
    return ClaimPlan(result, write=None, delete=False, balance_delta=0)


def _settle_stale(existing: JobRecord | None) -> tuple[tuple[Event, ...], int]:
    """The events that end a record a new charge replaces, and the credits
    they give back: a pending charge whose lease is over is refunded, a
    charged one past its window expires, a refunded one is simply gone."""
    if existing is None:
        return (), 0
    if existing.state == PENDING:
        # The worker died or overran its lease: refund its charge, then the
        # call takes the job over as a new charge.
        return (Event("refund", existing.with_state(REFUNDED)),), existing.debited
    if existing.state == CHARGED:
        return (Event("expire", existing),), 0
    return (), 0  # a refunded record left behind counts as absent


def _charge_anew(
    req: ClaimRequest, settled: tuple[Event, ...], available: int
) -> tuple[JobRecord, ClaimResult]:
    """A new pending charge for ``req``, after ``settled`` ended what was
    there; ``available`` is the balance once they did."""
    debit = req.cost if req.balances else 0
    # Positional, in the field order, as JobRecord.with_state does: this runs
    # on every new charge.
    record = JobRecord(
        req.account,
        req.scope,
        req.job_id,
        req.charge_id,
        PENDING,
        req.cost,
        req.tier,
        req.backend,
        req.now,  # charged_at
        req.now + req.ttl,  # expires_at
        1,  # uses
        req.now + req.lease,  # lease_until
        debit,  # debited
    )
    result = ClaimResult(
        "charged",
        record,
        available - debit if req.balances else None,
        (*settled, Event("charge", record)),
    )
    return record, result


def plan_claim(existing: JobRecord | None, balance: int, req: ClaimRequest) -> ClaimPlan:
    """Decide one call of ``Ledger.charge`` against the key's current record.

    ``balance`` is the account's current balance (only read when
    ``req.balances``). This function is the table of DESIGN §2, row by row.
    """
    now = req.now
    shown = balance if req.balances else None
    if existing is not None and existing.state == PENDING and now < existing.lease_until:
        # The first call is still running: the client must wait.
        return _unchanged(
            ClaimResult("in_progress", existing, shown, retry_after=existing.lease_until - now)
        )
    if existing is not None and existing.state == CHARGED and now < existing.expires_at:
        if req.max_uses is not None and existing.uses >= req.max_uses:
            return _unchanged(ClaimResult("exhausted", existing, shown))
        reused = existing.used_once_more()
        return ClaimPlan(
            ClaimResult("reused", reused, shown, (Event("reuse", reused),)),
            write=reused,
            delete=False,
            balance_delta=0,
        )
    settled, refunded = ((), 0) if existing is None else _settle_stale(existing)
    available = balance + refunded
    if req.balances and available < req.cost:
        # Nothing new is recorded, but what was settled stays settled.
        return ClaimPlan(
            ClaimResult("insufficient", None, available, settled),
            write=None,
            delete=existing is not None,
            balance_delta=refunded,
        )
    record, result = _charge_anew(req, settled, available)
    return ClaimPlan(result, write=record, delete=False, balance_delta=refunded - record.debited)


# -- a server's usual answers, without the replay --------------------------------------
#
# A store whose server decides the claim (a Lua script, a SQL function) gets,
# on nearly every call, one of two answers: a follow-up's reuse or a new job's
# charge where nothing was found. These build their results straight from the
# answer when plan_claim's row for it holds, the same tests it makes, rather
# than rebuilding the record as found and replaying the plan around it. Any
# other answer, or one the rules would not give (None here), goes through
# claim_from_server's replay and its logged disagreement.


def reuse_from_server(reused: JobRecord, balance: int, req: ClaimRequest) -> ClaimResult | None:
    """The server reused the job: ``reused`` is its record with this use
    counted. The result, when plan_claim's reuse row holds (a charged,
    live job, this use within ``max_uses``); None when it does not."""
    max_uses = req.max_uses
    if (
        reused.state == CHARGED
        and req.now < reused.expires_at
        and (max_uses is None or reused.uses <= max_uses)
    ):
        shown = balance if req.balances else None
        return ClaimResult("reused", reused, shown, (Event("reuse", reused),))
    return None


def charge_from_server(balance: int, req: ClaimRequest) -> ClaimResult | None:
    """The server charged a job under which it found nothing. The result,
    when plan_claim's new-charge row holds (with balances on, ``balance``
    covers the cost); None when it does not."""
    if req.balances and balance < req.cost:
        return None
    return _charge_anew(req, (), balance)[1]


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
    :class:`~jobcredits_plugin.JobCreditsError` (a 500 with the generic detail for clients).
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
    shown = balance if req.balances else None
    if status == "in_progress" and existing is not None:
        return ClaimResult(
            "in_progress", existing, shown, retry_after=max(0.0, existing.lease_until - req.now)
        )
    if status == "exhausted" and existing is not None:
        return ClaimResult("exhausted", existing, shown)
    if status == "reused" and existing is not None:
        reused = existing.used_once_more()
        return ClaimResult("reused", reused, shown, (Event("reuse", reused),))
    if status in ("charged", "insufficient"):
        # What was there (if anything) was settled first: a stale pending
        # charge refunded, an expired one ended.
        settled, refunded = _settle_stale(existing)
        available = balance + refunded
        if status == "insufficient":
            return ClaimResult("insufficient", None, available, settled)
        return _charge_anew(req, settled, available)[1]
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


def deadline(record: JobRecord) -> float:
    """When the record next needs attention: its lease end while pending, its
    expiry once charged. Stores index this one number for pruning."""
    return record.lease_until if record.state == PENDING else record.expires_at


# -- grants ------------------------------------------------------------------------


def grant_exceeds_cap(before: int, amount: int) -> bool:
    """Whether a grant of ``amount`` onto a balance of ``before`` would take it
    past the most a balance may hold (2**53 - 1 credits).

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


# -- operations in several steps ---------------------------------------------------

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
