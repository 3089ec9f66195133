"""The hypothesis model of DESIGN §2 (tests/test_model.py) run on DjangoStore,
on SQLite and on PostgreSQL through the ORM (and on MySQL/MariaDB when
JOBCREDITS_TEST_MYSQL_URL names a server).

Each example empties the store's tables on its alias (the Django test
databases of tests/stores/_django.py) and uses a prune batch of 2, so that
pruning crosses transactions.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

from jobcredits_plugin.stores import BaseStore
from tests.stores.conftest import POSTGRES_DEFAULT, POSTGRES_URL_ENV, _server_url
from tests.test_model import LedgerMachine

pytest.importorskip("django", reason="the django extra is not installed")


class DjangoSQLiteLedgerMachine(LedgerMachine):
    alias = "jc_sqlite"

    def make_store(self, settle_batch: int) -> BaseStore:
        from tests.stores import _django

        store: BaseStore = _django.fresh_store(self.alias, prune_batch=2)
        return store


class DjangoPostgresLedgerMachine(DjangoSQLiteLedgerMachine):
    alias = "jc_postgres"

    def make_store(self, settle_batch: int) -> BaseStore:
        _server_url(POSTGRES_URL_ENV, POSTGRES_DEFAULT, "PostgreSQL")
        pytest.importorskip("psycopg", reason="the postgres extra is not installed")
        return super().make_store(settle_batch)


class DjangoMySQLLedgerMachine(DjangoSQLiteLedgerMachine):
    alias = "jc_mysql"

    def make_store(self, settle_batch: int) -> BaseStore:
        import os

        from tests.stores import _django

        if not os.environ.get(_django.MYSQL_URL_ENV):
            pytest.skip(f"set {_django.MYSQL_URL_ENV} to run DjangoStore on MySQL/MariaDB")
        return super().make_store(settle_batch)


_common = {
    "deadline": None,
    "database": None,
    "stateful_step_count": 50,
    "suppress_health_check": [HealthCheck.too_slow],
}

TestLedgerOnDjangoSQLite = DjangoSQLiteLedgerMachine.TestCase
TestLedgerOnDjangoSQLite.settings = settings(max_examples=25, **_common)

TestLedgerOnDjangoPostgres = DjangoPostgresLedgerMachine.TestCase
TestLedgerOnDjangoPostgres.settings = settings(max_examples=25, **_common)

TestLedgerOnDjangoMySQL = DjangoMySQLLedgerMachine.TestCase
TestLedgerOnDjangoMySQL.settings = settings(max_examples=25, **_common)
