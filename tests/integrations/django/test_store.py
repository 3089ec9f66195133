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


# -- ATOMIC_REQUESTS: a view's transaction and the ledger's ------------------------------


def _work_table(alias: str) -> None:
    from django.db import connections

    from .views import WORK_TABLE

    with connections[alias].cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {WORK_TABLE}")
        cursor.execute(f"CREATE TABLE {WORK_TABLE} (job varchar(128))")


def _work_rows(alias: str) -> list[str]:
    from django.db import connections

    from .views import WORK_TABLE

    with connections[alias].cursor() as cursor:
        cursor.execute(f"SELECT job FROM {WORK_TABLE}")
        return [row[0] for row in cursor.fetchall()]


def _call(path: str, job: str) -> Any:
    from django.test import Client

    # raise_request_exception=False: the answer a client gets for a view
    # that raised (Django's 500 page), not the exception.
    return Client(raise_request_exception=False).post(
        path, headers={"X-Job-Id": job, "X-Account": "acct"}
    )


@pytest.fixture
def atomic_requests(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Turn ATOMIC_REQUESTS on for one database alias in this test."""
    from django.db import connections

    def on(alias: str) -> None:
        monkeypatch.setitem(connections.settings[alias], "ATOMIC_REQUESTS", True)
        monkeypatch.setitem(connections[alias].settings_dict, "ATOMIC_REQUESTS", True)

    return on


@pytest.fixture
def pg_ledger_alias(jc_settings: Any, atomic_requests: Any) -> Ledger:
    """The views' database (jc_postgres) runs views in transactions; the
    ledger is on a second alias of the same database, as docs/django.md says."""
    from tests.stores.conftest import POSTGRES_DEFAULT, POSTGRES_URL_ENV, _server_url

    _server_url(POSTGRES_URL_ENV, POSTGRES_DEFAULT, "PostgreSQL")
    pytest.importorskip("psycopg")
    _django.fresh_store(_django.POSTGRES_ALIAS).close()
    _work_table(_django.POSTGRES_ALIAS)
    atomic_requests(_django.POSTGRES_ALIAS)
    jc_settings(URL="django://jc_postgres_ledger", BALANCES=True)
    ledger = get_ledger()
    ledger.grant("acct", 5)
    return ledger


def _url_query(db: str, **more: str) -> str:
    return "?" + "&".join(f"{k}={v}" for k, v in {"db": db, **more}.items())


def test_with_atomic_requests_a_served_call_commits_the_views_work_and_its_charge(
    pg_ledger_alias: Ledger,
) -> None:
    response = _call("/work" + _url_query("jc_postgres"), "job-ok")
    assert response.status_code == 200
    assert response["X-Job-Charge"] == "charged"
    assert _work_rows(_django.POSTGRES_ALIAS) == ["job-ok"]
    record = pg_ledger_alias.lookup("acct", "job-ok")
    assert record is not None
    assert record.state == "charged"
    assert pg_ledger_alias.balance("acct") == 4


def test_with_atomic_requests_a_view_that_raised_is_rolled_back_and_refunded(
    pg_ledger_alias: Ledger,
) -> None:
    """The view's error rolls its own work back; the charge is not rolled
    back silently with it (the client would have been told it was charged)
    but refunded, in the ledger's own transaction, and journaled so."""
    response = _call("/work" + _url_query("jc_postgres", **{"raise": "boom"}), "job-boom")
    assert response.status_code == 500
    assert _work_rows(_django.POSTGRES_ALIAS) == []
    assert pg_ledger_alias.lookup("acct", "job-boom") is None
    assert pg_ledger_alias.balance("acct") == 5
    kinds = [(e.kind, e.job_id) for e in pg_ledger_alias.journal()]
    assert kinds == [("grant", None), ("charge", "job-boom"), ("refund", "job-boom")]


def test_with_atomic_requests_a_5xx_answer_keeps_the_work_and_refunds(
    pg_ledger_alias: Ledger,
) -> None:
    """A 5xx answer (no exception) is committed by ATOMIC_REQUESTS; the
    charge is refunded all the same: the client was not served."""
    response = _call("/work" + _url_query("jc_postgres", status="503"), "job-503")
    assert response.status_code == 503
    assert response["X-Job-Charge"] == "refunded"
    assert _work_rows(_django.POSTGRES_ALIAS) == ["job-503"]
    assert pg_ledger_alias.balance("acct") == 5


@pytest.fixture
def sqlite_ledger(jc_settings: Any) -> Ledger:
    _django.fresh_store(ALIAS).close()
    _work_table(ALIAS)
    jc_settings(URL=f"django://{ALIAS}", BALANCES=True)
    ledger = get_ledger()
    ledger.grant("acct", 5)
    return ledger


def test_without_atomic_requests_the_views_work_and_the_charge_commit_apart(
    sqlite_ledger: Ledger,
) -> None:
    ok = _call("/work" + _url_query(ALIAS), "job-ok")
    assert (ok.status_code, ok["X-Job-Charge"]) == (200, "charged")
    boom = _call("/work" + _url_query(ALIAS, **{"raise": "boom"}), "job-boom")
    assert boom.status_code == 500
    # Without a transaction, the work the view did before raising stays;
    # the charge of the call that failed does not.
    assert _work_rows(ALIAS) == ["job-ok", "job-boom"]
    assert sqlite_ledger.lookup("acct", "job-boom") is None
    assert sqlite_ledger.balance("acct") == 4


def test_atomic_requests_on_the_ledgers_own_alias_refuses_the_charge(
    sqlite_ledger: Ledger, atomic_requests: Any
) -> None:
    """In the view's transaction on the ledger's alias, the store refuses:
    a 500 with nothing charged and nothing of the view's kept, never a
    charge that the view's rollback would take back unannounced."""
    from jobcredits_plugin.django.checks import check_settings

    atomic_requests(ALIAS)
    assert "jobcredits.W003" in [msg.id for msg in check_settings()]
    response = _call("/work" + _url_query(ALIAS), "job-1")
    assert response.status_code == 500
    assert _work_rows(ALIAS) == []
    assert sqlite_ledger.lookup("acct", "job-1") is None
    assert sqlite_ledger.balance("acct") == 5
    # A view marked non_atomic_requests is charged as usual.
    response = _call("/work-outside" + _url_query(ALIAS), "job-2")
    assert (response.status_code, response["X-Job-Charge"]) == (200, "charged")
    assert sqlite_ledger.balance("acct") == 4


# -- queries per operation ----------------------------------------------------------------

#: Statements per operation on PostgreSQL (BEGIN and COMMIT not counted), with
#: balances on; docs/django.md shows this table. SQLite runs one more in each
#: writing operation: the write that takes the file's lock first.
QUERIES = {
    "charge, a new job": 5,  # lock the job, lock the balance, insert, debit, journal
    "charge, a reuse": 3,  # lock the job, lock the balance (the answer's), update
    "confirm": 2,  # lock the job, update
    "refund": 5,  # lock the job, delete, lock the balance, journal, credit
    "lookup": 1,
    # lock the balance, the grant id, credit, journal, remember the id (and,
    # only when the id was found expired, delete that one first)
    "grant": 5,
    "charge, a new job, balances off": 4,  # lock the job, the balance (journal), insert x2
}


@pytest.mark.parametrize("alias", [_django.SQLITE_ALIAS, _django.POSTGRES_ALIAS])
def test_the_queries_each_operation_makes(alias: str) -> None:
    """One transaction per operation, and the statements the semantics need:
    a regression here is a slower charge."""
    from django.db import connections
    from django.test.utils import CaptureQueriesContext

    from jobcredits_plugin.testing import FakeClock

    if alias == _django.POSTGRES_ALIAS:
        from tests.stores.conftest import POSTGRES_DEFAULT, POSTGRES_URL_ENV, _server_url

        _server_url(POSTGRES_URL_ENV, POSTGRES_DEFAULT, "PostgreSQL")
        pytest.importorskip("psycopg")
    store = _django.fresh_store(alias)
    ledger = Ledger(store, balances=True, clock=FakeClock())
    unbalanced = Ledger(store, balances=False, clock=FakeClock())
    ledger.grant("acct", 100)
    counted: dict[str, int] = {}
    transactions: dict[str, int] = {}

    def count(name: str, fn: Any) -> None:
        with CaptureQueriesContext(connections[alias]) as ctx:
            fn()
        sql = [q["sql"].split()[0].upper() for q in ctx.captured_queries]
        counted[name] = sum(1 for word in sql if word not in ("BEGIN", "COMMIT"))
        transactions[name] = sql.count("COMMIT")

    count("charge, a new job", lambda: ledger.charge("acct", "j1"))
    record = ledger.lookup("acct", "j1")
    assert record is not None
    count("confirm", lambda: ledger.confirm("acct", "j1", charge_id=record.charge_id))
    count("charge, a reuse", lambda: ledger.charge("acct", "j1"))
    count("refund", lambda: ledger.refund("acct", "j1"))
    count("lookup", lambda: ledger.lookup("acct", "j1"))
    count("grant", lambda: ledger.grant("acct", 5))
    count("charge, a new job, balances off", lambda: unbalanced.charge("acct", "j2"))
    ledger.close()
    unbalanced.close()
    lock = 1 if alias == _django.SQLITE_ALIAS else 0
    assert counted == {name: n + (lock if name != "lookup" else 0) for name, n in QUERIES.items()}
    # Where Django logs COMMIT (not every version and backend does), each
    # operation commits at most once: one transaction.
    assert all(n in (0, 1) for n in transactions.values())


def test_a_grant_id_seen_before_and_expired_is_replaced() -> None:
    """The grant id row is deleted only when one was found (expired): the
    grant that finds none sends no DELETE, and one that finds an expired
    one still replaces it."""
    from jobcredits_plugin.django import models
    from jobcredits_plugin.stores import GRANT_ID_RETENTION

    store = _django.fresh_store(_django.SQLITE_ALIAS)
    try:
        assert store.grant("acct", 5, now=1000.0, grant_id="g-1") == 5
        assert store.grant("acct", 5, now=1001.0, grant_id="g-1") == 5  # a repeat
        later = 1000.0 + GRANT_ID_RETENTION + 1
        assert store.grant("acct", 7, now=later, grant_id="g-1") == 12  # expired: applied
        rows = models.GrantId.objects.using(_django.SQLITE_ALIAS).filter(grant_id="g-1")
        assert list(rows.values_list("amount", "balance")) == [(7, 12)]
    finally:
        store.close()


def test_the_jobcredits_migrate_command_points_at_djangos_migrate(
    jc_settings: Any, store: DjangoStore
) -> None:
    jc_settings(URL=f"django://{ALIAS}")
    out = io.StringIO()
    call_command("jobcredits", "migrate", stdout=out)
    assert "manage.py migrate jobcredits" in out.getvalue()
