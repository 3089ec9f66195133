"""``jobcredits demo``: simulated clients against a small WSGI app, on a fake clock.

A newcomer sees the semantics work before reading about them: four clients
run the original relay's "summarize" jobs (a ``transcribe`` call, then an
``analyze`` call under one job id) against an app charged by the library's
own :class:`~jobcredits_plugin.wsgi.JobCreditsMiddleware`, exactly as a real
app would be; the events are counted by
:class:`~jobcredits_plugin.testing.RecordingPlugin`. The clock is a
:class:`~jobcredits_plugin.testing.FakeClock`, so an hour-long window passes
in a moment, and the figures are the same for the same seed.
"""

from __future__ import annotations

import json
import random
import textwrap
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.util import setup_testing_defaults

import attrs

from ._headers import header
from ._ledger import Ledger
from ._report import table
from ._warnings import InProcessStoreWarning
from .stores import redact_url
from .testing import FakeClock, RecordingPlugin
from .wsgi import JobCreditsMiddleware

__all__ = [
    "DemoResult",
    "Response",
    "UpstreamError",
    "build_app",
    "call",
    "render_demo",
    "run_demo",
]

Environ = dict[str, Any]
Headers = list[tuple[str, str]]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

#: Every demo job belongs to this scope, as one "summarize" action of the
#: original relay took a "transcribe" call and an "analyze" call.
DEMO_SCOPE = "summarize"
#: The demo accounts and the credits each is granted; the last two run out.
DEMO_ACCOUNTS = {"demo:ada": 30, "demo:bob": 15, "demo:cy": 6, "demo:dee": 3}
STEP = 150.0  # seconds of simulated time between two jobs
TAIL = 600.0  # seconds simulated after the last job starts
FAIL_RATE = 0.12  # chance an upstream backend call fails
DUPLICATE_RATE = 0.1  # chance a first call is sent twice at once
LATE_RATE = 0.25  # chance a client comes back for the second call an hour later
DURING_KEY = "jobcredits.demo.during"
#: The hook events RecordingPlugin names, as the demo's columns name them.
COLUMN_OF = {"charge": "charged", "reuse": "reused", "refund": "refunded", "expire": "expired"}


class UpstreamError(Exception):
    """The backend behind the app failed; the job's charge must go back."""


@attrs.define
class _Upstream:
    """The LLM backends the original relay fronted: slow, and sometimes failing."""

    rng: random.Random

    def __call__(self, environ: Environ, step: str) -> dict[str, str]:
        during = environ.get(DURING_KEY)
        if during is not None:
            during()  # another request arrives while this one is running
        if self.rng.random() < FAIL_RATE:
            raise UpstreamError(f"the {step} backend timed out")
        return {"step": step, "result": "ok"}


def build_app(ledger: Ledger, upstream: Callable[[Environ, str], dict[str, str]]) -> WSGIApp:
    """The demo's WSGI app: the relay, which answers 502 when its backend
    fails, under :class:`~jobcredits_plugin.wsgi.JobCreditsMiddleware`.

    The middleware does all the charging (charge, confirm below 500, refund
    on a 5xx), answers the ledger's errors as problem+json and tells the
    client what each call cost (``X-Job-Charge``, ``X-Credits-Remaining``).
    """

    def relay(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        step = environ.get("PATH_INFO", "/").strip("/")
        try:
            body = upstream(environ, step)
        except UpstreamError as err:
            problem = {
                "type": "about:blank",
                "title": "Bad Gateway",
                "status": 502,
                "detail": str(err),
                "code": "upstream",
            }
            start_response("502 Bad Gateway", [("Content-Type", "application/problem+json")])
            return [json.dumps(problem).encode()]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]

    routes = {f"POST /{step}": {"scope": DEMO_SCOPE} for step in ("transcribe", "analyze")}
    with warnings.catch_warnings():
        # The demo's memory:// store is right: its clients live in this process.
        warnings.simplefilter("ignore", InProcessStoreWarning)
        # The account comes from a header only because the clients here are
        # this process's own simulations; a real app takes it from the
        # authenticated identity (see the security guide).
        return JobCreditsMiddleware(relay, ledger, routes, account=header("X-Account"))


@attrs.frozen
class Response:
    """An answer as the simulated client sees it: status, headers, JSON body."""

    status: int
    headers: dict[str, str]
    body: dict[str, Any]


def call(app: WSGIApp, path: str, account: str, job_id: str, **extra: Any) -> Response:
    """One HTTP call, made in-process: the environ a server would build, and
    the body read and closed as a server does."""
    environ: Environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "HTTP_X_ACCOUNT": account,
        "HTTP_X_JOB_ID": job_id,
        **extra,
    }
    setup_testing_defaults(environ)
    seen: list[Any] = []

    def start_response(status: str, hdrs: Headers, exc_info: Any = None) -> Callable[[bytes], None]:
        seen[:] = [status, hdrs]
        return lambda data: None

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return Response(int(seen[0].split()[0]), dict(seen[1]), json.loads(body))


@attrs.define
class _Client:
    """A client app: runs summarize jobs, retries failed calls with the same
    job id, sometimes double-sends a call, sometimes comes back late."""

    account: str
    app: WSGIApp
    rng: random.Random
    jobs: set[str]  # every job id the demo opened
    calls: Counter[str] = attrs.Factory(Counter)
    rejected: Counter[str] = attrs.Factory(Counter)

    def _record(self, r: Response) -> None:
        code = r.body.get("code", "ok")
        self.calls[f"{r.status} {code}"] += 1
        if r.status in (402, 409):
            self.rejected[code] += 1

    def send(self, step: str, job_id: str, *, duplicate: bool = False) -> Response:
        """Make one call, retrying up to twice when the backend fails; returns
        the last answer."""
        for _ in range(3):
            extra: dict[str, Any] = {}
            if duplicate:  # the duplicate arrives while the first call runs
                extra[DURING_KEY] = lambda: self._record(
                    call(self.app, "/" + step, self.account, job_id)
                )
                duplicate = False
            r = call(self.app, "/" + step, self.account, job_id, **extra)
            self._record(r)
            if r.status != 502:
                break
        return r

    def start_job(self) -> str | None:
        """Run a job's first call; return its id if the second call is left
        for later, None when the job is done or given up."""
        job_id = str(uuid.uuid4())  # fresh ids: a rerun on a file never meets old jobs
        self.jobs.add(job_id)
        first = self.send("transcribe", job_id, duplicate=self.rng.random() < DUPLICATE_RATE)
        if first.status != 200:
            return None
        if self.rng.random() < LATE_RATE:
            return job_id
        self.send("analyze", job_id)
        return None


@attrs.frozen
class DemoResult:
    """What the demo counted: per account, and as the totals it checks."""

    rows: list[dict[str, int]]
    accounts: list[str]
    calls: Counter[str]
    late_calls: Counter[str]
    span: float

    def total(self, column: str) -> int:
        return sum(row[column] for row in self.rows)


DEMO_COLUMNS = (
    "granted",
    "charged",
    "reused",
    "refunded",
    "expired",
    "live",
    "insufficient_credits",
    "job_in_progress",
    "balance",
)
#: The columns whose heading is not their name: the rejections, by status
#: (the legend under the table names them; short, so the table fits 80 columns).
HEADING = {"insufficient_credits": "402", "job_in_progress": "409"}
#: The demo's report fits a terminal of this width (for the default options).
WIDTH = 80


def _simulate(
    clients: list[_Client], clock: FakeClock, rng: random.Random, jobs: int
) -> Counter[str]:
    """Start ``jobs`` jobs, one every ``STEP`` seconds or so, bring the late
    second calls back when their time comes; returns how those went."""
    start = clock.now
    late: list[tuple[float, _Client, str]] = []  # (when, client, job id)
    late_calls: Counter[str] = Counter()

    def come_back(until: float) -> None:
        while late and late[0][0] <= until:
            when, client, job_id = late.pop(0)
            clock.set(when)
            r = client.send("analyze", job_id)
            late_calls[r.headers.get("X-Job-Charge") or r.body.get("code", "")] += 1

    for i in range(jobs):
        when = start + i * STEP + rng.uniform(0, STEP * 0.8)
        come_back(when)
        clock.set(when)
        client = rng.choice(clients)
        job_id = client.start_job()
        if job_id is not None:
            late.append((when + rng.uniform(3660, 4200), client, job_id))
            late.sort(key=lambda item: item[0])
    come_back(start + jobs * STEP + TAIL)  # the ones due after the end never come back
    return late_calls


def _rows(
    ledger: Ledger, clients: list[_Client], events: RecordingPlugin, jobs: set[str]
) -> list[dict[str, int]]:
    """Each client's figures. Only the demo's own jobs count: on a shared
    store, a prune may also settle other jobs, and those are not the demo's
    to report."""
    counts: dict[str, Counter[str]] = {}
    for event in events.events:
        if event.record.job_id in jobs:
            counts.setdefault(event.record.account, Counter())[COLUMN_OF[event.kind]] += 1
    live = Counter(r.account for r in ledger.snapshot() if r.job_id in jobs)
    rows = []
    for client in clients:
        seen = counts.get(client.account, Counter())
        row = {c: seen[c] for c in ("charged", "reused", "refunded", "expired")}
        row["granted"] = DEMO_ACCOUNTS[client.account]
        row["live"] = live[client.account]
        row["insufficient_credits"] = client.rejected["insufficient_credits"]
        row["job_in_progress"] = client.rejected["job_in_progress"]
        row["balance"] = ledger.balance(client.account) or 0
        rows.append(row)
    return rows


def run_demo(url: str, *, seed: int, jobs: int) -> DemoResult:
    """Simulate ``jobs`` jobs of four clients against the demo app.

    The fake clock starts ``span`` seconds in the past so that the simulation
    ends at the real present: a prune at the end never expires a job early,
    even on a store that serves real traffic, and the jobs still in their
    window show up in a later ``jobcredits snapshot`` of the same file.
    """
    rng = random.Random(seed)
    span = jobs * STEP + TAIL
    clock = FakeClock(time.time() - span)
    start = clock.now
    events = RecordingPlugin()
    demo_jobs: set[str] = set()
    with Ledger.from_url(url, clock=clock, balances=True, plugins=[events]) as ledger:
        for account, credits in DEMO_ACCOUNTS.items():
            # Set, not add: a rerun on the same file starts from the same figures.
            ledger.grant(account, credits - (ledger.balance(account) or 0))
        app = build_app(ledger, _Upstream(rng))
        clients = [_Client(a, app, rng, demo_jobs) for a in DEMO_ACCOUNTS]
        late_calls = _simulate(clients, clock, rng, jobs)
        clock.set(start + span)
        ledger.prune()
        rows = _rows(ledger, clients, events, demo_jobs)
    calls: Counter[str] = Counter()
    for client in clients:
        calls.update(client.calls)
    return DemoResult(rows, list(DEMO_ACCOUNTS), calls, late_calls, span)


def _wrap(text: str, indent: str = "  ") -> list[str]:
    """A paragraph of the report, folded to :data:`WIDTH` columns; a pair
    such as ``502 upstream 8`` (spaces written as no-break spaces) stays on one
    line."""
    lines = textwrap.wrap(text, WIDTH, subsequent_indent=indent, break_on_hyphens=False)
    return [line.replace("\N{NO-BREAK SPACE}", " ") for line in lines]


def _keep(text: str) -> str:
    """``text`` that :func:`_wrap` never breaks."""
    return text.replace(" ", "\N{NO-BREAK SPACE}")


def render_demo(result: DemoResult, *, url: str, seed: int, jobs: int) -> tuple[list[str], bool]:
    """The demo's report, and whether its two bookkeeping checks hold."""
    minutes = int(result.span // 60)
    lines = [
        f"jobcredits demo: {jobs} summarize jobs (transcribe + analyze), seed {seed}",
        f"store {redact_url(url)}; simulated {minutes // 60}h {minutes % 60:02d}m on a fake "
        "clock; window 1h; 1 credit a job",
        "",
    ]
    headers = ("account", *(HEADING.get(c, c) for c in DEMO_COLUMNS))
    rows: list[list[object]] = [
        [account, *(row[c] for c in DEMO_COLUMNS)]
        for account, row in zip(result.accounts, result.rows, strict=True)
    ]
    rows.append(["total", *(result.total(c) for c in DEMO_COLUMNS)])
    text = table(headers, rows)
    lines += [*text[:-1], "-" * len(text[0]), text[-1], ""]
    lines += _wrap(
        "charged, reused, refunded, expired: the on_charge, on_reuse, on_refund and "
        "on_expire events. live: jobs still inside their 1h window at the end (charged, "
        "neither refunded nor expired: their follow-ups would ride free). 402: calls "
        "refused for want of credit; 409: calls refused while the job's first call ran.",
        indent="",
    )
    lines.append("")
    calls = ", ".join(_keep(f"{k} {v}") for k, v in sorted(result.calls.items()))
    lines += _wrap(f"calls: {sum(result.calls.values())} ({calls})")
    late = ", ".join(_keep(f"{k} {v}") for k, v in sorted(result.late_calls.items()))
    lines += _wrap(
        f"second calls after the 1h window: {sum(result.late_calls.values())} ({late or 'none'})"
    )
    granted, balance = result.total("granted"), result.total("balance")
    charged, refunded = result.total("charged"), result.total("refunded")
    expired, live = result.total("expired"), result.total("live")
    spent_ok = granted - balance == charged - refunded
    settled_ok = charged == refunded + expired + live
    lines += _wrap(
        f"check: granted {granted} - balance {balance} = charged {charged} - refunded "
        f"{refunded} = {charged - refunded} credits spent: {'ok' if spent_ok else 'MISMATCH'}"
    )
    lines += _wrap(
        f"check: charged {charged} = refunded {refunded} + expired {expired} + live {live}: "
        f"{'ok' if settled_ok else 'MISMATCH'}"
    )
    return lines, spent_ok and settled_ok
