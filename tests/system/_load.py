"""The load driver: many clients running jobs against a real server, bounded in
count and in time, recording every call.

A :class:`Scenario` says how many jobs, how many calls each, how many clients
at once, and which faults the clients bring themselves: a share of jobs send
their charging call twice at once (a double click, a client retrying too
early), and a share of jobs have their first call fail upstream (``?fail=1``:
the handler answers 502, which refunds the charge) and retry it with the same
job id. Accounts with too few credits get 402s.

Every loop is bounded: each job makes at most ``max_attempts`` attempts per
call, no job starts after ``deadline`` seconds, no retry is made after it, and
each request has a timeout. Faults the server side brings (a killed worker, a
store that went away) show up as transport errors or 503s: they are recorded
and retried within those bounds, never waited out forever.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import httpx

#: Statuses (None: no answer at all) after which a call is tried again.
RETRYABLE = frozenset({None, 409, 429, 503})

#: The longest pause between two attempts, whatever Retry-After says.
MAX_PAUSE = 1.0

#: Seconds a client keeps an idle connection open (see run_load).
KEEPALIVE = 2.0


def account_of(api_key: str) -> str:
    """The account an API key of the load belongs to: ``key-x`` -> ``acct-x``."""
    return "acct-" + api_key.removeprefix("key-")


def default_accounts(jobs: int, cost: int = 1) -> dict[str, int]:
    """Four accounts with credits to spare, and one that runs out about a
    quarter of the way through its share of the jobs (a fifth of them)."""
    plenty = 2 * jobs * cost
    short = max(3, jobs // 20) * cost
    return {
        "key-load-1": plenty,
        "key-load-2": plenty,
        "key-load-3": plenty,
        "key-load-4": plenty,
        "key-short": short,
    }


@dataclass
class Scenario:
    """A bounded load: ``jobs`` jobs of ``calls_per_job`` calls, run by
    ``clients`` concurrent clients. ``accounts`` maps each API key the load
    uses to the credits its account is granted before the run (default:
    :func:`default_accounts`); the server must know the keys (see
    :meth:`api_keys_env`)."""

    jobs: int
    calls_per_job: int = 3
    clients: int = 50
    duplicate_first: float = 0.10
    fail_first: float = 0.05
    cost: int = 1
    seed: int = 1
    deadline: float = 60.0
    accounts: dict[str, int] = field(default_factory=dict)
    #: Seconds one request may take.
    timeout: float = 15.0
    #: Attempts per call of a job (the first call of a job with an injected
    #: failure gets one more, the failure itself).
    max_attempts: int = 30

    def __post_init__(self) -> None:
        if not self.accounts:
            self.accounts = default_accounts(self.jobs, self.cost)

    def granted(self) -> dict[str, int]:
        """Account -> credits granted before the run."""
        return {account_of(key): credits for key, credits in self.accounts.items()}

    def api_keys_env(self) -> dict[str, str]:
        """The environment that teaches the example apps the load's API keys."""
        keys = ",".join(f"{key}={account_of(key)}" for key in self.accounts)
        return {"EXAMPLE_API_KEYS": keys}


@dataclass
class Call:
    """One HTTP request of the load and what came back."""

    job_id: str
    api_key: str
    account: str
    #: Which call of the job (0: the charging call).
    index: int
    #: 1 for the first attempt of this call, 2 for its first retry, ...
    attempt: int
    path: str
    #: One of the two requests of a duplicated charging call.
    duplicate: bool
    #: Sent with ``?fail=1``: the handler answers 502.
    injected: bool
    start: float
    end: float = 0.0
    #: None when no answer came (a transport error; see ``error``).
    status: int | None = None
    charge: str | None = None  # X-Job-Charge
    remaining: int | None = None  # X-Credits-Remaining
    code: str | None = None  # problem+json "code"
    balance: int | None = None  # problem+json "balance" (402)
    retry_after: float | None = None
    error: str | None = None

    @property
    def latency(self) -> float:
        return self.end - self.start


@dataclass
class Job:
    job_id: str
    api_key: str
    duplicate: bool
    injected: bool
    #: "done" (every call answered 200), "refused" (402 on its charging call),
    #: "failed" (a call got an answer the driver does not retry), "gave_up"
    #: (attempts or time ran out), or "" (never started).
    outcome: str = ""


@dataclass
class LoadResult:
    """Every call made, every job planned, and how the run ended."""

    scenario: Scenario
    base_url: str
    calls: list[Call]
    jobs: list[Job]
    started: float
    finished: float
    #: The deadline stopped the run before every job ran to its end.
    stopped_by_deadline: bool = False

    @property
    def duration(self) -> float:
        return self.finished - self.started

    def accounts(self) -> dict[str, str]:
        """API key -> account."""
        return {key: account_of(key) for key in self.scenario.accounts}

    def count_by_status(self, calls: Iterable[Call] | None = None) -> Counter[int | None]:
        return Counter(c.status for c in (self.calls if calls is None else calls))

    def count_by_charge(self, calls: Iterable[Call] | None = None) -> Counter[str | None]:
        return Counter(c.charge for c in (self.calls if calls is None else calls))

    def select(self, predicate: Callable[[Call], bool]) -> list[Call]:
        return [c for c in self.calls if predicate(c)]

    def by_job(self) -> dict[str, list[Call]]:
        out: dict[str, list[Call]] = {job.job_id: [] for job in self.jobs}
        for c in self.calls:
            out.setdefault(c.job_id, []).append(c)
        return out

    def latencies(self, calls: Iterable[Call] | None = None) -> list[float]:
        """Seconds per answered call, sorted."""
        chosen = self.calls if calls is None else calls
        return sorted(c.latency for c in chosen if c.status is not None)

    def percentile(self, q: float, calls: Iterable[Call] | None = None) -> float:
        """The q-th percentile (0-100, nearest rank) of the answered calls'
        latencies, in seconds; NaN when none was answered."""
        values = self.latencies(calls)
        if not values:
            return math.nan
        rank = max(1, math.ceil(q / 100 * len(values)))
        return values[min(rank, len(values)) - 1]

    def throughput(self) -> float:
        """Answered calls per second over the whole run."""
        answered = sum(1 for c in self.calls if c.status is not None)
        return answered / self.duration if self.duration > 0 else math.nan

    def jobs_by_outcome(self) -> Counter[str]:
        return Counter(job.outcome for job in self.jobs)

    def summary(self) -> dict[str, object]:
        """The run in a few figures (JSON-friendly)."""
        return {
            "jobs": len(self.jobs),
            "calls": len(self.calls),
            "seconds": round(self.duration, 3),
            "calls_per_second": round(self.throughput(), 1),
            "p50_ms": round(self.percentile(50) * 1000, 2),
            "p99_ms": round(self.percentile(99) * 1000, 2),
            "statuses": {str(k): v for k, v in sorted(self.count_by_status().items(), key=str)},
            "charges": {str(k): v for k, v in sorted(self.count_by_charge().items(), key=str)},
            "jobs_by_outcome": dict(self.jobs_by_outcome()),
            "stopped_by_deadline": self.stopped_by_deadline,
        }


def _plan(scenario: Scenario) -> list[Job]:
    """The jobs, drawn from the scenario's seed: the same seed gives the same
    accounts, duplicates and failures (the job ids carry a fresh run token, so
    two runs on one store never share a job)."""
    rng = random.Random(scenario.seed)
    keys = list(scenario.accounts)
    run = uuid.uuid4().hex[:8]
    return [
        Job(
            job_id=f"{run}-{n:06d}",
            api_key=rng.choice(keys),
            duplicate=rng.random() < scenario.duplicate_first,
            injected=rng.random() < scenario.fail_first,
        )
        for n in range(scenario.jobs)
    ]


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _seconds(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


class _Driver:
    """One client: its own connections (httpx's pool costs more CPU per request
    the more connections it holds, so fifty clients sharing one pool of a
    hundred would measure the driver), the run's shared record of calls."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        scenario: Scenario,
        paths: Sequence[str],
        deadline: float,
        calls: list[Call],
    ) -> None:
        self.client = client
        self.scenario = scenario
        self.paths = paths
        self.deadline = deadline
        self.calls = calls
        self.body = json.dumps({"text": "the quick brown fox jumps over the lazy dog"})

    def path(self, index: int) -> str:
        return self.paths[min(index, len(self.paths) - 1)]

    async def send(self, job: Job, index: int, attempt: int, *, duplicate: bool = False,
                   injected: bool = False) -> Call:  # fmt: skip
        path = self.path(index)
        call = Call(
            job_id=job.job_id,
            api_key=job.api_key,
            account=account_of(job.api_key),
            index=index,
            attempt=attempt,
            path=path,
            duplicate=duplicate,
            injected=injected,
            start=time.monotonic(),
        )
        self.calls.append(call)
        headers = {
            "X-Api-Key": job.api_key,  # Flask and FastAPI examples
            "Authorization": f"Bearer {job.api_key}",  # the Django example
            "X-Job-Id": job.job_id,
            "Content-Type": "application/json",
        }
        try:
            response = await self.client.post(
                path, params={"fail": "1"} if injected else None, headers=headers, content=self.body
            )
        except httpx.TransportError as exc:
            call.end = time.monotonic()
            call.error = f"{type(exc).__name__}: {exc}"[:200]
            return call
        call.end = time.monotonic()
        call.status = response.status_code
        call.charge = response.headers.get("X-Job-Charge")
        call.remaining = _int(response.headers.get("X-Credits-Remaining"))
        call.retry_after = _seconds(response.headers.get("Retry-After"))
        if response.headers.get("Content-Type", "").startswith("application/problem+json"):
            try:
                problem = response.json()
            except ValueError:
                problem = {}
            if isinstance(problem, dict):
                call.code = problem.get("code")
                call.balance = problem.get("balance")
        return call

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    async def pause(self, calls: Sequence[Call], attempt: int) -> None:
        """Wait before a retry: what Retry-After asks, at most MAX_PAUSE, and
        never past the deadline."""
        hints = [c.retry_after for c in calls if c.retry_after is not None]
        wait = min(MAX_PAUSE, max(hints) if hints else 0.05 * attempt)
        wait = min(wait, max(0.0, self.deadline - time.monotonic()))
        await asyncio.sleep(wait)

    async def charging_call(self, job: Job) -> bool:
        """The job's first call until it is served (True), refused or given up."""
        attempt = 0
        if job.injected:
            attempt += 1
            failed = await self.send(job, 0, attempt, injected=True)
            if failed.status == 402:
                job.outcome = "refused"
                return False
        duplicate = job.duplicate
        for _ in range(self.scenario.max_attempts):
            if self.expired():
                job.outcome = "gave_up"
                return False
            attempt += 1
            if duplicate:
                calls = list(
                    await asyncio.gather(
                        self.send(job, 0, attempt, duplicate=True),
                        self.send(job, 0, attempt, duplicate=True),
                    )
                )
                duplicate = False  # a retry, if any, is a single call
            else:
                calls = [await self.send(job, 0, attempt)]
            statuses = {c.status for c in calls}
            if 200 in statuses:
                return True
            if 402 in statuses:
                job.outcome = "refused"
                return False
            if not statuses <= RETRYABLE:
                job.outcome = "failed"
                return False
            await self.pause(calls, attempt)
        job.outcome = "gave_up"
        return False

    async def follow_up(self, job: Job, index: int) -> bool:
        for attempt in range(1, self.scenario.max_attempts + 1):
            if self.expired():
                job.outcome = "gave_up"
                return False
            call = await self.send(job, index, attempt)
            if call.status == 200:
                return True
            if call.status not in RETRYABLE:
                job.outcome = "failed"
                return False
            await self.pause([call], attempt)
        job.outcome = "gave_up"
        return False

    async def run_job(self, job: Job) -> None:
        if not await self.charging_call(job):
            return
        for index in range(1, self.scenario.calls_per_job):
            if not await self.follow_up(job, index):
                return
        job.outcome = "done"

    async def client_loop(self, queue: asyncio.Queue[Job]) -> None:
        while not self.expired():
            try:
                job = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await self.run_job(job)


async def run_load(
    base_url: str, scenario: Scenario, *, path: str | Sequence[str] = "/v1/summarize"
) -> LoadResult:
    """Run the scenario against the server at ``base_url`` and return every
    call. ``path`` is the endpoint of every call, or one per call of a job (the
    last one serves the calls beyond). Stops by itself: after the last job, or
    at the scenario's deadline (plus one request timeout for the calls in
    flight)."""
    paths = (path,) if isinstance(path, str) else tuple(path)
    jobs = _plan(scenario)
    queue: asyncio.Queue[Job] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    # Two connections per client: a duplicated charging call sends two at once.
    # An idle connection is dropped after KEEPALIVE seconds, well before the
    # server's keep-alive timeout (uvicorn's is 5 s, httpx's default expiry
    # too): reusing one the server is closing that instant fails with no
    # answer, a race of HTTP keep-alive that says nothing about the server.
    limits = httpx.Limits(
        max_connections=2, max_keepalive_connections=2, keepalive_expiry=KEEPALIVE
    )
    timeout = httpx.Timeout(scenario.timeout, pool=scenario.timeout)
    calls: list[Call] = []
    started = time.monotonic()
    deadline = started + scenario.deadline

    async def client_loop() -> None:
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout) as client:
            await _Driver(client, scenario, paths, deadline, calls).client_loop(queue)

    tasks = [asyncio.ensure_future(client_loop()) for _ in range(scenario.clients)]
    # The deadline stops new calls; in-flight ones end within a request
    # timeout. Past that (it should not happen), cancel what is left.
    done, pending = await asyncio.wait(tasks, timeout=scenario.deadline + scenario.timeout + 5)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=5)
    for task in done:
        task.result()  # a bug in the driver must not pass silently
    finished = time.monotonic()
    for call in calls:
        if call.end == 0.0:  # cancelled in flight
            call.end = finished
            call.error = call.error or "cancelled"
    started_jobs = {call.job_id for call in calls}
    for job in jobs:
        if not job.outcome and job.job_id in started_jobs:
            job.outcome = "gave_up"
    stopped = any(job.outcome in ("", "gave_up") for job in jobs) and finished >= deadline
    return LoadResult(
        scenario=scenario,
        base_url=base_url,
        calls=calls,
        jobs=jobs,
        started=started,
        finished=finished,
        stopped_by_deadline=stopped,
    )


def run_load_sync(
    base_url: str, scenario: Scenario, *, path: str | Sequence[str] = "/v1/summarize"
) -> LoadResult:
    """:func:`run_load` from synchronous code (a fresh event loop)."""
    return asyncio.run(run_load(base_url, scenario, path=path))
