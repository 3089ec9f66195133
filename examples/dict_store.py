"""A store of one's own: jobs, balances and the journal in plain dicts.

This is the store that ``docs/custom-stores.md`` walks through, and the test
suite runs every store test against it (``tests/stores/conftest.py``), so what
the page shows is code that passes them. It is built from public names only.

Every operation holds one lock from its read to its last write: that is the
whole of its atomicity. The decisions are the library's rules (``plan_claim``
and the other ``plan_*`` functions); the store only reads, asks, writes, and
returns what the rules reported, so that each hook fires exactly once.

It keeps everything in this process's memory and scans every job to prune:
a teaching aid, not a store to deploy (use ``MemoryStore``, or a shared one).

    from jobcredits_plugin import Ledger
    from examples.dict_store import DictStore

    ledger = Ledger(DictStore())
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from jobcredits_plugin import JobRecord, JournalEntry
from jobcredits_plugin.stores import (
    BaseStore,
    ClaimRequest,
    ClaimResult,
    Event,
    JournalRow,
    Key,
    balance_cap_error,
    deadline,
    entry_from_row,
    grant_conflict_error,
    grant_exceeds_cap,
    grant_id_live,
    grant_row,
    journal_rows,
    plan_claim,
    plan_confirm,
    plan_refund,
    plan_settle,
)

__all__ = ["DictStore"]


class DictStore(BaseStore):
    """Jobs, balances, grant ids and the journal in dicts, one lock around
    each operation. BaseStore generates the async twins; ``cancel_safe`` asks
    for them to call the operations inline, as nothing here ever blocks."""

    cancel_safe = True

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[Key, JobRecord] = {}
        self._balances: dict[str, int] = {}
        # (account, grant_id) -> (applied at, amount, the balance it answered)
        self._grants: dict[tuple[str, str], tuple[float, int, int]] = {}
        self._entries: list[tuple[int, JournalRow]] = []
        self._seq = 0
        self._cursors: dict[str, int] = {}

    # -- helpers, called with the lock held ----------------------------------------

    def _balance(self, account: str) -> int:
        return self._balances.get(account, 0)

    def _credit(self, account: str, amount: int) -> int:
        self._balances[account] = new = max(0, self._balance(account) + amount)
        return new

    def _journal(self, events: Iterable[Event], now: float) -> None:
        """Journal what one step committed; called before its balance moves,
        as the rows count their balances from the one before the step."""
        if self.journal:
            self._append(journal_rows(events, self._balance, now, self.journal_reuses))

    def _append(self, rows: list[JournalRow]) -> None:
        for row in rows:
            self._seq += 1
            self._entries.append((self._seq, row))

    # -- the Store protocol --------------------------------------------------------

    def claim(self, req: ClaimRequest) -> ClaimResult:
        with self._lock:
            plan = plan_claim(self._jobs.get(req.key), self._balance(req.account), req)
            self._journal(plan.result.events, req.now)
            if plan.write is not None:
                self._jobs[req.key] = plan.write
            elif plan.delete:
                del self._jobs[req.key]
            self._credit(req.account, plan.balance_delta)
        return plan.result

    def confirm(self, key: Key, charge_id: str | None, now: float) -> JobRecord | None:
        with self._lock:
            record, write = plan_confirm(self._jobs.get(key), charge_id, now)
            if write and record is not None:
                self._jobs[key] = record
        return record

    def refund(self, key: Key, charge_id: str | None, now: float) -> Event | None:
        with self._lock:
            event = plan_refund(self._jobs.get(key), charge_id, now)
            if event is not None:
                self._journal([event], now)
                del self._jobs[key]
                self._credit(event.record.account, event.record.debited)
        return event

    def lookup(self, key: Key, now: float) -> JobRecord | None:
        with self._lock:
            record = self._jobs.get(key)
        return record if record is not None and record.is_live(now) else None

    def prune(self, now: float, limit: int | None = None) -> list[Event]:
        events: list[Event] = []
        with self._lock:
            for record in sorted(self._jobs.values(), key=deadline):
                if limit is not None and len(events) >= limit:
                    break
                event = plan_settle(record, now)
                if event is None:
                    continue
                self._journal([event], now)
                del self._jobs[record.key]
                if event.kind == "refund":
                    self._credit(record.account, record.debited)
                events.append(event)
            for grant, (at, _, _) in list(self._grants.items()):
                if not grant_id_live(at, now):
                    del self._grants[grant]
        return events

    def snapshot(self, now: float) -> list[JobRecord]:
        with self._lock:
            live = [r for r in self._jobs.values() if r.is_live(now)]
        return sorted(live, key=lambda r: (r.charged_at, r.key))

    def grant(self, account: str, amount: int, now: float = 0.0, grant_id: str = "") -> int:
        with self._lock:
            seen = self._grants.get((account, grant_id)) if grant_id else None
            if seen is not None and grant_id_live(seen[0], now):
                if seen[1] != amount:
                    raise grant_conflict_error(seen[1], amount)
                return seen[2]  # a retry: nothing is written again
            before = self._balance(account)
            if grant_exceeds_cap(before, amount):
                raise balance_cap_error(before, amount)
            after = self._credit(account, amount)
            if self.journal:
                self._append([grant_row(account, amount, grant_id, before, after, now)])
            if grant_id:
                self._grants[(account, grant_id)] = (now, amount, after)
            return after

    def balance(self, account: str) -> int:
        with self._lock:
            return self._balance(account)

    def close(self) -> None:
        """Nothing to release."""

    # -- the JournalStore protocol -------------------------------------------------

    def read_journal(self, after: int, limit: int) -> list[JournalEntry]:
        with self._lock:
            picked = [(seq, row) for seq, row in self._entries if seq > after][:limit]
        return [entry_from_row(seq, row) for seq, row in picked]

    def trim_journal(self, through: int | None, cutoff: float | None) -> int:
        if through is None and cutoff is None:
            return 0
        with self._lock:
            cap = self._seq if through is None else through
            cap = min([cap, *self._cursors.values()])  # never what a cursor has not read
            kept = [
                (seq, row)
                for seq, row in self._entries
                if seq > cap or (cutoff is not None and row[10] >= cutoff)
            ]
            removed = len(self._entries) - len(kept)
            self._entries = kept
        return removed

    def get_cursor(self, name: str) -> int | None:
        with self._lock:
            return self._cursors.get(name)

    def set_cursor(self, name: str, position: int, force: bool = False) -> int:
        with self._lock:
            old = self._cursors.get(name)
            self._cursors[name] = new = position if force or old is None else max(old, position)
        return new

    def delete_cursor(self, name: str) -> bool:
        with self._lock:
            return self._cursors.pop(name, None) is not None

    def cursors(self) -> dict[str, int]:
        with self._lock:
            return dict(self._cursors)
