"""DjangoStore in a Django project: its URL, its migrations, and how it
stands to the caller's transactions (issue 17, items 1 and 3).

The store's semantics are the store suite's (tests/stores, kinds
``django-sqlite`` and ``django-postgres``); here is what only a Django
project has: ``django://ALIAS`` in ``JOBCREDITS``, ``makemigrations --check``,
``ATOMIC_REQUESTS`` and ``transaction.atomic``.
"""

from __future__ import annotations

import io
import sys
import unittest
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("django")

from django.core.management import call_command
from django.db import transaction
from django.test import override_settings

from jobcredits_plugin import ConfigurationError, Ledger
from jobcredits_plugin.django import DjangoStore, get_ledger
from jobcredits_plugin.django import models as m
from jobcredits_plugin.stores import from_url
from tests.stores import _django

ALIAS = _django.SQLITE_ALIAS


@pytest.fixture
def store() -> Iterator[DjangoStore]:
    s = _django.fresh_store(ALIAS)
    yield s
    s.close()


# -- the URL ----------------------------------------------------------------------------


def test_a_django_url_names_the_database_alias(store: DjangoStore) -> None:
    built = from_url(f"django://{ALIAS}?prune_batch=7&journal_reuses=true")
    assert isinstance(built, DjangoStore)
    assert (built.using, built.prune_batch, built.journal_reuses) == (ALIAS, 7, True)
    with Ledger.from_url(f"django://{ALIAS}", balances=True) as ledger:
        ledger.grant("acct", 3)
        assert ledger.charge("acct", "job-1").balance == 2
    assert store.balance("acct") == 2  # the same tables


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("django://nosuchalias", "no database alias 'nosuchalias'.*'default'"),
        ("django://", "name a database alias"),
        ("django://default/extra", "name a database alias"),
        (f"django://{ALIAS}?timeout=3", "unknown option 'timeout'"),
    ],
)
def test_a_bad_django_url_is_a_configuration_error(url: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        from_url(url)


def test_the_settings_url_builds_the_ledger_on_the_projects_database(
    jc_settings: Any, store: DjangoStore
) -> None:
    jc_settings(URL=f"django://{ALIAS}", BALANCES=True)
    ledger = get_ledger()
    ledger.grant("acct", 5)
    assert m.Balance.objects.using(ALIAS).get(account="acct").credits == 5
    assert isinstance(ledger.store, DjangoStore)


def test_the_url_check_reports_an_unknown_alias() -> None:
    from jobcredits_plugin.django.checks import check_settings

    with override_settings(JOBCREDITS={"URL": "django://nosuch"}):
        messages = check_settings()
    assert [msg.id for msg in messages] == ["jobcredits.E001"]
    assert "no database alias 'nosuch'" in messages[0].msg


def test_without_django_the_url_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in sys.modules if n == "django" or n.startswith("django.")]:
        monkeypatch.delitem(sys.modules, name)
    for name in [n for n in sys.modules if n.startswith("jobcredits_plugin.django")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "django", None)
    with pytest.raises(ImportError, match=r'pip install "jobcredits-plugin\[django\]"'):
        from_url("django://default")


# -- the migrations ---------------------------------------------------------------------


def test_the_migrations_match_the_models() -> None:
    """``makemigrations --check`` finds nothing to write: the shipped
    migration is what the models say (on Django 4.2 as on 5.x)."""
    out = io.StringIO()
    call_command("makemigrations", "jobcredits", check=True, dry_run=True, stdout=out, stderr=out)
    assert "No changes detected" in out.getvalue()


def test_migrate_creates_the_tables_and_the_journal_state(store: DjangoStore) -> None:
    from django.db import connections

    tables = set(connections[ALIAS].introspection.table_names())
    assert {
        "jobcredits_job",
        "jobcredits_balance",
        "jobcredits_grant_id",
        "jobcredits_journal_entry",
        "jobcredits_journal_cursor",
        "jobcredits_journal_state",
    } <= tables
    assert list(m.JournalState.objects.using(ALIAS).values_list("id", flat=True)) == [1]


# -- transactions -------------------------------------------------------------------------


def test_an_operation_inside_the_callers_transaction_is_refused(store: DjangoStore) -> None:
    """Joined to the caller's transaction, a charge would roll back with it
    after its hooks fired: the store refuses, and says what to do."""
    ledger = Ledger(store, balances=True)
    with (
        transaction.atomic(using=ALIAS),
        pytest.raises(ConfigurationError, match="alias of its own"),
    ):
        ledger.charge("acct", "job-1", cost=0)
    assert store.lookup(("acct", "default", "job-1"), 0.0) is None
    ledger.charge("acct", "job-1", cost=0)  # outside it, it works
    # A transaction on another alias is no concern of this store's.
    with transaction.atomic(using="default"):
        ledger.charge("acct", "job-2", cost=0)


def test_inside_a_django_testcase_the_store_runs_in_the_tests_transaction() -> None:
    """Django's TestCase wraps each test in a transaction (rolled back after
    it): the store runs there, as Django's own durable blocks do."""
    from django.test import TestCase

    seen: dict[str, Any] = {}

    class Case(TestCase):  # type: ignore[misc]
        databases = {ALIAS}  # noqa: RUF012 - Django's TestCase API

        def test_charge(self) -> None:
            with Ledger(DjangoStore(ALIAS), balances=True) as ledger:
                ledger.grant("acct", 2)
                seen["balance"] = ledger.charge("acct", "job-1").balance

    _django.fresh_store(ALIAS).close()
    result = unittest.TestResult()
    # A suite, as a test runner would: it runs setUpClass, which opens the
    # class's transaction.
    unittest.TestSuite([Case("test_charge")]).run(result)
    assert result.wasSuccessful(), result.errors + result.failures
    assert seen == {"balance": 1}
    assert m.Balance.objects.using(ALIAS).count() == 0  # rolled back with the test
