"""Tests of a FastAPI app's charged endpoints, with the jobcredits pytest fixtures.

Run them with ``pytest``: the fixtures come with the package (its pytest
plugin loads by itself).
"""

from typing import Annotated

import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from jobcredits_plugin import Charge, Ledger
from jobcredits_plugin.fastapi import JobCredits, charge_credit

API_KEYS = {"key-ada": "acct-ada"}


def account_from_api_key(request: Request):
    return API_KEYS.get(request.headers.get("X-Api-Key", ""))


def create_app(ledger: Ledger) -> FastAPI:
    """Your app factory; production passes Ledger.from_url(...)."""
    app = FastAPI()
    JobCredits(ledger, account=account_from_api_key).install(app)

    @app.post("/summarize")
    async def summarize(
        charge: Annotated[Charge, Depends(charge_credit(scope="summarize"))],
        fail: bool = False,
    ):
        if fail:
            return JSONResponse({"error": "the upstream model failed"}, status_code=502)
        return {"charge": charge.outcome}

    return app


# -- the tests -------------------------------------------------------------------------


@pytest.fixture
def client(jobcredits_ledger):
    with TestClient(create_app(jobcredits_ledger)) as client:  # the fixture's ledger
        yield client


def call(client, job_id, query=""):
    return client.post(f"/summarize{query}", headers={"X-Api-Key": "key-ada", "X-Job-Id": job_id})


@pytest.mark.jobcredits(balances=True)
def test_a_job_is_charged_once(client, jobcredits_ledger, jobcredits_events):
    jobcredits_ledger.grant("acct-ada", 1)
    assert call(client, "job-1").headers["X-Job-Charge"] == "charged"
    assert call(client, "job-1").headers["X-Job-Charge"] == "reused"
    assert call(client, "job-2").status_code == 402  # no credit left for a new job
    assert jobcredits_events.kinds() == ["charge", "reuse"]
    assert jobcredits_ledger.balance("acct-ada") == 0


def test_a_failed_call_is_refunded(client, jobcredits_events):
    assert call(client, "job-1", "?fail=1").headers["X-Job-Charge"] == "refunded"
    assert call(client, "job-1").headers["X-Job-Charge"] == "charged"
    assert jobcredits_events.kinds() == ["charge", "refund", "charge"]


def test_the_window_closes_after_an_hour(client, jobcredits_clock):
    call(client, "job-1")
    jobcredits_clock.advance(3601)
    assert call(client, "job-1").headers["X-Job-Charge"] == "charged"
