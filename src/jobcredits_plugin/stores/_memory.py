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
import itertools
import logging
import threading
from collections import deque
from typing import Any

import attrs

from .._errors import InvalidArgument
from .._records import PENDING, JobRecord, JournalEntry
from .._validation import MAX_BATCH, check_int_option, check_optional_seconds
from ._base import BaseStore
from ._rows import JournalRow, entry_from_row, grant_row, journal_rows
from ._rules import (
    ClaimRequest,
    ClaimResult,
    Event,
    Key,
    balance_cap_error,
    deadline,
    grant_conflict_error,
    grant_exceeds_cap,
    grant_id_live,
    plan_claim,
    plan_confirm,
    plan_refund,
    plan_settle,
)

__all__ = ["MemoryStore"]

#: The most journal entries a memory store keeps (each is a few hundred bytes).
MAX_JOURNAL_LIMIT = 100_000_000

log = logging.getLogger("jobcredits_plugin")

# (deadline, charge_id, account, scope, job_id): flat, so a heap entry holds
# references to the record's own strings and allocates nothing else.
_HeapEntry = tuple[float, str, str, str, str]
_Bucket = dict[str, JobRecord]
# A remembered grant id: (when it was first applied, its amount, the balance it answered).
_GrantMemo = tuple[float, int, int]
# A journal entry as held: its seq followed by the eleven fields of its JournalRow,
# one flat tuple (a pair of seq and row would cost one more tuple per entry).
_Entry = tuple[Any, ...]

#: The default journal_limit: ten thousand entries of about 180 bytes keep
#: the journal's share of a live job small at the job counts a memory store
#: serves (about 18 bytes at 100,000 live jobs; see docs/stores.md).
DEFAULT_JOURNAL_LIMIT = 10_000


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

    The journal (``journal=True``, the default) is a deque of entries appended
    under the same lock as the change. It lives and dies with the process, so
    it is bounded: past ``journal_limit`` entries (10,000 by default, so that
    a live job with the default settings stays under 512 bytes, its share of
    the journal included) the oldest go even if a cursor has not read them,
    and a reader asking for them gets an
    :class:`~jobcredits_plugin.InvalidArgument` saying so instead of a silent
    gap. For a journal that must survive, use a durable store.
    """

    schemes = ("memory",)
    #: Its operations never block on I/O: the async twins BaseStore generates
    #: call them inline instead of paying for a thread hop.
    cancel_safe = True

    settle_batch: int = 8
    journal: bool = True
    journal_reuses: bool = False
    journal_max_age: float | None = 7 * 86400.0
    journal_limit: int = DEFAULT_JOURNAL_LIMIT
    _buckets: dict[tuple[str, str], _Bucket] = attrs.field(init=False, factory=dict)
    _count: int = attrs.field(init=False, default=0)
    _balances: dict[str, int] = attrs.field(init=False, factory=dict)
    _heap: list[_HeapEntry] = attrs.field(init=False, factory=list)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    _entries: deque[_Entry] = attrs.field(init=False, factory=deque)
    _seq: int = attrs.field(init=False, default=0)
    #: The highest seq dropped by ``journal_limit`` (not by a trim someone asked for).
    _lost_through: int = attrs.field(init=False, default=0)
    _cursors: dict[str, int] = attrs.field(init=False, factory=dict)
    #: Grant ids seen within GRANT_ID_RETENTION, and the same keys in the
    #: order they were first applied, so expired ones go from the front.
    _grants: dict[tuple[str, str], _GrantMemo] = attrs.field(init=False, factory=dict)
    _grant_order: deque[tuple[float, str, str]] = attrs.field(init=False, factory=deque)

    def __attrs_post_init__(self) -> None:
        check_int_option("journal_limit", self.journal_limit, 1, MAX_JOURNAL_LIMIT)
        check_int_option("settle_batch", self.settle_batch, 0, MAX_BATCH)
        self.journal_max_age = check_optional_seconds("journal_max_age", self.journal_max_age)

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

    def _append(self, rows: list[JournalRow]) -> None:
        entries = self._entries
        for row in rows:
            self._seq += 1
            entries.append((self._seq, *row))
        excess = len(entries) - self.journal_limit
        if excess > 0:
            was = self._lost_through
            for _ in range(excess):
                self._lost_through = entries.popleft()[0]
            # once per cursor falling behind, not on every later append
            if any(was <= pos < self._lost_through for pos in self._cursors.values()):
                log.warning(
                    "jobcredits memory store: journal_limit (%d) dropped entries up to "
                    "seq %d that a cursor had not read",
                    self.journal_limit,
                    self._lost_through,
                )

    def _journal_events(self, events: list[Event], before: int, now: float) -> None:
        """Journal events of one account whose balance before them was ``before``."""
        if self.journal and events:
            self._append(journal_rows(events, lambda _a: before, now, self.journal_reuses))

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
            before = self._balances.get(record.account, 0)
            if event.kind == "refund" and record.debited:
                self._credit(record.account, record.debited)
            self._journal_events([event], before, now)
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
            before = self._balances.get(req.account, 0)
            plan = plan_claim(self._get(key), before, req)
            if plan.write is not None:
                # A new charge gets a heap entry; a reuse keeps the one it has.
                self._put(plan.write, schedule=plan.write.state == PENDING)
            elif plan.delete:
                self._delete(key)
            if plan.balance_delta:
                self._credit(req.account, plan.balance_delta)
            if self.journal_reuses or plan.result.status != "reused":
                # (a reuse journals nothing by default: no rows to build)
                self._journal_events(list(plan.result.events), before, req.now)
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
                before = self._balances.get(existing.account, 0)
                if existing.debited:
                    self._credit(existing.account, existing.debited)
                self._journal_events([event], before, now)
        return event

    def lookup(self, key: Key, now: float) -> JobRecord | None:
        with self._lock:
            record = self._get(key)
        if record is None or not record.is_live(now):
            return None
        return record

    def prune(self, now: float, limit: int | None = None) -> list[Event]:
        with self._lock:
            self._forget_grants(now)
            return self._settle_due(now, max_events=limit)

    def snapshot(self, now: float) -> list[JobRecord]:
        with self._lock:
            records = [r for bucket in self._buckets.values() for r in bucket.values()]
        live = [r for r in records if r.is_live(now)]
        live.sort(key=lambda r: (r.charged_at, r.key))
        return live

    def _forget_grants(self, now: float) -> None:
        """Drop the grant ids past their retention (lock held). The front of
        the deque is the oldest, so this stops at the first live one: memory
        stays bounded by the grants of one retention period."""
        order = self._grant_order
        while order and not grant_id_live(order[0][0], now):
            at, account, grant_id = order.popleft()
            memo = self._grants.get((account, grant_id))
            if memo is not None and memo[0] == at:
                del self._grants[(account, grant_id)]

    def grant(self, account: str, amount: int, now: float = 0.0, grant_id: str = "") -> int:
        with self._lock:
            self._forget_grants(now)
            memo = self._grants.get((account, grant_id)) if grant_id else None
            if memo is not None and grant_id_live(memo[0], now):
                if memo[1] != amount:
                    raise grant_conflict_error(memo[1], amount)
                return memo[2]
            before = self._balances.get(account, 0)
            if grant_exceeds_cap(before, amount):
                raise balance_cap_error(before, amount)
            after = self._credit(account, amount)
            if self.journal:
                self._append([grant_row(account, amount, grant_id, before, after, now)])
            if grant_id:
                self._grants[(account, grant_id)] = (now, amount, after)
                self._grant_order.append((now, account, grant_id))
            return after

    def remembered_grants(self) -> int:
        """How many grant ids are remembered (for tests and operators)."""
        return len(self._grants)

    def balance(self, account: str) -> int:
        return self._balances.get(account, 0)

    # -- the journal -------------------------------------------------------------

    def read_journal(self, after: int, limit: int) -> list[JournalEntry]:
        with self._lock:
            if after < self._lost_through:
                raise InvalidArgument(
                    f"journal entries after {after} up to {self._lost_through} were dropped: "
                    f"the memory store keeps at most journal_limit={self.journal_limit} "
                    "entries; use a durable store for a journal that must be complete"
                )
            entries = self._entries
            if not entries or entries[-1][0] <= after:
                return []
            # seqs are consecutive in the deque: index arithmetic, no scan
            start = max(0, after - entries[0][0] + 1)
            picked = list(itertools.islice(entries, start, start + limit))
        return [entry_from_row(entry[0], entry[1:]) for entry in picked]

    def trim_journal(self, through: int | None, cutoff: float | None) -> int:
        if through is None and cutoff is None:
            return 0
        with self._lock:
            cap = self._seq if through is None else through
            if self._cursors:
                cap = min(cap, min(self._cursors.values()))
            entries = self._entries
            removed = 0
            while entries and entries[0][0] <= cap:
                if cutoff is not None and not entries[0][11] < cutoff:
                    break
                entries.popleft()
                removed += 1
            return removed

    def get_cursor(self, name: str) -> int | None:
        with self._lock:
            return self._cursors.get(name)

    def set_cursor(self, name: str, position: int, force: bool = False) -> int:
        with self._lock:
            old = self._cursors.get(name)
            new = position if force or old is None else max(old, position)
            self._cursors[name] = new
            return new

    def delete_cursor(self, name: str) -> bool:
        with self._lock:
            return self._cursors.pop(name, None) is not None

    def cursors(self) -> dict[str, int]:
        with self._lock:
            return dict(self._cursors)

    def journal_size(self) -> int:
        """How many journal entries are held (for tests and operators)."""
        return len(self._entries)

    def close(self) -> None:
        """Nothing to release; the data lives as long as the object."""

    def __len__(self) -> int:
        """How many records are held, live or awaiting settlement."""
        return self._count
