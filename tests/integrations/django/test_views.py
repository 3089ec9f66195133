"""The Django decorator on sync function views, through the settings ledger.

What it shares with every adapter (DESIGN §2-3 at the web layer: charged
once, refunds, problem answers, streamed bodies) is the adapter contract,
tests/adapters, which runs on Django's sync and async function views; here
is what is Django's own: the settings (ledger, balances, header, on_missing,
fail_open, max_uses), request.job_credit, the lease and the window on the
settings' ledger, two calls really overlapping, the decorator's checks.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

pytest.importorskip("django")

from django.http import StreamingHttpResponse
from django.test import Client, RequestFactory, override_settings

from jobcredits_plugin import Ledger
from jobcredits_plugin.django import charges_credit, get_ledger
from jobcredits_plugin.testing import make_ledger

from . import views


def new_job() -> str:
    return str(uuid.uuid4())


def post(
    path: str, job: str | None = None, account: str | None = "acct", client: Client | None = None
) -> Any:
    headers = {}
    if job is not None:
        headers["X-Job-Id"] = job
    if account is not None:
        headers["X-Account"] = account
    return (client or Client()).post(path, headers=headers)


def problem(response: Any) -> dict[str, Any]:
    assert response["Content-Type"] == "application/problem+json"
    return json.loads(response.content)


def test_first_call_charges_and_follow_up_reuses(dj_ledger: Ledger) -> None:
    """The first call of a job is charged; the next one with the same id rides free."""
    dj_ledger.grant("acct", 5)
    job = new_job()
    first = post("/charged", job)
    second = post("/charged", job)
    assert first.status_code == second.status_code == 200
    assert first["X-Job-Charge"] == "charged"
    assert second["X-Job-Charge"] == "reused"
    assert json.loads(second.content)["uses"] == 2
    assert first["X-Credits-Remaining"] == second["X-Credits-Remaining"] == "4"
    assert first["X-Job-Id"] == job
    assert dj_ledger.balance("acct") == 4
    record = dj_ledger.lookup("acct", job)
    assert record is not None
    assert (record.state, record.uses) == ("charged", 2)


def test_view_sees_the_charge_on_the_request_and_as_current_charge(dj_ledger: Ledger) -> None:
    """request.job_credit is the Charge, the same object current_charge() returns."""
    dj_ledger.grant("acct", 1)
    body = json.loads(post("/charged", new_job()).content)  # the view asserts the identity
    assert body == {
        "outcome": "charged",
        "balance": 0,
        "uses": 1,
        "scope": "default",
        "cost": 1,
        "tier": None,
        "backend": None,
    }


def test_no_balance_header_when_balances_are_off(jc_settings: Any) -> None:
    """With balances off only X-Job-Charge and the job id come back."""
    jc_settings(BALANCES=False)
    response = post("/charged", "job-1")
    assert response["X-Job-Charge"] == "charged"
    assert "X-Credits-Remaining" not in response


def test_cost_scope_tier_and_backend_are_recorded(dj_ledger: Ledger) -> None:
    """cost/scope/tier are values, backend a callable of the request; all land on the record."""
    dj_ledger.grant("acct", 5)
    job = new_job()
    response = post("/priced?backend=whisper", job)
    assert response.status_code == 200
    assert response["X-Credits-Remaining"] == "3"
    record = dj_ledger.lookup("acct", job, scope="summarize")
    assert record is not None
    assert (record.cost, record.tier, record.backend) == (2, "gold", "whisper")
    assert dj_ledger.lookup("acct", job) is None  # another scope, another job


def test_pending_first_call_answers_409_with_retry_after(jc_settings: Any) -> None:
    """While the job's first call is pending, another call gets 409 and Retry-After = lease."""
    jc_settings(LEASE=5)
    get_ledger().charge("acct", "job-1")  # a first call still running
    response = post("/charged", "job-1")
    assert response.status_code == 409
    assert response["Retry-After"] == "5"
    assert problem(response)["code"] == "job_in_progress"
    assert "X-Job-Charge" not in response


def test_duplicate_call_during_the_first_is_refused(dj_ledger: Ledger) -> None:
    """A real overlap: the view's own first call is pending when a duplicate arrives."""
    dj_ledger.grant("acct", 5)
    job = new_job()
    response = post("/nested", job)
    assert response.status_code == 200
    assert json.loads(response.content) == {
        "inner_status": 409,
        "inner_retry_after": "5",  # the lease left (60 s), capped at 5
        "inner_code": "job_in_progress",
    }
    assert response["X-Job-Charge"] == "charged"
    assert dj_ledger.balance("acct") == 4


def test_lease_over_the_stale_charge_is_refunded_and_taken_over() -> None:
    """After the lease, the dead first call's charge is refunded and the call charges anew."""
    job = new_job()
    views.CLOCKED.charge("lease-acct", job)  # a worker that died mid-call
    assert post("/clocked", job, account="lease-acct").status_code == 409
    views.CLOCK.advance(61)
    response = post("/clocked", job, account="lease-acct")
    assert response.status_code == 200
    assert response["X-Job-Charge"] == "charged"
    kinds = [e.kind for e in views.CLOCKED_EVENTS.events if e.record.job_id == job]
    assert kinds == ["charge", "refund", "charge"]


def test_window_closes_after_ttl_and_the_job_is_charged_again() -> None:
    """Follow-ups are free for ttl seconds from the charge; afterwards a new charge."""
    job = new_job()
    assert post("/clocked", job, account="ttl-acct")["X-Job-Charge"] == "charged"
    views.CLOCK.advance(3599)
    assert post("/clocked", job, account="ttl-acct")["X-Job-Charge"] == "reused"
    views.CLOCK.advance(2)
    assert post("/clocked", job, account="ttl-acct")["X-Job-Charge"] == "charged"


def test_job_exhausted_after_max_uses(jc_settings: Any) -> None:
    """MAX_USES counts the charging call; the next call gets 409 job_exhausted, no Retry-After."""
    jc_settings(MAX_USES=2)
    assert post("/charged", "job-1").status_code == 200
    assert post("/charged", "job-1").status_code == 200
    response = post("/charged", "job-1")
    assert response.status_code == 409
    assert problem(response)["code"] == "job_exhausted"
    assert "Retry-After" not in response


def test_decorator_account_overrides_the_settings_one(dj_ledger: Ledger) -> None:
    """account= on the decorator replaces JOBCREDITS['ACCOUNT']."""
    dj_ledger.grant("from-query", 1)
    response = Client().post("/query-account?acct=from-query", headers={"X-Job-Id": "j"})
    assert response.status_code == 200
    assert dj_ledger.lookup("from-query", "j") is not None


def test_missing_job_id_rejected_by_settings(jc_settings: Any) -> None:
    """JOBCREDITS['ON_MISSING'] = "reject" applies to every decorated view."""
    jc_settings(ON_MISSING="reject")
    assert problem(post("/charged", None))["code"] == "missing_job_id"
    assert post("/charged", "job-1").status_code == 200


def test_fail_open_from_settings(jc_settings: Any) -> None:
    """JOBCREDITS['FAIL_OPEN'] applies when the decorator does not say; off means 503."""
    jc_settings(FAIL_OPEN=True)
    get_ledger().close()  # the settings store is now unreachable
    assert post("/charged", "job-1").status_code == 200
    jc_settings(FAIL_OPEN=False)
    get_ledger().close()
    assert post("/charged", "job-1").status_code == 503


@pytest.mark.parametrize(("kind", "status"), [("suspicious", 400)])
def test_django_4xx_exceptions_confirm_the_charge(
    dj_ledger: Ledger, kind: str, status: int
) -> None:
    """SuspiciousOperation: served, so confirmed (Http404, PermissionDenied and
    BadRequest: the adapter contract, tests/adapters)."""
    dj_ledger.grant("acct", 1)
    job = new_job()
    response = post(f"/charged?raise={kind}", job)
    assert response.status_code == status
    record = dj_ledger.lookup("acct", job)
    assert record is not None
    assert record.state == "charged"
    assert dj_ledger.balance("acct") == 0


def _streaming_view(ledger: Ledger, body: Any) -> Any:
    @charges_credit(ledger=ledger, account=lambda request: "acct")
    def view(request: Any) -> StreamingHttpResponse:
        return StreamingHttpResponse(body())

    return view


def test_streaming_content_closed_unread_is_refunded() -> None:
    """Content the server closes without reading (the client went away
    first) served nothing: refunded."""
    ledger = make_ledger(balances=True)
    ledger.grant("acct", 3)
    request = RequestFactory().post("/", headers={"X-Job-Id": "j"})
    response = _streaming_view(ledger, lambda: iter([b"never read"]))(request)
    response.close()
    assert ledger.lookup("acct", "j") is None
    assert ledger.balance("acct") == 3


def test_custom_job_header_per_view(dj_ledger: Ledger) -> None:
    """header= reads (and echoes) another header; X-Job-Id is then ignored."""
    dj_ledger.grant("acct", 1)
    response = Client().post(
        "/recap", headers={"X-Account": "acct", "X-Recap-Job-Id": "r-1", "X-Job-Id": "other"}
    )
    assert response["X-Recap-Job-Id"] == "r-1"
    assert "X-Job-Id" not in response
    assert dj_ledger.lookup("acct", "r-1") is not None


def test_job_header_from_settings(jc_settings: Any) -> None:
    """JOBCREDITS['JOB_HEADER'] renames the header for every view."""
    jc_settings(JOB_HEADER="X-Recap-Job-Id")
    response = Client().post("/charged", headers={"X-Account": "acct", "X-Recap-Job-Id": "r-2"})
    assert response["X-Recap-Job-Id"] == "r-2"
    assert get_ledger().lookup("acct", "r-2") is not None


def test_ledger_override_charges_that_ledger(dj_ledger: Ledger) -> None:
    """ledger= on the decorator charges that ledger, not get_ledger()'s."""
    job = new_job()
    response = post("/other", job)
    assert response.status_code == 200
    assert views.OTHER.lookup("acct", job) is not None
    assert dj_ledger.lookup("acct", job) is None


def test_settings_change_gives_a_fresh_ledger(jc_settings: Any) -> None:
    """override_settings(JOBCREDITS=...) rebuilds the ledger views charge."""
    jc_settings()
    post("/charged", "job-1")
    with override_settings(
        JOBCREDITS={"ACCOUNT": "tests.integrations.django.views.account_from_header"}
    ):
        assert post("/charged", "job-1")["X-Job-Charge"] == "charged"
    assert post("/charged", "job-1")["X-Job-Charge"] == "charged"  # the first ledger was closed


def test_decorating_a_method_directly_says_to_use_method_decorator() -> None:
    """A method decorated without method_decorator gets a TypeError naming the fix."""
    from jobcredits_plugin.django import charges_credit

    class Wrong:
        @charges_credit()
        def post(self, request: Any) -> None:
            raise AssertionError("not reached")

    with pytest.raises(TypeError, match="method_decorator"):
        Wrong().post(object())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scope": "no spaces"}, "scope"),
        ({"cost": -1}, "cost"),
        ({"on_missing": "ignore"}, "on_missing"),
        ({"header": "X Job"}, "header"),
        ({"ledger": "memory://"}, "Ledger"),
        ({"account": "user.pk"}, "callable"),
        ({"fail_open": "yes"}, "fail_open"),
    ],
)
def test_bad_decorator_arguments_fail_at_decoration(kwargs: dict[str, Any], match: str) -> None:
    """Mistakes in the decorator's arguments raise at import time, not at the first request."""
    from jobcredits_plugin import ConfigurationError
    from jobcredits_plugin.django import charges_credit

    with pytest.raises(ConfigurationError, match=match):
        charges_credit(**kwargs)


@pytest.mark.parametrize("value", [[], ["X-Job-Id"], {"X-Job-Id": 1}, 5, ""])
def test_a_view_header_that_is_not_a_name_fails_at_decoration(value: Any) -> None:
    """header=[] raised a bare TypeError ("unhashable") from the reader cache;
    it is the header check's error, like any bad name."""
    from jobcredits_plugin import JobCreditsError

    with pytest.raises(JobCreditsError):
        charges_credit(header=value)(views.account_from_header)
