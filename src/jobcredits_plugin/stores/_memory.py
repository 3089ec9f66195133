"""The in-process store: a dict of records and a heap of deadlines.

The original module scanned every job on every request to drop expired ones.
Here each record has one entry in a min-heap keyed by its next deadline (lease
end while pending, expiry once charged), so finding what is due costs a peek,
and every request settles at most a small, fixed number of due records. The
cost of a call does not grow with the number of live jobs.

Heap entries are never updated in place: a record that is replaced or refunded
leaves a stale entry behind, recognised by its ``charge_id`` and dropped when
it comes up. That keeps every write O(log n) without a decrease-key.
"""

from __future__ import annotations

import heapq
import threading

import attrs

from .._records import PENDING, JobRecord
from ._base import (
    BaseStore,
    ClaimRequest,
    ClaimResult,
    Event,
    Key,
    deadline,
    plan_claim,
    plan_confirm,
    plan_refund,
    plan_settle,
)

__all__ = ["MemoryStore"]

# (deadline, charge_id, account, scope, job_id): flat, so a heap entry holds
# references to the record's own strings and allocates nothing else.
_HeapEntry = tuple[float, str, str, str, str]
_Bucket = dict[str, JobRecord]


@attrs.define(slots=True, eq=False)
class MemoryStore(BaseStore):
    """Keeps jobs in this process's memory; the ledger's default store.

    Thread-safe (one lock, held only for the O(log n) bookkeeping, never while
    hooks run). Each process has its own: behind a multi-process server
    (gunicorn, uvicorn workers) use :class:`SQLiteStore` or a shared store, or
    one client could be charged once per worker.

    ``settle_batch`` bounds how many due records one request settles on its
    way; :meth:`~jobcredits_plugin.Ledger.prune` settles all of them.

    Records are kept in one bucket per ``(account, scope)``, keyed by job id:
    the job key stays three separate parts (no joined string to collide), and
    no per-job key tuple is allocated, which keeps a live job under 512 bytes.
    """

    schemes = ("memory",)
    cancel_safe = True

    settle_batch: int = 8
    _buckets: dict[tuple[str, str], _Bucket] = attrs.field(init=False, factory=dict)
    _count: int = attrs.field(init=False, default=0)
    _balances: dict[str, int] = attrs.field(init=False, factory=dict)
    _heap: list[_HeapEntry] = attrs.field(init=False, factory=list)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)

    # -- internals (called with the lock held) ---------------------------------

    def _get(self, key: Key) -> JobRecord | None:
        bucket = self._buckets.get((key[0], key[1]))
        return None if bucket is None else bucket.get(key[2])

    def _put(self, record: JobRecord, *, schedule: bool) -> None:
        bucket = self._buckets.get((record.account, record.scope))
        if bucket is None:
            bucket = self._buckets[(record.account, record.scope)] = {}
        if record.job_id not in bucket:
            self._count += 1
        bucket[record.job_id] = record
        if schedule:
            self._schedule(record)

    def _schedule(self, record: JobRecord) -> None:
        entry = (deadline(record), record.charge_id, record.account, record.scope, record.job_id)
        heapq.heappush(self._heap, entry)

    def _delete(self, key: Key) -> None:
        bucket_key = (key[0], key[1])
        bucket = self._buckets[bucket_key]
        del bucket[key[2]]
        self._count -= 1
        if not bucket:
            del self._buckets[bucket_key]

    def _settle_due(
        self, now: float, *, max_entries: int | None = None, max_events: int | None = None
    ) -> list[Event]:
        """Pop due heap entries and settle their records, looking at no more than
        ``max_entries`` entries (the bound on a request's extra work) and
        settling no more than ``max_events`` records (prune's ``limit``)."""
        events: list[Event] = []
        heap = self._heap
        seen = 0
        while heap and heap[0][0] <= now:
            if max_entries is not None and seen >= max_entries:
                break
            if max_events is not None and len(events) >= max_events:
                break
            seen += 1
            _, charge_id, account, scope, job_id = heapq.heappop(heap)
            key = (account, scope, job_id)
            record = self._get(key)
            if record is None or record.charge_id != charge_id:
                continue  # stale entry of a record replaced or refunded since
            event = plan_settle(record, now)
            if event is None:
                # Its lease passed but it was confirmed: due again at expiry.
                self._schedule(record)
                continue
            self._delete(key)
            if event.kind == "refund" and record.debited:
                self._credit(record.account, record.debited)
            events.append(event)
        return events

    def _credit(self, account: str, amount: int) -> int:
        new = max(0, self._balances.get(account, 0) + amount)
        self._balances[account] = new
        return new

    # -- the store protocol ----------------------------------------------------

    def claim(self, req: ClaimRequest) -> ClaimResult:
        key = req.key
        with self._lock:
            swept = self._settle_due(req.now, max_entries=self.settle_batch)
            plan = plan_claim(self._get(key), self._balances.get(req.account, 0), req)
            if plan.write is not None:
                # A new charge gets a heap entry; a reuse keeps the one it has.
                self._put(plan.write, schedule=plan.write.state == PENDING)
            elif plan.delete:
                self._delete(key)
            if plan.balance_delta:
                self._credit(req.account, plan.balance_delta)
        if swept:
            return attrs.evolve(plan.result, events=(*swept, *plan.result.events))
        return plan.result

    def confirm(self, key: Key, charge_id: str | None, now: float) -> JobRecord | None:
        with self._lock:
            record, write = plan_confirm(self._get(key), charge_id, now)
            if write and record is not None:
                self._put(record, schedule=False)
        return record

    def refund(self, key: Key, charge_id: str | None, now: float) -> Event | None:
        with self._lock:
            existing = self._get(key)
            event = plan_refund(existing, charge_id, now)
            if event is not None and existing is not None:
                self._delete(key)
                if existing.debited:
                    self._credit(existing.account, existing.debited)
        return event

    def lookup(self, key: Key, now: float) -> JobRecord | None:
        with self._lock:
            record = self._get(key)
        if record is None or not record.is_live(now):
            return None
        return record

    def prune(self, now: float, limit: int | None = None) -> list[Event]:
        with self._lock:
            return self._settle_due(now, max_events=limit)

    def snapshot(self, now: float) -> list[JobRecord]:
        with self._lock:
            records = [r for bucket in self._buckets.values() for r in bucket.values()]
        live = [r for r in records if r.is_live(now)]
        live.sort(key=lambda r: (r.charged_at, r.key))
        return live

    def grant(self, account: str, amount: int) -> int:
        with self._lock:
            return self._credit(account, amount)

    def balance(self, account: str) -> int:
        return self._balances.get(account, 0)

    def close(self) -> None:
        """Nothing to release; the data lives as long as the object."""

    # The memory store never blocks on I/O, so its async twins run inline
    # instead of paying for a thread hop.

    async def aclaim(self, req: ClaimRequest) -> ClaimResult:
        return self.claim(req)

    async def aconfirm(self, key: Key, charge_id: str | None, now: float) -> JobRecord | None:
        return self.confirm(key, charge_id, now)

    async def arefund(self, key: Key, charge_id: str | None, now: float) -> Event | None:
        return self.refund(key, charge_id, now)

    async def alookup(self, key: Key, now: float) -> JobRecord | None:
        return self.lookup(key, now)

    async def aprune(self, now: float, limit: int | None = None) -> list[Event]:
        return self.prune(now, limit)

    async def asnapshot(self, now: float) -> list[JobRecord]:
        return self.snapshot(now)

    async def agrant(self, account: str, amount: int) -> int:
        return self.grant(account, amount)

    async def abalance(self, account: str) -> int:
        return self.balance(account)

    async def aclose(self) -> None:
        self.close()

    def __len__(self) -> int:
        """How many records are held, live or awaiting settlement."""
        return self._count
