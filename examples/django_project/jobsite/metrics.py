"""The ledger's Prometheus counters, served at ``/metrics``.

``settings.JOBCREDITS["PLUGINS"]`` names :data:`prometheus` by its import
string, so the ledger built from the settings registers it. It needs the
``prometheus`` extra (``pip install "jobcredits-plugin[prometheus]"``); without
it the settings name no plugin and ``/metrics`` answers 404.

Each worker process counts its own calls; see the Prometheus section of the
hooks guide for one set of counters across the workers.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET

try:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    from jobcredits_plugin.contrib.prometheus import PrometheusMetrics
except ImportError:  # the "prometheus" extra is not installed
    registry = None
    prometheus = None
else:
    #: The project's own metrics registry (not prometheus_client's global one).
    registry = CollectorRegistry()
    #: The plugin, an object: the settings name it "jobsite.metrics:prometheus".
    #: (A class named there would be instantiated, once per ledger.)
    prometheus = PrometheusMetrics(registry=registry)


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Free, and open to anyone: a real deployment serves it where only
    Prometheus can reach it."""
    if registry is None:
        return HttpResponse(
            'metrics need prometheus_client: pip install "jobcredits-plugin[prometheus]"\n',
            status=404,
            content_type="text/plain",
        )
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
