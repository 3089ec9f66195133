"""The quickstart app of docs/flask.md: a paid "summarize" API, charged once per job.

Run it on the in-memory ledger (demo accounts get their credits at start)::

    flask --app examples.flask_app run
    curl -X POST localhost:5000/v1/summarize -H "X-Api-Key: key-ada" \\
         -H "X-Job-Id: 3f2c9a4e-0d7b-4c55-9e0e-6b1f4f0d2a11" -d '{"text": "..."}'

or on a SQLite file shared by several worker processes (grant the credits with
the CLI first: a shared store is loaded once, not by every worker at start)::

    export JOBCREDITS_URL=sqlite:///jobs.db
    flask --app examples.flask_app jobcredits grant acct-ada 100
    gunicorn -w 2 'examples.flask_app:create_app()'

The first call of a job answers ``X-Job-Charge: charged``, its follow-ups
``reused``; ``?fail=1`` makes the call answer 502, which refunds its charge.
``POST /v1/summarize/free`` does the same work uncharged: the baseline the
system tests (``tests/system``) measure the decorator's cost against.
``GET /healthz`` answers the serving process's pid, for free.

Environment variables, besides ``JOBCREDITS_URL``:

``EXAMPLE_API_KEYS``
    more API keys, as ``key-x=acct-x,key-y=acct-y`` (added to the demo keys
    ``key-ada`` and ``key-bob``); the system tests' load runs on such accounts.
``JOBCREDITS_LEASE``
    seconds a first call may run before it is presumed dead (default 60); the
    system tests use a few seconds, so that a killed worker's charges are
    refunded soon.
``JOBCREDITS_FAIL_OPEN``
    ``1`` lets calls through *uncharged* while the store is unreachable
    (logged) instead of answering 503; the system tests' Redis outage runs
    both ways.
``SUMMARIZE_LATENCY``
    seconds each summary sleeps, standing in for the upstream model.

``GET /metrics`` serves the ledger's Prometheus counters
(``jobcredits_charges_total`` and friends), from the
:class:`~jobcredits_plugin.contrib.prometheus.PrometheusMetrics` plugin that
``JOBCREDITS_PLUGINS`` registers; it needs the ``prometheus`` extra
(``pip install "jobcredits-plugin[prometheus]"``) and answers 404 without it.
Each worker process counts its own calls: see the Prometheus section of the
hooks guide for one set of counters across the workers.
"""

from __future__ import annotations

import os
import time
from typing import Any

from flask import Flask, Request, Response, request

from jobcredits_plugin import Charge
from jobcredits_plugin.flask import JobCredits, charges_credit, get_ledger, job_credit

try:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    from jobcredits_plugin.contrib.prometheus import PrometheusMetrics
except ImportError:  # the "prometheus" extra is not installed: no /metrics
    PrometheusMetrics = None  # type: ignore[assignment,misc]

#: API keys and the accounts they belong to. A real app looks the key up in its
#: user database; what matters is that the account comes from authentication,
#: never from a header in which the client could name someone else's account.
API_KEYS = {"key-ada": "acct-ada", "key-bob": "acct-bob"}


def _more_api_keys(spec: str) -> dict[str, str]:
    """``key-x=acct-x,key-y=acct-y`` -> ``{"key-x": "acct-x", "key-y": "acct-y"}``."""
    pairs = (item.partition("=") for item in spec.split(",") if item.strip())
    return {key.strip(): account.strip() for key, _, account in pairs}


API_KEYS.update(_more_api_keys(os.environ.get("EXAMPLE_API_KEYS", "")))

#: Credits the demo accounts start with on the in-memory ledger.
DEMO_CREDITS = {"acct-ada": 100, "acct-bob": 3}


def account_from_api_key(req: Request) -> str | None:
    """The account that pays for this request; None answers 401."""
    return API_KEYS.get(req.headers.get("X-Api-Key", ""))


def create_app(url: str | None = None) -> Flask:
    """The app factory (``flask --app examples.flask_app`` and gunicorn call it).

    ``url`` (default: the ``JOBCREDITS_URL`` environment variable, then
    ``memory://``) names the ledger's store.
    """
    app = Flask(__name__)
    # The app's own metrics registry (not prometheus_client's global one), so
    # that every app the factory builds counts its own calls.
    registry = CollectorRegistry() if PrometheusMetrics is not None else None
    app.config.update(
        JOBCREDITS_URL=url or os.environ.get("JOBCREDITS_URL", "memory://"),
        JOBCREDITS_BALANCES=True,
        JOBCREDITS_LEASE=float(os.environ.get("JOBCREDITS_LEASE", "60")),
        JOBCREDITS_FAIL_OPEN=os.environ.get("JOBCREDITS_FAIL_OPEN", "") == "1",
        JOBCREDITS_ACCOUNT=account_from_api_key,
        # Hook plugins for the ledger JobCredits builds: objects as here, or
        # import strings ("myapp.audit:AuditTrail"; a class is instantiated).
        JOBCREDITS_PLUGINS=[PrometheusMetrics(registry=registry)] if registry else [],
    )
    JobCredits(app)
    # Stands in for the upstream model's latency (the real-server test sets it
    # so that the calls of a job overlap across the worker processes).
    latency = float(os.environ.get("SUMMARIZE_LATENCY", "0"))
    if app.config["JOBCREDITS_URL"].startswith("memory://"):
        # A fresh in-memory ledger per process: give the demo accounts their
        # credits. A shared store is granted once, with `flask jobcredits grant`.
        ledger = get_ledger(app)
        for account, credits in DEMO_CREDITS.items():
            ledger.grant(account, credits)

    def summary(charge: Charge | None) -> Any:
        """The work itself, paid or not."""
        if request.args.get("fail"):
            # The upstream model failed: a 5xx answer refunds the job's charge,
            # so the client's retry with the same job id is charged again.
            return {"error": "the upstream model failed"}, 502
        time.sleep(latency)
        text = str((request.get_json(silent=True) or {}).get("text", ""))
        return {
            "summary": text[:80],
            "charge": charge.outcome if charge else None,
            "tier": charge.record.tier if charge else None,
            "credits_left": charge.balance if charge else None,
        }

    @app.post("/v1/summarize")
    @charges_credit(cost=1, scope="summarize", tier=lambda r: r.args.get("tier", "standard"))
    def summarize() -> Any:
        # job_credit() is None only when the store is down and fail-open is on.
        return summary(job_credit())

    @app.post("/v1/summarize/free")
    def summarize_free() -> Any:
        """The same work, uncharged: the baseline for measuring the decorator."""
        return summary(None)

    @app.get("/healthz")
    def healthz() -> Any:
        return {"ok": True, "pid": os.getpid()}

    @app.get("/metrics")
    def metrics() -> Response:
        """The ledger's counters, in Prometheus' text format. Free, and open
        to anyone: a real deployment serves it where only Prometheus can
        reach it."""
        if registry is None:
            return Response(
                'metrics need prometheus_client: pip install "jobcredits-plugin[prometheus]"\n',
                status=404,
                mimetype="text/plain",
            )
        return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

    return app
