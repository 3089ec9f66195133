"""Django: what a refused call tells the client (issue 12, items 1-3 and 14).

A 5xx body is generic and the detail goes to the log; the problem type is
about:blank unless ``JOBCREDITS["PROBLEM_TYPE_BASE"]`` says otherwise; a 409's
Retry-After is capped by ``JOBCREDITS["RETRY_AFTER_MAX"]`` (default 5); the
system check E001 never repeats a password."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

pytest.importorskip("django")

from django.core import checks
from django.test import AsyncClient, Client, override_settings

from jobcredits_plugin.django import get_ledger

from ..._secrets import CANARY, HOST, POSTGRES_URL, assert_no_secret, assert_nothing_internal

ACCOUNT = "tests.integrations.django.views.account_from_header"
HEADERS = {"X-Account": "acct"}


def post(path: str, job: str) -> Any:
    return Client().post(path, headers={**HEADERS, "X-Job-Id": job})


def apost(path: str, job: str) -> Any:
    async def go() -> Any:
        return await AsyncClient().post(path, headers={**HEADERS, "X-Job-Id": job})

    return asyncio.run(go())


def problem(response: Any) -> dict[str, Any]:
    assert response["Content-Type"] == "application/problem+json"
    doc: dict[str, Any] = json.loads(response.content)
    return doc


@pytest.mark.parametrize("send", [post, apost], ids=["sync", "async"])
def test_a_503_body_is_generic_and_the_detail_is_logged(
    jc_settings: Any, caplog: pytest.LogCaptureFixture, send: Any
) -> None:
    """An unreachable PostgreSQL store: 503 with Retry-After and a generic detail
    naming nothing of the server; the full detail (redacted) logged at WARNING."""
    pytest.importorskip("psycopg")
    jc_settings(URL=POSTGRES_URL)
    path = "/charged" if send is post else "/async/charged"
    with caplog.at_level(logging.WARNING, logger="jobcredits_plugin"):
        response = send(path, "job-503")
    assert response.status_code == 503
    assert response["Retry-After"].isdigit()
    doc = problem(response)
    assert doc["detail"] == "the credit ledger is unavailable; retry later"
    assert doc["type"] == "about:blank"
    assert doc["title"] == "Service Unavailable"
    assert_nothing_internal(response.content)
    logged = [
        r for r in caplog.records if r.name == "jobcredits_plugin" and "503" in r.getMessage()
    ]
    assert logged
    assert all(r.levelno == logging.WARNING for r in logged)
    assert HOST in logged[0].getMessage()
    assert_no_secret(caplog.text)


def test_the_problem_type_base_is_a_setting(jc_settings: Any) -> None:
    jc_settings(PROBLEM_TYPE_BASE="https://api.example.com/problems/")
    response = Client().post("/charged", headers={"X-Job-Id": "job-1"})  # no account: 401
    assert response.status_code == 401
    doc = problem(response)
    assert doc["type"] == "https://api.example.com/problems/not_authenticated"
    assert doc["title"] == "Not authenticated"


def test_the_default_problem_type_is_about_blank(jc_settings: Any) -> None:
    jc_settings()
    doc = problem(Client().post("/charged", headers={"X-Job-Id": "job-1"}))
    assert doc["type"] == "about:blank"
    assert doc["title"] == "Unauthorized"


@pytest.mark.parametrize(("cap", "expected"), [(None, "5"), (2, "2"), ("none", "60")])
def test_a_409_retry_after_is_capped(jc_settings: Any, cap: Any, expected: str) -> None:
    """The lease left is 60 s; Retry-After says at most RETRY_AFTER_MAX (5 unless set)."""
    if cap is None:
        jc_settings()
    else:
        jc_settings(RETRY_AFTER_MAX=cap)
    get_ledger().charge("acct", "job-409")  # the first call, still running
    response = post("/charged", "job-409")
    assert response.status_code == 409
    assert response["Retry-After"] == expected
    assert problem(response)["retry_after"] == int(expected)


@pytest.mark.parametrize(
    "conf",
    [
        {"RETRY_AFTER_MAX": 0},
        {"RETRY_AFTER_MAX": 1.5},
        {"RETRY_AFTER_MAX": "soon"},
        {"PROBLEM_TYPE_BASE": "not a uri"},
        {"PROBLEM_TYPE_BASE": 3},
    ],
    ids=repr,
)
def test_bad_problem_settings_are_check_errors(conf: dict[str, Any]) -> None:
    with override_settings(JOBCREDITS={"ACCOUNT": ACCOUNT, **conf}):
        found = [m for m in checks.run_checks() if m.id.startswith("jobcredits.")]
    assert [m.id for m in found if m.level >= checks.ERROR] == ["jobcredits.E005"]
    assert next(iter(conf)) in found[0].msg


@pytest.mark.parametrize(
    "url",
    [
        f"redis://127.0.0.1:6379/0?password={CANARY}",
        f"postgresql://u:{CANARY}@h/d?sslpassword={CANARY}&bogus_opt=1",
        f"sqlite:///jobs.db?passfile={CANARY}",
        f"memory://?token={CANARY}",
    ],
)
def test_check_e001_never_repeats_a_password(url: str) -> None:
    """A URL rejected by the checks (an unknown option, here one carrying a
    secret) is named in E001 with its credentials masked."""
    if url.startswith("redis"):
        pytest.importorskip("redis")
    if url.startswith("postgresql"):
        pytest.importorskip("psycopg")
    with override_settings(JOBCREDITS={"ACCOUNT": ACCOUNT, "URL": url}):
        found = [m for m in checks.run_checks() if m.id.startswith("jobcredits.")]
    e001 = [m for m in found if m.id == "jobcredits.E001"]
    assert e001, found
    assert_no_secret(*(m.msg for m in found), *(m.hint or "" for m in found))


def test_the_management_command_prints_no_secret(jc_settings: Any) -> None:
    """``manage.py jobcredits snapshot`` on an unreachable store: a CommandError whose
    message names the store without its password."""
    pytest.importorskip("psycopg")
    from django.core.management import CommandError, call_command

    jc_settings(URL=POSTGRES_URL)
    with pytest.raises(CommandError) as info:
        call_command("jobcredits", "snapshot")
    assert_no_secret(str(info.value))
    assert HOST in str(info.value)
