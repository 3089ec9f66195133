"""Store-level load under faults, in one process, audited afterwards (issue 13).

No web server: threads call the sync methods of one :class:`Ledger`, an
asyncio task group calls the ``a*`` twins on the same ledger, a pruner prunes
and a journal reader advances a named cursor (and trims behind it), over a few
accounts with small balances, on a fast clock (leases and windows run out
within the run). Meanwhile one fault fires again and again (see
``test_store_faults.py``). Then the faults stop, the ledger is settled
(everything left is pruned on a clock far ahead) and :meth:`Storm.audit`
checks, exactly:

- **hooks = journal entries, kind by kind** (charge, reuse, refund, expire,
  each charge id by charge id): no hook without its entry, no hook twice; an
  entry without its hook only where the call that made it ended in
  ``StoreUnavailable`` (its outcome unknown to the caller, who then never
  learns of the change; the journal has it), matched by account, job and the
  call's clock interval. A fault the store must absorb (``exact=True``: one
  lost answer at a time) allows none: every call that can change the books
  (charge, refund, prune, grant, sync or async) must succeed (see EVENT_OPS);
- every charge settled (refunded or expired) exactly once after settling, and
  **refunded at most once**, the refund giving back exactly what it debited;
- **balances = grants - live debits** (the debits of charges not refunded),
  from the grants the load made (each grant has a grant id and is retried with
  it until it is answered, so the amount granted is exact), and the journal's
  running sums end at the balances;
- the journal delivered through the cursor is strictly increasing in seq
  (never an entry twice, though trims and lost answers happen all along);
- **no call blocked longer than its documented bound** (plus slack for a
  loaded two-core machine).

Where a store keeps no journal (Redis Cluster before it had one, or a store
built with ``journal=False``), the hooks are audited against the store's own
books instead: every settlement hook is of
a charge hook or of a charge whose call ended in ``StoreUnavailable``, and each
balance equals the grants less the debits the hooks report, within what the
unknown outcomes could have done (see :meth:`Storm._audit_without_journal`).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jobcredits_plugin import (
    Charge,
    InsufficientCredits,
    JobExhausted,
    JobInProgress,
    Ledger,
    StoreUnavailable,
    hookimpl,
)
from jobcredits_plugin._records import JobRecord, JournalEntry
from jobcredits_plugin.testing import RecordingPlugin

#: The ledger clock runs this many times faster than the wall clock: a lease
#: of 25 s is half a second, a window of 100 s two seconds.
SPEED = 50.0
LEASE = 25.0
TTL = 100.0
MAX_USES = 3

_EXPECTED = (JobInProgress, JobExhausted, InsufficientCredits)

#: The operations that can change the books (and so fire hooks). Under a
#: fault the store must absorb (one lost answer at a time) none of them may
#: fail; confirm, the journal's reads, cursor moves and trims write no event
#: and are retried less (once, or not at all for a trim, whose count would
#: lie), so under answers lost back to back they can fail, harmlessly.
EVENT_OPS = frozenset({"charge", "acharge", "refund", "arefund", "prune", "aprune", "grant"})


def _outcome(result: Any) -> str:
    """A call's answer in a word, for the trace."""
    if isinstance(result, Charge):
        return f"{result.outcome}:{result.record.charge_id}"
    if isinstance(result, JobRecord):
        return f"{result.state}:{result.charge_id}"
    return repr(result)


class FastClock:
    """The one time source of the run's ledgers."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.base = 1_700_000_000.0
        self.offset = 0.0

    def __call__(self) -> float:
        return self.base + self.offset + (time.monotonic() - self.t0) * SPEED


class Hooks(RecordingPlugin):
    """Every event hook, in order (``RecordingPlugin``), and the refusals
    (``on_reject``) counted by code."""

    def __init__(self) -> None:
        super().__init__()
        self.rejects: Counter[str] = Counter()

    @hookimpl
    def on_reject(self, error: Exception) -> None:
        with self._lock:
            self.rejects[getattr(error, "code", type(error).__name__)] += 1

    def pairs(self) -> list[tuple[str, JobRecord]]:
        """(kind, record) of every event so far."""
        with self._lock:
            return [(e.kind, e.record) for e in self.events]


@dataclass
class OpStats:
    calls: int = 0
    unavailable: int = 0
    max_seconds: float = 0.0


@dataclass
class Unknown:
    """A call that ended in StoreUnavailable: it may have committed."""

    op: str
    account: str | None
    job_id: str | None
    t0: float  # ledger clock, before the call
    t1: float  # ledger clock, after it
    error: str = ""


@dataclass
class Bounds:
    """The documented worst case of one store round trip, and how many round
    trips each operation may take (a prune is one per batch and due-set)."""

    call: float
    slack: float = 1.5
    trips: dict[str, int] = field(default_factory=dict)

    def of(self, op: str) -> float:
        return self.call * self.trips.get(op, 1) + self.slack


class Storm:
    """One run: build it on a ledger, :meth:`run` the load while a fault
    fires, :meth:`settle`, then :meth:`audit`."""

    def __init__(
        self,
        ledger: Ledger,
        clock: FastClock,
        hooks: Hooks,
        *,
        bounds: Bounds,
        accounts: int = 4,
        jobs: int = 6,
        grant: int = 30,
        threads: int = 6,
        tasks: int = 6,
        journal: bool = True,
        journal_reuses: bool = True,
        seed: int = 13,
    ) -> None:
        self.ledger = ledger
        self.clock = clock
        self.hooks = hooks
        self.bounds = bounds
        self.accounts = [f"acct-{n}" for n in range(accounts)]
        self.jobs = jobs
        self.first_grant = grant
        self.n_threads = threads
        self.n_tasks = tasks
        self.journal = journal
        self.journal_reuses = journal_reuses
        self.seed = seed
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ops: dict[str, OpStats] = {}
        self.unknown: list[Unknown] = []
        self.failures: list[BaseException] = []
        #: grant id -> (account, amount, answered)
        self.grants: dict[str, tuple[str, int, bool]] = {}
        self.delivered: list[JournalEntry] = []
        self.cursor_name = f"storm-{uuid.uuid4().hex[:8]}"
        self.trims = 0
        self.trimmed = 0
        #: (seconds, last delivered, first and last seq read, new) of each read
        self.reads: list[tuple[float, int, int | None, int | None, int]] = []
        self.faults = 0
        self.fault_errors: list[BaseException] = []
        self.seconds = 0.0
        #: When each call that got an answer (not StoreUnavailable) ended.
        self.answered: list[float] = []
        #: (op, account, job, t0, t1, outcome) of every call about a job, to
        #: explain what the audit finds.
        self.trace: list[tuple[str, str | None, str | None, float, float, str]] = []

    # -- timing every call ------------------------------------------------------------

    def _done(self, op: str, seconds: float, failed: bool) -> None:
        with self.lock:
            stats = self.ops.setdefault(op, OpStats())
            stats.calls += 1
            stats.unavailable += failed
            stats.max_seconds = max(stats.max_seconds, seconds)

    def _unknown(
        self, op: str, account: str | None, job: str | None, t0: float, error: BaseException
    ) -> None:
        with self.lock:
            self.unknown.append(Unknown(op, account, job, t0, self.clock(), str(error)[:300]))

    def call(
        self,
        op: str,
        account: str | None,
        job: str | None,
        fn: Callable[..., Any],
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        """``fn(*args, **kwargs)``, a call about ``account``'s ``job`` (None:
        not about one), timed; StoreUnavailable is recorded (not raised) and
        answered None, as are the refusals of the rules."""
        t0, start = self.clock(), time.monotonic()
        failed = False
        outcome = "?"
        try:
            result = fn(*args, **kwargs)
            self.answered.append(time.monotonic())
            outcome = _outcome(result)
            return result
        except StoreUnavailable as exc:
            failed = True
            outcome = "unavailable"
            self._unknown(op, account, job, t0, exc)
            return None
        except _EXPECTED as exc:
            outcome = exc.code
            return None
        finally:
            self._done(op, time.monotonic() - start, failed)
            if job is not None:
                self.trace.append((op, account, job, t0, self.clock(), outcome))

    async def acall(
        self,
        op: str,
        account: str | None,
        job: str | None,
        fn: Callable[..., Any],
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        """:meth:`call` for the async twins."""
        t0, start = self.clock(), time.monotonic()
        failed = False
        outcome = "?"
        try:
            result = await fn(*args, **kwargs)
            self.answered.append(time.monotonic())
            outcome = _outcome(result)
            return result
        except StoreUnavailable as exc:
            failed = True
            outcome = "unavailable"
            self._unknown(op, account, job, t0, exc)
            return None
        except _EXPECTED as exc:
            outcome = exc.code
            return None
        finally:
            self._done(op, time.monotonic() - start, failed)
            if job is not None:
                self.trace.append((op, account, job, t0, self.clock(), outcome))

    # -- the load ----------------------------------------------------------------------

    def prepare(self) -> None:
        """Grants and the cursor, before any fault."""
        for account in self.accounts:
            self._grant_now(account, self.first_grant)
        self.ledger.charge(self.accounts[0], "warm-up", cost=0)
        self.ledger.refund(self.accounts[0], "warm-up")
        if self.journal:
            self.ledger.cursor(self.cursor_name)

    def _grant_now(self, account: str, amount: int) -> None:
        gid = uuid.uuid4().hex
        self.ledger.grant(account, amount, grant_id=gid)
        self.grants[gid] = (account, amount, True)

    def _pick(self, rnd: random.Random) -> tuple[str, str]:
        """An account, and a job: most often one of a few per account (reuses,
        409s, takeovers, exhausted jobs), else one never seen (a new charge)."""
        if rnd.random() < 0.6:
            return rnd.choice(self.accounts), f"job-{rnd.randrange(self.jobs)}"
        return rnd.choice(self.accounts), f"new-{rnd.getrandbits(40):x}"

    def _worker(self, seed: int) -> None:
        rnd = random.Random(seed)
        ledger = self.ledger
        try:
            while not self.stop.is_set():
                account, job = self._pick(rnd)
                if rnd.random() < 0.05:
                    gid, amount = uuid.uuid4().hex, rnd.randint(1, 6)
                    with self.lock:
                        self.grants[gid] = (account, amount, False)
                    done = self.call(
                        "grant", account, None, ledger.grant, account, amount, grant_id=gid
                    )
                    if done is not None:
                        with self.lock:
                            self.grants[gid] = (account, amount, True)
                    continue
                cost = rnd.randint(1, 3)
                c = self.call("charge", account, job, ledger.charge, account, job, cost=cost)
                if c is None or not c.charged:
                    continue
                cid = c.record.charge_id
                roll = rnd.random()
                if roll < 0.6:
                    self.call("confirm", account, job, ledger.confirm, account, job, charge_id=cid)
                elif roll < 0.8:
                    self.call("refund", account, job, ledger.refund, account, job, charge_id=cid)
                elif roll < 0.85:
                    self.call("refund", account, job, ledger.refund, account, job)
                # else abandoned: its lease runs out, a takeover or prune refunds it
        except BaseException as exc:
            self.failures.append(exc)

    async def _task(self, seed: int) -> None:
        rnd = random.Random(seed)
        ledger = self.ledger
        while not self.stop.is_set():
            account, job = self._pick(rnd)
            if rnd.random() < 0.05:
                await self.acall("aprune", None, None, ledger.aprune)
                continue
            cost = rnd.randint(1, 3)
            c = await self.acall("acharge", account, job, ledger.acharge, account, job, cost=cost)
            if c is None or not c.charged:
                await asyncio.sleep(0)
                continue
            cid = c.record.charge_id
            roll = rnd.random()
            if roll < 0.6:
                await self.acall(
                    "aconfirm", account, job, ledger.aconfirm, account, job, charge_id=cid
                )
            elif roll < 0.85:
                await self.acall(
                    "arefund", account, job, ledger.arefund, account, job, charge_id=cid
                )

    def _async_main(self) -> None:
        async def main() -> None:
            tasks = [
                asyncio.ensure_future(self._task(self.seed * 1000 + n)) for n in range(self.n_tasks)
            ]
            try:
                await asyncio.gather(*tasks)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run(main())
        except BaseException as exc:
            self.failures.append(exc)

    def _pruner(self) -> None:
        try:
            while not self.stop.is_set():
                self.call("prune", None, None, self.ledger.prune)
                self.stop.wait(0.05)
        except BaseException as exc:
            self.failures.append(exc)

    def _read_journal(self) -> int:
        """Deliver the entries after the cursor (skipping what was delivered
        already: an advance whose answer was lost leaves the cursor behind),
        then advance it. Returns how many it read (new or not), so that a
        reader whose cursor is far behind goes on until the end."""
        cursor = self.ledger.cursor(self.cursor_name)
        entries = cursor.read(500)
        last = self.delivered[-1].seq if self.delivered else 0
        new = [e for e in entries if e.seq > last]
        self.delivered.extend(new)
        self.reads.append(
            (
                round(time.monotonic() - self.clock.t0, 3),
                last,
                entries[0].seq if entries else None,
                entries[-1].seq if entries else None,
                len(new),
            )
        )
        if entries:
            cursor.advance(entries[-1].seq)
        return len(entries)

    def _reader(self) -> None:
        try:
            for n in itertools.count():
                if self.stop.is_set():
                    return
                self.call("journal", None, None, self._read_journal)
                if n % 5 == 4 and self.delivered:
                    through = self.delivered[-1].seq
                    removed = self.call(
                        "trim", None, None, self.ledger.trim_journal, before=through
                    )
                    self.trims += 1
                    self.trimmed += removed or 0
                self.stop.wait(0.02)
        except BaseException as exc:
            self.failures.append(exc)

    def _faulter(self, fault: Callable[[], Any], interval: float) -> None:
        while not self.stop.wait(interval):
            try:
                if fault() is not False:  # False: nothing was injected this time
                    self.faults += 1
            except BaseException as exc:
                self.fault_errors.append(exc)
                return

    def run(self, seconds: float, fault: Callable[[], Any] | None, interval: float) -> None:
        """The load for ``seconds``, with ``fault`` fired every ``interval``
        seconds (after the previous one returned)."""
        threads = [
            threading.Thread(target=self._worker, args=(self.seed * 100 + n,))
            for n in range(self.n_threads)
        ]
        threads.append(threading.Thread(target=self._pruner))
        if self.n_tasks:
            threads.append(threading.Thread(target=self._async_main))
        if self.journal:
            threads.append(threading.Thread(target=self._reader))
        faulter = None
        if fault is not None:
            faulter = threading.Thread(target=self._faulter, args=(fault, interval))
        start = time.monotonic()
        for t in threads:
            t.daemon = True
            t.start()
        if faulter is not None:
            faulter.daemon = True
            faulter.start()
        time.sleep(seconds)
        self.stop.set()
        if faulter is not None:
            faulter.join(60)
            assert not faulter.is_alive(), "the fault injector hangs"
        for t in threads:
            t.join(60)
            assert not t.is_alive(), f"{t.name} of the load hangs"
        self.seconds = time.monotonic() - start
        if self.fault_errors:
            raise AssertionError(f"the fault injector failed: {self.fault_errors[0]!r}")
        if self.failures:
            raise AssertionError(f"the load raised: {self.failures[:3]!r}") from self.failures[0]

    # -- settling ------------------------------------------------------------------------

    def _retry(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(...)`` until the store answers (30 s at most)."""
        deadline = time.monotonic() + 30.0
        while True:
            try:
                return fn(*args, **kwargs)
            except StoreUnavailable:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{what}: the store did not come back") from None
                time.sleep(0.2)

    def settle(self) -> None:
        """After the faults: answer every unanswered grant (same grant id),
        settle every record on a clock far ahead, read the rest of the journal."""
        for gid, (account, amount, answered) in list(self.grants.items()):
            if not answered:
                self._retry("grant", self.ledger.grant, account, amount, grant_id=gid)
                self.grants[gid] = (account, amount, True)
        self.clock.offset += 1_000_000.0  # every lease and window over
        while self._retry("prune", self.ledger.prune):
            pass
        assert self._retry("snapshot", self.ledger.snapshot) == []
        if self.journal:
            while self._retry("journal", self._read_journal):
                pass

    # -- the audit -----------------------------------------------------------------------

    def _attributable(self, entry: JournalEntry | JobRecord, kind: str) -> bool:
        """Whether a change nobody was told about was made by a call that
        ended in StoreUnavailable."""
        at = entry.at if isinstance(entry, JournalEntry) else entry.charged_at
        for u in self.unknown:
            if u.op in ("prune", "aprune"):
                if kind not in ("refund", "expire"):
                    continue
            elif u.account != entry.account or u.job_id != entry.job_id:
                continue
            if u.t0 - 1e-6 <= at <= u.t1 + 1e-6:
                return True
        return False

    def _near(self, entry: JournalEntry) -> str:
        """What the run knows around an entry nobody was told about."""
        near = [
            u
            for u in self.unknown
            if abs(u.t0 - entry.at) < 2 * SPEED and (u.account in (None, entry.account))
        ]
        hooks = [(k, r) for k, r in self.hooks.pairs() if r.charge_id == entry.charge_id]
        calls = [
            c
            for c in self.trace
            if (c[1], c[2]) == (entry.account, entry.job_id)
            and c[3] - SPEED <= entry.at <= c[4] + SPEED
        ]
        return (
            f"\n    unknown calls near it: {near}\n    hooks of its charge: {hooks}"
            f"\n    calls on its job around it: {calls}"
        )

    def granted(self) -> dict[str, int]:
        out = dict.fromkeys(self.accounts, 0)
        for account, amount, _ in self.grants.values():
            out[account] += amount
        return out

    def audit(self, *, exact: bool) -> dict[str, Any]:
        """Check the books and hooks (see the module docstring); returns the
        figures. ``exact``: the fault is one the store absorbs, so no call that
        changes the books may fail and every change must have its hook."""
        problems: list[str] = []
        events = self.hooks.pairs()
        unavailable = sum(s.unavailable for s in self.ops.values())
        failed_events = {
            op: s.unavailable for op, s in self.ops.items() if s.unavailable and op in EVENT_OPS
        }
        if exact and failed_events:
            problems.append(
                "calls that change the books raised StoreUnavailable under a fault the store "
                f"must absorb: {failed_events}; the first: "
                f"{next(u for u in self.unknown if u.op in EVENT_OPS)}"
            )
        seen = Counter((k, r.charge_id) for k, r in events if k != "reuse")
        twice = [key for key, n in seen.items() if n > 1]
        if twice:
            problems.append(f"hooks fired twice: {twice[:5]}")
        settled = Counter(r.charge_id for k, r in events if k in ("refund", "expire"))
        if [cid for cid, n in settled.items() if n > 1]:
            problems.append("a charge settled twice by hooks")
        figures: dict[str, Any]
        if self.journal:
            figures = self._audit_journal(events, problems, exact)
        else:
            figures = self._audit_without_journal(events, problems, exact)
        slow = {
            op: round(s.max_seconds, 3)
            for op, s in self.ops.items()
            if s.max_seconds > self.bounds.of(op)
        }
        if slow:
            problems.append(f"calls blocked longer than the bound ({self.bounds}): {slow}")
        if problems:
            raise AssertionError("the audit found:\n- " + "\n- ".join(problems))
        calls = sum(s.calls for s in self.ops.values())
        figures.update(
            calls=calls,
            seconds=round(self.seconds, 2),
            calls_per_second=round(calls / self.seconds, 1) if self.seconds else 0.0,
            faults=self.faults,
            unavailable=unavailable,
            hooks=Counter(k for k, _ in events),
            rejects=dict(self.hooks.rejects),
            max_latency=round(max((s.max_seconds for s in self.ops.values()), default=0.0), 3),
            max_latency_by_op={op: round(s.max_seconds, 3) for op, s in sorted(self.ops.items())},
            bound=round(self.bounds.call, 2),
        )
        return figures

    def _audit_journal(
        self, events: list[tuple[str, JobRecord]], problems: list[str], exact: bool
    ) -> dict[str, Any]:
        entries = self.delivered
        seqs = [e.seq for e in entries]
        if any(b <= a for a, b in itertools.pairwise(seqs)):
            problems.append("the cursor delivered seqs out of order or twice")
        gaps = [(a, b) for a, b in itertools.pairwise(seqs) if b != a + 1]
        if seqs and seqs[0] != 1:
            gaps.insert(0, (0, seqs[0]))
        if gaps:
            # Every store numbers its entries 1, 2, 3, ... and the reader
            # trims only what it has delivered: a gap is an entry it missed.
            around = [r for r in self.reads if r[2] is not None and r[1] >= gaps[0][0] - 600][:12]
            problems.append(
                f"the cursor skipped seqs: {gaps[:5]} (reads around the first: {around})"
            )
        changes = [e for e in entries if e.kind != "grant"]
        journaled = Counter((e.kind, e.charge_id) for e in changes if e.kind != "reuse")
        hooked = Counter((k, r.charge_id) for k, r in events if k != "reuse")
        # A charge's reuses: its n-th reuse entry (in seq order) is the one
        # whose hook reports uses = n + 1, so each entry has its own key.
        reuse_entries: dict[tuple[str, int], JournalEntry] = {}
        count: Counter[str] = Counter()
        for e in changes:
            if e.kind == "reuse":
                count[e.charge_id] += 1
                reuse_entries[(e.charge_id, count[e.charge_id] + 1)] = e
        hooked_reuses = Counter((r.charge_id, r.uses) for k, r in events if k == "reuse")
        if not self.journal_reuses:
            hooked_reuses = Counter()  # the store journals no reuses
        if any(n > 1 for n in hooked_reuses.values()):
            problems.append("a reuse hook fired twice for the same use")
        extra = hooked - journaled
        if extra:
            problems.append(f"hooks with no journal entry: {list(extra)[:5]}")
        extra_reuses = set(hooked_reuses) - set(reuse_entries)
        if extra_reuses:
            problems.append(f"reuse hooks with no journal entry: {sorted(extra_reuses)[:5]}")
        unhooked = 0
        by_key = {(e.kind, e.charge_id): e for e in changes}
        for (kind, cid), n in (journaled - hooked).items():
            entry = by_key[(kind, cid)]
            unhooked += n
            if exact or not self._attributable(entry, kind):
                problems.append(f"a journal entry without its hook: {entry}{self._near(entry)}")
        if self.journal_reuses:
            for key in set(reuse_entries) - set(hooked_reuses):
                entry = reuse_entries[key]
                unhooked += 1
                if exact or not self._attributable(entry, "reuse"):
                    problems.append(f"a reuse entry without its hook: {entry}{self._near(entry)}")
        # every charge settled exactly once, refunded with what it debited
        charges = {e.charge_id: e for e in changes if e.kind == "charge"}
        settled: dict[str, JournalEntry] = {}
        for e in changes:
            if e.kind in ("refund", "expire"):
                if e.charge_id in settled:
                    problems.append(f"charge {e.charge_id} settled twice in the journal")
                settled[e.charge_id] = e
                charge = charges.get(e.charge_id)
                if charge is None:
                    problems.append(f"{e.kind} of a charge the journal does not have: {e}")
                elif e.kind == "refund" and e.delta != -charge.delta:
                    problems.append(
                        f"refund {e} gave back {e.delta}, the charge took {charge.delta}"
                    )
        if set(settled) != set(charges):
            problems.append(f"{len(set(charges) - set(settled))} charges never settled")
        # balances = grants - live debits, and the journal's running sums
        granted = self.granted()
        grant_entries = Counter(e.account for e in entries if e.kind == "grant")
        grants_made = Counter(a for a, _, _ in self.grants.values())
        if grant_entries != grants_made:
            problems.append(f"grant entries {dict(grant_entries)} != grants {dict(grants_made)}")
        sums: dict[str, int] = {}
        off: set[str] = set()
        for e in entries:
            sums[e.account] = sums.get(e.account, 0) + e.delta
            if e.balance != sums[e.account] and e.account not in off:
                off.add(e.account)  # the first entry of each account that is off
                problems.append(
                    f"entry {e.seq}: balance {e.balance} != running sum {sums[e.account]}"
                )
        for account in self.accounts:
            live = sum(
                -c.delta
                for cid, c in charges.items()
                if c.account == account and settled.get(cid, c).kind != "refund"
            )
            balance = self.ledger.balance(account)
            if balance != granted[account] - live:
                problems.append(
                    f"{account}: balance {balance} != "
                    f"grants {granted[account]} - live debits {live}"
                )
            if sums.get(account) != balance:
                problems.append(f"{account}: journal sum {sums.get(account)} != balance {balance}")
        return {
            "journal_entries": len(entries),
            "events_checked": len(entries) + len(events),
            "unhooked_unknown": unhooked,
            "trims": self.trims,
            "trimmed": self.trimmed,
        }

    def _audit_without_journal(
        self, events: list[tuple[str, JobRecord]], problems: list[str], exact: bool
    ) -> dict[str, Any]:
        """No journal: the hooks against the balances. Each charge id seen in
        a settlement hook without a charge hook is one whose claim's answer
        was lost for good; a charge hook with no settlement hook after
        settling is one whose settlement's answer was; both must be
        attributable to a call that ended in StoreUnavailable."""
        charges = {r.charge_id: r for k, r in events if k == "charge"}
        settlements = {r.charge_id: (k, r) for k, r in events if k in ("refund", "expire")}
        orphans = [r for cid, (k, r) in settlements.items() if cid not in charges]
        for r in orphans:
            if exact or not self._attributable(r, "charge"):
                problems.append(f"a settlement hook of a charge no hook reported: {r}")
        unsettled = [r for cid, r in charges.items() if cid not in settlements]
        for r in unsettled:
            # the settlement's time is unknown: any unknown call on the job after the charge
            if exact or not any(
                u.t1 >= r.charged_at
                and (u.op in ("prune", "aprune") or (u.account, u.job_id) == (r.account, r.job_id))
                for u in self.unknown
            ):
                problems.append(f"a charge no hook reported settled: {r}")
        granted = self.granted()
        for account in self.accounts:
            debits = [r.debited for r in charges.values() if r.account == account]
            debits += [r.debited for r in orphans if r.account == account]
            refunds = sum(
                r.debited for k, r in settlements.values() if k == "refund" and r.account == account
            )
            expected = granted[account] - sum(debits) + refunds
            open_ = [r.debited for r in unsettled if r.account == account]
            balance = self.ledger.balance(account)
            assert balance is not None
            # each unsettled charge was refunded (+debited) or expired (+0)
            reachable = {expected}
            for d in open_:
                reachable |= {x + d for x in reachable}
            if balance not in reachable:
                problems.append(
                    f"{account}: balance {balance}, the hooks say {expected} "
                    f"(+ any of {open_} refunded unreported)"
                )
        return {
            "journal_entries": 0,
            "events_checked": len(events),
            "unhooked_unknown": len(orphans) + len(unsettled),
            "trims": 0,
            "trimmed": 0,
        }
