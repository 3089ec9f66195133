"""Do the books balance? What the clients saw, checked against the ledger.

:func:`check_books` takes every call of a load run (:class:`LoadResult`) and
the ledger the servers wrote to, and checks, exactly:

- credits debited from each account = its jobs whose charging call succeeded
  x cost (its live records), and the balance is the grant less that;
- refunds = failed charging calls: every injected 502 answered ``refunded``
  and left nothing charged;
- no job charged twice (at most one answer ``charged`` that stood, one record);
- a record's ``uses`` = the calls of its job that were served;
- no balance below zero, in the ledger or in any answer;
- no 5xx but the injected ones, no answer lost (unless ``allow_unavailable``:
  a fault run, where 503s and transport errors are expected);
- every 402 went to an account that was really out of credits: its body says
  so, and the calls seen around it could have used up the account's credits.

Before checking it settles the ledger (:func:`settle`): a worker killed in
the middle of a charging call leaves a ``pending`` record; once its lease is
over ``prune()`` refunds it. The servers of ``tests/system/_servers.py`` run
with a lease of a few seconds (``JOBCREDITS_LEASE``), so settling waits at
most that long; pass a ledger built with the same lease.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from jobcredits_plugin import JobRecord, JournalEntry, Ledger

from ._load import Call, LoadResult, account_of

#: At most this many violations are spelled out in the AssertionError.
MAX_LISTED = 25


@dataclass
class Books:
    """The figures of a run that balanced."""

    #: Credits taken from all accounts (grants less final balances).
    debited: int
    #: Jobs charged (live records), and the answers that said ``charged``.
    charged_jobs: int
    charged_answers: int
    #: Failed charging calls, refunded (answers ``refunded``).
    refunded: int
    #: Pending charges of dead calls refunded by settle() (prune).
    settled: int
    reused: int
    #: 402 answers (an account out of credits), 409 answers (first call
    #: still running), 503 answers and calls that got no answer at all.
    rejected: int
    conflicts: int
    unavailable: int
    transport_errors: int
    jobs: int
    calls: int
    statuses: dict[str, int] = field(default_factory=dict)
    balances: dict[str, int] = field(default_factory=dict)
    #: Journal entries by kind: the same books, rebuilt from the journal alone.
    journal: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def settle(ledger: Ledger, lease: float | None = None, *, slack: float = 2.0) -> list[JobRecord]:
    """Refund what is still pending once its lease is over, and return what
    ``prune()`` removed. Waits at most ``lease`` (default: the ledger's) plus
    ``slack`` seconds; raises AssertionError if a record is still pending then."""
    lease = ledger.lease if lease is None else lease
    deadline = time.monotonic() + lease + slack
    removed: list[JobRecord] = []
    for _ in range(1000):  # bounded; the deadline ends it long before
        removed.extend(ledger.prune())
        pending = [r for r in ledger.snapshot() if r.state == "pending"]
        if not pending:
            return removed
        due = max(r.lease_until or (r.charged_at + lease) for r in pending)
        wait = max(0.05, due - ledger.clock() + 0.05)
        if time.monotonic() + wait > deadline:
            break
        time.sleep(wait)
    still = [r for r in ledger.snapshot() if r.state == "pending"]
    raise AssertionError(
        f"{len(still)} charge(s) still pending {lease + slack:g} s after the run "
        f"(a lease longer than {lease:g} s?): {[r.job_id for r in still[:10]]}"
    )


def _describe(call: Call) -> str:
    flags = "".join([" duplicate" if call.duplicate else "", " injected" if call.injected else ""])
    answer = call.error if call.status is None else f"{call.status} charge={call.charge}"
    return (
        f"job {call.job_id} ({call.account}) call {call.index} attempt {call.attempt}"
        f"{flags} {call.path}: {answer}"
        + (f" code={call.code}" if call.code else "")
        + (f" balance={call.balance}" if call.balance is not None else "")
    )


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, message: str) -> None:
        self.items.append(message)

    def raise_any(self, result: LoadResult) -> None:
        if not self.items:
            return
        listed = "\n  - ".join(self.items[:MAX_LISTED])
        more = len(self.items) - MAX_LISTED
        raise AssertionError(
            f"the books do not balance: {len(self.items)} problem(s) in a run of "
            f"{len(result.jobs)} jobs, {len(result.calls)} calls against {result.base_url}"
            f"\n  - {listed}" + (f"\n  ... and {more} more" if more > 0 else "")
        )


def check_books(
    result: LoadResult,
    ledger: Ledger,
    granted: Mapping[str, int],
    *,
    cost: int,
    injected_statuses: frozenset[int] = frozenset({502}),
    allow_unavailable: bool = False,
    require_complete: bool | None = None,
) -> Books:
    """Check the run's books (see the module docstring) and return its figures.

    ``granted`` maps each account to the credits it had before the run, on a
    store the run had to itself. ``allow_unavailable`` accepts 503s, transport
    errors and 409s on retries (a fault run); the ledger must balance all the
    same. ``require_complete`` (default: not ``allow_unavailable``) also asks
    that every job ran to its end or was refused with 402, within the deadline.
    """
    if require_complete is None:
        require_complete = not allow_unavailable
    settled = settle(ledger)
    problems = _Problems()
    calls = result.calls
    by_job = result.by_job()
    job_account = {job.job_id: account_of(job.api_key) for job in result.jobs}

    # -- every answer, one by one ----------------------------------------------------
    for call in calls:
        status = call.status
        if status is None:
            if not allow_unavailable:
                problems.add(f"no answer: {_describe(call)}")
            continue
        if call.remaining is not None and call.remaining < 0:
            problems.add(f"X-Credits-Remaining below zero: {_describe(call)}")
        if call.balance is not None and call.balance < 0:
            problems.add(f"a problem body with a balance below zero: {_describe(call)}")
        if status in injected_statuses:
            if not call.injected:
                problems.add(
                    f"{status} on a call that was not failed on purpose: {_describe(call)}"
                )
            elif call.charge != "refunded":
                problems.add(f"a failed charging call was not refunded: {_describe(call)}")
            continue
        if call.injected and status < 400:
            problems.add(f"the injected failure did not fail: {_describe(call)}")
        if status >= 500:
            if not (allow_unavailable and status == 503):
                problems.add(f"unexpected {status}: {_describe(call)}")
            if call.charge == "charged":
                problems.add(f"a 5xx answer kept its charge: {_describe(call)}")
            continue
        if status == 200:
            if call.charge not in ("charged", "reused"):
                problems.add(f"a served call with X-Job-Charge={call.charge}: {_describe(call)}")
            if call.index > 0 and call.charge == "charged" and not allow_unavailable:
                problems.add(f"a follow-up call was charged: {_describe(call)}")
        elif status == 402:
            if call.code != "insufficient_credits":
                problems.add(f"402 without code insufficient_credits: {_describe(call)}")
            if call.index != 0 and any(
                c.end <= call.start and c.status == 200 and c.charge in ("charged", "reused")
                for c in by_job.get(call.job_id, [])
            ):
                # A follow-up of a job that was charged rides free; one whose
                # earlier calls were all let through uncharged (fail-open
                # during an outage) is a new job to the ledger, and may be
                # refused like any other.
                problems.add(f"402 on a follow-up call of a charged job: {_describe(call)}")
            if call.balance is not None and call.balance >= cost:
                problems.add(f"402 while the body says the balance covers it: {_describe(call)}")
        elif status == 409:
            if call.code != "job_in_progress":
                problems.add(f"409 without code job_in_progress: {_describe(call)}")
            elif not call.duplicate and not allow_unavailable:
                problems.add(f"409 on a call that raced nothing: {_describe(call)}")
        else:
            problems.add(f"unexpected {status}: {_describe(call)}")

    # -- jobs: charged at most once, and only where the ledger says so ----------------
    def stood(call: Call) -> bool:
        """An answer ``charged`` whose charge stands (confirmed: not a 5xx)."""
        return call.charge == "charged" and call.status is not None and call.status < 500

    def unknown(call: Call) -> bool:
        """A call whose effect on the ledger the client cannot know."""
        return call.status is None or (call.status >= 500 and call.status not in injected_statuses)

    charged_seen: dict[str, int] = {}
    for job_id, job_calls in by_job.items():
        n = sum(1 for c in job_calls if stood(c))
        charged_seen[job_id] = n
        if n > 1:
            shown = "; ".join(_describe(c) for c in job_calls if stood(c))
            problems.add(f"job {job_id} charged {n} times: {shown}")

    records = ledger.snapshot()
    per_key = Counter((r.account, r.scope, r.job_id) for r in records)
    for key, n in per_key.items():
        if n > 1:
            problems.add(f"{n} live records for one job {key}")
    recorded: dict[str, JobRecord] = {}
    for record in records:
        recorded[record.job_id] = record
        if record.job_id not in job_account:
            problems.add(f"a record for a job the load never ran: {record}")
            continue
        if record.account != job_account[record.job_id]:
            problems.add(f"job {record.job_id} charged to {record.account}: {record}")
        if record.state != "charged":
            problems.add(f"job {record.job_id} left {record.state} after settling: {record}")
        if record.cost != cost or record.debited != cost:
            problems.add(
                f"job {record.job_id} cost {record.cost}, debited {record.debited}, "
                f"not {cost}: {record}"
            )
        job_calls = by_job.get(record.job_id, [])
        served = sum(1 for c in job_calls if c.status == 200)
        unknowns = sum(1 for c in job_calls if unknown(c))
        if charged_seen.get(record.job_id, 0) == 0 and unknowns == 0:
            problems.add(
                f"job {record.job_id} is charged in the ledger but no answer said so: {record}"
            )
        if not served <= record.uses <= served + unknowns:
            problems.add(
                f"job {record.job_id} served {served} calls"
                + (f" (+{unknowns} unanswered)" if unknowns else "")
                + f" but the ledger counts {record.uses} uses"
            )
    for job_id, n in charged_seen.items():
        if n and job_id not in recorded:
            problems.add(f"job {job_id} answered charged but the ledger has no record of it")

    # -- balances: debited = charged jobs x cost, never below zero -------------------
    by_account: dict[str, list[JobRecord]] = defaultdict(list)
    for record in records:
        by_account[record.account].append(record)
    unknown_accounts = set(by_account) - set(granted)
    if unknown_accounts:
        problems.add(f"charges to accounts nobody granted: {sorted(unknown_accounts)}")
    balances: dict[str, int] = {}
    debited = 0
    for account, credits in granted.items():
        balance = ledger.balance(account)
        if balance is None:
            problems.add(f"no balance for {account}: is the ledger built with balances=True?")
            continue
        balances[account] = balance
        debited += credits - balance
        if balance < 0:
            problems.add(f"{account}'s balance is below zero: {balance}")
        expected = credits - cost * len(by_account.get(account, []))
        if balance != expected:
            problems.add(
                f"{account}: granted {credits}, {len(by_account.get(account, []))} jobs charged "
                f"x {cost} -> {expected} expected, but the ledger holds {balance}"
            )

    # -- the same books, rebuilt from the journal alone --------------------------------
    journal = _check_journal(ledger, granted, records, balances, problems)

    # -- every 402 went to an account really out of credits --------------------------
    _check_rejections(calls, granted, cost, unknown, problems)

    # -- every job ran to its end -----------------------------------------------------
    outcomes = result.jobs_by_outcome()
    if require_complete:
        if result.stopped_by_deadline:
            problems.add(
                f"the run hit its {result.scenario.deadline:g} s deadline: jobs {dict(outcomes)}"
            )
        unfinished = [j for j in result.jobs if j.outcome not in ("done", "refused")]
        if unfinished:
            problems.add(
                f"{len(unfinished)} job(s) did not run to their end: {dict(outcomes)}; "
                f"e.g. {[_describe(c) for c in by_job.get(unfinished[0].job_id, [])][-3:]}"
            )
    for job in result.jobs:
        if job.outcome == "refused" and charged_seen.get(job.job_id):
            problems.add(f"job {job.job_id} was refused after being charged")

    problems.raise_any(result)
    statuses = result.count_by_status()
    charges = result.count_by_charge()
    return Books(
        debited=debited,
        charged_jobs=len(records),
        charged_answers=sum(charged_seen.values()),
        refunded=charges["refunded"],
        settled=len(settled),
        reused=charges["reused"],
        rejected=statuses[402],
        conflicts=statuses[409],
        unavailable=statuses[503],
        transport_errors=statuses[None],
        jobs=len(result.jobs),
        calls=len(calls),
        statuses={str(k): v for k, v in sorted(statuses.items(), key=str)},
        balances=balances,
        journal=journal,
    )


def read_journal(ledger: Ledger) -> list[JournalEntry]:
    """The whole journal, page by page, as an exporter reads it."""
    entries: list[JournalEntry] = []
    after = 0
    while True:
        page = ledger.journal(after=after, limit=1000)
        if not page:
            return entries
        entries.extend(page)
        after = page[-1].seq


def _check_journal(
    ledger: Ledger,
    granted: Mapping[str, int],
    records: list[JobRecord],
    balances: Mapping[str, int],
    problems: _Problems,
) -> dict[str, int]:
    """Rebuild the books from the journal alone and compare them with the
    ledger: grants, each balance as the running sum of its account's deltas,
    every charge refunded at most once and only after it was made, and the
    charges that stand exactly the live records."""
    entries = read_journal(ledger)
    seqs = [e.seq for e in entries]
    if seqs != sorted(set(seqs)):
        problems.add("journal seqs are not strictly increasing")
    running: dict[str, int] = defaultdict(int)
    grants: dict[str, int] = defaultdict(int)
    charged: dict[str, JournalEntry] = {}
    refunded: set[str] = set()
    kinds: Counter[str] = Counter()
    for e in entries:
        kinds[e.kind] += 1
        running[e.account] += e.delta
        if e.balance != running[e.account]:
            problems.add(
                f"journal entry {e.seq}: balance {e.balance}, deltas say {running[e.account]}"
            )
        if e.kind == "grant":
            grants[e.account] += e.delta
        elif e.kind == "charge":
            if e.charge_id in charged:
                problems.add(f"charge {e.charge_id} journaled twice (seq {e.seq})")
            charged[e.charge_id] = e
        elif e.kind == "refund":
            if e.charge_id not in charged:
                problems.add(f"refund of {e.charge_id} (seq {e.seq}) before or without its charge")
            if e.charge_id in refunded:
                problems.add(f"charge {e.charge_id} refunded twice in the journal (seq {e.seq})")
            refunded.add(e.charge_id)
            if e.delta != charged.get(e.charge_id, e).cost:
                problems.add(f"refund {e.seq} gave back {e.delta}, not what was charged")
    for account, credits in granted.items():
        if grants.get(account, 0) != credits:
            problems.add(f"journal grants {grants.get(account, 0)} to {account}, not {credits}")
        if account in balances and running.get(account, 0) != balances[account]:
            problems.add(
                f"{account}: the journal rebuilds a balance of {running.get(account, 0)}, "
                f"the ledger holds {balances[account]}"
            )
    standing = set(charged) - refunded
    live = {r.charge_id for r in records}
    if standing != live:
        problems.add(
            f"charges standing in the journal ({len(standing)}) are not the live records "
            f"({len(live)}): {sorted(standing ^ live)[:5]}"
        )
    return dict(kinds)


def _check_rejections(
    calls: Iterable[Call],
    granted: Mapping[str, int],
    cost: int,
    unknown: Callable[[Call], bool],
    problems: _Problems,
) -> None:
    """A 402 is sound if, while it was decided, the account's credits could
    all have been in use. An upper bound on what was in use at a 402 that ran
    from ``s`` to ``e``: the calls that had started by ``e`` and were answered
    ``charged`` or ``refunded`` (or, for a charging call, got no answer: it
    may have charged), less the refunds answered before ``s``. Refunds the client
    never saw (a dead call's charge, settled) only lower what was in use, so
    leaving them out keeps the bound an upper bound."""
    by_account: dict[str, list[Call]] = defaultdict(list)
    for call in calls:
        by_account[call.account].append(call)
    for account, account_calls in by_account.items():
        rejections = [c for c in account_calls if c.status == 402]
        if not rejections:
            continue
        # Any call answered "charged" holds a credit, whichever call of its
        # job it was: after a fault, a job whose charging call was never
        # charged (a fail-open pass, a lost call) is charged by a later one.
        charge_starts = sorted(
            c.start
            for c in account_calls
            if c.charge in ("charged", "refunded") or (c.index == 0 and unknown(c))
        )
        refund_ends = sorted(c.end for c in account_calls if c.charge == "refunded")
        credits = granted.get(account, 0)
        for call in rejections:
            in_use = bisect.bisect_right(charge_starts, call.end) - bisect.bisect_left(
                refund_ends, call.start
            )
            if credits - cost * in_use >= cost:
                problems.add(
                    f"402 to {account}, which had {credits} credits and at most {in_use} "
                    f"charge(s) of {cost} in use then: {_describe(call)}"
                )
