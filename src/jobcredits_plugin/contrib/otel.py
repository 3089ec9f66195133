"""OpenTelemetry metrics for the ledger's hooks.

::

    from opentelemetry.sdk.metrics import MeterProvider
    from jobcredits_plugin.contrib.otel import OpenTelemetryMetrics

    ledger.register(OpenTelemetryMetrics(meter_provider=MeterProvider(...)))

The plugin needs only the OpenTelemetry *API* (``pip install
"jobcredits-plugin[otel]"``). The API is the part libraries are meant to
depend on: without an SDK configured by the application every instrument is a
no-op, so installing this plugin never decides how, where or whether metrics
are exported. That is the application's choice, made once, with the SDK.

The instruments mirror the Prometheus plugin's metrics, and are named so that
OpenTelemetry's Prometheus exporter (which turns dots into underscores, drops
``{annotation}`` units, appends ``_seconds`` for unit ``s`` and ``_total`` to
counters) produces the very same metric names: a dashboard built on one works
on the other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

try:
    from opentelemetry import metrics
except ImportError as exc:
    raise ImportError(
        "jobcredits_plugin.contrib.otel needs the OpenTelemetry API: "
        'pip install "jobcredits-plugin[otel]"'
    ) from exc

from .._errors import JobCreditsError
from .._records import JobRecord
from .._version import __version__
from ..hookspecs import hookimpl
from ._buckets import STORE_BUCKETS as _STORE_BUCKETS

if TYPE_CHECKING:
    from opentelemetry.metrics import Counter, MeterProvider

__all__ = ["METER_NAME", "STORE_SECONDS_BUCKETS", "OpenTelemetryMetrics"]

#: The instrumentation scope the meter is created under.
METER_NAME = "jobcredits_plugin"

#: Bucket boundaries (seconds) suggested for the store latency histogram: the
#: Prometheus plugin's ``STORE_BUCKETS`` (why these bounds: see
#: ``jobcredits_plugin.contrib._buckets``). Suggested because the SDK's own
#: defaults (0, 5, 10, 25 ... 10000) were chosen for milliseconds and would put
#: every store call of a healthy system into one bucket. Advice only: a View
#: configured in the SDK takes precedence.
STORE_SECONDS_BUCKETS: tuple[float, ...] = _STORE_BUCKETS


def error_type(error: BaseException) -> str:
    """The ``error.type`` attribute for a failed store call.

    OpenTelemetry's semantic conventions ask for the exception's class name:
    it is low-cardinality (unlike the message, which may hold a host name or
    a key) and it is what an alert can group by.
    """
    return type(error).__qualname__


class OpenTelemetryMetrics:
    """A plugin that counts the ledger's events on OpenTelemetry instruments.

    :param meter_provider: the provider to take the meter from; ``None`` uses
        the global one (``opentelemetry.metrics.set_meter_provider``), which
        is a no-op until the application installs an SDK provider, so a
        library can register this plugin unconditionally.

    Attributes carry only bounded values (the scope, the tier, an error code,
    a store operation): never the account or the job id, which would make one
    time series per customer or per job. A ``None`` tier, and a scope that
    failed validation, are reported as ``""`` rather than omitted, so every
    point of an instrument has the same attribute keys, exactly as the
    Prometheus plugin's labels have.

    Counting only adds to instruments the SDK keeps in memory; the export
    happens on the SDK's own thread, so the hooks stay quick.
    """

    def __init__(self, meter_provider: MeterProvider | None = None) -> None:
        meter = metrics.get_meter(METER_NAME, __version__, meter_provider=meter_provider)
        self.meter = meter

        def counter(name: str, unit: str, description: str) -> Counter:
            return meter.create_counter(name, unit=unit, description=description)

        self.charges = counter(
            "jobcredits.charges",
            "{charge}",
            "Jobs charged: calls that opened a job and paid for it.",
        )
        self.reuses = counter(
            "jobcredits.reuses", "{call}", "Follow-up calls that rode on their job's charge."
        )
        self.refunds = counter(
            "jobcredits.refunds",
            "{refund}",
            "Charges given back (failed jobs, first calls whose lease ran out).",
        )
        self.expirations = counter(
            "jobcredits.expirations",
            "{job}",
            "Charged jobs whose window closed and whose record was removed.",
        )
        self.rejections = counter(
            "jobcredits.rejections",
            "{call}",
            "Calls refused before anything was recorded, by error code.",
        )
        self.credits_charged = counter(
            "jobcredits.credits.charged", "{credit}", "Credits of the jobs charged (their cost)."
        )
        self.credits_refunded = counter(
            "jobcredits.credits.refunded",
            "{credit}",
            "Credits of the charges given back (their cost).",
        )
        description = "Latency of one store operation, by operation."
        try:
            self.store_seconds = meter.create_histogram(
                "jobcredits.store",
                unit="s",
                description=description,
                explicit_bucket_boundaries_advisory=STORE_SECONDS_BUCKETS,
            )
        except TypeError:  # pragma: no cover - opentelemetry-api < 1.23 has no advisory
            self.store_seconds = meter.create_histogram(
                "jobcredits.store", unit="s", description=description
            )

    def __repr__(self) -> str:
        return f"OpenTelemetryMetrics(meter={METER_NAME!r})"

    @hookimpl
    def on_charge(self, record: JobRecord) -> None:
        self.charges.add(1, {"scope": record.scope, "tier": record.tier or ""})
        self.credits_charged.add(record.cost, {"scope": record.scope})

    @hookimpl
    def on_reuse(self, record: JobRecord) -> None:
        self.reuses.add(1, {"scope": record.scope})

    @hookimpl
    def on_refund(self, record: JobRecord) -> None:
        self.refunds.add(1, {"scope": record.scope})
        self.credits_refunded.add(record.cost, {"scope": record.scope})

    @hookimpl
    def on_expire(self, record: JobRecord) -> None:
        self.expirations.add(1, {"scope": record.scope})

    @hookimpl
    def on_reject(self, error: JobCreditsError, scope: str | None) -> None:
        # ``scope`` is None when it failed validation: a hostile value must not
        # become an attribute (one time series per garbage string).
        self.rejections.add(1, {"scope": scope or "", "code": error.code})

    @hookimpl
    def on_store_call(self, operation: str, seconds: float, error: BaseException | None) -> None:
        attributes = {"operation": operation}
        if error is not None:
            attributes["error.type"] = error_type(error)
        self.store_seconds.record(seconds, attributes)
