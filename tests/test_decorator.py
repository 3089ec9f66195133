"""charges_credit, current_charge and header (DESIGN §3 "charges_credit")."""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from jobcredits_plugin import (
    Charge,
    ConfigurationError,
    InvalidJobId,
    JobInProgress,
    Ledger,
    MissingJobId,
    NotAuthenticated,
    StoreUnavailable,
    charges_credit,
    current_charge,
    header,
)
from jobcredits_plugin.stores import ClaimRequest, ClaimResult, MemoryStore
from jobcredits_plugin.testing import FakeClock, RecordingPlugin, make_ledger

A = "acct-1"
J = "job-1"


def account_of(req: Mapping[str, Any], *args: Any, **kwargs: Any) -> Any:
    return req.get("account")


def job_of(req: Mapping[str, Any], *args: Any, **kwargs: Any) -> Any:
    return req.get("job")


def req(job: str | None = J, account: str | None = A, **extra: Any) -> dict[str, Any]:
    return {"account": account, "job": job, **extra}


class Failed(Exception):
    pass


class ClaimDown(MemoryStore):
    """A store whose claim finds the backend unreachable."""

    def claim(self, req: ClaimRequest) -> ClaimResult:
        raise StoreUnavailable("backend unreachable")


class ConfirmDown(MemoryStore):
    """A store that charges fine but cannot confirm or refund."""

    def confirm(self, key: Any, charge_id: str | None, now: float) -> Any:
        raise StoreUnavailable("backend unreachable")

    def refund(self, key: Any, charge_id: str | None, now: float) -> Any:
        raise StoreUnavailable("backend unreachable")


# -- wrapping ---------------------------------------------------------------------------


def test_sync_wrapper_keeps_name_docstring_and_signature(ledger: Ledger) -> None:
    """functools.wraps semantics: name, qualname, docstring, signature and
    __wrapped__ of the sync function are kept."""

    def summarize(request: dict[str, Any], *, length: int = 3) -> str:
        """Summarize a transcript."""
        return "ok"

    wrapped = charges_credit(ledger, account=account_of, job_id=job_of)(summarize)
    assert wrapped.__name__ == "summarize"
    assert wrapped.__qualname__ == summarize.__qualname__
    assert wrapped.__doc__ == "Summarize a transcript."
    assert inspect.signature(wrapped) == inspect.signature(summarize)
    assert wrapped.__wrapped__ is summarize  # type: ignore[attr-defined]
    assert not inspect.iscoroutinefunction(wrapped)


def test_async_wrapper_keeps_name_docstring_signature_and_stays_async(ledger: Ledger) -> None:
    """An async function stays a coroutine function with its metadata kept."""

    async def analyze(request: dict[str, Any], mode: str = "fast") -> str:
        """Analyze a transcript."""
        return "ok"

    wrapped = charges_credit(ledger, account=account_of, job_id=job_of)(analyze)
    assert wrapped.__name__ == "analyze"
    assert wrapped.__doc__ == "Analyze a transcript."
    assert inspect.signature(wrapped) == inspect.signature(analyze)
    assert inspect.iscoroutinefunction(wrapped)


# -- sync: charge, reuse, confirm, refund ---------------------------------------------------


def test_sync_charges_first_call_reuses_second_and_confirms(
    ledger: Ledger, events: RecordingPlugin
) -> None:
    """The first call is charged and confirmed on return; the follow-up is reused."""
    seen: list[Charge | None] = []

    @charges_credit(ledger, account=account_of, job_id=job_of)
    def handler(request: dict[str, Any]) -> str:
        seen.append(current_charge())
        return "result"

    assert handler(req()) == "result"
    record = ledger.lookup(A, J)
    assert record is not None
    assert record.state == "charged"
    assert handler(req()) == "result"
    assert [c.outcome for c in seen if c is not None] == ["charged", "reused"]
    assert events.kinds() == ["charge", "reuse"]
    assert current_charge() is None


def test_sync_refunds_the_charging_call_on_exception(
    ledger: Ledger, events: RecordingPlugin
) -> None:
    """An exception from the charging call refunds it and propagates; the next
    call with the same job id is charged again."""
    fail = [True]

    @charges_credit(ledger, account=account_of, job_id=job_of)
    def handler(request: dict[str, Any]) -> str:
        if fail[0]:
            raise Failed("backend error")
        return "ok"

    with pytest.raises(Failed):
        handler(req())
    assert ledger.lookup(A, J) is None
    assert events.kinds() == ["charge", "refund"]
    fail[0] = False
    assert handler(req()) == "ok"
    assert events.kinds() == ["charge", "refund", "charge"]
    record = ledger.lookup(A, J)
    assert record is not None
    assert record.state == "charged"


def test_a_failing_follow_up_does_not_refund_the_job(
    ledger: Ledger, events: RecordingPlugin
) -> None:
    """Only the charging call refunds: a follow-up that raises leaves the job's
    charge standing."""
    fail = [False]

    @charges_credit(ledger, account=account_of, job_id=job_of)
    def handler(request: dict[str, Any]) -> str:
        if fail[0]:
            raise Failed
        return "ok"

    handler(req())
    fail[0] = True
    with pytest.raises(Failed):
        handler(req())
    assert events.kinds() == ["charge", "reuse"]
    record = ledger.lookup(A, J)
    assert record is not None
    assert record.state == "charged"


def test_base_exceptions_refund_too(ledger: Ledger, events: RecordingPlugin) -> None:
    """A KeyboardInterrupt (not an Exception) during the charging call refunds it."""

    @charges_credit(ledger, account=account_of, job_id=job_of)
    def handler(request: dict[str, Any]) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        handler(req())
    assert events.kinds() == ["charge", "refund"]


def test_job_in_progress_does_not_run_the_function(ledger: Ledger) -> None:
    """While the first call is pending, a concurrent call gets JobInProgress and
    the function is not run for it."""
    ran: list[str] = []

    @charges_credit(ledger, account=account_of, job_id=job_of)
    def handler(request: dict[str, Any]) -> None:
        ran.append(request["tag"])

    ledger.charge(A, J)  # a first call still running elsewhere
    with pytest.raises(JobInProgress):
        handler(req(tag="second"))
    assert ran == []


# -- async ----------------------------------------------------------------------------------


def test_async_charges_reuses_confirms_and_refunds(ledger: Ledger, events: RecordingPlugin) -> None:
    """The async wrapper charges, confirms on return, reuses, and refunds a
    charging call that raises."""

    @charges_credit(ledger, account=account_of, job_id=job_of)
    async def handler(request: dict[str, Any]) -> Charge | None:
        await asyncio.sleep(0)
        if request.get("fail"):
            raise Failed
        return current_charge()

    async def scenario() -> None:
        first = await handler(req())
        assert first is not None
        assert first.outcome == "charged"
        record = await ledger.alookup(A, J)
        assert record is not None
        assert record.state == "charged"
        second = await handler(req())
        assert second is not None
        assert second.outcome == "reused"
        with pytest.raises(Failed):
            await handler(req(job="job-2", fail=True))
        assert await ledger.alookup(A, "job-2") is None
        again = await handler(req(job="job-2"))
        assert again is not None
        assert again.charged
        assert current_charge() is None

    asyncio.run(scenario())
    assert events.kinds() == ["charge", "reuse", "charge", "refund", "charge"]


def test_async_cancellation_refunds_the_charging_call(
    ledger: Ledger, events: RecordingPlugin
) -> None:
    """A task cancelled mid-await refunds its charge and stays cancelled; the
    next call is charged anew."""

    @charges_credit(ledger, account=account_of, job_id=job_of)
    async def handler(request: dict[str, Any], started: asyncio.Event) -> str:
        started.set()
        await asyncio.sleep(3600)
        return "never"

    async def scenario() -> None:
        started = asyncio.Event()
        task = asyncio.create_task(handler(req(), started))
        await started.wait()
        assert (await ledger.alookup(A, J)) is not None
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()
        assert await ledger.alookup(A, J) is None

    asyncio.run(scenario())
    assert events.kinds() == ["charge", "refund"]
    assert ledger.charge(A, J).charged


def test_async_fail_open_runs_uncharged(caplog: pytest.LogCaptureFixture) -> None:
    """fail_open=True on an async function: the store is down, the function runs
    with current_charge() None, and a warning is logged."""
    ledger = Ledger(ClaimDown(), clock=FakeClock())

    @charges_credit(ledger, account=account_of, job_id=job_of, fail_open=True)
    async def handler(request: dict[str, Any]) -> Charge | None:
        return current_charge()

    with caplog.at_level(logging.WARNING, logger="jobcredits_plugin"):
        assert asyncio.run(handler(req())) is None
    assert any(
        r.levelno == logging.WARNING and "UNCHARGED" in r.getMessage() for r in caplog.records
    )


def test_async_fail_closed_propagates_and_never_runs() -> None:
    """Without fail_open, an async call gets StoreUnavailable and the function never runs."""
    ledger = Ledger(ClaimDown(), clock=FakeClock())
    ran: list[int] = []

    @charges_credit(ledger, account=account_of, job_id=job_of)
    async def handler(request: dict[str, Any]) -> None:
        ran.append(1)

    with pytest.raises(StoreUnavailable):
        asyncio.run(handler(req()))
    assert ran == []


# -- current_charge ---------------------------------------------------------------------------


def test_current_charge_is_none_outside_a_call() -> None:
    """Outside a decorated call there is no current charge."""
    assert current_charge() is None


def test_nested_decorated_calls_restore_the_outer_charge(ledger: Ledger) -> None:
    """An inner decorated call sees its own charge; the outer one sees its own
    again after the inner returns or raises."""
    seen: dict[str, str | None] = {}

    def job_id_of(c: Charge | None) -> str | None:
        return c.record.job_id if c is not None else None

    @charges_credit(ledger, account=account_of, job_id=job_of)
    def inner(request: dict[str, Any]) -> None:
        seen["inner"] = job_id_of(current_charge())
        if request.get("fail"):
            raise Failed

    @charges_credit(ledger, account=account_of, job_id=job_of)
    def outer(request: dict[str, Any]) -> None:
        seen["before"] = job_id_of(current_charge())
        inner(req(job="inner-job"))
        seen["after"] = job_id_of(current_charge())
        with pytest.raises(Failed):
            inner(req(job="inner-fail", fail=True))
        seen["after-fail"] = job_id_of(current_charge())

    outer(req(job="outer-job"))
    assert seen == {
        "before": "outer-job",
        "inner": "inner-fail",
        "after": "outer-job",
        "after-fail": "outer-job",
    }
    assert current_charge() is None


# -- missing job id, missing account ------------------------------------------------------------


@pytest.mark.parametrize("missing", [None, ""])
def test_on_missing_charge_mints_a_fresh_job_id_per_call(
    ledger: Ledger, events: RecordingPlugin, missing: str | None
) -> None:
    """on_missing="charge" (the default): a call without a job id is its own job
    under a fresh UUID, so every such call is charged."""
    ids: list[str] = []

    @charges_credit(ledger, account=account_of, job_id=job_of)
    def handler(request: dict[str, Any]) -> None:
        c = current_charge()
        assert c is not None
        assert c.charged
        ids.append(c.record.job_id)

    handler(req(job=missing))
    handler(req(job=missing))
    assert len(set(ids)) == 2
    for jid in ids:
        assert str(uuid.UUID(jid)) == jid
    assert events.kinds() == ["charge", "charge"]


def test_on_missing_reject_raises_missing_job_id(ledger: Ledger, events: RecordingPlugin) -> None:
    """on_missing="reject": a call without a job id gets MissingJobId (400), is not
    run and records nothing."""
    ran: list[int] = []

    @charges_credit(ledger, account=account_of, job_id=job_of, on_missing="reject")
    def handler(request: dict[str, Any]) -> None:
        ran.append(1)

    with pytest.raises(MissingJobId) as info:
        handler(req(job=None))
    assert info.value.status == 400
    assert ran == []
    assert events.events == []


def test_account_none_raises_not_authenticated(ledger: Ledger, events: RecordingPlugin) -> None:
    """An account callable returning None means nobody to charge: NotAuthenticated
    (401), the function is not run."""
    ran: list[int] = []

    @charges_credit(ledger, account=account_of, job_id=job_of)
    def handler(request: dict[str, Any]) -> None:
        ran.append(1)

    with pytest.raises(NotAuthenticated) as info:
        handler(req(account=None))
    assert info.value.status == 401
    assert ran == []
    assert events.events == []


def test_invalid_job_id_from_the_request_is_rejected(
    ledger: Ledger, events: RecordingPlugin
) -> None:
    """A malformed job id from the caller raises InvalidJobId before the function runs."""
    ran: list[int] = []

    @charges_credit(ledger, account=account_of, job_id=job_of)
    def handler(request: dict[str, Any]) -> None:
        ran.append(1)

    with pytest.raises(InvalidJobId):
        handler(req(job="bad job id"))
    assert ran == []
    assert events.events == []


# -- cost / tier / backend -----------------------------------------------------------------


def test_cost_tier_and_backend_can_be_callables_of_the_arguments(clock: FakeClock) -> None:
    """cost, tier and backend may be callables receiving the function's own
    positional and keyword arguments."""
    ledger = make_ledger(clock=clock, balances=True)
    ledger.grant(A, 10)

    @charges_credit(
        ledger,
        account=account_of,
        job_id=job_of,
        scope="summarize",
        cost=lambda request, *, model: 3 if model == "large" else 1,
        tier=lambda request, *, model: "pro" if model == "large" else "basic",
        backend=lambda request, *, model: f"backend-{model}",
    )
    def handler(request: dict[str, Any], *, model: str) -> Charge | None:
        return current_charge()

    c = handler(req(), model="large")
    assert c is not None
    assert c.record.scope == "summarize"
    assert (c.record.cost, c.record.tier, c.record.backend) == (3, "pro", "backend-large")
    assert ledger.balance(A) == 7
    small = handler(req(job="job-2"), model="small")
    assert small is not None
    assert (small.record.cost, small.record.tier, small.record.backend) == (
        1,
        "basic",
        "backend-small",
    )
    assert ledger.balance(A) == 6


def test_constant_cost_tier_and_backend(ledger: Ledger) -> None:
    """Plain values for cost, tier and backend are used as they are."""

    @charges_credit(ledger, account=account_of, job_id=job_of, cost=2, tier="t", backend="b")
    def handler(request: dict[str, Any]) -> Charge | None:
        return current_charge()

    c = handler(req())
    assert c is not None
    assert (c.record.cost, c.record.tier, c.record.backend) == (2, "t", "b")


# -- the store failing ----------------------------------------------------------------------


def test_fail_open_runs_uncharged_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    """fail_open=True with the store down: the function runs, current_charge() is
    None and a warning says the call went through uncharged."""
    ledger = Ledger(ClaimDown(), clock=FakeClock())

    @charges_credit(ledger, account=account_of, job_id=job_of, fail_open=True)
    def handler(request: dict[str, Any]) -> tuple[str, Charge | None]:
        return "ran", current_charge()

    with caplog.at_level(logging.WARNING, logger="jobcredits_plugin"):
        assert handler(req()) == ("ran", None)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "UNCHARGED" in warnings[0].getMessage()


def test_fail_closed_propagates_store_unavailable_and_never_runs() -> None:
    """fail_open=False (the default): StoreUnavailable reaches the caller and the
    function never ran."""
    ledger = Ledger(ClaimDown(), clock=FakeClock())
    ran: list[int] = []

    @charges_credit(ledger, account=account_of, job_id=job_of)
    def handler(request: dict[str, Any]) -> None:
        ran.append(1)

    with pytest.raises(StoreUnavailable) as info:
        handler(req())
    assert info.value.status == 503
    assert ran == []


def test_store_failing_at_confirm_still_returns_the_result(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """If the store fails when confirming, the function's result is still returned
    and the failure is logged; the charge stays pending for its lease to settle."""
    ledger = Ledger(ConfirmDown(), clock=FakeClock())

    @charges_credit(ledger, account=account_of, job_id=job_of)
    def handler(request: dict[str, Any]) -> str:
        return "result"

    with caplog.at_level(logging.ERROR, logger="jobcredits_plugin"):
        assert handler(req()) == "result"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "confirm" in errors[0].getMessage()
    record = ledger.lookup(A, J)
    assert record is not None
    assert record.state == "pending"


def test_store_failing_at_refund_keeps_the_original_exception(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """If the store fails when refunding, the handler's own exception propagates
    (not StoreUnavailable) and the failure is logged."""
    ledger = Ledger(ConfirmDown(), clock=FakeClock())

    @charges_credit(ledger, account=account_of, job_id=job_of)
    def handler(request: dict[str, Any]) -> None:
        raise Failed

    with caplog.at_level(logging.ERROR, logger="jobcredits_plugin"), pytest.raises(Failed):
        handler(req())
    assert any("refund" in r.getMessage() for r in caplog.records)


def test_async_store_failing_at_confirm_still_returns_the_result(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The async wrapper also returns the result when confirming fails, and logs it."""
    ledger = Ledger(ConfirmDown(), clock=FakeClock())

    @charges_credit(ledger, account=account_of, job_id=job_of)
    async def handler(request: dict[str, Any]) -> str:
        return "result"

    with caplog.at_level(logging.ERROR, logger="jobcredits_plugin"):
        assert asyncio.run(handler(req())) == "result"
    assert any("confirm" in r.getMessage() for r in caplog.records)


# -- concurrency -------------------------------------------------------------------------


@pytest.mark.slow
def test_concurrent_calls_with_one_job_id_charge_exactly_once(
    ledger: Ledger, events: RecordingPlugin
) -> None:
    """Four threads calling with the same job id at once: exactly one is charged;
    the others are reused or told the job is in progress."""
    barrier = threading.Barrier(4)
    outcomes: list[str] = []
    lock = threading.Lock()

    @charges_credit(ledger, account=account_of, job_id=job_of)
    def handler(request: dict[str, Any]) -> None:
        c = current_charge()
        assert c is not None
        with lock:
            outcomes.append(c.outcome)
        threading.Event().wait(0.05)  # keep the first call pending for a moment

    def worker() -> None:
        barrier.wait()
        try:
            handler(req())
        except JobInProgress:
            with lock:
                outcomes.append("in_progress")

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(outcomes) == 4
    assert outcomes.count("charged") == 1
    assert set(outcomes) <= {"charged", "reused", "in_progress"}
    assert len(events.of("charge")) == 1
    record = ledger.lookup(A, J)
    assert record is not None
    assert record.state == "charged"


# -- argument checks ------------------------------------------------------------------------


def test_charges_credit_rejects_bad_arguments(ledger: Ledger) -> None:
    """A non-Ledger, non-callable account/job_id or an unknown on_missing raise
    ConfigurationError (the app's mistake, not a caller's 400) at decoration
    time."""
    with pytest.raises(ConfigurationError):
        charges_credit(object(), account=account_of, job_id=job_of)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        charges_credit(ledger, account="acct", job_id=job_of)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        charges_credit(ledger, account=account_of, job_id="job")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        charges_credit(
            ledger,
            account=account_of,
            job_id=job_of,
            on_missing="ignore",  # type: ignore[arg-type]
        )


@pytest.mark.parametrize(
    "options",
    [
        {"cost": -1},
        {"cost": 1.5},
        {"cost": True},
        {"cost": "1"},
        {"scope": "no spaces"},
        {"scope": ""},
        {"scope": "s\ud800"},
        {"scope": None},
        {"tier": "\x00"},
        {"tier": ""},
        {"tier": "t" * 65},
        {"backend": 5},
        {"fail_open": "no"},
        {"fail_open": None},
        {"fail_open": 1},
    ],
)
def test_charges_credit_checks_fixed_options_at_decoration(
    ledger: Ledger, options: dict[str, Any]
) -> None:
    """A fixed cost, scope, tier, backend or fail_open that could never be
    charged fails when the app is defined (ConfigurationError), not with a
    400 (or a raw store error) at every call; a truthy string must never turn
    fail-open on. Nothing is recorded."""
    with pytest.raises(ConfigurationError):
        charges_credit(ledger, account=account_of, job_id=job_of, **options)
    assert ledger.snapshot() == []


def test_charges_credit_leaves_callable_options_to_the_call(ledger: Ledger) -> None:
    """Callables are checked per call; their bad result is refused then, with
    nothing recorded: as the app's bug (ConfigurationError), since the app's
    callable computed it."""

    @charges_credit(ledger, account=account_of, job_id=job_of, cost=lambda *a: -1)
    def summarize(req: Mapping[str, Any]) -> str:
        return "done"

    with pytest.raises(ConfigurationError, match="cost callable"):
        summarize({"account": "acct", "job": "job-1"})
    assert ledger.snapshot() == []


# -- header() ---------------------------------------------------------------------------------


class CIHeaders(Mapping[str, str]):
    """A minimal case-insensitive header mapping, like Werkzeug's or Starlette's."""

    def __init__(self, items: dict[str, str]) -> None:
        self._items = {k.lower(): v for k, v in items.items()}

    def __getitem__(self, key: str) -> str:
        return self._items[key.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


class HeadersRequest:
    """A Flask/Starlette-like request: a `.headers` case-insensitive mapping."""

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = CIHeaders(headers)


class MetaRequest:
    """A Django-like request with only `.META`."""

    def __init__(self, meta: dict[str, str]) -> None:
        self.META = meta


def test_header_reads_a_wsgi_environ() -> None:
    """header() reads HTTP_X_JOB_ID from a WSGI environ."""
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/", "HTTP_X_JOB_ID": "abc-123"}
    assert header("X-Job-Id")(environ) == "abc-123"
    assert header("x-job-id")(environ) == "abc-123"


def test_header_reads_content_type_from_a_wsgi_environ() -> None:
    """Content-Type lives in CONTENT_TYPE, without the HTTP_ prefix."""
    assert header("Content-Type")({"CONTENT_TYPE": "text/plain"}) == "text/plain"


@pytest.mark.parametrize("raw_name", [b"x-job-id", b"X-Job-Id", b"X-JOB-ID"])
def test_header_reads_an_asgi_scope_case_insensitively(raw_name: bytes) -> None:
    """header() reads an ASGI scope's list of byte pairs, case-insensitively."""
    scope = {
        "type": "http",
        "headers": [(b"host", b"example.org"), (raw_name, b"abc-123")],
    }
    assert header("X-Job-Id")(scope) == "abc-123"
    assert header("x-JOB-id")(scope) == "abc-123"


def test_header_reads_a_headers_attribute_case_insensitively() -> None:
    """header() reads an object's case-insensitive `.headers` mapping."""
    request = HeadersRequest({"x-job-id": "abc-123"})
    assert header("X-Job-Id")(request) == "abc-123"
    assert header("X-JOB-ID")(request) == "abc-123"


def test_header_reads_a_django_meta() -> None:
    """header() falls back to `.META` (HTTP_X_JOB_ID) when there is no `.headers`."""
    request = MetaRequest({"HTTP_X_JOB_ID": "abc-123", "REMOTE_ADDR": "127.0.0.1"})
    assert header("X-Job-Id")(request) == "abc-123"


def test_header_reads_the_request_keyword() -> None:
    """With no positional argument, header() reads the `request=` keyword."""
    assert header("X-Job-Id")(request={"HTTP_X_JOB_ID": "abc"}) == "abc"
    assert header("X-Job-Id")(request=HeadersRequest({"X-Job-Id": "def"})) == "def"


def test_header_reads_the_first_positional_argument_only() -> None:
    """The request is the first positional argument; later ones are ignored."""
    assert header("X-Job-Id")({"HTTP_X_JOB_ID": "abc"}, {"HTTP_X_JOB_ID": "other"}) == "abc"


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param({"REQUEST_METHOD": "GET"}, id="wsgi-absent"),
        pytest.param({"HTTP_X_JOB_ID": ""}, id="wsgi-empty"),
        pytest.param({"HTTP_X_JOB_ID": "   "}, id="wsgi-blank"),
        pytest.param({"type": "http", "headers": []}, id="asgi-absent"),
        pytest.param({"type": "http", "headers": [(b"x-job-id", b" ")]}, id="asgi-blank"),
        pytest.param(HeadersRequest({}), id="headers-absent"),
        pytest.param(HeadersRequest({"X-Job-Id": ""}), id="headers-empty"),
        pytest.param(MetaRequest({}), id="meta-absent"),
        pytest.param(None, id="none"),
        pytest.param(object(), id="unknown-object"),
    ],
)
def test_header_absent_or_blank_is_none(request_: Any) -> None:
    """An absent, empty or blank header reads as None."""
    assert header("X-Job-Id")(request_) is None


def test_header_without_any_request_is_none() -> None:
    """Called with no arguments at all, header() finds nothing."""
    assert header("X-Job-Id")() is None


def test_header_strips_surrounding_whitespace() -> None:
    """Optional whitespace around a header value is not part of it."""
    assert header("X-Job-Id")({"HTTP_X_JOB_ID": "  abc  "}) == "abc"


@pytest.mark.parametrize(
    "name",
    ["", "X Job", "X-Job:", "X-Job\n", "X-Job\r", "X(Job)", "X-Jöb", "X-Job-€", 5, None],
)
def test_header_rejects_bad_names(name: Any) -> None:
    """A header name must be a non-empty HTTP token; anything else raises
    ConfigurationError when header() is called."""
    with pytest.raises(ConfigurationError):
        header(name)


def test_header_plugs_into_charges_credit(ledger: Ledger) -> None:
    """header() callables work as the decorator's account= and job_id=."""

    @charges_credit(ledger, account=header("X-Account"), job_id=header("X-Job-Id"))
    def view(request: dict[str, Any]) -> Charge | None:
        return current_charge()

    environ = {"HTTP_X_ACCOUNT": "acct-9", "HTTP_X_JOB_ID": "job-9"}
    c = view(environ)
    assert c is not None
    assert c.record.key == ("acct-9", "default", "job-9")
    again = view(environ)
    assert again is not None
    assert again.outcome == "reused"
    with pytest.raises(NotAuthenticated):
        view({"HTTP_X_JOB_ID": "job-9"})


@pytest.mark.parametrize("balances", [True, False])
def test_asgi_headers_are_the_encoded_headers_in_every_state(balances: bool) -> None:
    """JobCall.asgi_headers, which every charged ASGI response carries, is
    built straight as bytes; it must always say what headers() says."""
    from jobcredits_plugin._asgi import encode_headers
    from jobcredits_plugin._call import JobCall, Terms, begin
    from jobcredits_plugin._headers import raw_name

    ledger = make_ledger(balances=balances)
    if balances:
        ledger.grant(A, 10)
    seen = []

    def check(call: JobCall, name: str = "X-Job-Id") -> None:
        expected = encode_headers(call.headers(name))
        assert call.asgi_headers(raw_name(name)) == expected
        seen.append([v.decode() for _, v in expected])

    new = begin(ledger, A, "job-h", Terms(cost=3))
    check(new, "X-Request-Job")  # charged, before settling
    assert new.settle(True) == "confirmed"
    check(begin(ledger, A, "job-h", Terms(cost=3)))  # reused
    failed = begin(ledger, A, "job-f", Terms(cost=2))
    assert failed.settle(False) == "refunded"
    check(failed)
    check(JobCall(ledger, None, "job-open", False))  # failed open: the job header alone
    assert [s[:2] for s in seen] == [
        ["job-h", "charged"],
        ["job-h", "reused"],
        ["job-f", "refunded"],
        ["job-open"],
    ]
    if balances:
        assert [s[2] for s in seen[:3]] == ["7", "7", "7"]
    else:
        assert all(len(s) == 2 for s in seen[:3])
