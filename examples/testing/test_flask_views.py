"""Tests of a Flask app's charged views, with the jobcredits pytest fixtures.

Run them with ``pytest``: the fixtures come with the package (its pytest
plugin loads by itself).
"""

import pytest
from flask import Flask, request

from jobcredits_plugin.flask import JobCredits, charges_credit, get_state, job_credit

API_KEYS = {"key-ada": "acct-ada"}


def create_app(test_config=None):
    """Your app factory, as in production (the ledger from JOBCREDITS_URL)."""
    app = Flask(__name__)
    app.config.update(
        JOBCREDITS_URL="memory://",
        JOBCREDITS_BALANCES=True,
        JOBCREDITS_ACCOUNT=lambda req: API_KEYS.get(req.headers.get("X-Api-Key", "")),
    )
    app.config.update(test_config or {})
    JobCredits(app)

    @app.post("/summarize")
    @charges_credit(scope="summarize")
    def summarize():
        if request.args.get("fail"):
            return {"error": "the upstream model failed"}, 502
        return {"charge": job_credit().outcome}

    return app


# -- the tests -------------------------------------------------------------------------


@pytest.fixture
def client(monkeypatch, jobcredits_ledger):
    app = create_app({"TESTING": True})
    monkeypatch.setattr(get_state(app), "ledger", jobcredits_ledger)  # the fixture's ledger
    return app.test_client()


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
