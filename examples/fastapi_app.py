"""The quickstart app of docs/fastapi.md: a paid "summarize" API, charged once per job.

Run it on the in-memory ledger (demo accounts get their credits at start)::

    uvicorn --factory examples.fastapi_app:create_app
    curl -X POST localhost:8000/v1/summarize -H "X-Api-Key: key-ada" \\
         -H "X-Job-Id: 3f2c9a4e-0d7b-4c55-9e0e-6b1f4f0d2a11" \\
         -H "Content-Type: application/json" -d '{"text": "..."}'

or on a SQLite file shared by several worker processes (grant the credits with
the CLI first: a shared store is loaded once, not by every worker at start)::

    export JOBCREDITS_URL=sqlite:///jobs.db
    jobcredits grant --url "$JOBCREDITS_URL" acct-ada 100
    uvicorn --workers 2 --factory examples.fastapi_app:create_app

A job is ``/v1/summarize`` then ``/v1/analyze`` with the same ``X-Job-Id``: the
first call answers ``X-Job-Charge: charged``, the second ``reused``.
``?fail=true`` makes a call answer 502, which refunds its charge.
``POST /v1/summarize/free`` does the same work as ``/v1/summarize``
uncharged: the baseline the system tests (``tests/system``) measure the
adapter's cost against.

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
``JobCredits(..., plugins=[...])`` registers; it needs the ``prometheus`` extra
(``pip install "jobcredits-plugin[prometheus]"``) and answers 404 without it.
Each worker process counts its own calls.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from pydantic import BaseModel

from jobcredits_plugin import Charge, Ledger, current_charge
from jobcredits_plugin.fastapi import JobCredits, charge_credit, charges_credit

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


def account_from_api_key(request: Request) -> str | None:
    """The account that pays for this request; None answers 401."""
    return API_KEYS.get(request.headers.get("X-Api-Key", ""))


class Text(BaseModel):
    text: str


def create_app(url: str | None = None) -> FastAPI:
    """The app factory (``uvicorn --factory examples.fastapi_app:create_app``).

    ``url`` (default: the ``JOBCREDITS_URL`` environment variable, then
    ``memory://``) names the ledger's store.
    """
    url = url or os.environ.get("JOBCREDITS_URL", "memory://")
    lease = float(os.environ.get("JOBCREDITS_LEASE", "60"))
    ledger = Ledger.from_url(url, balances=True, lease=lease)
    if url.startswith("memory://"):
        # A fresh in-memory ledger per process: give the demo accounts their
        # credits. A shared store is granted once, with `jobcredits grant`.
        for account, credits in DEMO_CREDITS.items():
            ledger.grant(account, credits)
    # Stands in for the upstream model's latency (the real-server test sets it
    # so that the calls of a job overlap across the worker processes).
    latency = float(os.environ.get("SUMMARIZE_LATENCY", "0"))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await ledger.aclose()

    app = FastAPI(title="Summaries", lifespan=lifespan)
    # The app's own metrics registry (not prometheus_client's global one), so
    # that every app the factory builds counts its own calls.
    registry = CollectorRegistry() if PrometheusMetrics is not None else None
    JobCredits(
        ledger,
        account=account_from_api_key,
        fail_open=os.environ.get("JOBCREDITS_FAIL_OPEN", "") == "1",
        # Hook plugins registered on the ledger: objects as here, or import
        # strings ("myapp.audit:AuditTrail"; a class is instantiated).
        plugins=[PrometheusMetrics(registry=registry)] if registry else [],
    ).install(app)

    async def summary(text: str, charge: Charge | None, fail: bool) -> dict[str, Any]:
        """The work itself, paid or not."""
        if fail:
            # The upstream model failed: a 5xx answer refunds the job's charge,
            # so the client's retry with the same job id is charged again.
            raise HTTPException(502, "the upstream model failed")
        await asyncio.sleep(latency)
        return {
            "summary": text[:80],
            "charge": charge.outcome if charge else None,  # None: failed open
            "credits": charge.balance if charge else None,
        }

    @app.post("/v1/summarize")
    async def summarize(
        body: Text,
        charge: Annotated[Charge | None, Depends(charge_credit(scope="summarize"))],
        fail: bool = False,
    ) -> dict[str, Any]:
        """The job's first step, charged through the dependency."""
        return await summary(body.text, charge, fail)

    @app.post("/v1/summarize/free", include_in_schema=False)
    async def summarize_free(body: Text, fail: bool = False) -> dict[str, Any]:
        """The same work, uncharged: the baseline for measuring the adapter."""
        return await summary(body.text, None, fail)

    @app.post("/v1/analyze")
    @charges_credit(scope="summarize")
    def analyze(body: Text, fail: bool = False) -> dict[str, Any]:
        """The job's next step, charged through the decorator (a plain ``def``:
        FastAPI runs it in its threadpool)."""
        if fail:
            raise HTTPException(502, "the upstream model failed")
        charge = current_charge()
        return {
            "words": len(body.text.split()),
            "charge": charge.outcome if charge else None,
        }

    @app.get("/v1/credits")
    async def credits(request: Request) -> dict[str, Any]:
        """The caller's balance; free, so no charge here."""
        account = account_from_api_key(request)
        if account is None:
            raise HTTPException(401, "unknown API key")
        return {"account": account, "credits": await ledger.abalance(account)}

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True, "pid": os.getpid()}

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        """The ledger's counters, in Prometheus' text format. Free, and open
        to anyone: a real deployment serves it where only Prometheus can
        reach it."""
        if registry is None:
            return Response(
                'metrics need prometheus_client: pip install "jobcredits-plugin[prometheus]"\n',
                status_code=404,
                media_type="text/plain",
            )
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
