"""Prometheus metrics for a ledger: a plugin that counts its hooks.

::

    from jobcredits_plugin import Ledger
    from jobcredits_plugin.contrib.prometheus import PrometheusMetrics

    ledger = Ledger.from_url("sqlite:///jobs.db", plugins=[PrometheusMetrics()])

The ledger fires each event hook exactly once per change across every process
sharing the store, so these counters, summed over the processes (Prometheus
does it with ``sum()``, or prometheus_client's multiprocess mode within one
host), count every charge, reuse, refund and expiry exactly once.

Only bounded labels are used: ``scope`` (chosen by the app), ``tier``,
``code`` (a fixed set) and ``operation`` (a fixed set). The account and the job
id are never labels: every value of a label is a time series of its own, and
one series per customer or per job would grow without bound.

prometheus_client is imported here and nowhere else in the package, so the
core keeps working without it (extra ``prometheus``).
"""

from __future__ import annotations

import threading
import weakref

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
except ImportError as exc:
    raise ImportError(
        "jobcredits_plugin.contrib.prometheus needs prometheus_client: "
        'pip install "jobcredits-plugin[prometheus]"'
    ) from exc

from .._errors import JobCreditsError
from .._records import JobRecord
from ..hookspecs import hookimpl
from ._buckets import STORE_BUCKETS as _STORE_BUCKETS

__all__ = ["STORE_BUCKETS", "PrometheusMetrics"]

#: Upper bounds (seconds) of the ``store_seconds`` histogram buckets, 0.1 ms
#: to 5 s: one list shared with the OpenTelemetry plugin. Why these bounds is
#: written once, in ``jobcredits_plugin.contrib._buckets`` (and for readers in
#: the Prometheus page of the docs).
STORE_BUCKETS: tuple[float, ...] = _STORE_BUCKETS


class _Collectors:
    """The metrics of one namespace in one registry, and their labelled children.

    Shared by every :class:`PrometheusMetrics` built on the same registry and
    namespace: a registry refuses a second collector with the same name
    ("Duplicated timeseries"), and an app that builds one plugin per ledger
    (or a test suite that builds hundreds) must not have to thread one
    instance through by hand.

    The children are cached because ``labels()`` validates and converts its
    arguments and takes a lock on every call, which costs more than the
    increment itself; a plain dict read is all the request path pays once a
    label set has been seen.
    """

    def __init__(self, registry: CollectorRegistry, namespace: str) -> None:
        # What registered so far, to take back should a later name be taken.
        created: list[Counter | Histogram] = []

        def counter(name: str, doc: str, labels: tuple[str, ...]) -> Counter:
            made = Counter(name, doc, labels, namespace=namespace, registry=registry)
            created.append(made)
            return made

        try:
            self.charges = counter(
                "charges", "Jobs charged (first calls that paid).", ("scope", "tier")
            )
            self.reuses = counter(
                "reuses", "Follow-up calls that rode on a job's charge.", ("scope",)
            )
            self.refunds = counter(
                "refunds", "Charges given back (failures, lapsed leases).", ("scope",)
            )
            self.expirations = counter(
                "expirations", "Charged jobs removed after their window closed.", ("scope",)
            )
            self.rejections = counter(
                "rejections",
                "Calls refused with nothing recorded, by error code.",
                ("scope", "code"),
            )
            self.credits_charged = counter(
                "credits_charged", "Credits charged (the cost of each charged job).", ("scope",)
            )
            self.credits_refunded = counter(
                "credits_refunded", "Credits of the charges given back.", ("scope",)
            )
            self.store_seconds = Histogram(
                "store_seconds",
                "Duration of one store operation, failed ones included.",
                ("operation",),
                namespace=namespace,
                registry=registry,
                buckets=STORE_BUCKETS,
            )
        except ValueError as exc:
            # Something else already owns one of these names: undo the half
            # registration, so that fixing the namespace and retrying works.
            for collector in created:
                registry.unregister(collector)
            raise ValueError(
                f"the registry already has metrics named like jobcredits' in namespace "
                f"{namespace!r} ({exc}); pass PrometheusMetrics(namespace=...) another one"
            ) from exc
        self.charge_children: dict[tuple[str, str | None], tuple[Counter, Counter]] = {}
        self.scope_children: dict[tuple[Counter, str], Counter] = {}
        self.rejection_children: dict[tuple[str | None, str], Counter] = {}
        self.store_children: dict[str, Histogram] = {}


#: (registry -> namespace -> collectors). Weak on the registry, so a test's
#: throw-away ``CollectorRegistry()`` and its metrics go away with it.
_SHARED: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, _Collectors]] = (
    weakref.WeakKeyDictionary()
)
_SHARED_LOCK = threading.Lock()


def _collectors(registry: CollectorRegistry, namespace: str) -> _Collectors:
    with _SHARED_LOCK:
        per_namespace = _SHARED.setdefault(registry, {})
        found = per_namespace.get(namespace)
        if found is None:
            found = per_namespace[namespace] = _Collectors(registry, namespace)
        return found


class PrometheusMetrics:
    """A plugin that keeps Prometheus counters of the ledger's events.

    :param registry: where the metrics are registered; ``None`` means
        prometheus_client's default ``REGISTRY`` (what ``start_http_server``
        and ``make_wsgi_app`` serve).
    :param namespace: the prefix of every metric name
        (``jobcredits_charges_total``, ...).

    Every instance built on the same registry and namespace shares the same
    metrics, so building one per ledger never fails with "Duplicated
    timeseries", and two ledgers feed the same counters. Register one instance
    per ledger: two on the same ledger would count each event twice.

    Metrics (``<ns>`` is the namespace):

    - ``<ns>_charges_total{scope,tier}``, ``<ns>_reuses_total{scope}``,
      ``<ns>_refunds_total{scope}``, ``<ns>_expirations_total{scope}``: the
      four event hooks, one increment per event (``tier`` None is ``""``);
    - ``<ns>_credits_charged_total{scope}``, ``<ns>_credits_refunded_total{scope}``:
      the ``cost`` of each charged and refunded job;
    - ``<ns>_rejections_total{scope,code}``: refused calls by ``error.code``
      (``scope`` is ``""`` when the scope itself was invalid);
    - ``<ns>_store_seconds{operation}``: a histogram of store call durations
      (buckets :data:`~jobcredits_plugin.contrib.prometheus.STORE_BUCKETS`).

    The plugin keeps the labelled children it has used; do not ``clear()``
    or ``remove()`` label sets of these metrics, nor unregister them (the
    plugin would go on counting into the detached ones).
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, namespace: str = "jobcredits"
    ) -> None:
        self._registry = REGISTRY if registry is None else registry
        self._namespace = namespace
        self._m = _collectors(self._registry, namespace)

    def __repr__(self) -> str:
        return f"PrometheusMetrics(namespace={self._namespace!r})"

    # -- the metrics, for users who want to read or export them -----------------

    @property
    def registry(self) -> CollectorRegistry:
        return self._registry

    @property
    def namespace(self) -> str:
        return self._namespace

    @property
    def charges(self) -> Counter:
        return self._m.charges

    @property
    def reuses(self) -> Counter:
        return self._m.reuses

    @property
    def refunds(self) -> Counter:
        return self._m.refunds

    @property
    def expirations(self) -> Counter:
        return self._m.expirations

    @property
    def rejections(self) -> Counter:
        return self._m.rejections

    @property
    def credits_charged(self) -> Counter:
        return self._m.credits_charged

    @property
    def credits_refunded(self) -> Counter:
        return self._m.credits_refunded

    @property
    def store_seconds(self) -> Histogram:
        return self._m.store_seconds

    # -- label lookups, cached (see _Collectors) ---------------------------------

    def _scoped(self, metric: Counter, scope: str) -> Counter:
        children = self._m.scope_children
        child = children.get((metric, scope))
        if child is None:
            # Two threads may both get here; labels() hands both the same child.
            child = children[(metric, scope)] = metric.labels(scope)
        return child

    # -- the hooks -----------------------------------------------------------------

    @hookimpl
    def on_charge(self, record: JobRecord) -> None:
        m = self._m
        key = (record.scope, record.tier)
        pair = m.charge_children.get(key)
        if pair is None:
            pair = m.charge_children[key] = (
                m.charges.labels(record.scope, record.tier or ""),
                m.credits_charged.labels(record.scope),
            )
        pair[0].inc()
        pair[1].inc(record.cost)

    @hookimpl
    def on_reuse(self, record: JobRecord) -> None:
        self._scoped(self._m.reuses, record.scope).inc()

    @hookimpl
    def on_refund(self, record: JobRecord) -> None:
        m = self._m
        self._scoped(m.refunds, record.scope).inc()
        self._scoped(m.credits_refunded, record.scope).inc(record.cost)

    @hookimpl
    def on_expire(self, record: JobRecord) -> None:
        self._scoped(self._m.expirations, record.scope).inc()

    @hookimpl
    def on_reject(self, error: JobCreditsError, scope: str | None) -> None:
        # Only the validated scope reaches this hook (None otherwise), so a
        # client cannot mint label values by sending garbage.
        m = self._m
        key = (scope, error.code)
        child = m.rejection_children.get(key)
        if child is None:
            child = m.rejection_children[key] = m.rejections.labels(scope or "", error.code)
        child.inc()

    @hookimpl
    def on_store_call(self, operation: str, seconds: float) -> None:
        m = self._m
        child = m.store_children.get(operation)
        if child is None:
            child = m.store_children[operation] = m.store_seconds.labels(operation)
        child.observe(seconds)
