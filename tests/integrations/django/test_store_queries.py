"""How many SQL statements each DjangoStore operation sends (issue 17, item 6).

Each operation is one transaction, and its statements are the fewest its
rules allow through the ORM: the rows it reads locked, what it writes, its
journal row. The counts are pinned here, so that a change that adds a
statement to the hot path fails a test instead of slowing every charge
silently (``benchmarks/django_store_bench.py`` measures what they cost, and
``docs/performance.md`` lists them). Counts, never times.

On SQLite, Django sends ``BEGIN`` through the cursor, and the store's first
statement takes the file's write lock (see the store's docstring): two more
than on PostgreSQL, where ``BEGIN`` and ``COMMIT`` are the driver's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip("django")

from django.db import connections

from jobcredits_plugin import Ledger
from tests.stores import _django

#: Statements per operation on PostgreSQL: the job row locked (SELECT ... FOR
#: UPDATE), the balance row locked, the job inserted, the balance debited,
#: the journal row; confirm: the job locked, its state set; a follow-up: the
#: job and balance locked, the job's uses written; refund: the job locked
#: and deleted, the balance locked, the journal row, the credit; a grant
#: (every grant remembers its grant id): the balance locked, the id looked
#: up, the balance set, the journal row, the id remembered.
POSTGRES = {"charge new job": 5, "confirm": 2, "follow-up": 3, "refund": 5, "grant": 5}
#: The same on SQLite, plus BEGIN and the write lock's UPDATE.
SQLITE = {op: n + 2 for op, n in POSTGRES.items()}


def _counts(alias: str, ledger: Ledger) -> dict[str, int]:
    sent: list[str] = []

    def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        sent.append(sql)
        return execute(sql, params, many, context)

    ledger.grant("acct", 100)
    ledger.charge("acct", "warm-up")  # the balance row exists, as it does after a grant
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("charge new job", lambda: ledger.charge("acct", "job-1")),
        ("confirm", lambda: ledger.confirm("acct", "job-1")),
        ("follow-up", lambda: ledger.charge("acct", "job-1")),
        ("refund", lambda: ledger.refund("acct", "job-1")),
        ("grant", lambda: ledger.grant("acct", 1)),
    ]
    counts: dict[str, int] = {}
    with connections[alias].execute_wrapper(count):
        for op, fn in steps:
            before = len(sent)
            fn()
            counts[op] = len(sent) - before
    return counts


@pytest.fixture
def postgres() -> str:
    """The PostgreSQL alias (skipped off CI when the server is absent)."""
    from tests.stores.conftest import POSTGRES_DEFAULT, POSTGRES_URL_ENV, _server_url

    _server_url(POSTGRES_URL_ENV, POSTGRES_DEFAULT, "PostgreSQL")
    return _django.POSTGRES_ALIAS


def test_sqlite_statements_per_operation() -> None:
    store = _django.fresh_store(_django.SQLITE_ALIAS)
    with Ledger(store, balances=True) as ledger:
        assert _counts(_django.SQLITE_ALIAS, ledger) == SQLITE


def test_postgres_statements_per_operation(postgres: str) -> None:
    store = _django.fresh_store(postgres)
    with Ledger(store, balances=True) as ledger:
        assert _counts(postgres, ledger) == POSTGRES


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
