"""Faults during load: the books still balance after each.

Real servers with four worker processes (``_servers.py``) run a bounded load
(``_load.py``) while a fault is injected (``_faults.py``); afterwards the
ledger is settled (the lease refunds what dead calls left ``pending``) and the
books are checked exactly (``_books.py``): every job charged once at most,
debits = charged jobs x cost, no balance below zero, no 5xx but the injected
ones and the 503s of an outage.

- ``kill -9`` of workers mid-run, on SQLite (and DjangoStore on PostgreSQL,
  and on SQLite at full size): a probe makes a charging call
  and its worker is killed after the charge is committed and before it
  answers; that pending charge must be refunded exactly once (by the balance
  and by the records ``prune`` settles), while other kills hit the load's
  own calls. The server starts new workers; the load goes on.
- Redis killed and restarted mid-run (a private ``redis-server`` with
  ``appendonly yes``/``appendfsync always``/``aof-load-truncated no``): 503
  with ``Retry-After`` while it is down, then the same app serves again, with nothing lost.
- PostgreSQL: the app's backends terminated several times mid-run.
- SQLite: workers killed again and again while they write, and a writer killed
  in the middle of a transaction that had already spilled pages into the WAL:
  the file passes ``PRAGMA integrity_check`` and nothing of the dead
  transaction is visible.

Reduced sizes by default (the whole module in about a minute and a half on two
cores); ``JOBCREDITS_SYSTEM=full`` runs the full ones. Each scenario stays
under 60 s. The Redis and PostgreSQL scenarios need their server: they skip
off CI without it and fail under ``CI=true``. The figures of each run are
printed (``pytest -s`` or ``-rP``) as one ``fault-report`` JSON line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("httpx")

import httpx

from jobcredits_plugin import Ledger
from jobcredits_plugin.testing import RecordingPlugin
from tests.system._books import Books, check_books, settle
from tests.system._faults import (
    REDIS_SERVER,
    FaultRunner,
    ProbeKill,
    RedisServer,
    count_backends,
    hold_sqlite_write_and_die,
    integrity_check,
    kill_sqlite_writer,
    kill_worker,
    kill_worker_mid_charge,
    table_exists,
    terminate_backends,
    wait_for_workers,
    with_query,
)
from tests.system._load import Call, LoadResult, Scenario, run_load_sync
from tests.system._servers import DJANGO_STORES, grant, provision_store, require, start_server

pytestmark = pytest.mark.slow

FULL = os.environ.get("JOBCREDITS_SYSTEM", "").lower() == "full"
ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

#: The lease the servers run with here: a killed call's charge is refunded
#: this long after it was made. Above the slowest handler of these loads
#: (a few tenths of a second, plus lock waits).
LEASE = 3.0

#: Credits of the probe account (its calls are the ones killed on purpose).
PROBE_KEY = "key-probe"
PROBE_ACCOUNT = "acct-probe"
PROBE_CREDITS = 100


def _size(reduced: int, full: int) -> int:
    return full if FULL else reduced


def _needs(condition: bool, message: str) -> None:
    """Skip off CI, fail on CI (like the store suite's shared servers)."""
    if condition:
        return
    if ON_CI:
        pytest.fail(message + " (CI=true: the fault tests must run)")
    pytest.skip(message)


def _report(name: str, **figures: Any) -> dict[str, Any]:
    row = {"scenario": name, "mode": "full" if FULL else "reduced", **figures}
    print("fault-report " + json.dumps(row, default=str, sort_keys=True))
    return row


def _env(scenario: Scenario, latency: float, **extra: str) -> dict[str, str]:
    keys = scenario.api_keys_env()["EXAMPLE_API_KEYS"] + f",{PROBE_KEY}={PROBE_ACCOUNT}"
    return {
        "EXAMPLE_API_KEYS": keys,
        "SUMMARIZE_LATENCY": str(latency),
        "JOBCREDITS_LEASE": str(LEASE),
        **extra,
    }


@contextmanager
def _timed() -> Iterator[dict[str, float]]:
    """Time the scenario, settling included, for the report (``seconds``).

    A figure, not an assertion: how long a scenario takes depends on the
    machine and its load, and the outcome checks are what must hold; the
    issue's 60 s target is read off the report."""
    figures: dict[str, float] = {}
    start = time.monotonic()
    yield figures
    figures["seconds"] = round(time.monotonic() - start, 2)


def _log_jobs(log: str, what: str) -> list[str]:
    """The jobs whose ``confirm`` or ``refund`` failed, from the server's log
    (the store was down at that moment; the lease settles them)."""
    return re.findall(rf"jobcredits could not {what} job '([^']+)'", log)


def _unsettled_answers(
    result: LoadResult, log: str, *, fail_open: bool = False
) -> tuple[LoadResult, list[Call]]:
    """Mark the answers whose ``confirm``/``refund`` did not reach the store.

    When the store goes down while a charging call runs, the call is answered
    (``200 charged``, or the injected ``502``) but its confirm or refund fails
    and is logged; the charge stays ``pending`` and its lease settles it as a
    refund (concepts: "What counts as failure"). The client's ``X-Job-Charge``
    was therefore not the last word: the call's effect on the ledger is
    unknown to it, like a call that got no answer, and that is how the books
    count it (the job's later calls may take it over and be charged). Returns
    a copy of the result with those answers marked so, and the answers.

    With ``fail_open``, the calls let through uncharged while the store was
    down (``200`` without ``X-Job-Charge``) are unknown too: most never
    reached the store, but one whose script ran just before Redis died
    committed its charge (persisted by ``appendfsync always``) and lost only
    the answer, so the app, seeing an error, let it through uncharged. That
    charge stays ``pending``, holds its credit (a 402 may follow) and is
    refunded by the lease. The first fail-open run caught exactly this."""
    calls = list(result.calls)
    if fail_open:
        calls = [
            dataclasses.replace(
                c, status=None, error="let through uncharged (fail_open): outcome unknown"
            )
            if c.status == 200 and c.charge is None
            else c
            for c in calls
        ]
    marked: list[Call] = []

    def confirmed(c: Call) -> bool:
        return c.status == 200 and c.charge == "charged"

    def refunded(c: Call) -> bool:
        return c.injected and c.status is not None and c.status >= 500

    checks: list[tuple[str, Callable[[Call], bool]]] = [
        ("confirm", confirmed),
        ("refund", refunded),
    ]
    for what, match in checks:
        for job_id in _log_jobs(log, what):
            # the earliest such answer of the job not marked yet (a marked one
            # has no status any more)
            candidates = sorted(
                (i for i, c in enumerate(calls) if c.job_id == job_id and match(c)),
                key=lambda i: calls[i].end,
            )
            assert candidates, f"the log says {what} of {job_id} failed; no answer matches"
            i = candidates[0]
            original = calls[i]
            calls[i] = dataclasses.replace(
                original, status=None, error=f"answered {original.status} {original.charge}, "
                f"but its {what} failed (server log)"
            )  # fmt: skip
            marked.append(calls[i])
    return dataclasses.replace(result, calls=calls), marked


def _check(
    result: LoadResult, url: str, scenario: Scenario, log: str, *, fail_open: bool = False
) -> tuple[Books, list[Any], int]:
    """Settle the ledger (recording what prune refunds), then check the books
    of a fault run. Returns the books, the records settle refunded and how
    many answers had their confirm or refund fail."""
    events = RecordingPlugin()
    with Ledger.from_url(url, balances=True, lease=LEASE, plugins=[events]) as ledger:
        settled = settle(ledger)
        checked, marked = _unsettled_answers(result, log, fail_open=fail_open)
        books = check_books(
            checked, ledger, scenario.granted(), cost=scenario.cost, allow_unavailable=True
        )
    return books, settled, len(marked)


def _takeovers(result: LoadResult) -> int:
    """Jobs whose charging call died unanswered, whose retry found the charge
    still ``pending`` (409) and which a later call then charged: the lease
    refunded the dead call's charge inside the server (the takeover)."""
    count = 0
    for calls in result.by_job().values():
        first = [c for c in calls if c.index == 0]
        dead = [c.end for c in first if c.status is None]
        if not dead:
            continue
        later = [c for c in calls if c.start >= min(dead)]
        if any(c.status == 409 for c in later) and any(
            c.status == 200 and c.charge == "charged" for c in later
        ):
            count += 1
    return count


def _fivexx(result: LoadResult) -> dict[str, int]:
    out: dict[str, int] = {}
    for call in result.calls:
        if call.status is not None and call.status >= 500:
            out[str(call.status)] = out.get(str(call.status), 0) + 1
    return out


# -- 1. kill -9 of workers mid-run ------------------------------------------------------------

KILL_KINDS = ("flask", "django", "fastapi") if FULL else ("flask", "fastapi")
#: (server, store) of the kill -9 runs: each server on a SQLite file, and the
#: Django example on DjangoStore (the ledger in the project's database,
#: through the ORM): on PostgreSQL in every run, on SQLite at full size.
KILL_RUNS = [pytest.param(kind, "sqlite", id=kind) for kind in KILL_KINDS] + [
    pytest.param("django", store, id=f"django-{store}")
    for store in (DJANGO_STORES if FULL else ("django-postgres",))
]


def _kill_jobs(kind: str) -> int:
    # Flask's sync workers sleep on every call (4 workers: ~15 calls/s at
    # 0.25 s); Django's and FastAPI's second call does not sleep, and
    # uvicorn's workers sleep concurrently. FastAPI's reduced load is sized to
    # outlast the kills on a quiet machine too: at 400 jobs it once ended
    # before the last kill's replacement was up (CI, 2026-12-06), leaving no
    # call after it to show the load went on.
    return {"flask": _size(40, 150), "django": _size(60, 250)}.get(kind, _size(800, 1000))


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("kind", "store"), KILL_RUNS)
def test_kill_9_of_workers_mid_run_refunds_their_pending_charges_once(
    kind: str, store: str, tmp_path: Path
) -> None:
    """Workers are SIGKILLed mid-run on a shared ledger (SQLite; DjangoStore
    on PostgreSQL and SQLite): probes whose worker
    dies after their charge and before their answer leave ``pending``
    charges, each refunded exactly once after the lease (the probe account
    gets every credit back, and prune settles each probe's charge once);
    kills of serving workers hit the load's own calls. The master starts new workers,
    the load goes on, and the books balance: no job charged twice, no
    balance below zero, debits = charged jobs."""
    require(kind)
    rounds = _size(2, 4)  # each: a probe's worker killed, then a serving one
    scenario = Scenario(
        jobs=_kill_jobs(kind),
        clients=_size(16, 40),
        seed=11,
        deadline=40.0,
    )
    rng = random.Random(5)
    killed: list[int] = []
    probe_kills: list[ProbeKill] = []
    with _timed() as took, provision_store(store, tmp_path) as url:
        grant(url, {**scenario.granted(), PROBE_ACCOUNT: PROBE_CREDITS})
        # long enough for the probe to see its charge before the answer,
        # also on a loaded machine
        env = _env(scenario, latency=0.25)
        with (
            start_server(kind, url, env=env, log_dir=tmp_path) as server,
            Ledger.from_url(url, balances=True, lease=LEASE) as reader,
        ):

            def probe() -> int:
                job = f"probe-{uuid.uuid4().hex[:12]}"
                done = kill_worker_mid_charge(
                    server,
                    reader,
                    base_url=server.base_url,
                    path=server.charged_paths[0],
                    api_key=PROBE_KEY,
                    account=PROBE_ACCOUNT,
                    job_id=job,
                )
                probe_kills.append(done)
                killed.append(done.pid)
                wait_for_workers(server, server.workers, gone=killed, timeout=20)
                return done.pid

            def random_kill() -> int:
                pid = kill_worker(server, rng=rng, serving=server.base_url)
                killed.append(pid)
                wait_for_workers(server, server.workers, gone=killed, timeout=20)
                return pid

            with FaultRunner() as faults:
                for n in range(rounds):
                    faults.at(0.8 + 1.6 * n, "probe kill", probe)
                    faults.at(1.6 + 1.6 * n, "serving worker kill", random_kill)
                result = run_load_sync(server.base_url, scenario, path=server.charged_paths)
            # every killed worker was replaced and the master still runs
            workers = wait_for_workers(server, server.workers, gone=killed, timeout=20)
            assert server.proc.poll() is None
            # a probe answered before its kill could land (a loaded machine)
            # was charged and confirmed: give its credit back
            served = [job for done in probe_kills for job in done.served]
            for job in served:
                assert reader.refund(PROBE_ACCOUNT, job, scope="summarize")
            # each probe's charge is pending, with the charge id it made, and
            # debited from the probe account
            for done in probe_kills:
                assert done.answer == b"", f"the killed probe got an answer: {done.answer!r}"
                record = reader.lookup(PROBE_ACCOUNT, done.job_id, scope="summarize")
                assert record is not None
                assert record.state == "pending", record
                assert record.charge_id == done.charge_id
            assert reader.balance(PROBE_ACCOUNT) == PROBE_CREDITS - len(probe_kills)
            log = server.log_text()
        books, settled, unsettled = _check(result, url, scenario, log)
        # the lease refunded each probe's charge exactly once ...
        settled_probes = [r for r in settled if r.account == PROBE_ACCOUNT]
        assert sorted((r.job_id, r.charge_id) for r in settled_probes) == sorted(
            (p.job_id, p.charge_id) for p in probe_kills
        )
        with Ledger.from_url(url, balances=True, lease=LEASE) as ledger:
            # ... and the balance says so: every credit back, none twice
            assert ledger.balance(PROBE_ACCOUNT) == PROBE_CREDITS
            assert all(
                ledger.lookup(PROBE_ACCOUNT, p.job_id, scope="summarize") is None
                for p in probe_kills
            )
    dead_calls = books.transport_errors
    assert len(probe_kills) == rounds
    assert len(killed) == 2 * rounds
    assert unsettled == 0  # a killed worker answers nothing; the others confirm
    if FULL:
        # A serving worker is picked by its client connections, which may all
        # be idle between two calls when the SIGKILL lands: with two serving
        # kills (the reduced run) missing every call happens now and then on
        # a loaded machine (1 run in 4 on CI once); with four it has not.
        assert dead_calls >= 1, "no kill hit a call of the load"
    # the load went on after the last kill: calls started after it were served
    last_kill = faults.started + max(e.at + e.took for e in faults.events)
    assert any(c.status == 200 for c in result.calls if c.start > last_kill)
    _report(
        f"kill -9 ({kind}, {store})",
        jobs=scenario.jobs,
        clients=scenario.clients,
        calls=len(result.calls),
        load_seconds=round(result.duration, 2),
        seconds=took["seconds"],
        probe_kills=len(probe_kills),
        serving_worker_kills=len(killed) - len(probe_kills),
        killed_pids=killed,
        workers_after=len(workers),
        dead_calls=dead_calls,
        takeovers=_takeovers(result),
        settled_by_prune=len(settled),
        probe_refunds=len(settled_probes),
        probes_answered_first=len(served),
        books=books.as_dict(),
    )


# -- 2. Redis restarted mid-run ---------------------------------------------------------------


def _redis_outage_run(
    kind: str, tmp_path: Path, *, fail_open: bool, jobs: int, outage: float
) -> dict[str, Any]:
    _needs(REDIS_SERVER is not None, "redis-server is not installed")
    pytest.importorskip("redis")
    require(kind)
    scenario = Scenario(jobs=jobs, clients=_size(20, 40), seed=13, deadline=45.0)
    times: dict[str, float] = {}
    probes: list[tuple[float, float, httpx.Response]] = []
    with _timed() as took, RedisServer(tmp_path / "redis") as redis_server:
        url = with_query(redis_server.url, prefix=f"jcsys-{uuid.uuid4().hex[:8]}")
        grant(url, scenario.granted())
        extra = {"JOBCREDITS_FAIL_OPEN": "1"} if fail_open else {}
        env = _env(scenario, latency=0.1 if kind != "fastapi" else 0.05, **extra)
        with start_server(kind, url, env=env, log_dir=tmp_path) as server:
            workers = set(server.worker_pids())

            def probe() -> None:
                # One charging call of a new job sent once Redis is dead, and
                # answered before it is started again: the outage's answer is
                # then observed however slowly the load's own calls run on a
                # loaded machine (they may all miss a 3 s window).
                api_key = next(iter(scenario.accounts))
                started = time.monotonic()
                response = httpx.post(
                    server.base_url + server.charged_paths[0],
                    headers={
                        "X-Api-Key": api_key,
                        "Authorization": f"Bearer {api_key}",
                        "X-Job-Id": f"probe-{uuid.uuid4().hex}",
                        "Content-Type": "application/json",
                    },
                    content=json.dumps({"text": "a probe during the outage"}),
                    timeout=30.0,
                )
                probes.append((started, time.monotonic(), response))

            def down() -> dict[str, float]:
                keys = redis_server.dbsize()
                times["down"] = time.monotonic()
                # SIGKILL, the probe, start on the same port
                figures = redis_server.outage(outage, while_down=probe)
                times["up"] = time.monotonic()
                # the append-only file brought back every key written before
                assert redis_server.dbsize() >= keys
                return {**figures, "keys_before": keys}

            with FaultRunner() as faults:
                faults.at(1.0, "redis outage", down)
                result = run_load_sync(server.base_url, scenario, path=server.charged_paths)
            # recovered without a restart of the app: the same workers serve
            assert set(server.worker_pids()) == workers
            log = server.log_text()
        books, settled, unsettled = _check(result, url, scenario, log, fail_open=fail_open)
    assert "up" in times, "the outage did not happen during the load"
    during = [c for c in result.calls if times["down"] <= c.start and c.end <= times["up"]]
    after = [c for c in result.calls if c.start >= times["up"] + 1.0]
    unavailable = [c for c in result.calls if c.status == 503]
    # no 5xx but the injected 502s and the outage's 503s, which all ask to retry
    assert set(_fivexx(result)) <= {"502", "503"}, _fivexx(result)
    assert all(c.retry_after is not None and c.retry_after >= 1 for c in unavailable)
    assert all(c.code == "store_unavailable" for c in unavailable)
    outside = [c for c in unavailable if c.end < times["down"] or c.start > times["up"]]
    assert not outside, f"503s outside the outage: {outside[:3]}"
    # the probe met the outage: sent after the kill, answered before the restart
    assert len(probes) == 1, probes
    probe_start, probe_end, answer = probes[0]
    assert times["down"] <= probe_start
    assert probe_end <= times["up"]
    if fail_open:
        # uncharged passes while down: served, no charge header, nothing recorded
        assert answer.status_code == 200, (answer.status_code, answer.text[:300])
        assert "X-Job-Charge" not in answer.headers, dict(answer.headers)
        assert not [c for c in during if c.charge == "charged"], "charged while the store was down"
        assert not unavailable, "503s with fail-open on"
    else:
        assert answer.status_code == 503, (answer.status_code, answer.text[:300])
        assert answer.headers.get("Content-Type", "").startswith("application/problem+json")
        assert answer.json().get("code") == "store_unavailable", answer.text[:300]
        assert float(answer.headers["Retry-After"]) >= 1
        assert not [c for c in during if c.status == 200], "served while the store was down"
    # recovery: the calls started a second after the restart are served
    assert after
    assert all(c.status != 503 for c in after)
    assert any(c.status == 200 and c.charge in ("charged", "reused") for c in after)
    return _report(
        f"redis restart ({kind}{', fail_open' if fail_open else ''})",
        jobs=scenario.jobs,
        clients=scenario.clients,
        calls=len(result.calls),
        load_seconds=round(result.duration, 2),
        seconds=took["seconds"],
        outage_seconds=round(times["up"] - times["down"], 2),
        keys_before_outage=faults.events[0].result["keys_before"],
        responses_503=len(unavailable),
        probe=answer.status_code,
        retry_after=sorted({c.retry_after for c in unavailable}),
        served_uncharged=sum(1 for c in result.calls if c.status == 200 and c.charge is None),
        unconfirmed_answers=unsettled,
        settled_by_prune=len(settled),
        books=books.as_dict(),
    )


REDIS_KINDS = ("flask", "fastapi") if FULL else ("flask",)


def _redis_jobs(kind: str) -> int:
    # Sync workers serve about 35 calls/s at 0.1 s of latency, uvicorn's
    # about 150 at 0.05 s: enough jobs that the load outlasts the outage.
    return _size(120, 300) if kind != "fastapi" else _size(500, 900)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", REDIS_KINDS)
def test_redis_restarted_mid_run_answers_503_then_recovers(kind: str, tmp_path: Path) -> None:
    """A private Redis with ``appendfsync always`` is SIGKILLed mid-run and
    started again on the same port a few seconds later. While it is down the
    app answers 503 with ``Retry-After`` (no other 5xx); after the restart the
    same workers serve again with no restart of the app, and the books
    balance: the append-only file kept every charge and balance."""
    _redis_outage_run(kind, tmp_path, fail_open=False, jobs=_redis_jobs(kind), outage=3.0)


#: The environment variable that would turn fail-open on in the examples.
@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", REDIS_KINDS)
def test_redis_restarted_mid_run_with_fail_open_serves_uncharged(kind: str, tmp_path: Path) -> None:
    """The same outage with fail-open on: calls are served uncharged while
    Redis is down (200 without ``X-Job-Charge``), no 503, and the books of
    the charged calls balance after the restart."""
    _redis_outage_run(kind, tmp_path, fail_open=True, jobs=_redis_jobs(kind), outage=3.0)


# -- 3. PostgreSQL connections terminated mid-run ---------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ("flask", "fastapi") if FULL else ("fastapi",))
def test_postgres_backends_terminated_mid_run(kind: str, tmp_path: Path) -> None:
    """``pg_terminate_backend`` of every backend of the app (its own
    ``application_name``) several times during the load: the books balance
    (a charge whose answer was lost is pending, then refunded by its lease,
    never charged twice), the only 5xx are 503s, and the app keeps serving."""
    require(kind)
    pytest.importorskip("psycopg")
    from tests.stores.conftest import POSTGRES_DEFAULT, POSTGRES_URL_ENV, _server_url

    admin = _server_url(POSTGRES_URL_ENV, POSTGRES_DEFAULT, "PostgreSQL")
    app = f"jcsys-{uuid.uuid4().hex[:10]}"
    # 800 jobs: at 400 the load once ended before the fifth termination on a
    # quiet machine (CI, 2026-12-06: "the load ended before the faults").
    scenario = Scenario(jobs=_size(800, 1000), clients=_size(20, 40), seed=17, deadline=40.0)
    kills = _size(5, 12)
    with _timed() as took, provision_store("postgres", tmp_path) as base_url:
        url = with_query(base_url, application_name=app)
        grant(url, scenario.granted())
        env = _env(scenario, latency=0.02)
        with start_server(kind, url, env=env, log_dir=tmp_path) as server:
            workers = set(server.worker_pids())
            with FaultRunner() as faults:
                faults.every(0.6, kills, "terminate", lambda: terminate_backends(admin, app))
                result = run_load_sync(server.base_url, scenario, path=server.charged_paths)
            assert set(server.worker_pids()) == workers
            log = server.log_text()
            assert count_backends(admin, app) >= 1  # the pools reconnected
        books, settled, unsettled = _check(result, url, scenario, log)
    terminated = [e.result for e in faults.fired("terminate")]
    assert len(terminated) == kills, "the load ended before the faults"
    assert sum(terminated) >= kills, terminated  # backends were there to kill each time
    assert set(_fivexx(result)) <= {"502", "503"}, _fivexx(result)
    tail = [c for c in result.calls if c.start > result.started + 0.6 * (kills + 1) + 1.0]
    assert all(c.status != 503 for c in tail)
    _report(
        f"postgres terminate ({kind})",
        jobs=scenario.jobs,
        clients=scenario.clients,
        calls=len(result.calls),
        load_seconds=round(result.duration, 2),
        seconds=took["seconds"],
        terminations=len(terminated),
        backends_terminated=sum(terminated),
        responses_503=books.unavailable,
        transport_errors=books.transport_errors,
        unconfirmed_answers=unsettled,
        settled_by_prune=len(settled),
        books=books.as_dict(),
    )


# -- 4. SQLite writers killed mid-transaction -------------------------------------------------


@pytest.mark.timeout(120)
def test_sqlite_writers_killed_mid_transaction_leave_a_sound_file(tmp_path: Path) -> None:
    """Workers are SIGKILLed again and again inside their write transactions
    on one SQLite file (each killed while it holds the WAL write lock, seen in
    ``/proc/locks``), and an outside writer is killed in the middle of a
    transaction that had already written uncommitted pages into the WAL and
    debited every balance.
    Afterwards the file passes ``PRAGMA integrity_check``, nothing of the dead
    transaction is visible, and the books balance."""
    require("flask")
    kills = _size(8, 20)
    torn = _size(2, 4)
    scenario = Scenario(jobs=_size(800, 1500), clients=_size(30, 50), seed=19, deadline=40.0)
    rng = random.Random(7)
    killed: list[int] = []
    writers: list[int] = []
    with _timed() as took, provision_store("sqlite", tmp_path) as url:
        path = Path(url.removeprefix("sqlite:///").split("?", 1)[0])
        grant(url, scenario.granted())
        with start_server(
            "flask", url, env=_env(scenario, latency=0.0), log_dir=tmp_path
        ) as server:

            def kill() -> int | None:
                # the worker inside a write transaction (it holds the WAL
                # write lock), or, if none is caught within 2 s, any worker
                pid = kill_sqlite_writer(server, path, timeout=2.0)
                if pid is not None:
                    writers.append(pid)
                else:
                    pid = kill_worker(server, rng=rng, serving=server.base_url)
                killed.append(pid)
                return pid

            def torn_write() -> dict[str, Any]:
                return dataclasses.asdict(hold_sqlite_write_and_die(path))

            with FaultRunner() as faults:
                faults.every(0.35, kills, "kill", kill)
                for n in range(torn):
                    faults.at(0.5 + 1.1 * n, "torn write", torn_write)
                result = run_load_sync(server.base_url, scenario, path=server.charged_paths)
            wait_for_workers(server, server.workers, gone=killed, timeout=20)
            log = server.log_text()
        assert integrity_check(path) == ["ok"]
        assert not table_exists(path, "fault_torn"), "a killed transaction left its table"
        books, settled, unsettled = _check(result, url, scenario, log)
        assert integrity_check(path) == ["ok"]
    torn_writes = [e.result for e in faults.fired("torn write")]
    # The kills fire while the load lasts; a kill waits up to 2 s for a worker
    # inside a transaction, so on a slow machine the load may end before all
    # of them fired. At least three must have, and half of those inside a
    # write transaction.
    fired = len(faults.fired("kill"))
    assert min(kills, 3) <= fired <= kills, f"{fired} of {kills} kills fired"
    assert len(writers) >= max(1, fired // 2), (
        f"only {len(writers)} of {fired} kills caught a writer"
    )
    # the workers killed inside their transactions were serving calls, which
    # got no answer (about one dead call per such kill; reported, and at
    # least one required)
    assert books.transport_errors >= 1
    assert len(torn_writes) == torn
    assert all(t["wal_written"] for t in torn_writes), torn_writes  # pages were spilled
    assert set(_fivexx(result)) <= {"502"}, _fivexx(result)  # SQLite never went away
    _report(
        "sqlite writers killed (flask)",
        jobs=scenario.jobs,
        clients=scenario.clients,
        calls=len(result.calls),
        load_seconds=round(result.duration, 2),
        seconds=took["seconds"],
        worker_kills=len(killed),
        killed_inside_a_write_transaction=len(writers),
        torn_writes=torn_writes,
        dead_calls=books.transport_errors,
        settled_by_prune=len(settled),
        unconfirmed_answers=unsettled,
        integrity_check="ok",
        books=books.as_dict(),
    )
