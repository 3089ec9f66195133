"""``jobcredits demo --trace``: one account's calls, step by step.

The table of ``jobcredits demo`` shows what happened to forty jobs; a
newcomer learns the idea faster by following a few calls one at a time. The
trace sends them through the same path a real app has: the demo's WSGI relay
under :class:`~jobcredits_plugin.wsgi.JobCreditsMiddleware`, a ledger on a
:class:`~jobcredits_plugin.testing.FakeClock`, and a
:class:`~jobcredits_plugin.testing.RecordingPlugin` registered on the
ledger's hooks. Each step prints the request, what the ledger held before it,
the hooks the call fired, the answer and its headers, and the job and the
balance after it. The explanations are read off those observations (which
hooks fired, what the status was), never printed from a script, so a change
in the library's behaviour shows up in the trace and fails its tests.

It runs on its own memory store from a fixed start time, so that its job ids
and times are the same every run and it never meets the jobs of an earlier
run or of a real app.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import attrs

from ._demo import DEMO_SCOPE, DURING_KEY, Environ, UpstreamError, WSGIApp, build_app, call
from ._ledger import Ledger
from ._records import JobRecord
from .testing import FakeClock, RecordingPlugin

__all__ = ["TRACE_ACCOUNT", "render_trace"]

#: The one account the trace follows, and what it is granted at the start.
TRACE_ACCOUNT = "demo:ada"
TRACE_CREDITS = 2
#: Set in a request's environ to make the backend fail that call.
FAIL_KEY = "jobcredits.demo.fail"
_INDENT = " " * 11  # under the text after a step's label


def _clock_text(seconds: float) -> str:
    """Time since the trace began, as h:mm:ss."""
    whole = round(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def _upstream(environ: Environ, step: str) -> dict[str, str]:
    """The backend: answers, unless the step asked it to fail; runs the
    request that arrives while this one is still running, when there is one."""
    during = environ.get(DURING_KEY)
    if during is not None:
        during()
    if environ.get(FAIL_KEY):
        raise UpstreamError(f"the {step} backend timed out")
    return {"step": step, "result": "ok"}


@attrs.define
class _Trace:
    """Sends the trace's calls and writes what each one did."""

    ledger: Ledger
    clock: FakeClock
    events: RecordingPlugin
    app: WSGIApp
    start: float
    lines: list[str] = attrs.Factory(list)
    #: Ranges of events that belong to a call made while another was running.
    _nested: list[range] = attrs.Factory(list)

    def at(self, when: float) -> str:
        return _clock_text(when - self.start)

    def say(self, label: str, text: str) -> None:
        self.lines.append(f"  {label:<8} {text}" if label else f"{_INDENT}{text}")

    def job_text(self, job_id: str, record: JobRecord | None) -> str:
        if record is None:
            return f"{job_id}: no live record"
        return (
            f"{job_id}: {record.state}, uses {record.uses}, "
            f"window ends {self.at(record.expires_at)}"
        )

    def send(
        self,
        path: str,
        job_id: str,
        note: str,
        *,
        fail: bool = False,
        during: tuple[str, str, str] | None = None,
    ) -> None:
        """Make one call and write its step. ``during``: (path, job id, note)
        of a call that arrives while this one runs (written after this
        one's step, though it ends first: the reader follows the arrivals)."""
        extra: dict[str, Any] = {}
        if fail:
            extra[FAIL_KEY] = True
        if during is not None:
            extra[DURING_KEY] = lambda: self.send(*during)
        before = self.ledger.lookup(TRACE_ACCOUNT, job_id, scope=DEMO_SCOPE)
        first = len(self.events.events)
        header = f"[{self.at(self.clock.now)}] POST {path}  X-Job-Id: {job_id}  ({note})"
        mark = len(self.lines)
        response = call(self.app, path, TRACE_ACCOUNT, job_id, **extra)
        span = range(first, len(self.events.events))
        kinds = [
            self.events.events[i].kind
            for i in span
            if not any(i in inner for inner in self._nested)
        ]
        self._nested.append(span)
        after = self.ledger.lookup(TRACE_ACCOUNT, job_id, scope=DEMO_SCOPE)
        step = _Step(self, job_id, before, after, kinds, response.status, response.body)
        out = [header, *step.lines(response.headers)]
        self.lines[mark:mark] = out  # before what a call made meanwhile wrote
        self.lines.insert(mark + len(out), "")

    def prune(self, note: str) -> None:
        first = len(self.events.events)
        self.lines.append(f"[{self.at(self.clock.now)}] ledger.prune()  ({note})")
        removed = self.ledger.prune()
        fired = self.events.events[first:]
        self.say(
            "hooks",
            ", ".join(f"on_{e.kind}({e.record.job_id})" for e in fired) or "none",
        )
        self.say("ledger", f"removed {len(removed)} record(s) whose window had closed")
        self.say("after", f"balance {self.ledger.balance(TRACE_ACCOUNT)}")
        self.lines.append("")


@attrs.frozen
class _Step:
    """One call's observations, and the sentences that explain them."""

    trace: _Trace
    job_id: str
    before: JobRecord | None
    after: JobRecord | None
    kinds: Sequence[str]
    status: int
    body: dict[str, Any]

    def ledger_text(self) -> Iterator[str]:
        """What the ledger decided when the call came in, read off the hooks
        it fired and the answer."""
        code = self.body.get("code")
        if "expire" in self.kinds:
            yield "the job's 1h window had closed: its old record expires"
        if self._refunded_before_charge():
            yield "the job's earlier first call outlived its lease: its charge is refunded"
        if code == "insufficient_credits":
            yield (
                f"refused: balance {self.body.get('balance')} < cost "
                f"{self.body.get('cost')}; nothing is recorded"
            )
        elif code == "job_in_progress":
            yield "refused: the job's first call is still running (pending)"
        elif "charge" in self.kinds:
            yield "a new job: 1 credit debited; pending while the call runs"
        elif "reuse" in self.kinds:
            uses = self.after.uses if self.after is not None else "?"
            yield f"a follow-up of a charged job: free (use {uses})"
        elif code is not None:
            yield f"refused: {code}"

    def _refunded_before_charge(self) -> bool:
        """Whether the call took over a stale charge (refund, then charge)."""
        kinds = list(self.kinds)
        return "refund" in kinds and "charge" in kinds[kinds.index("refund") :]

    def _refunded_after_charge(self) -> bool:
        """Whether this call's own charge went back when the app answered."""
        kinds = list(self.kinds)
        return "charge" in kinds and "refund" in kinds[kinds.index("charge") :]

    def app_text(self) -> str:
        """What the app answered, and what the middleware made of it."""
        code = self.body.get("code")
        said = f"{self.status} ({code})" if code else str(self.status)
        if "charge" not in self.kinds and "reuse" not in self.kinds:
            return f"not run: answered {self.status} by the middleware (code {code})"
        if self._refunded_after_charge():
            if self.status >= 500:
                return f"answered {said}: the middleware refunds the charge"
            return f"answered {said}: the charge could not be confirmed; refunded"
        if "charge" in self.kinds and self.after is not None and self.after.state == "charged":
            return f"answered {self.status}: the middleware confirms the charge"
        if "reuse" in self.kinds:
            if self.status >= 500:
                return f"answered {said}: a follow-up paid nothing, so nothing is refunded"
            return f"answered {said}: a follow-up has nothing to confirm"
        return f"answered {said}"

    def lines(self, headers: dict[str, str]) -> list[str]:
        trace = self.trace
        out = [f"  {'before':<8} {trace.job_text(self.job_id, self.before)}"]
        for i, text in enumerate(self.ledger_text()):
            out.append(f"  {'ledger':<8} {text}" if i == 0 else f"{_INDENT}{text}")
        out.append(f"  {'app':<8} {self.app_text()}")
        fired = ", ".join(f"on_{kind}" for kind in self.kinds) or "none"
        out.append(f"  {'hooks':<8} {fired}")
        shown = [
            f"{name}: {headers[name]}"
            for name in ("X-Job-Charge", "X-Credits-Remaining", "Retry-After")
            if name in headers
        ]
        out.append(f"  {'headers':<8} {'  '.join(shown) or '(none of the library)'}")
        balance = trace.ledger.balance(TRACE_ACCOUNT)
        out.append(f"  {'after':<8} {trace.job_text(self.job_id, self.after)}; balance {balance}")
        return out


def render_trace() -> list[str]:
    """Run the trace and return its lines."""
    clock = FakeClock()
    events = RecordingPlugin()
    with Ledger(clock=clock, balances=True, plugins=[events]) as ledger:
        ledger.grant(TRACE_ACCOUNT, TRACE_CREDITS)
        app = build_app(ledger, _upstream)
        trace = _Trace(ledger, clock, events, app, clock.now)
        trace.lines += [
            "jobcredits demo --trace: one account's calls through the demo's WSGI app,",
            "step by step, on a fake clock. A job is one summarize: POST /transcribe,",
            "then POST /analyze, under one X-Job-Id. 1 credit a job; window 1h from",
            f"the charge; lease 60s. {TRACE_ACCOUNT} is granted {TRACE_CREDITS} credits.",
            "",
        ]
        trace.send(
            "/transcribe",
            "job-1",
            "a new job",
            during=("/transcribe", "job-1", "sent again while the first runs"),
        )
        clock.advance(120)
        trace.send("/analyze", "job-1", "the job's second call")
        clock.advance(180)
        trace.send("/transcribe", "job-2", "a new job; the backend fails", fail=True)
        clock.advance(60)
        trace.send("/transcribe", "job-2", "the client retries the job")
        clock.advance(60)
        trace.send("/analyze", "job-2", "the job's second call")
        clock.advance(240)
        trace.send("/transcribe", "job-3", "a new job, no credit left")
        clock.set(trace.start + 3600 + 300)
        balance = ledger.grant(TRACE_ACCOUNT, 1)
        trace.lines += [
            f"[{trace.at(clock.now)}] ledger.grant({TRACE_ACCOUNT!r}, 1)  (the account is "
            f"topped up: balance {balance})",
            "",
        ]
        trace.send("/analyze", "job-1", "back after the 1h window")
        clock.advance(300)
        trace.prune("an operator's cron job")
        live = [r.job_id for r in ledger.snapshot()]
        trace.lines += [
            f"live at the end: {', '.join(live) or 'none'}. A live job is inside its 1h window:",
            "charged, neither refunded nor expired, so its follow-ups still ride free.",
        ]
    return trace.lines
