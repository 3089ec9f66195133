"""OpenTelemetryMetrics: each ledger event moves exactly the instruments it
should, once, with bounded attributes; the store histogram sees every store
call; a broken instrument never breaks a charge."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("opentelemetry.metrics")
pytest.importorskip("opentelemetry.sdk.metrics")

from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)

from jobcredits_plugin import (
    InvalidArgument,
    JobCreditsError,
    Ledger,
    MissingJobId,
    NotAuthenticated,
    StoreUnavailable,
    __version__,
    hookimpl,
)
from jobcredits_plugin.contrib.otel import (
    STORE_SECONDS_BUCKETS,
    OpenTelemetryMetrics,
)
from jobcredits_plugin.stores import ClaimRequest, ClaimResult, MemoryStore
from jobcredits_plugin.testing import FakeClock, make_ledger

A = "acct-42"
STORE = "jobcredits.store"

#: (instrument name, sorted attribute items) -> counter value or histogram count
Points = dict[tuple[str, tuple[tuple[str, Any], ...]], float]


class DownStore(MemoryStore):
    """A memory store whose claims cannot reach their 'server'."""

    def claim(self, req: ClaimRequest) -> ClaimResult:
        raise ConnectionError("connection refused")


class StoreCalls:
    """Counts on_store_call independently of the plugin under test."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, BaseException | None]] = []

    @hookimpl
    def on_store_call(self, operation: str, error: BaseException | None) -> None:
        self.calls.append((operation, error))


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def provider(reader: InMemoryMetricReader) -> Iterator[MeterProvider]:
    provider = MeterProvider(metric_readers=[reader])
    yield provider
    provider.shutdown()


@pytest.fixture
def plugin(provider: MeterProvider) -> OpenTelemetryMetrics:
    return OpenTelemetryMetrics(meter_provider=provider)


def collect(reader: InMemoryMetricReader) -> Points:
    """Every data point, keyed by instrument and attributes: counters give
    their (cumulative) value, histograms their count."""
    points: Points = {}
    data = reader.get_metrics_data()
    if data is None:
        return points
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                for point in metric.data.data_points:
                    key = (metric.name, tuple(sorted((point.attributes or {}).items())))
                    if isinstance(point, HistogramDataPoint):
                        points[key] = point.count
                    else:
                        assert isinstance(point, NumberDataPoint)
                        points[key] = point.value
    return points


def moved(before: Points, after: Points, *, store: bool = False) -> Points:
    """What changed between two collections (store histogram left out unless
    asked: every ledger operation makes a store call)."""
    return {
        key: value - before.get(key, 0)
        for key, value in after.items()
        if value != before.get(key, 0) and (store or key[0] != STORE)
    }


def key(name: str, **attributes: str) -> tuple[str, tuple[tuple[str, Any], ...]]:
    return (name, tuple(sorted(attributes.items())))


def advance(ledger: Ledger, seconds: float) -> None:
    """Move the fake clock of a ledger built by ``make``."""
    assert isinstance(ledger.clock, FakeClock)
    ledger.clock.advance(seconds)


@pytest.fixture
def make(plugin: OpenTelemetryMetrics) -> Iterator[Callable[..., Ledger]]:
    """Builds ledgers with the plugin registered, and closes them."""
    made: list[Ledger] = []

    def factory(**kwargs: Any) -> Ledger:
        kwargs.setdefault("clock", FakeClock())
        ledger = make_ledger(plugins=[plugin, *kwargs.pop("plugins", [])], **kwargs)
        made.append(ledger)
        return ledger

    yield factory
    for ledger in made:
        ledger.close()


def test_meter_is_named_after_the_package_and_its_version(
    reader: InMemoryMetricReader, make: Callable[..., Ledger]
) -> None:
    ledger = make()
    ledger.charge(A, "job-1")
    data = reader.get_metrics_data()
    assert data is not None
    scopes = [s.scope for rm in data.resource_metrics for s in rm.scope_metrics]
    assert [(s.name, s.version) for s in scopes] == [("jobcredits_plugin", __version__)]


def test_instruments_have_names_units_and_descriptions(
    reader: InMemoryMetricReader, make: Callable[..., Ledger]
) -> None:
    ledger = make(balances=True)
    ledger.grant(A, 10)
    ledger.charge(A, "job-1")
    ledger.confirm(A, "job-1")
    ledger.charge(A, "job-1")
    ledger.charge(A, "job-2")
    ledger.refund(A, "job-2")
    advance(ledger, 3601)
    ledger.prune()
    with pytest.raises(InvalidArgument):
        ledger.charge(A, "job-3", cost=-1)
    data = reader.get_metrics_data()
    assert data is not None
    units = {
        m.name: m.unit
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.description
    }
    assert units == {
        "jobcredits.charges": "{charge}",
        "jobcredits.reuses": "{call}",
        "jobcredits.refunds": "{refund}",
        "jobcredits.expirations": "{job}",
        "jobcredits.rejections": "{call}",
        "jobcredits.credits.charged": "{credit}",
        "jobcredits.credits.refunded": "{credit}",
        STORE: "s",
    }


def test_charge_moves_charges_and_credits_charged_once(
    reader: InMemoryMetricReader, make: Callable[..., Ledger]
) -> None:
    ledger = make()
    before = collect(reader)
    ledger.charge(A, "job-1", scope="summarize", tier="pro", cost=3)
    assert moved(before, collect(reader)) == {
        key("jobcredits.charges", scope="summarize", tier="pro"): 1,
        key("jobcredits.credits.charged", scope="summarize"): 3,
    }


def test_no_tier_is_reported_as_empty_string(
    reader: InMemoryMetricReader, make: Callable[..., Ledger]
) -> None:
    ledger = make()
    before = collect(reader)
    ledger.charge(A, "job-1")
    assert moved(before, collect(reader)) == {
        key("jobcredits.charges", scope="default", tier=""): 1,
        key("jobcredits.credits.charged", scope="default"): 1,
    }


def test_reuse_moves_reuses_once(reader: InMemoryMetricReader, make: Callable[..., Ledger]) -> None:
    ledger = make()
    ledger.charge(A, "job-1", scope="summarize")
    ledger.confirm(A, "job-1", scope="summarize")
    before = collect(reader)
    assert not ledger.charge(A, "job-1", scope="summarize").charged
    assert moved(before, collect(reader)) == {key("jobcredits.reuses", scope="summarize"): 1}


def test_refund_by_call_moves_refunds_and_credits_refunded_once(
    reader: InMemoryMetricReader, make: Callable[..., Ledger]
) -> None:
    ledger = make()
    ledger.charge(A, "job-1", cost=2)
    before = collect(reader)
    assert ledger.refund(A, "job-1")
    assert not ledger.refund(A, "job-1")  # idempotent: no second event
    assert moved(before, collect(reader)) == {
        key("jobcredits.refunds", scope="default"): 1,
        key("jobcredits.credits.refunded", scope="default"): 2,
    }


def test_refund_by_lease_expiry_counts_refund_and_new_charge(
    reader: InMemoryMetricReader, make: Callable[..., Ledger]
) -> None:
    ledger = make()
    ledger.charge(A, "job-1", cost=2)
    advance(ledger, ledger.lease + 1)  # the first call's worker presumed dead
    before = collect(reader)
    assert ledger.charge(A, "job-1", cost=2).charged  # takes the job over
    assert moved(before, collect(reader)) == {
        key("jobcredits.refunds", scope="default"): 1,
        key("jobcredits.credits.refunded", scope="default"): 2,
        key("jobcredits.charges", scope="default", tier=""): 1,
        key("jobcredits.credits.charged", scope="default"): 2,
    }


def test_expire_by_prune_moves_expirations_once(
    reader: InMemoryMetricReader, make: Callable[..., Ledger]
) -> None:
    ledger = make()
    ledger.charge(A, "job-1", scope="summarize")
    ledger.confirm(A, "job-1", scope="summarize")
    advance(ledger, ledger.ttl + 1)
    before = collect(reader)
    assert len(ledger.prune()) == 1
    assert ledger.prune() == []
    assert moved(before, collect(reader)) == {key("jobcredits.expirations", scope="summarize"): 1}


def _nothing(ledger: Ledger) -> None:
    pass


def _charge(ledger: Ledger) -> None:
    ledger.charge(A, "job-1", scope="summarize")


def _charge_and_confirm(ledger: Ledger) -> None:
    ledger.charge(A, "job-1", scope="summarize")
    ledger.confirm(A, "job-1", scope="summarize")


def _bad_cost(ledger: Ledger) -> None:
    ledger.charge(A, "job-1", scope="summarize", cost=-1)


def _bad_job_id(ledger: Ledger) -> None:
    ledger.charge(A, "not a job id!", scope="summarize")


def _bad_scope(ledger: Ledger) -> None:
    # a scope that fails validation must not become an attribute value
    ledger.charge(A, "job-1", scope="<script>")


def _bad_account(ledger: Ledger) -> None:
    ledger.charge("", "job-1", scope="summarize")


def _no_job_id(ledger: Ledger) -> None:
    # adapters report the refusals they make before the ledger is asked
    error = MissingJobId()
    ledger.report_rejection(error, account=A, scope="summarize")
    raise error


def _no_account(ledger: Ledger) -> None:
    error = NotAuthenticated()
    ledger.report_rejection(error, scope="summarize")
    raise error


#: code, the scope attribute expected, ledger options, setup, the refused call
REJECTIONS = [
    pytest.param("invalid_argument", "summarize", {}, _nothing, _bad_cost, id="invalid_argument"),
    pytest.param("invalid_job_id", "summarize", {}, _nothing, _bad_job_id, id="invalid_job_id"),
    pytest.param("invalid_job_id", "", {}, _nothing, _bad_scope, id="invalid_scope"),
    pytest.param("invalid_account", "summarize", {}, _nothing, _bad_account, id="invalid_account"),
    pytest.param("missing_job_id", "summarize", {}, _nothing, _no_job_id, id="missing_job_id"),
    pytest.param(
        "not_authenticated", "summarize", {}, _nothing, _no_account, id="not_authenticated"
    ),
    pytest.param("job_in_progress", "summarize", {}, _charge, _charge, id="job_in_progress"),
    pytest.param(
        "job_exhausted",
        "summarize",
        {"max_uses": 1},
        _charge_and_confirm,
        _charge,
        id="job_exhausted",
    ),
    pytest.param(
        "insufficient_credits",
        "summarize",
        {"balances": True},
        _nothing,
        _charge,
        id="insufficient_credits",
    ),
    pytest.param(
        "store_unavailable",
        "summarize",
        {"store": DownStore()},
        _nothing,
        _charge,
        id="store_unavailable",
    ),
]


@pytest.mark.parametrize(("code", "scope", "options", "setup", "refused"), REJECTIONS)
def test_each_rejection_code_moves_rejections_once(
    reader: InMemoryMetricReader,
    make: Callable[..., Ledger],
    code: str,
    scope: str,
    options: dict[str, Any],
    setup: Callable[[Ledger], None],
    refused: Callable[[Ledger], None],
) -> None:
    ledger = make(**options)
    setup(ledger)
    before = collect(reader)
    with pytest.raises(JobCreditsError) as info:
        refused(ledger)
    assert info.value.code == code
    assert moved(before, collect(reader)) == {
        key("jobcredits.rejections", scope=scope, code=code): 1
    }


def test_store_histogram_counts_every_store_call(
    reader: InMemoryMetricReader, make: Callable[..., Ledger]
) -> None:
    calls = StoreCalls()
    ledger = make(balances=True, plugins=[calls])
    ledger.grant(A, 5)
    ledger.charge(A, "job-1")
    ledger.confirm(A, "job-1")
    ledger.charge(A, "job-1")
    ledger.lookup(A, "job-1")
    ledger.snapshot()
    ledger.balance(A)
    ledger.refund(A, "job-1")
    ledger.prune()
    histogram = {k: v for k, v in collect(reader).items() if k[0] == STORE}
    assert sum(histogram.values()) == len(calls.calls) == 9
    by_operation: dict[str, float] = {}
    for (_, attributes), count in histogram.items():
        by_operation[dict(attributes)["operation"]] = count
    assert by_operation == {
        "grant": 1,
        "claim": 2,
        "confirm": 1,
        "lookup": 1,
        "snapshot": 1,
        "balance": 1,
        "refund": 1,
        "prune": 1,
    }


def test_failed_store_call_carries_error_type(
    reader: InMemoryMetricReader, make: Callable[..., Ledger]
) -> None:
    ledger = make(store=DownStore())
    before = collect(reader)
    with pytest.raises(StoreUnavailable):
        ledger.charge(A, "job-1")
    assert moved(before, collect(reader), store=True) == {
        key(STORE, operation="claim", **{"error.type": "StoreUnavailable"}): 1,
        key("jobcredits.rejections", scope="default", code="store_unavailable"): 1,
    }


def test_store_histogram_uses_second_buckets(
    reader: InMemoryMetricReader, make: Callable[..., Ledger]
) -> None:
    if (
        "explicit_bucket_boundaries_advisory"
        not in inspect.signature(metrics.Meter.create_histogram).parameters
    ):
        pytest.skip("opentelemetry-api < 1.23 takes no bucket advice")
    ledger = make()
    ledger.charge(A, "job-1")
    data = reader.get_metrics_data()
    assert data is not None
    (histogram,) = [
        m
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == STORE
    ]
    (point,) = histogram.data.data_points
    assert isinstance(point, HistogramDataPoint)
    assert tuple(point.explicit_bounds) == STORE_SECONDS_BUCKETS


def test_buckets_match_the_prometheus_plugin() -> None:
    pytest.importorskip("prometheus_client")
    from jobcredits_plugin.contrib.prometheus import STORE_BUCKETS

    assert STORE_BUCKETS == STORE_SECONDS_BUCKETS


def test_async_twins_count_the_same(
    reader: InMemoryMetricReader, make: Callable[..., Ledger]
) -> None:
    ledger = make()

    async def run() -> None:
        await ledger.acharge(A, "job-1")
        await ledger.aconfirm(A, "job-1")
        await ledger.acharge(A, "job-1")
        await ledger.arefund(A, "job-1")

    before = collect(reader)
    asyncio.run(run())
    assert moved(before, collect(reader)) == {
        key("jobcredits.charges", scope="default", tier=""): 1,
        key("jobcredits.credits.charged", scope="default"): 1,
        key("jobcredits.reuses", scope="default"): 1,
        key("jobcredits.refunds", scope="default"): 1,
        key("jobcredits.credits.refunded", scope="default"): 1,
    }


class Exploding:
    """An instrument that raises on every use."""

    def add(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("exporter bug")

    record = add


def test_raising_instrument_never_breaks_a_charge(
    reader: InMemoryMetricReader,
    plugin: OpenTelemetryMetrics,
    make: Callable[..., Ledger],
    caplog: pytest.LogCaptureFixture,
) -> None:
    plugin.charges = Exploding()  # type: ignore[assignment]
    plugin.store_seconds = Exploding()  # type: ignore[assignment]
    ledger = make()
    with caplog.at_level(logging.ERROR, logger="jobcredits_plugin"):
        charge = ledger.charge(A, "job-1")
    assert charge.charged
    assert ledger.lookup(A, "job-1") is not None
    # the ledger logged the broken hooks and skipped them
    assert any("on_charge" in r.getMessage() for r in caplog.records)
    assert any("on_store_call" in r.getMessage() for r in caplog.records)


def test_plugins_sharing_a_provider_share_instruments(
    provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    # one plugin per ledger, several ledgers in a process: their counts add up
    first, second = OpenTelemetryMetrics(provider), OpenTelemetryMetrics(provider)
    with make_ledger(plugins=[first]) as one, make_ledger(plugins=[second]) as two:
        one.charge(A, "job-1")
        two.charge(A, "job-1")
    assert collect(reader)[key("jobcredits.charges", scope="default", tier="")] == 2


def test_without_a_provider_uses_the_global_one_and_is_harmless() -> None:
    # No SDK installed as the global provider: the API hands out no-op
    # instruments, so a library can register the plugin unconditionally.
    with make_ledger(plugins=[OpenTelemetryMetrics()]) as ledger:
        assert ledger.charge(A, "job-1").charged
        assert ledger.refund(A, "job-1")


def test_missing_opentelemetry_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "jobcredits_plugin.contrib.otel")
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.setitem(sys.modules, "opentelemetry.metrics", None)
    with pytest.raises(ImportError, match=r'pip install "jobcredits-plugin\[otel\]"'):
        importlib.import_module("jobcredits_plugin.contrib.otel")
