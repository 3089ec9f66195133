"""The original JavaScript module, ported to Python once, for the benchmark and the tests.

``recap-relay/server/job-credits.js`` (see DESIGN §1) kept its jobs in a
``Map`` keyed by ``install_id|job_id`` and pruned expired ones by scanning
every entry on each ``lookupJob`` and ``markJobCharged``; the relay looked a
job up and, on a miss, charged a credit and marked the job: two steps.
:class:`OriginalJobCredits` is that module function by function, with
``Date.now()`` read from a clock given to it (a ``FakeClock`` in tests).

Two users, one port: ``benchmarks/run.py`` times it as the baseline the
memory store is measured against (section (a)), and ``tests/test_original.py``
replays the same steps on it and on the ledger and compares what a client
would see. Its flaws (the ``|`` key collision, the lookup/mark race, the
O(n) scan) are kept on purpose: they are what the ledger is measured and
tested against.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["JOB_TTL_MS", "OriginalJobCredits"]

#: The original's window: 1 hour, in milliseconds.
JOB_TTL_MS = 60 * 60 * 1000


class OriginalJobCredits:
    """``job-credits.js`` as a class: ``jobs`` is its ``Map``, each value
    ``{"backend", "tier", "charged_at" (ms), "refunded"}``."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.clock = clock

    def now_ms(self) -> int:
        """``Date.now()``: the clock's seconds as integer milliseconds."""
        return int(self.clock() * 1000)

    @staticmethod
    def key(install_id: str, job_id: str) -> str:
        return f"{install_id}|{job_id}"

    def lookup_job(self, install_id: str, job_id: str) -> dict[str, Any] | None:
        """``lookupJob``: the live, unrefunded entry, or None (a new job)."""
        if not install_id or not job_id:
            return None
        self.prune_expired()
        existing = self.jobs.get(self.key(install_id, job_id))
        if existing is not None and not existing["refunded"]:
            return existing
        return None

    def mark_job_charged(self, install_id: str, job_id: str, *, backend: Any, tier: Any) -> None:
        """``markJobCharged``: record the job, unless a live unrefunded entry
        is already there (a no-op then)."""
        if not install_id or not job_id:
            return
        self.prune_expired()
        k = self.key(install_id, job_id)
        existing = self.jobs.get(k)
        if existing is not None and not existing["refunded"]:
            return
        self.jobs[k] = {
            "backend": backend,
            "tier": tier,
            "charged_at": self.now_ms(),
            "refunded": False,
        }

    def refund_job(self, install_id: str, job_id: str) -> None:
        """``refundJob``: flag the entry refunded (it stays until it ages out)."""
        if not install_id or not job_id:
            return
        existing = self.jobs.get(self.key(install_id, job_id))
        if existing is not None:
            existing["refunded"] = True

    def prune_expired(self) -> None:
        """``pruneExpired``: visit every entry, drop those charged over an
        hour ago. JS deletes from a Map while iterating it; a Python dict
        needs the keys collected first. Either way every entry is visited."""
        cutoff = self.now_ms() - JOB_TTL_MS
        jobs = self.jobs
        for k in [k for k, v in jobs.items() if v["charged_at"] < cutoff]:
            del jobs[k]

    def snapshot_jobs(self) -> list[dict[str, Any]]:
        """``snapshotJobs``: every entry left after a prune, refunded ones too."""
        self.prune_expired()
        return [{"key": k, **v} for k, v in self.jobs.items()]
