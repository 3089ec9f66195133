"""Exactly-once under contention: threads and processes racing on the same jobs.

Every hook must fire exactly once per committed change, however many callers
race (DESIGN §2, §4). These tests start many threads (and, for SQLite, several
processes on one file) on the same jobs at the same moment, with a fake clock
so that no lease runs out mid-test, and count what each caller saw. They check
counts, never timings.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import random
import threading
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobcredits_plugin import Charge, InsufficientCredits, JobInProgress, Ledger
from jobcredits_plugin.stores import BaseStore, MemoryStore, SQLiteStore
from jobcredits_plugin.testing import DEFAULT_START, FakeClock, RecordingPlugin

pytestmark = pytest.mark.slow

THREADS = 8
CLAIMERS = 4  # threads that claim each job at the same moment
JOBS = 200
#: Jobs are spread round-robin over these accounts (50 each); every grant but
#: the first is smaller than its account's number of jobs.
GRANTS = {"rich": 1000, "poor": 20, "tight": 49, "broke": 0}
ACCOUNTS = list(GRANTS)
JOIN_TIMEOUT = 180.0


def _sqlite(path: Path, **kw: Any) -> SQLiteStore:
    # Generous: under 8 threads or 4 processes on two slow cores, a writer can
    # wait a while for its turn; it must never give up.
    return SQLiteStore(path, timeout=60.0, **kw)


def _django_alias(kind: str) -> str:
    """The Django test database alias of a ``django-*`` kind (skipping, or
    failing under CI, when its server or Django is missing)."""
    pytest.importorskip("django", reason="the django extra is not installed")
    from tests.stores import _django

    if kind == "django-postgres":
        from tests.stores.conftest import POSTGRES_DEFAULT, POSTGRES_URL_ENV, _server_url

        _server_url(POSTGRES_URL_ENV, POSTGRES_DEFAULT, "PostgreSQL")
        pytest.importorskip("psycopg", reason="the postgres extra is not installed")
        return _django.POSTGRES_ALIAS
    if kind == "django-mysql":
        if not os.environ.get(_django.MYSQL_URL_ENV):
            pytest.skip(f"set {_django.MYSQL_URL_ENV} to run DjangoStore on MySQL/MariaDB")
        return _django.MYSQL_ALIAS
    return _django.SQLITE_ALIAS


@pytest.fixture(params=["memory", "sqlite", "django-sqlite", "django-postgres", "django-mysql"])
def make_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., BaseStore]]:
    """Builds the store under test (options such as prune_batch pass through
    to SQLite and Django stores)."""
    made: list[BaseStore] = []

    def make(**kw: Any) -> BaseStore:
        path = tmp_path / "jobs.db"
        store: BaseStore
        if request.param == "memory":
            store = MemoryStore()
        elif request.param == "sqlite":
            store = _sqlite(path, **kw)
        else:
            from tests.stores import _django

            store = _django.fresh_store(_django_alias(request.param), **kw)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def _run_threads(target: Callable[[int], None], count: int = THREADS) -> None:
    """Run ``target(n)`` in ``count`` threads; re-raise the first error any of them hit."""
    errors: list[str] = []

    def guarded(n: int) -> None:
        try:
            target(n)
        except BaseException:
            errors.append(traceback.format_exc())

    threads = [threading.Thread(target=guarded, args=(n,), daemon=True) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=JOIN_TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a racing thread hung"
    assert errors == [], errors[0]


def _account(job: int) -> str:
    return ACCOUNTS[job % len(ACCOUNTS)]


# -- threads -------------------------------------------------------------------------


def test_threads_racing_on_each_job_charge_it_exactly_once(
    make_store: Callable[..., BaseStore],
) -> None:
    """4 threads claim each of 200 jobs at once: one charge per job, exact non-negative balances."""
    events = RecordingPlugin()
    ledger = Ledger(make_store(), clock=FakeClock(), balances=True, plugins=[events])
    for account, credits in GRANTS.items():
        ledger.grant(account, credits)
    barrier = threading.Barrier(THREADS, timeout=JOIN_TIMEOUT)
    seen: list[list[tuple[int, object]]] = [[] for _ in range(THREADS)]

    def claim(n: int) -> None:
        group = n // CLAIMERS  # threads 0-3 take the even jobs, 4-7 the odd ones
        for batch in range(JOBS // 2):
            barrier.wait()
            job = 2 * batch + group
            account = _account(job)
            try:
                c = ledger.charge(account, f"job-{job}")
            except (JobInProgress, InsufficientCredits) as exc:
                seen[n].append((job, exc))
                continue
            seen[n].append((job, c))
            if c.charged and job % 3:  # every third job stays pending: its rivals must wait
                ledger.confirm(account, f"job-{job}", charge_id=c.record.charge_id)

    _run_threads(claim)

    results = [item for per_thread in seen for item in per_thread]
    assert len(results) == JOBS * CLAIMERS
    outcomes = Counter(r.outcome if isinstance(r, Charge) else type(r).__name__ for _, r in results)
    assert set(outcomes) <= {"charged", "reused", "JobInProgress", "InsufficientCredits"}
    assert outcomes["JobInProgress"] >= sum(
        CLAIMERS - 1 for j in range(0, JOBS, 3) if _account(j) == "rich"
    )
    for _, r in results:
        balance = r.balance if isinstance(r, (Charge, InsufficientCredits)) else 0
        assert balance is not None
        assert balance >= 0

    charged_by_job = Counter(job for job, r in results if isinstance(r, Charge) and r.charged)
    hooks_by_key = Counter(r.key for r in events.of("charge"))
    assert set(hooks_by_key.values()) == {1}  # no refunds happen: one charge per job at most
    assert len(events.of("refund")) == 0
    assert sum(charged_by_job.values()) == len(events.of("charge"))
    assert set(charged_by_job.values()) == {1}
    assert outcomes["reused"] == len(events.of("reuse"))
    for account, credits in GRANTS.items():
        jobs = [j for j in range(JOBS) if _account(j) == account]
        charged = sum(1 for j in jobs if charged_by_job[j])
        assert charged == min(credits, len(jobs)), account
        assert ledger.balance(account) == credits - charged
    ledger.close()


def test_racing_confirms_and_refunds_of_one_charge_refund_it_once(
    make_store: Callable[..., BaseStore],
) -> None:
    """Confirms and refunds of one charge_id from many threads: one refund wins, on_refund once."""
    events = RecordingPlugin()
    ledger = Ledger(make_store(), clock=FakeClock(), balances=True, plugins=[events])
    ledger.grant("acct", 100)
    jobs = 50
    charge_ids = [ledger.charge("acct", f"job-{j}", cost=2).record.charge_id for j in range(jobs)]
    assert ledger.balance("acct") == 0
    barrier = threading.Barrier(THREADS, timeout=JOIN_TIMEOUT)
    refunded: list[list[bool]] = [[] for _ in range(jobs)]
    lock = threading.Lock()

    def race(n: int) -> None:
        for j in range(jobs):
            barrier.wait()
            if n < 2:
                ledger.confirm("acct", f"job-{j}", charge_id=charge_ids[j])
            elif n == THREADS - 1:  # a worker whose charge was taken over long ago
                assert ledger.refund("acct", f"job-{j}", charge_id="0" * 16) is False
            else:
                done = ledger.refund("acct", f"job-{j}", charge_id=charge_ids[j])
                with lock:
                    refunded[j].append(done)

    _run_threads(race)

    for j in range(jobs):
        assert sorted(refunded[j]) == [False] * 4 + [True], j
        assert ledger.lookup("acct", f"job-{j}") is None
    assert Counter(r.key for r in events.of("refund")) == {
        ("acct", "default", f"job-{j}"): 1 for j in range(jobs)
    }
    assert ledger.balance("acct") == 100
    ledger.close()


def test_racing_prunes_settle_each_record_once(make_store: Callable[..., BaseStore]) -> None:
    """4 threads prune the same expired set at once: on_expire/on_refund fire once per record."""
    events = RecordingPlugin()
    clock = FakeClock()
    # A small SQLite prune batch, so that the pruners' transactions interleave.
    ledger = Ledger(make_store(prune_batch=16), clock=clock, balances=True, plugins=[events])
    ledger.grant("acct", 1000)
    for j in range(300):
        ledger.charge("acct", f"done-{j}")
        ledger.confirm("acct", f"done-{j}")
    for j in range(50):
        ledger.charge("acct", f"stale-{j}")
    clock.advance(3600)
    events.clear()
    barrier = threading.Barrier(4, timeout=JOIN_TIMEOUT)
    removed: list[list[tuple[str, str, str]]] = [[] for _ in range(4)]

    def prune(n: int) -> None:
        barrier.wait()
        removed[n] = [r.key for r in ledger.prune()]

    _run_threads(prune, count=4)

    all_removed = [key for batch in removed for key in batch]
    assert len(all_removed) == len(set(all_removed)) == 350
    assert len(events.of("expire")) == 300
    assert len(events.of("refund")) == 50
    keys = [e.record.key for e in events.events]
    assert sorted(keys) == sorted(all_removed)
    assert ledger.snapshot() == []
    assert ledger.balance("acct") == 1000 - 300
    ledger.close()


# -- processes on one SQLite file, or one database through Django -------------------------
#
# The workers are module-level functions so that the "spawn" start method can
# import them in the child; spawn (not fork) keeps the children free of any
# state of the test process. Each worker reports what its own hooks saw. A
# worker opens the store its spec names: ("sqlite", path), or ("django",
# alias, values) for a DjangoStore on a test database alias, the child first
# configuring Django with its parent's database values.

Spec = tuple[Any, ...]


def _open(spec: Spec, **kw: Any) -> BaseStore:
    if spec[0] == "sqlite":
        return _sqlite(Path(spec[1]), **kw)
    from tests.stores import _django

    _django.configure(spec[2])
    from jobcredits_plugin.django import DjangoStore

    return DjangoStore(spec[1], **kw)


@pytest.fixture(params=["sqlite", "django-sqlite", "django-postgres", "django-mysql"])
def spec(request: pytest.FixtureRequest, tmp_path: Path) -> Spec:
    """The store the processes share, emptied for this test."""
    if request.param == "sqlite":
        return ("sqlite", str(tmp_path / "jobs.db"))
    from tests.stores import _django

    alias = _django_alias(request.param)
    _django.fresh_store(alias).close()
    return ("django", alias, _django.configure())


def _report_errors(results: Any, work: Callable[[], dict[str, Any]]) -> None:
    try:
        results.put(work())
    except BaseException:
        results.put({"error": traceback.format_exc()})


def _charging_worker(
    spec: Spec, jobs: list[tuple[str, str]], seed: int, barrier: Any, results: Any
) -> None:
    def work() -> dict[str, Any]:
        events = RecordingPlugin()
        ledger = Ledger(
            _open(spec), clock=FakeClock(DEFAULT_START), balances=True, plugins=[events]
        )
        order = list(jobs)
        random.Random(seed).shuffle(order)
        outcomes: Counter[str] = Counter()
        balances: list[int] = []
        barrier.wait(JOIN_TIMEOUT)
        for account, job_id in order:
            try:
                c = ledger.charge(account, job_id)
            except JobInProgress:
                outcomes["in_progress"] += 1
                continue
            except InsufficientCredits as exc:
                outcomes["insufficient"] += 1
                balances.append(exc.balance if exc.balance is not None else -1)
                continue
            outcomes[c.outcome] += 1
            balances.append(c.balance if c.balance is not None else -1)
            if c.charged:
                ledger.confirm(account, job_id, charge_id=c.record.charge_id)
        ledger.close()
        return {
            "charges": [r.key for r in events.of("charge")],
            "charge_ids": [r.charge_id for r in events.of("charge")],
            "reuses": len(events.of("reuse")),
            "refunds": len(events.of("refund")),
            "outcomes": dict(outcomes),
            "min_balance": min(balances, default=0),
        }

    _report_errors(results, work)


def _pruning_worker(spec: Spec, now: float, barrier: Any, results: Any) -> None:
    def work() -> dict[str, Any]:
        events = RecordingPlugin()
        ledger = Ledger(_open(spec, prune_batch=8), clock=FakeClock(now), plugins=[events])
        barrier.wait(JOIN_TIMEOUT)
        removed = ledger.prune()
        ledger.close()
        return {
            "removed": [(r.key, r.charge_id) for r in removed],
            "events": [(e.kind, e.record.key, e.record.charge_id) for e in events.events],
        }

    _report_errors(results, work)


def _run_processes(
    target: Callable[..., None], args_list: list[tuple[Any, ...]]
) -> list[dict[str, Any]]:
    """Start one spawned process per argument tuple, released together by a
    barrier; return what each reported."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(args_list))
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, barrier, results)) for args in args_list]
    for p in procs:
        p.start()
    try:
        reports = []
        for _ in procs:
            try:
                reports.append(results.get(timeout=JOIN_TIMEOUT))
            except queue.Empty:
                pytest.fail("a worker process reported nothing in time")
        for p in procs:
            p.join(timeout=JOIN_TIMEOUT)
            assert p.exitcode == 0
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=10)
    errors = [r["error"] for r in reports if "error" in r]
    assert errors == [], errors[0] if errors else ""
    return reports


def test_processes_charging_the_same_jobs_charge_each_once(spec: Spec) -> None:
    """4 processes on one SQLite file (or one database through Django) charge
    the same 100 jobs: each once, balances exact."""
    grants = {"rich": 1000, "poor": 20}
    jobs = [(account, f"job-{j}") for j in range(50) for account in grants]
    with Ledger(_open(spec), balances=True) as setup:
        for account, credits in grants.items():
            setup.grant(account, credits)

    reports = _run_processes(_charging_worker, [(spec, jobs, seed) for seed in range(4)])

    per_key = Counter(key for r in reports for key in r["charges"])
    assert set(per_key.values()) == {1}
    assert sum(r["refunds"] for r in reports) == 0
    assert all(r["min_balance"] >= 0 for r in reports)
    total = Counter()
    for r in reports:
        total.update(r["outcomes"])
    assert total["charged"] == len(per_key)
    assert total["reused"] == sum(r["reuses"] for r in reports)
    assert sum(total.values()) == 4 * len(jobs)
    with Ledger(_open(spec), clock=FakeClock(DEFAULT_START), balances=True) as check:
        for account, credits in grants.items():
            charged = sum(1 for key in per_key if key[0] == account)
            assert charged == min(credits, 50), account
            assert check.balance(account) == credits - charged
        assert len(check.snapshot()) == len(per_key)
        # the journal, written by 4 processes: one entry per committed charge
        # (exactly the ones the hooks heard), seqs strictly increasing, and
        # each account's deltas add up to its balance
        journal = check.journal(limit=10_000)
        assert [e.seq for e in journal] == sorted({e.seq for e in journal})
        hooked = sorted(cid for r in reports for cid in r["charge_ids"])
        assert sorted(e.charge_id for e in journal if e.kind == "charge") == hooked
        assert [e.kind for e in journal if e.kind != "charge"] == ["grant", "grant"]
        for account in grants:
            assert sum(e.delta for e in journal if e.account == account) == check.balance(account)


def test_processes_pruning_the_same_expired_set_settle_each_record_once(spec: Spec) -> None:
    """2 processes prune one store's expired records at once: each record
    settled once in total."""
    clock = FakeClock()
    with Ledger(_open(spec), clock=clock) as setup:
        expected = set()
        for j in range(200):
            c = setup.charge("acct", f"done-{j}")
            setup.confirm("acct", f"done-{j}")
            expected.add((c.record.key, c.record.charge_id))
        for j in range(20):
            c = setup.charge("acct", f"stale-{j}")
            expected.add((c.record.key, c.record.charge_id))

    reports = _run_processes(_pruning_worker, [(spec, clock.now + 3600)] * 2)

    removed = [tuple(item) for r in reports for item in r["removed"]]
    fired = [tuple(item) for r in reports for item in r["events"]]
    assert len(removed) == len(set(removed)) == len(expected)
    assert {(tuple(k), cid) for k, cid in removed} == expected
    assert Counter(kind for kind, _, _ in fired) == {"expire": 200, "refund": 20}
    assert len({(tuple(k), cid) for _, k, cid in fired}) == len(expected)
    with Ledger(_open(spec), clock=FakeClock(clock.now + 3600)) as check:
        assert check.prune() == []
        assert check.snapshot() == []
        journal = check.journal(limit=10_000)
        settled = [(e.kind, e.charge_id) for e in journal if e.kind != "charge"]
        assert sorted(settled) == sorted((kind, cid) for kind, _, cid in fired)
        assert len(set(settled)) == len(settled) == len(expected)
