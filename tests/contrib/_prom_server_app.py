"""The WSGI app the Prometheus multiprocess test runs under gunicorn.

Each gunicorn worker imports this module (no ``--preload``), so each builds its
own ledger on the shared SQLite file and its own ``PrometheusMetrics``; with
``PROMETHEUS_MULTIPROC_DIR`` set, every worker's counters land in files of
their own there, and ``/metrics`` adds them up across the workers.

``POST /v1/run`` is charged per job (scope ``run``, account from ``X-Api-Key``);
``?fail=1`` answers 500, which refunds the charge. ``GET /metrics`` is the
documented multiprocess exposition view.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, make_wsgi_app, multiprocess

from jobcredits_plugin import Ledger
from jobcredits_plugin.contrib.prometheus import PrometheusMetrics
from jobcredits_plugin.wsgi import JobCreditsMiddleware

Environ = dict[str, Any]

ledger = Ledger.from_url(os.environ["JOBCREDITS_URL"], plugins=[PrometheusMetrics()])


def run(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
    # Long enough that concurrent requests cannot all be served by one worker.
    time.sleep(0.02)
    if "fail=1" in environ.get("QUERY_STRING", ""):
        start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
        return [b"failed"]
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


charged = JobCreditsMiddleware(
    run,
    ledger,
    routes={"POST /v1/run": {"scope": "run"}},
    account=lambda environ: environ.get("HTTP_X_API_KEY"),
)

# The exposition view of multiprocess mode: a registry of its own holding only
# the collector that reads every process's files (never the default REGISTRY,
# which holds this one process's values).
metrics_registry = CollectorRegistry()
multiprocess.MultiProcessCollector(metrics_registry)
metrics_view = make_wsgi_app(metrics_registry)


def app(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ.get("PATH_INFO") == "/metrics":
        return metrics_view(environ, start_response)
    return charged(environ, start_response)
