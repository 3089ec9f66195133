"""The Prometheus plugin: each counter moves exactly once per event, with bounded
labels; a broken metrics backend never breaks a charge; and the counts add up
exactly across processes (spawned pruners, gunicorn workers) in prometheus_client's
multiprocess mode, because the ledger fires each hook exactly once."""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
import multiprocessing
import os
import queue
import socket
import subprocess
import sys
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

prometheus_client = pytest.importorskip("prometheus_client")

from prometheus_client import REGISTRY, CollectorRegistry  # noqa: E402
from prometheus_client import Counter as PromCounter  # noqa: E402
from prometheus_client.multiprocess import MultiProcessCollector  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from jobcredits_plugin import (  # noqa: E402
    JobCreditsError,
    Ledger,
    MissingJobId,
    NotAuthenticated,
    StoreUnavailable,
    charges_credit,
    hookimpl,
)
from jobcredits_plugin.contrib.prometheus import STORE_BUCKETS, PrometheusMetrics  # noqa: E402
from jobcredits_plugin.stores import ClaimRequest, MemoryStore, SQLiteStore  # noqa: E402
from jobcredits_plugin.testing import FakeClock, RecordingPlugin, make_ledger  # noqa: E402
from jobcredits_plugin.wsgi import JobCreditsMiddleware  # noqa: E402

from . import _prom_workers  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
A = "acct-1"
J = "job-1"

#: Every code on_reject can report (hookspecs.on_reject); the rejection tests
#: below must cover each one.
CODES = {
    "invalid_argument",
    "invalid_job_id",
    "invalid_account",
    "missing_job_id",
    "not_authenticated",
    "job_in_progress",
    "job_exhausted",
    "insufficient_credits",
    "store_unavailable",
}


def series(name: str, labels: dict[str, str]) -> str:
    """One time series as a readable key: ``name{a=x,b=y}`` (labels sorted)."""
    return name + "{" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}"


def counter_values(registry: CollectorRegistry) -> dict[str, float]:
    """Every counter sample (``*_total``) of a registry, by series."""
    return {
        series(s.name, s.labels): s.value
        for family in registry.collect()
        for s in family.samples
        if s.name.endswith("_total")
    }


class Meter:
    """Reads a registry's counters and tells what moved since the last look."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._last = counter_values(registry)

    def moved(self) -> dict[str, float]:
        now = counter_values(self.registry)
        diff = {k: now.get(k, 0.0) - self._last.get(k, 0.0) for k in now.keys() | self._last}
        self._last = now
        return {k: v for k, v in diff.items() if v}

    def value(self, name: str, **labels: str) -> float:
        return value(self.registry, name, **labels)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """One sample's value, 0 for a series that does not exist (yet)."""
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def charges(scope: str = "default", tier: str = "") -> str:
    return series("jobcredits_charges_total", {"scope": scope, "tier": tier})


def scoped(metric: str, scope: str = "default") -> str:
    return series(f"jobcredits_{metric}_total", {"scope": scope})


def rejection(code: str, scope: str = "default") -> str:
    return series("jobcredits_rejections_total", {"scope": scope, "code": code})


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> PrometheusMetrics:
    return PrometheusMetrics(registry)


@pytest.fixture
def meter(registry: CollectorRegistry, metrics: PrometheusMetrics) -> Meter:
    return Meter(registry)


@pytest.fixture
def ledger(clock: FakeClock, metrics: PrometheusMetrics) -> Iterator[Ledger]:
    ledger = make_ledger(clock=clock, plugins=[metrics])
    ledger.check_pending()  # every hook the plugin implements is one this version knows
    yield ledger
    ledger.close()


class DownStore(MemoryStore):
    """A memory store whose every claim fails to reach its 'server'."""

    def claim(self, req: ClaimRequest) -> Any:
        raise ConnectionError("connection refused")


# -- one event, one increment ---------------------------------------------------------


def test_a_charge_counts_once_with_its_cost_and_tier(ledger: Ledger, meter: Meter) -> None:
    ledger.charge(A, "job-1", cost=3, tier="gold")
    assert meter.moved() == {charges(tier="gold"): 1, scoped("credits_charged"): 3}

    ledger.charge(A, "job-2", scope="summarize")  # no tier: the label is ""
    assert meter.moved() == {charges("summarize"): 1, scoped("credits_charged", "summarize"): 1}


def test_follow_ups_count_reuses_and_charge_nothing(ledger: Ledger, meter: Meter) -> None:
    c = ledger.charge(A, J, cost=5)
    ledger.confirm(A, J, charge_id=c.record.charge_id)
    meter.moved()

    ledger.charge(A, J, cost=5)
    ledger.charge(A, J, cost=5)
    assert meter.moved() == {scoped("reuses"): 2}


def test_a_refund_counts_once_with_the_refunded_cost(ledger: Ledger, meter: Meter) -> None:
    ledger.charge(A, J, cost=4)
    meter.moved()

    assert ledger.refund(A, J)
    assert meter.moved() == {scoped("refunds"): 1, scoped("credits_refunded"): 4}
    assert not ledger.refund(A, J)  # idempotent, and so is the count
    assert meter.moved() == {}


def test_a_lapsed_lease_counts_a_refund_then_a_new_charge(
    ledger: Ledger, clock: FakeClock, meter: Meter
) -> None:
    ledger.charge(A, J, cost=2)  # the first call never finishes
    meter.moved()

    clock.advance(ledger.lease + 1)
    assert ledger.charge(A, J, cost=2).charged  # takes the job over
    assert meter.moved() == {
        scoped("refunds"): 1,
        scoped("credits_refunded"): 2,
        charges(): 1,
        scoped("credits_charged"): 2,
    }


def test_prune_counts_each_expiry_and_stale_refund_once(
    ledger: Ledger, clock: FakeClock, meter: Meter
) -> None:
    for n in range(3):
        c = ledger.charge(A, f"done-{n}")
        ledger.confirm(A, f"done-{n}", charge_id=c.record.charge_id)
    for n in range(2):
        ledger.charge(A, f"stale-{n}")
    meter.moved()

    clock.advance(ledger.ttl + 1)
    assert len(ledger.prune()) == 5
    assert meter.moved() == {
        scoped("expirations"): 3,
        scoped("refunds"): 2,
        scoped("credits_refunded"): 2,
    }
    assert ledger.prune() == []
    assert meter.moved() == {}


def test_a_call_after_the_window_counts_the_expiry_and_a_new_charge(
    ledger: Ledger, clock: FakeClock, meter: Meter
) -> None:
    c = ledger.charge(A, J)
    ledger.confirm(A, J, charge_id=c.record.charge_id)
    meter.moved()

    clock.advance(ledger.ttl + 1)
    assert ledger.charge(A, J).charged
    assert meter.moved() == {scoped("expirations"): 1, charges(): 1, scoped("credits_charged"): 1}


def test_async_twins_count_like_the_sync_calls(ledger: Ledger, meter: Meter) -> None:
    async def scenario() -> None:
        c = await ledger.acharge(A, J, cost=2)
        await ledger.aconfirm(A, J, charge_id=c.record.charge_id)
        await ledger.acharge(A, J)
        await ledger.arefund(A, J)

    asyncio.run(scenario())
    assert meter.moved() == {
        charges(): 1,
        scoped("credits_charged"): 2,
        scoped("reuses"): 1,
        scoped("refunds"): 1,
        scoped("credits_refunded"): 2,
    }


# -- rejections: one per refused call, labelled by code --------------------------------


def _use_up(ledger: Ledger) -> None:
    c = ledger.charge(A, J, scope="summarize")
    ledger.confirm(A, J, scope="summarize", charge_id=c.record.charge_id)


#: (code, scope label, setup, the refused call) on a ledger with max_uses=1 and
#: balances on, where account A holds credits and "broke" none.
LEDGER_REFUSALS: list[tuple[str, str, Callable[[Ledger], Any], Callable[[Ledger], Any]]] = [
    ("invalid_argument", "default", lambda lg: None, lambda lg: lg.charge(A, J, cost=-1)),
    ("invalid_job_id", "default", lambda lg: None, lambda lg: lg.charge(A, "no spaces")),
    ("invalid_account", "default", lambda lg: None, lambda lg: lg.charge("", J)),
    ("job_in_progress", "default", lambda lg: lg.charge(A, J), lambda lg: lg.charge(A, J)),
    ("job_exhausted", "summarize", _use_up, lambda lg: lg.charge(A, J, scope="summarize")),
    ("insufficient_credits", "default", lambda lg: None, lambda lg: lg.charge("broke", J)),
]


@pytest.mark.parametrize(
    ("code", "scope", "setup", "refuse"), LEDGER_REFUSALS, ids=[r[0] for r in LEDGER_REFUSALS]
)
def test_each_refusal_by_the_ledger_counts_one_rejection(
    clock: FakeClock,
    metrics: PrometheusMetrics,
    meter: Meter,
    code: str,
    scope: str,
    setup: Callable[[Ledger], Any],
    refuse: Callable[[Ledger], Any],
) -> None:
    with make_ledger(clock=clock, plugins=[metrics], max_uses=1, balances=True) as ledger:
        ledger.grant(A, 100)
        setup(ledger)
        meter.moved()
        with pytest.raises(JobCreditsError) as refused:
            refuse(ledger)
        assert refused.value.code == code
        assert meter.moved() == {rejection(code, scope): 1}


def test_an_invalid_scope_is_never_a_label(ledger: Ledger, meter: Meter) -> None:
    """A hostile scope reaches the hook as None: the label is "", so a client
    cannot mint time series by sending garbage."""
    for bad in ("x" * 500, "a scope with spaces", "\x00"):
        with pytest.raises(JobCreditsError):
            ledger.charge(A, J, scope=bad)
    assert meter.moved() == {rejection("invalid_job_id", ""): 3}


def test_an_unreachable_store_counts_store_unavailable_also_when_failing_open(
    clock: FakeClock, metrics: PrometheusMetrics, meter: Meter
) -> None:
    with make_ledger(clock=clock, store=DownStore(), plugins=[metrics]) as ledger:
        with pytest.raises(StoreUnavailable):
            ledger.charge(A, J)
        assert meter.moved() == {rejection("store_unavailable"): 1}

        @charges_credit(ledger, account=lambda: A, job_id=lambda: J, fail_open=True)
        def handler() -> str:
            return "served uncharged"

        assert handler() == "served uncharged"
        assert meter.moved() == {rejection("store_unavailable"): 1}
    # The failed claims were timed too.
    assert meter.value("jobcredits_store_seconds_count", operation="claim") == 2


@pytest.mark.parametrize(
    ("code", "account", "job_id", "error"),
    [
        ("not_authenticated", None, J, NotAuthenticated),
        ("missing_job_id", A, None, MissingJobId),
    ],
)
def test_the_decorator_counts_its_own_refusals(
    ledger: Ledger,
    meter: Meter,
    code: str,
    account: str | None,
    job_id: str | None,
    error: type[JobCreditsError],
) -> None:
    @charges_credit(
        ledger,
        account=lambda: account,
        job_id=lambda: job_id,
        scope="summarize",
        on_missing="reject",
    )
    def handler() -> str:
        return "never runs"

    with pytest.raises(error):
        handler()
    assert meter.moved() == {rejection(code, "summarize"): 1}


def test_the_wsgi_middleware_counts_an_unauthenticated_call(ledger: Ledger, meter: Meter) -> None:
    def inner(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [])
        return [b"never"]

    app = JobCreditsMiddleware(
        inner, ledger, routes={"POST /v1/run": {"scope": "run"}}, account=lambda env: None
    )
    statuses: list[str] = []

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], object]:
        statuses.append(status)
        return lambda data: None

    body = app(
        {"REQUEST_METHOD": "POST", "PATH_INFO": "/v1/run", "HTTP_X_JOB_ID": J}, start_response
    )
    assert b"".join(body)
    assert statuses[0].startswith("401")
    assert meter.moved() == {rejection("not_authenticated", "run"): 1}


def test_the_refusal_tests_cover_every_code() -> None:
    covered = {r[0] for r in LEDGER_REFUSALS} | {
        "store_unavailable",
        "not_authenticated",
        "missing_job_id",
    }
    assert covered == CODES


# -- store call latency ----------------------------------------------------------------


def test_the_histogram_counts_every_store_call_by_operation(
    clock: FakeClock, metrics: PrometheusMetrics, registry: CollectorRegistry
) -> None:
    with make_ledger(clock=clock, plugins=[metrics], balances=True) as ledger:
        ledger.grant(A, 10)
        c = ledger.charge(A, J)
        ledger.confirm(A, J, charge_id=c.record.charge_id)
        ledger.charge(A, J)
        ledger.lookup(A, J)
        ledger.refund(A, J)
        ledger.balance(A)
        ledger.snapshot()
        ledger.prune()
        with pytest.raises(JobCreditsError):
            ledger.charge(A, "bad id")  # refused before any store call
        asyncio.run(ledger.acharge(A, "job-2"))
    expected = Counter(
        grant=1, claim=3, confirm=1, lookup=1, refund=1, balance=1, snapshot=1, prune=1
    )

    seen = {
        s.labels["operation"]: s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == "jobcredits_store_seconds_count"
    }
    assert seen == dict(expected)
    for operation, n in expected.items():
        labels = {"operation": operation}
        assert (
            registry.get_sample_value("jobcredits_store_seconds_bucket", {**labels, "le": "+Inf"})
            == n
        )
        assert value(registry, "jobcredits_store_seconds_sum", **labels) >= 0
    buckets = {
        float(s.labels["le"])
        for family in registry.collect()
        for s in family.samples
        if s.name == "jobcredits_store_seconds_bucket"
    }
    assert buckets == {*STORE_BUCKETS, float("inf")}
    assert min(STORE_BUCKETS) <= 0.0001
    assert max(STORE_BUCKETS) >= 2.0


# -- isolation: a broken backend, other plugins -----------------------------------------


class Grumpy:
    """A neighbour plugin that raises in every hook."""

    @hookimpl
    def on_charge(self) -> None:
        raise RuntimeError("grumpy")

    @hookimpl
    def on_reuse(self) -> None:
        raise RuntimeError("grumpy")

    @hookimpl
    def on_refund(self) -> None:
        raise RuntimeError("grumpy")

    @hookimpl
    def on_expire(self) -> None:
        raise RuntimeError("grumpy")

    @hookimpl
    def on_reject(self) -> None:
        raise RuntimeError("grumpy")

    @hookimpl
    def on_store_call(self) -> None:
        raise RuntimeError("grumpy")


def _boom(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("metrics backend down")


@pytest.mark.parametrize(
    ("broken", "hook"),
    [
        ("charges.labels", "on_charge"),
        ("charge child inc", "on_charge"),
        ("store_seconds.labels", "on_store_call"),
    ],
)
def test_a_failing_metrics_backend_never_breaks_a_charge(
    clock: FakeClock,
    metrics: PrometheusMetrics,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    broken: str,
    hook: str,
) -> None:
    events = RecordingPlugin()
    with make_ledger(clock=clock, plugins=[metrics, events]) as ledger:
        if broken == "charges.labels":
            monkeypatch.setattr(metrics.charges, "labels", _boom)
        elif broken == "store_seconds.labels":
            monkeypatch.setattr(metrics.store_seconds, "labels", _boom)
        else:  # a child already in use starts failing
            ledger.charge(A, "warm-up")
            monkeypatch.setattr(metrics.charges.labels("default", ""), "inc", _boom)
            events.clear()

        with caplog.at_level(logging.ERROR, logger="jobcredits_plugin"):
            charge = ledger.charge(A, J)

        assert charge.charged
        assert ledger.lookup(A, J) == charge.record  # recorded
        assert events.kinds() == ["charge"]  # and the other plugin still heard of it
    # The failure was logged with its traceback, not swallowed.
    logged = [r for r in caplog.records if f"jobcredits hook {hook} " in r.getMessage()]
    assert logged
    assert all(r.exc_info and "metrics backend down" in str(r.exc_info[1]) for r in logged)


def _scenario(ledger: Ledger, clock: FakeClock) -> None:
    """A bit of everything: charges, reuses, refunds (explicit, lease, prune),
    expiries, rejections."""
    for n in range(4):
        c = ledger.charge(A, f"job-{n}", cost=n + 1, tier="gold" if n % 2 else None)
        ledger.confirm(A, f"job-{n}", charge_id=c.record.charge_id)
        ledger.charge(A, f"job-{n}")
    ledger.charge(A, "to-refund")
    ledger.refund(A, "to-refund")
    ledger.charge(A, "stale")
    with pytest.raises(JobCreditsError):
        ledger.charge(A, "stale")
    with pytest.raises(JobCreditsError):
        ledger.charge(A, "bad id")
    clock.advance(ledger.ttl + 1)
    ledger.prune()


def test_registration_order_does_not_change_the_counts() -> None:
    """PrometheusMetrics registered before or after other plugins (one of which
    raises in every hook) counts the same, and what a RecordingPlugin saw."""
    results = []
    for metrics_first in (True, False):
        registry = CollectorRegistry()
        metrics = PrometheusMetrics(registry)
        events = RecordingPlugin()
        others = [Grumpy(), events]
        plugins = [metrics, *others] if metrics_first else [*others, metrics]
        clock = FakeClock()
        with make_ledger(clock=clock, plugins=plugins) as ledger:
            _scenario(ledger, clock)
        counts = counter_values(registry)
        results.append(counts)
        kinds = Counter(events.kinds())
        assert (
            sum(v for k, v in counts.items() if k.startswith("jobcredits_charges_"))
            == kinds["charge"]
        )
        assert counts[scoped("reuses")] == kinds["reuse"]
        assert counts[scoped("refunds")] == kinds["refund"]
        assert counts[scoped("expirations")] == kinds["expire"]
    assert results[0] == results[1]
    assert results[0][charges()] == 4  # job-0, job-2, to-refund, stale
    assert results[0][charges(tier="gold")] == 2
    assert results[0][scoped("credits_charged")] == 1 + 2 + 3 + 4 + 1 + 1
    assert results[0][scoped("refunds")] == 2  # to-refund, and stale settled by prune
    assert results[0][scoped("expirations")] == 4
    assert results[0][rejection("job_in_progress")] == 1
    assert results[0][rejection("invalid_job_id")] == 1


# -- sharing the collectors ---------------------------------------------------------------


def test_plugins_on_one_registry_and_namespace_share_their_metrics(
    registry: CollectorRegistry,
) -> None:
    """One plugin per ledger, many ledgers: no "Duplicated timeseries", and the
    ledgers feed the same counters."""
    first, second = PrometheusMetrics(registry), PrometheusMetrics(registry)
    assert first.charges is second.charges
    assert first.store_seconds is second.store_seconds
    with make_ledger(plugins=[first]) as one, make_ledger(plugins=[second]) as two:
        one.charge(A, J)
        two.charge(A, J)
    assert (
        registry.get_sample_value("jobcredits_charges_total", {"scope": "default", "tier": ""}) == 2
    )

    other = PrometheusMetrics(registry, namespace="billing")
    assert other.charges is not first.charges
    with make_ledger(plugins=[other]) as three:
        three.charge(A, J)
    assert registry.get_sample_value("billing_charges_total", {"scope": "default", "tier": ""}) == 1
    # A fresh registry gets metrics of its own.
    assert PrometheusMetrics(CollectorRegistry()).charges is not first.charges


def test_no_registry_means_the_default_one() -> None:
    # A namespace of its own: the default registry lives as long as the process.
    first = PrometheusMetrics(namespace="jobcredits_default_registry_test")
    second = PrometheusMetrics(namespace="jobcredits_default_registry_test")
    assert first.registry is REGISTRY
    assert first.charges is second.charges
    with make_ledger(plugins=[first]) as ledger:
        ledger.charge(A, J)
    name = "jobcredits_default_registry_test_charges_total"
    assert value(REGISTRY, name, scope="default", tier="") >= 1


def test_a_name_clash_says_so_and_leaves_the_registry_clean(registry: CollectorRegistry) -> None:
    PromCounter("jobcredits_refunds", "someone else's", registry=registry)
    with pytest.raises(ValueError, match="namespace"):
        PrometheusMetrics(registry)
    # Nothing half-registered is left behind, and another namespace works.
    assert not any(
        name.startswith("jobcredits_") and name != "jobcredits_refunds"
        for name in (family.name for family in registry.collect())
    )
    assert PrometheusMetrics(registry, namespace="billing").charges is not None


def test_the_shared_metrics_go_away_with_their_registry() -> None:
    registry = CollectorRegistry()
    PrometheusMetrics(registry)
    ref = weakref.ref(registry)
    del registry
    gc.collect()
    assert ref() is None


def test_a_missing_prometheus_client_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "jobcredits_plugin.contrib.prometheus")
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ImportError, match=r'pip install "jobcredits-plugin\[prometheus\]"'):
        importlib.import_module("jobcredits_plugin.contrib.prometheus")


# -- several processes, multiprocess mode ----------------------------------------------


@pytest.mark.slow
def test_processes_pruning_one_file_count_each_expiry_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two spawned processes prune the same SQLite file at once, each with
    PrometheusMetrics in multiprocess mode: the counters, added up over both,
    equal the records settled, since each record's hook fired in one of them."""
    path = tmp_path / "jobs.db"
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    clock = FakeClock()
    done, stale = 150, 15
    with Ledger(SQLiteStore(path), clock=clock) as setup:
        for n in range(done):
            c = setup.charge(A, f"done-{n}")
            setup.confirm(A, f"done-{n}", charge_id=c.record.charge_id)
        for n in range(stale):
            setup.charge(A, f"stale-{n}")

    # The children inherit it, and so import prometheus_client in multiprocess mode.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_prom_workers.pruning_worker,
            args=(str(path), clock.now + 3600, barrier, results),
        )
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    try:
        reports = []
        for _ in procs:
            try:
                reports.append(results.get(timeout=_prom_workers.JOIN_TIMEOUT))
            except queue.Empty:
                pytest.fail("a pruning process reported nothing in time")
        for p in procs:
            p.join(timeout=_prom_workers.JOIN_TIMEOUT)
            assert p.exitcode == 0
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=10)
    errors = [r["error"] for r in reports if "error" in r]
    assert errors == [], errors[0] if errors else ""
    assert all(r["multiprocess"] for r in reports)
    assert sum(r["removed"] for r in reports) == done + stale

    aggregated = CollectorRegistry()
    MultiProcessCollector(aggregated, path=str(metrics_dir))
    assert value(aggregated, "jobcredits_expirations_total", scope="default") == done
    assert value(aggregated, "jobcredits_refunds_total", scope="default") == stale
    assert value(aggregated, "jobcredits_credits_refunded_total", scope="default") == stale
    assert sum(r["expired"] for r in reports) == done
    assert sum(r["refunded"] for r in reports) == stale
    assert value(aggregated, "jobcredits_store_seconds_count", operation="prune") == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _samples(text: str) -> dict[str, float]:
    """A Prometheus text exposition as {series: value} (counters and counts)."""
    return {
        series(s.name, s.labels): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("jobcredits_") and not s.name.endswith("_bucket")
    }


@pytest.mark.slow
def test_gunicorn_workers_add_up_in_multiprocess_mode(tmp_path: Path) -> None:
    """The documented setup for real: gunicorn with two workers on one SQLite
    ledger, PROMETHEUS_MULTIPROC_DIR set, the child_exit hook, and a /metrics
    view with MultiProcessCollector. Whichever worker served each call, the
    aggregated counters equal the calls made, exactly."""
    pytest.importorskip("gunicorn")
    httpx = pytest.importorskip("httpx")

    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    with Ledger.from_url(url):  # the schema exists before the workers race to it
        pass
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "gunicorn.log"
    env = {
        **os.environ,
        "JOBCREDITS_URL": url,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    cmd = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        str(HERE / "_prom_gunicorn_conf.py"),
        "-w",
        "2",
        "-b",
        f"127.0.0.1:{port}",
        "--graceful-timeout",
        "5",
        "tests.contrib._prom_server_app:app",
    ]
    jobs = [f"job-{n:03d}" for n in range(30)]
    failing = [f"fail-{n:03d}" for n in range(6)]
    unauthenticated = 4
    statuses: dict[str, list[int]] = {job: [] for job in jobs + failing}
    pids: set[str] = set()

    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20.0
        while True:
            if proc.poll() is not None:
                pytest.fail(f"gunicorn exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{base}/metrics", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"gunicorn not ready after 20 s:\n{log.read_text()}")
            time.sleep(0.1)

        with httpx.Client(base_url=base, timeout=10.0) as client:

            def call(job: str, query: str = "") -> None:
                r = client.post(f"/v1/run{query}", headers={"X-Api-Key": A, "X-Job-Id": job})
                statuses[job].append(r.status_code)
                if r.status_code == 200:
                    pids.add(r.text)

            with ThreadPoolExecutor(max_workers=8) as pool:
                # First calls (some failing, so refunded), then follow-ups and retries.
                list(pool.map(call, jobs))
                list(pool.map(lambda job: call(job, "?fail=1"), failing))
                list(pool.map(call, jobs + failing))
            for _ in range(unauthenticated):
                assert client.post("/v1/run", headers={"X-Job-Id": "anon"}).status_code == 401
            exposed = _samples(client.get("/metrics").text)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    assert all(statuses[job] == [200, 200] for job in jobs), statuses
    assert all(statuses[job] == [500, 200] for job in failing), statuses
    assert len(pids) == 2, f"one worker served every call: {pids}"

    run = {"scope": "run"}
    expected = {
        series("jobcredits_charges_total", {**run, "tier": ""}): len(jobs) + 2 * len(failing),
        series("jobcredits_credits_charged_total", run): len(jobs) + 2 * len(failing),
        series("jobcredits_reuses_total", run): len(jobs),
        series("jobcredits_refunds_total", run): len(failing),
        series("jobcredits_credits_refunded_total", run): len(failing),
        series("jobcredits_rejections_total", {**run, "code": "not_authenticated"}): (
            unauthenticated
        ),
        series("jobcredits_store_seconds_count", {"operation": "claim"}): 2 * len(jobs)
        + 2 * len(failing),
        series("jobcredits_store_seconds_count", {"operation": "confirm"}): len(jobs)
        + len(failing),
        series("jobcredits_store_seconds_count", {"operation": "refund"}): len(failing),
    }
    counters = {k: v for k, v in exposed.items() if "_sum{" not in k}
    assert counters == expected

    # Read straight from the files after the workers exited: the same numbers
    # (a dead worker's counts still count).
    aggregated = CollectorRegistry()
    MultiProcessCollector(aggregated, path=str(metrics_dir))
    after = {
        series(s.name, s.labels): s.value
        for family in aggregated.collect()
        for s in family.samples
        if not s.name.endswith(("_bucket", "_sum"))
    }
    assert after == expected
    assert log.read_text().count("Booting worker") >= 2
