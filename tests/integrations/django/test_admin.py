"""The ledger's pages in the Django admin (issue 17, item 4), through
Django's test client as a staff user: read-only lists of jobs, balances,
the journal and its cursors, and the "Grant credits" action, which goes
through the ledger (journaled, once per form however often it is sent)."""

from __future__ import annotations

import re
from typing import Any

import pytest

pytest.importorskip("django")

from django.contrib.admin import helpers
from django.core.management import call_command
from django.test import Client

from jobcredits_plugin import Ledger
from jobcredits_plugin.django import get_ledger
from jobcredits_plugin.django import models as m
from tests.stores import _django

ALIAS = _django.SQLITE_ALIAS
_auth_tables: list[bool] = []


@pytest.fixture
def ledger(jc_settings: Any) -> Ledger:
    """The settings ledger on DjangoStore, with a few jobs, grants and a cursor."""
    _django.fresh_store(ALIAS).close()
    jc_settings(URL=f"django://{ALIAS}", BALANCES=True)
    led = get_ledger()
    led.grant("ada", 10)
    led.grant("bob", 3)
    c = led.charge("ada", "job-ada-1", scope="summarize", cost=2)
    led.confirm("ada", "job-ada-1", scope="summarize", charge_id=c.record.charge_id)
    led.charge("bob", "job-bob-1", cost=1)  # left pending
    led.cursor("exporter").advance(led.journal()[1])
    return led


def _user(name: str, **flags: Any) -> Any:
    from django.contrib.auth.models import User

    if not _auth_tables:
        # The auth tables of the test settings' default database (in memory).
        call_command("migrate", database="default", verbosity=0)
        _auth_tables.append(True)
    user, _ = User.objects.get_or_create(username=name, defaults={"is_staff": True, **flags})
    return user


@pytest.fixture
def staff() -> Client:
    """A client logged in as a staff superuser."""
    client = Client()
    client.force_login(_user("admin", is_superuser=True))
    return client


def _text(response: Any) -> str:
    assert response.status_code == 200, response.status_code
    return str(response.content.decode())


def test_the_jobs_list_shows_live_jobs_read_only(ledger: Ledger, staff: Client) -> None:
    page = _text(staff.get("/admin/jobcredits/job/"))
    assert "job-ada-1" in page
    assert "job-bob-1" in page
    assert "charged" in page
    assert "pending" in page
    assert "/admin/jobcredits/job/add/" not in page  # read-only: no add button
    assert 'name="action"' not in page  # no actions at all (not even delete)


@pytest.mark.parametrize(
    ("query", "shown", "hidden"),
    [
        ("state__exact=pending", "job-bob-1", "job-ada-1"),
        ("account__exact=ada", "job-ada-1", "job-bob-1"),
        ("scope__exact=summarize", "job-ada-1", "job-bob-1"),
        ("q=job-bob", "job-bob-1", "job-ada-1"),
    ],
)
def test_the_jobs_list_filters_by_state_account_scope_and_searches_job_ids(
    ledger: Ledger, staff: Client, query: str, shown: str, hidden: str
) -> None:
    page = _text(staff.get(f"/admin/jobcredits/job/?{query}"))
    assert shown in page
    assert hidden not in page


def test_a_job_opens_read_only(ledger: Ledger, staff: Client) -> None:
    job = m.Job.objects.using(ALIAS).get(job_id="job-ada-1")
    page = _text(staff.get(f"/admin/jobcredits/job/{job.pk}/change/"))
    assert "job-ada-1" in page
    assert 'name="_save"' not in page
    response = staff.post(f"/admin/jobcredits/job/{job.pk}/change/", {"state": "refunded"})
    assert response.status_code == 403
    assert m.Job.objects.using(ALIAS).get(pk=job.pk).state == "charged"


def test_the_balances_list_and_the_journal_and_cursors(ledger: Ledger, staff: Client) -> None:
    balances = _text(staff.get("/admin/jobcredits/balance/"))
    assert re.search(r"ada.*?8", balances, re.S)  # 10 granted, 2 charged
    journal = _text(staff.get("/admin/jobcredits/journalentry/"))
    for kind in ("grant", "charge"):
        assert kind in journal
    assert "job-ada-1" in journal
    cursors = _text(staff.get("/admin/jobcredits/journalcursor/"))
    assert "exporter" in cursors


def _grant(client: Client, accounts: list[str], data: dict[str, Any]) -> Any:
    pks = [
        str(pk)
        for pk in m.Balance.objects.using(ALIAS)
        .filter(account__in=accounts)
        .values_list("pk", flat=True)
    ]
    return client.post(
        "/admin/jobcredits/balance/",
        {"action": "grant_credits", helpers.ACTION_CHECKBOX_NAME: pks, **data},
    )


def test_the_grant_action_grants_through_the_ledger_once_per_form(
    ledger: Ledger, staff: Client
) -> None:
    form = _grant(staff, ["ada", "bob"], {})
    page = _text(form)
    assert "Grant credits" in page
    grant_id = re.search(r'name="grant_id" value="([^"]+)"', page)
    assert grant_id is not None
    sent = {"apply": "Grant", "amount": "5", "grant_id": grant_id.group(1)}
    done = _grant(staff, ["ada", "bob"], sent)
    assert done.status_code == 302  # back to the list
    assert (ledger.balance("ada"), ledger.balance("bob")) == (13, 7)
    # The same form sent again (a reload): the grant id makes it a repeat.
    _grant(staff, ["ada", "bob"], sent)
    assert (ledger.balance("ada"), ledger.balance("bob")) == (13, 7)
    grants = [(e.account, e.delta) for e in ledger.journal() if e.kind == "grant"]
    assert grants[-2:] == [("ada", 5), ("bob", 5)]
    assert len(grants) == 4


def test_a_bad_amount_shows_the_form_again_and_grants_nothing(
    ledger: Ledger, staff: Client
) -> None:
    page = _text(_grant(staff, ["ada"], {"apply": "Grant", "amount": "lots", "grant_id": "x"}))
    assert "Enter a whole number" in page
    assert ledger.balance("ada") == 8


def test_a_staff_user_without_the_change_permission_cannot_grant(ledger: Ledger) -> None:
    from django.contrib.auth.models import Permission

    user = _user("viewer")
    user.user_permissions.set(Permission.objects.filter(codename__in=["view_balance", "view_job"]))
    client = Client()
    client.force_login(user)
    page = _text(client.get("/admin/jobcredits/balance/"))
    assert "grant_credits" not in page
    assert _text(client.get("/admin/jobcredits/job/"))
