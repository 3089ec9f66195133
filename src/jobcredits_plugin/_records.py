"""The value objects the ledger hands out.

They are frozen so that a record passed to a hook, kept in a test or returned
from ``lookup`` is a fact about one moment that nobody can edit behind the
store's back; the store's own state changes only through its atomic operations.
"""

from __future__ import annotations

from typing import Literal

import attrs

__all__ = [
    "CHARGED",
    "JOURNAL_KINDS",
    "PENDING",
    "REFUNDED",
    "Charge",
    "JobRecord",
    "JobState",
    "JournalEntry",
    "JournalKind",
    "Outcome",
]

JobState = Literal["pending", "charged", "refunded"]
Outcome = Literal["charged", "reused"]
JournalKind = Literal["charge", "reuse", "refund", "expire", "grant"]

JOURNAL_KINDS: tuple[JournalKind, ...] = ("charge", "reuse", "refund", "expire", "grant")

PENDING: JobState = "pending"
CHARGED: JobState = "charged"
REFUNDED: JobState = "refunded"


@attrs.frozen(slots=True, weakref_slot=False)
class JobRecord:
    """One job as the store holds it.

    ``charge_id`` identifies one charge of the job: a job refunded and charged
    again gets a new one, so a late ``confirm`` or ``refund`` from a worker whose
    lease was taken over cannot touch the newer charge.

    ``expires_at`` is ``charged_at + ttl`` and never moves: follow-up calls do
    not extend the window. ``lease_until`` is when a ``pending`` first call is
    presumed dead and its charge may be refunded and taken over. ``debited`` is
    what the charge took from the account's balance (0 when balances were off),
    which is exactly what a refund gives back.
    """

    account: str
    scope: str
    job_id: str
    charge_id: str
    state: JobState
    cost: int
    tier: str | None
    backend: str | None
    charged_at: float
    expires_at: float
    uses: int
    lease_until: float = 0.0
    debited: int = 0

    def with_state(self, state: JobState) -> JobRecord:
        """This record in another state. Spelled out rather than
        ``attrs.evolve``, which introspects the class on every call: this runs
        on every confirm and refund."""
        return JobRecord(
            self.account,
            self.scope,
            self.job_id,
            self.charge_id,
            state,
            self.cost,
            self.tier,
            self.backend,
            self.charged_at,
            self.expires_at,
            self.uses,
            self.lease_until,
            self.debited,
        )

    def used_once_more(self) -> JobRecord:
        """This record with one more call served (a reuse)."""
        return JobRecord(
            self.account,
            self.scope,
            self.job_id,
            self.charge_id,
            self.state,
            self.cost,
            self.tier,
            self.backend,
            self.charged_at,
            self.expires_at,
            self.uses + 1,
            self.lease_until,
            self.debited,
        )

    @property
    def key(self) -> tuple[str, str, str]:
        """The job key ``(account, scope, job_id)``."""
        return (self.account, self.scope, self.job_id)

    def is_live(self, now: float) -> bool:
        """Whether a read at ``now`` sees this record: any record up to its
        ``expires_at`` (a pending one too, whose lease may still run), never
        after it, and never a refunded one.

        Since a lease never outlasts the window, a pending record past
        ``expires_at`` is one whose worker is presumed dead; the next claim or
        prune refunds it, so hiding it from reads loses nothing.
        """
        return self.state != REFUNDED and now < self.expires_at


@attrs.frozen(slots=True)
class Charge:
    """What one call to :meth:`Ledger.charge` did.

    ``outcome`` is ``"charged"`` when this call opened (and paid for) the job,
    ``"reused"`` when it rode on an earlier charge. ``balance`` is the credits
    left after the call, or ``None`` when balances are off.
    """

    outcome: Outcome
    record: JobRecord
    balance: int | None = None

    @property
    def charged(self) -> bool:
        """True when this call is the one that paid for the job."""
        return self.outcome == "charged"


@attrs.frozen(slots=True)
class JournalEntry:
    """One committed change to the books, as the store wrote it into its journal
    in the same atomic step as the change itself.

    Hooks are told about a change after it commits, so a process that dies in
    between never tells them; the journal cannot miss it, because the entry
    and the change commit together or not at all. Billing exports read it
    (see :meth:`Ledger.journal <jobcredits_plugin.Ledger.journal>`).

    ``seq`` only grows within one store, and a reader that has seen ``seq``
    ``n`` will never later find an entry below ``n`` it did not see: entries
    become readable in ``seq`` order. ``kind`` is ``"charge"`` (a job was
    charged; ``cost`` is its price), ``"reuse"`` (a follow-up rode on the
    charge; only written when the store journals reuses), ``"refund"`` (the
    charge was given back), ``"expire"`` (the job's window closed; nothing
    moves) or ``"grant"`` (credits added or taken away: ``scope``, ``job_id``,
    ``tier`` and ``backend`` are None and ``cost`` is the amount asked for).

    ``delta`` is what the change did to the account's stored balance (``-cost``
    for a charge with balances on, ``+`` what was debited for a refund, the
    actual change for a grant, 0 otherwise), and ``balance`` is that balance
    right after it; so a journal read from its start rebuilds every balance.
    ``at`` is the ledger clock's time of the change.
    """

    seq: int
    kind: JournalKind
    account: str
    scope: str | None
    job_id: str | None
    charge_id: str
    cost: int
    tier: str | None
    backend: str | None
    delta: int
    balance: int
    at: float

    @property
    def idempotency_key(self) -> str:
        """A stable identifier for this entry, to hand a billing API as its
        idempotency key: ``"<charge_id>:<kind>"`` (a charge is charged,
        refunded or expired at most once), ``"<charge_id>:reuse:<seq>"`` for
        reuses, of which one charge can have many. An exporter that crashes
        after sending and sends again is deduplicated by the receiver."""
        if self.kind == "reuse":
            return f"{self.charge_id}:reuse:{self.seq}"
        return f"{self.charge_id}:{self.kind}"

    def to_dict(self) -> dict[str, object]:
        """The entry as JSON-ready values, ``idempotency_key`` included (the
        shape ``jobcredits export`` prints, one object a line)."""
        return {
            "seq": self.seq,
            "kind": self.kind,
            "idempotency_key": self.idempotency_key,
            "account": self.account,
            "scope": self.scope,
            "job_id": self.job_id,
            "charge_id": self.charge_id,
            "cost": self.cost,
            "tier": self.tier,
            "backend": self.backend,
            "delta": self.delta,
            "balance": self.balance,
            "at": self.at,
        }
