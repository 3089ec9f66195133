"""The value objects the ledger hands out.

They are frozen so that a record passed to a hook, kept in a test or returned
from ``lookup`` is a fact about one moment that nobody can edit behind the
store's back; the store's own state changes only through its atomic operations.
"""

from __future__ import annotations

from typing import Literal

import attrs

__all__ = ["CHARGED", "PENDING", "REFUNDED", "Charge", "JobRecord", "JobState", "Outcome"]

JobState = Literal["pending", "charged", "refunded"]
Outcome = Literal["charged", "reused"]

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
