"""PostgreSQL: the schema migration that remembers grant ids (issue 13,
item 6). A version-3 schema is migrated with its data intact; grants with a
grant_id are then applied once; the old ``grant_credits`` signature keeps
working for processes still running the previous code; prune forgets ids past
their retention, and only those."""

from __future__ import annotations

import asyncio
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from jobcredits_plugin import Ledger, StoreUnavailable
from jobcredits_plugin.stores import GRANT_ID_RETENTION
from jobcredits_plugin.testing import FakeClock
from tests.stores._proxy import Proxy
from tests.stores.conftest import POSTGRES_DEFAULT, POSTGRES_URL_ENV, _server_url

psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed")

from psycopg import sql  # noqa: E402

from jobcredits_plugin.stores._postgres import SCHEMA_VERSION, PostgresStore  # noqa: E402
from tests.stores._pg_history import VERSIONS, historic_step, make_schema_at  # noqa: E402

#: The version before the one that added the grants table (its historic step
#: takes the schema from GRANTS_STEP to GRANTS_STEP + 1).
GRANTS_STEP = next(v - 1 for v in VERSIONS if ".grants (" in historic_step(v))


@pytest.fixture
def url() -> str:
    return _server_url(POSTGRES_URL_ENV, POSTGRES_DEFAULT, "PostgreSQL")


@pytest.fixture
def make_store(url: str) -> Iterator[Callable[..., PostgresStore]]:
    made: list[PostgresStore] = []

    def make(schema: str, **kw: Any) -> PostgresStore:
        store = PostgresStore.from_url(url, schema=schema, **kw)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()
    if made:
        made[0].drop()


def _make_schema_before_grants(url: str, schema: str) -> None:
    """A schema at the version before the grants table, with a balance granted
    through that version's grant_credits."""
    store = PostgresStore.from_url(url, schema=schema)
    try:
        with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
            make_schema_at(conn, store, GRANTS_STEP)
            conn.execute(
                store._format("SELECT {schema}.grant_credits('acct', 5, 100.0, 'g-1', true)")
            )
    finally:
        store.close()


def _old_grant(url: str, store: PostgresStore, amount: int, grant_id: str) -> Any:
    """A grant as the previous version's code makes it (five arguments)."""
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(
            store._format("SELECT {schema}.grant_credits('acct', %s, 100.0, %s, true)"),
            (amount, grant_id),
        ).fetchone()


def _remembered(url: str, schema: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(
            sql.SQL("SELECT account, amount, balance, at FROM {}.grants ORDER BY at").format(
                sql.Identifier(schema)
            )
        ).fetchall()


def test_a_schema_before_grant_ids_is_migrated_with_its_data(
    url: str, make_store: Callable[..., PostgresStore]
) -> None:
    schema = f"jctest_{uuid.uuid4().hex[:12]}"
    _make_schema_before_grants(url, schema)
    strict = make_store(schema, auto_migrate=False)
    assert strict.schema_version() == GRANTS_STEP
    store = make_store(schema)
    assert store.migrate() == SCHEMA_VERSION
    assert strict.schema_version() == SCHEMA_VERSION
    clock = FakeClock()
    ledger = Ledger(store, clock=clock, balances=True)
    assert ledger.balance("acct") == 5  # the data survived
    assert ledger.grant("acct", 7, grant_id="pay-1") == 12
    assert ledger.grant("acct", 7, grant_id="pay-1") == 12
    assert ledger.balance("acct") == 12
    assert [(e.kind, e.cost, e.balance) for e in ledger.journal()] == [
        ("grant", 5, 5),
        ("grant", 7, 12),
    ]
    # A process still on the previous code grants through the old signature:
    # applied (every time: it knows no grant ids), journaled, remembered nowhere.
    assert _old_grant(url, store, 1, "old-1") == (13,)
    assert _old_grant(url, store, 1, "old-1") == (14,)
    assert len(_remembered(url, schema)) == 1
    assert store.migrate() == SCHEMA_VERSION  # idempotent


def test_prune_forgets_grant_ids_past_their_retention_only(
    url: str, make_store: Callable[..., PostgresStore]
) -> None:
    schema = f"jctest_{uuid.uuid4().hex[:12]}"
    store = make_store(schema, prune_batch=2)
    clock = FakeClock()
    ledger = Ledger(store, clock=clock, balances=True)
    for n in range(5):  # more than one batch of prune_batch
        ledger.grant("acct", 1, grant_id=f"old-{n}")
    clock.advance(10)
    ledger.grant("acct", 1, grant_id="young")
    clock.advance(GRANT_ID_RETENTION - 10)
    ledger.prune()
    assert [row[0] for row in _remembered(url, schema)] == ["acct"]
    assert ledger.grant("acct", 1, grant_id="young") == 6  # still remembered
    assert ledger.grant("acct", 1, grant_id="old-0") == 7  # forgotten: a new grant


def test_a_grant_whose_answer_was_lost_is_retried_safely_with_its_grant_id(
    url: str, make_store: Callable[..., PostgresStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's case: the grant commits, its answer is lost (here: the
    statement commits and the store's connection error comes after), the caller sees 503
    and retries. With the same grant_id: 5 + 7 = 12, not 5 + 7 + 7 = 19."""
    store = make_store(f"jctest_{uuid.uuid4().hex[:12]}")
    ledger = Ledger(store, clock=FakeClock(), balances=True)
    assert ledger.grant("acct", 5) == 5
    real_run = store._run
    lose = {"left": 1}

    def losing_run(query: Any, params: Any, **options: Any) -> Any:
        rows = real_run(query, params, **options)
        if query is store._sql.grant and lose["left"]:
            lose["left"] -= 1
            # what _run raises when the connection dies before the answer
            raise StoreUnavailable("PostgreSQL store: server closed the connection")
        return rows

    monkeypatch.setattr(store, "_run", losing_run)
    with pytest.raises(StoreUnavailable):
        ledger.grant("acct", 7, grant_id="pay-1")
    assert ledger.balance("acct") == 12  # it did commit
    assert ledger.grant("acct", 7, grant_id="pay-1") == 12  # the retry: applied once
    assert ledger.balance("acct") == 12
    assert [(e.kind, e.cost, e.balance) for e in ledger.journal()] == [
        ("grant", 5, 5),
        ("grant", 7, 12),
    ]


def test_a_grant_answer_lost_on_the_wire_is_retried_safely(url: str) -> None:
    """The same through the loopback proxy: the server commits grant_credits
    and the connection is cut before its answer arrives. The store retries it
    itself (the ledger always sends an id: the caller's, or a fresh one per
    call), and the server answers the retry with the first grant's balance,
    writing nothing more: the call answers 12, sync and async, with and
    without a grant_id; the caller's own retry with the grant_id changes
    nothing either."""
    parts = urllib.parse.urlsplit(url)
    proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    query = [*urllib.parse.parse_qsl(parts.query), ("sslmode", "disable")]
    proxied = urllib.parse.urlunsplit(
        parts._replace(netloc=f"{user}127.0.0.1:{proxy.port}", query=urllib.parse.urlencode(query))
    )
    schema = f"jctest_{uuid.uuid4().hex[:12]}"
    store = PostgresStore.from_url(proxied, schema=schema, max_size=2, timeout=2.0)
    try:
        ledger = Ledger(store, clock=FakeClock(), balances=True)
        assert ledger.grant("acct", 5) == 5  # connected, schema ready
        proxy.lose_next_pg_answer(b".grant_credits(")
        assert ledger.grant("acct", 7, grant_id="pay-1") == 12
        assert proxy.lost == 1
        assert ledger.grant("acct", 7, grant_id="pay-1") == 12
        assert ledger.balance("acct") == 12  # 5 + 7, not 5 + 7 + 7
        proxy.lose_next_pg_answer(b".grant_credits(")
        assert ledger.grant("acct", 1) == 13  # no grant_id: retried all the same
        assert proxy.lost == 2

        async def async_part() -> None:
            proxy.lose_next_pg_answer(b".grant_credits(")
            assert await ledger.agrant("acct", 2, grant_id="pay-2") == 15
            assert await ledger.agrant("acct", 2, grant_id="pay-2") == 15

        asyncio.run(async_part())
        assert proxy.lost == 3
        assert ledger.balance("acct") == 15
        assert [(e.kind, e.cost, e.balance) for e in ledger.journal()] == [
            ("grant", 5, 5),
            ("grant", 7, 12),
            ("grant", 1, 13),
            ("grant", 2, 15),
        ]
    finally:
        store.close()
        proxy.close()
        PostgresStore.from_url(url, schema=schema).drop()
