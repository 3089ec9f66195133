"""The two observation hooks: on_reject (a call refused, nothing recorded) and
on_store_call (one store operation timed), and the ledger's cache of hook
implementations that keeps unobserved calls cheap."""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import Callable
from typing import Any

import pytest

from jobcredits_plugin import (
    JobCreditsError,
    Ledger,
    StoreUnavailable,
    charges_credit,
    hookimpl,
)
from jobcredits_plugin.stores import ClaimRequest, MemoryStore
from jobcredits_plugin.testing import FakeClock, RecordingPlugin, make_ledger
from jobcredits_plugin.wsgi import JobCreditsMiddleware

A = "acct-1"
J = "job-1"


class Observer:
    """Records every on_reject and on_store_call."""

    def __init__(self) -> None:
        self.rejections: list[dict[str, Any]] = []
        self.store_calls: list[tuple[str, float, BaseException | None]] = []

    @hookimpl
    def on_reject(
        self,
        error: JobCreditsError,
        account: str | None,
        scope: str | None,
        job_id: str | None,
        cost: int | None,
    ) -> None:
        self.rejections.append(
            {"code": error.code, "account": account, "scope": scope, "job_id": job_id, "cost": cost}
        )

    @hookimpl
    def on_store_call(self, operation: str, seconds: float, error: BaseException | None) -> None:
        self.store_calls.append((operation, seconds, error))

    def codes(self) -> list[str]:
        return [r["code"] for r in self.rejections]

    def operations(self) -> list[str]:
        return [op for op, _, _ in self.store_calls]


@pytest.fixture
def observer() -> Observer:
    return Observer()


@pytest.fixture
def observed(clock: FakeClock, observer: Observer, events: RecordingPlugin) -> Ledger:
    return make_ledger(clock=clock, plugins=[observer, events], max_uses=2, balances=True)


class DownStore(MemoryStore):
    """A memory store whose every claim fails to reach its 'server'."""

    def claim(self, req: ClaimRequest) -> Any:
        raise ConnectionError("connection refused")


# -- on_reject -------------------------------------------------------------------------


def test_each_refusal_fires_on_reject_once_with_its_code(
    observed: Ledger, observer: Observer, events: RecordingPlugin
) -> None:
    """Every reason the ledger refuses a charge reaches on_reject exactly once,
    with the error the caller got, and no event hook fires for it."""
    observed.grant(A, 1)
    c = observed.charge(A, J)
    assert observer.rejections == []

    with pytest.raises(JobCreditsError) as in_progress:
        observed.charge(A, J)
    observed.confirm(A, J, charge_id=c.record.charge_id)
    observed.charge(A, J)  # the second use
    with pytest.raises(JobCreditsError) as exhausted:
        observed.charge(A, J)
    with pytest.raises(JobCreditsError) as short:
        observed.charge(A, "job-2", cost=5)

    assert observer.codes() == ["job_in_progress", "job_exhausted", "insufficient_credits"]
    assert [in_progress.value.code, exhausted.value.code, short.value.code] == observer.codes()
    assert observer.rejections[2] == {
        "code": "insufficient_credits",
        "account": A,
        "scope": "default",
        "job_id": "job-2",
        "cost": 5,
    }
    assert events.kinds() == ["charge", "reuse"]


@pytest.mark.parametrize(
    ("kwargs", "code", "reported"),
    [
        (
            {"account": A, "job_id": "bad id\n"},
            "invalid_job_id",
            {"account": A, "scope": "default", "job_id": None, "cost": 1},
        ),
        (
            {"account": "", "job_id": J},
            "invalid_account",
            {"account": None, "scope": "default", "job_id": J, "cost": 1},
        ),
        (
            {"account": A, "job_id": J, "cost": -3},
            "invalid_argument",
            {"account": A, "scope": "default", "job_id": J, "cost": None},
        ),
        (
            {"account": A, "job_id": J, "scope": "x" * 500},
            "invalid_job_id",  # scopes share the job id's checks
            {"account": A, "scope": None, "job_id": J, "cost": 1},
        ),
    ],
)
def test_invalid_input_is_reported_without_the_invalid_values(
    observed: Ledger,
    observer: Observer,
    kwargs: dict[str, Any],
    code: str,
    reported: dict[str, Any],
) -> None:
    """A value that failed validation never reaches the hook (it may be a
    hostile header: a metric label or log line must not carry it); the values
    that passed do."""
    account = kwargs.pop("account")
    job_id = kwargs.pop("job_id")
    with pytest.raises(JobCreditsError):
        observed.charge(account, job_id, **kwargs)
    assert observer.rejections == [{"code": code, **reported}]
    assert observed.snapshot() == []


def test_store_unavailable_is_a_rejection(clock: FakeClock, observer: Observer) -> None:
    """An unreachable store and a closed ledger both refuse with
    store_unavailable, reported once each."""
    ledger = Ledger(DownStore(), clock=clock, plugins=[observer])
    with pytest.raises(StoreUnavailable):
        ledger.charge(A, J)
    ledger.close()
    with pytest.raises(StoreUnavailable):
        ledger.charge(A, J)
    assert observer.codes() == ["store_unavailable", "store_unavailable"]


def test_async_twin_reports_rejections(clock: FakeClock, observer: Observer) -> None:
    async def main() -> None:
        ledger = make_ledger(clock=clock, plugins=[observer])
        await ledger.acharge(A, J)
        with pytest.raises(JobCreditsError):
            await ledger.acharge(A, J)
        with pytest.raises(JobCreditsError):
            await ledger.acharge(A, "")
        await ledger.aclose()

    asyncio.run(main())
    assert observer.codes() == ["job_in_progress", "invalid_job_id"]


def test_decorator_reports_missing_account_and_job_id(observed: Ledger, observer: Observer) -> None:
    """Refusals made before the ledger is called (no account, no job id under
    on_missing="reject") reach on_reject too, through the decorator."""

    @charges_credit(
        observed,
        account=lambda user, job: user,
        job_id=lambda user, job: job,
        scope="search",
        on_missing="reject",
    )
    def search(user: str | None, job: str | None) -> str:
        return "ok"

    with pytest.raises(JobCreditsError):
        search(None, J)
    with pytest.raises(JobCreditsError):
        search(A, None)
    assert observer.rejections == [
        {
            "code": "not_authenticated",
            "account": None,
            "scope": "search",
            "job_id": None,
            "cost": None,
        },
        {"code": "missing_job_id", "account": A, "scope": "search", "job_id": None, "cost": None},
    ]


def _wsgi_call(app: Callable[..., Any], environ: dict[str, Any]) -> str:
    status: list[str] = []
    env = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "SERVER_NAME": "test",
        "SERVER_PORT": "80",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
        "wsgi.url_scheme": "http",
        **environ,
    }
    body = app(env, lambda s, h, exc_info=None: status.append(s))
    b"".join(body)
    if hasattr(body, "close"):
        body.close()
    return status[0]


def test_middleware_reports_missing_job_id(observed: Ledger, observer: Observer) -> None:
    """The web layer shares identify(), so the middleware reports its 400s too."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    wrapped = JobCreditsMiddleware(
        app,
        observed,
        {"GET /": {"scope": "web"}},
        account=lambda environ: environ.get("HTTP_X_USER"),
        on_missing="reject",
    )
    observed.grant(A, 1)
    assert _wsgi_call(wrapped, {"HTTP_X_USER": A}).startswith("400")
    assert _wsgi_call(wrapped, {"HTTP_X_USER": A, "HTTP_X_JOB_ID": J}).startswith("200")
    assert observer.rejections == [
        {"code": "missing_job_id", "account": A, "scope": "web", "job_id": None, "cost": None}
    ]


def test_a_raising_on_reject_does_not_change_the_error(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        @hookimpl
        def on_reject(self, error: JobCreditsError) -> None:
            raise RuntimeError("metrics down")

    ledger = make_ledger(clock=clock, plugins=[Broken()])
    ledger.charge(A, J)
    with pytest.raises(JobCreditsError) as info:
        ledger.charge(A, J)
    assert info.value.code == "job_in_progress"
    assert "on_reject" in caplog.text


# -- on_store_call -----------------------------------------------------------------------


def test_every_store_operation_is_timed_once(observed: Ledger, observer: Observer) -> None:
    observed.grant(A, 5)
    c = observed.charge(A, J)
    observed.confirm(A, J, charge_id=c.record.charge_id)
    observed.lookup(A, J)
    observed.refund(A, J)
    observed.balance(A)
    observed.snapshot()
    observed.prune()
    assert observer.operations() == [
        "grant",
        "claim",
        "confirm",
        "lookup",
        "refund",
        "balance",
        "snapshot",
        "prune",
    ]
    assert all(s >= 0 and err is None for _, s, err in observer.store_calls)


def test_refused_claims_are_successful_store_calls(observed: Ledger, observer: Observer) -> None:
    """A claim answered "insufficient credits" did its job: no error is timed."""
    with pytest.raises(JobCreditsError):
        observed.charge(A, J)
    assert observer.store_calls[0][0] == "claim"
    assert observer.store_calls[0][2] is None


def test_a_failing_store_call_is_timed_with_its_error(clock: FakeClock, observer: Observer) -> None:
    ledger = Ledger(DownStore(), clock=clock, plugins=[observer])
    with pytest.raises(StoreUnavailable):
        ledger.charge(A, J)
    ((op, _, error),) = observer.store_calls
    assert op == "claim"
    assert isinstance(error, StoreUnavailable)
    ledger.close()


def test_invalid_input_makes_no_store_call(observed: Ledger, observer: Observer) -> None:
    with pytest.raises(JobCreditsError):
        observed.charge(A, "bad id")
    assert observer.store_calls == []


def test_async_twins_report_the_same_operation_names(clock: FakeClock, observer: Observer) -> None:
    async def main() -> None:
        ledger = make_ledger(clock=clock, plugins=[observer], balances=True)
        await ledger.agrant(A, 3)
        await ledger.acharge(A, J)
        await ledger.aconfirm(A, J)
        await ledger.alookup(A, J)
        await ledger.arefund(A, J)
        await ledger.abalance(A)
        await ledger.asnapshot()
        await ledger.aprune()
        await ledger.aclose()

    asyncio.run(main())
    assert observer.operations() == [
        "grant",
        "claim",
        "confirm",
        "lookup",
        "refund",
        "balance",
        "snapshot",
        "prune",
    ]


# -- the implementation cache follows registration -------------------------------------


def test_plugins_registered_later_or_directly_on_pluggy_are_seen(clock: FakeClock) -> None:
    """The ledger caches each hook's implementations; registering through the
    ledger, through its pluggy manager, or unregistering, all refresh it."""
    ledger = make_ledger(clock=clock)
    ledger.charge(A, "j1")  # fills the cache with "no implementations"
    first = Observer()
    ledger.register(first)
    ledger.charge(A, "j2")
    second = RecordingPlugin()
    ledger.plugin_manager.register(second)
    ledger.charge(A, "j3")
    ledger.unregister(first)
    ledger.charge(A, "j4")
    assert first.operations() == ["claim", "claim"]
    assert [r.job_id for r in second.of("charge")] == ["j3", "j4"]
    ledger.plugin_manager.unregister(second)
    ledger.charge(A, "j5")
    assert [r.job_id for r in second.of("charge")] == ["j3", "j4"]


def test_blocked_plugins_stop_receiving(clock: FakeClock) -> None:
    recorder = RecordingPlugin()
    ledger = make_ledger(clock=clock, plugins=[recorder])
    name = ledger.plugin_manager.get_name(recorder)
    assert name is not None
    ledger.plugin_manager.set_blocked(name)
    ledger.charge(A, J)
    assert recorder.events == []
