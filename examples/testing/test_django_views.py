"""Tests of Django views that charge credits, with the jobcredits pytest fixtures.

Run them with ``pytest``: the fixtures come with the package (its pytest
plugin loads by itself).
To keep this file whole, it configures Django itself and holds its own views
and URLs; in a project, pytest-django reads your settings and the tests
import your views.
"""

import django
from django.conf import settings

settings.configure(
    ROOT_URLCONF=__name__,
    ALLOWED_HOSTS=["testserver"],
    JOBCREDITS={"BALANCES": True, "ACCOUNT": f"{__name__}.account_from_api_key"},
)
django.setup()

import pytest  # noqa: E402
from django.http import JsonResponse  # noqa: E402
from django.test import Client  # noqa: E402
from django.urls import path  # noqa: E402

from jobcredits_plugin.django import charges_credit  # noqa: E402

API_KEYS = {"key-ada": "acct-ada"}


def account_from_api_key(request):
    return API_KEYS.get(request.headers.get("X-Api-Key", ""))


@charges_credit(scope="summarize")
def summarize(request):
    if request.GET.get("fail"):
        return JsonResponse({"error": "the upstream model failed"}, status=502)
    return JsonResponse({"charge": request.job_credit.outcome})


urlpatterns = [path("summarize", summarize)]


# -- the tests -------------------------------------------------------------------------


def call(job_id, query=""):
    return Client().post(f"/summarize{query}", headers={"X-Api-Key": "key-ada", "X-Job-Id": job_id})


@pytest.mark.jobcredits(balances=True)
def test_a_job_is_charged_once(jobcredits_django_ledger, jobcredits_events):
    jobcredits_django_ledger.grant("acct-ada", 1)
    assert call("job-1").headers["X-Job-Charge"] == "charged"
    assert call("job-1").headers["X-Job-Charge"] == "reused"
    assert call("job-2").status_code == 402  # no credit left for a new job
    assert jobcredits_events.kinds() == ["charge", "reuse"]
    assert jobcredits_django_ledger.balance("acct-ada") == 0


def test_a_failed_call_is_refunded(jobcredits_django_ledger, jobcredits_events):
    assert call("job-1", "?fail=1").headers["X-Job-Charge"] == "refunded"
    assert call("job-1").headers["X-Job-Charge"] == "charged"
    assert jobcredits_events.kinds() == ["charge", "refund", "charge"]


def test_the_window_closes_after_an_hour(jobcredits_django_ledger, jobcredits_clock):
    call("job-1")
    jobcredits_clock.advance(3601)
    assert call("job-1").headers["X-Job-Charge"] == "charged"
