"""The hypothesis model of DESIGN §2 (``tests/test_model.py``) on PostgreSQL.

The model test drives random sequences of charges, confirms, refunds, clock
steps, grants and prunes against a reference model; here it runs on a fresh
schema per example, with a prune batch of 2 so that pruning crosses
statement boundaries, and drops the schema when the example ends.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from jobcredits_plugin.stores import BaseStore
from tests.stores.conftest import POSTGRES_DEFAULT, POSTGRES_URL_ENV, _reachable
from tests.test_model import LedgerMachine

pytest.importorskip("psycopg", reason="the postgres extra is not installed")

URL = os.environ.get(POSTGRES_URL_ENV, POSTGRES_DEFAULT)


class PostgresLedgerMachine(LedgerMachine):
    def make_store(self, settle_batch: int) -> BaseStore:
        from jobcredits_plugin.stores import PostgresStore

        self.pg_store = PostgresStore.from_url(
            URL, schema=f"jctest_{uuid.uuid4().hex[:12]}", prune_batch=2, max_size=2
        )
        return self.pg_store

    def teardown(self) -> None:
        super().teardown()
        store: Any = getattr(self, "pg_store", None)
        if store is not None:
            store.close()
            store.drop()


@pytest.fixture(autouse=True)
def _server() -> None:
    if not _reachable(URL):
        message = f"no PostgreSQL server at {URL}: set {POSTGRES_URL_ENV} to run this test"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)


TestLedgerOnPostgres = PostgresLedgerMachine.TestCase
TestLedgerOnPostgres.settings = settings(
    max_examples=25,
    deadline=None,
    database=None,
    stateful_step_count=50,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
