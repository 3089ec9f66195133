"""PostgreSQL schema version 3: ``grant_credits`` refuses, with nothing
written, a grant that would take a balance past MAX_CREDITS (issue 12,
item 4), and a version-2 schema is migrated to it with its data intact."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from jobcredits_plugin import InvalidArgument, Ledger, StoreUnavailable
from jobcredits_plugin.testing import FakeClock
from tests.stores.conftest import POSTGRES_DEFAULT, POSTGRES_URL_ENV, _server_url

psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed")

from psycopg import sql  # noqa: E402

from jobcredits_plugin.stores._postgres import SCHEMA_VERSION, PostgresStore  # noqa: E402
from tests.stores._pg_history import make_schema_at  # noqa: E402

MAX_CREDITS = 2**53 - 1


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


def _make_v2_schema(url: str, schema: str) -> None:
    """A schema exactly as version 2 left it, with a balance granted through
    its own grant_credits (which had no cap)."""
    store = PostgresStore.from_url(url, schema=schema)
    try:
        with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
            make_schema_at(conn, store, 2)
            conn.execute(
                store._format("SELECT {schema}.grant_credits('acct', %s, 100.0, 'g-1', true)"),
                (MAX_CREDITS - 2,),
            )
            # Version 2 let a grant pass the cap: what version 3 refuses.
            got = conn.execute(
                store._format("SELECT {schema}.grant_credits('over', %s, 100.0, 'g-2', true)"),
                (MAX_CREDITS,),
            ).fetchone()
            conn.execute(
                store._format("SELECT {schema}.grant_credits('over', 5, 100.0, 'g-3', true)")
            )
            assert got == (MAX_CREDITS,)
    finally:
        store.close()


def test_a_version_2_schema_is_migrated_to_the_current_version(
    url: str, make_store: Callable[..., PostgresStore]
) -> None:
    assert SCHEMA_VERSION >= 3
    schema = f"jctest_{uuid.uuid4().hex[:12]}"
    _make_v2_schema(url, schema)
    strict = make_store(schema, auto_migrate=False)
    assert strict.schema_version() == 2
    with pytest.raises(StoreUnavailable, match="jobcredits migrate"):
        strict.balance("acct")

    store = make_store(schema)
    assert store.migrate() == SCHEMA_VERSION
    with psycopg.connect(url, autocommit=True) as conn:
        versions = conn.execute(
            sql.SQL("SELECT version FROM {}.schema_version ORDER BY version").format(
                sql.Identifier(schema)
            )
        ).fetchall()
    assert versions == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
    ledger = Ledger(store, clock=FakeClock(), balances=True)
    assert ledger.balance("acct") == MAX_CREDITS - 2  # the data survived
    assert [e.kind for e in ledger.journal()] == ["grant", "grant", "grant"]

    with pytest.raises(InvalidArgument, match="past 9007199254740991"):
        ledger.grant("acct", 3)
    assert ledger.balance("acct") == MAX_CREDITS - 2
    assert len(ledger.journal()) == 3  # nothing journaled for the refused grant
    assert ledger.grant("acct", 2) == MAX_CREDITS
    # A balance version 2 let past the cap: adding is refused, taking is not.
    with pytest.raises(InvalidArgument):
        ledger.grant("over", 1)
    assert ledger.grant("over", -5) == MAX_CREDITS
    assert strict.balance("acct") == MAX_CREDITS  # the strict store now finds it current
    assert store.migrate() == SCHEMA_VERSION  # idempotent


def test_racing_grants_cannot_both_pass_the_cap(
    url: str, make_store: Callable[..., PostgresStore]
) -> None:
    """The cap is checked under the balance row's lock."""
    store = make_store(f"jctest_{uuid.uuid4().hex[:12]}", max_size=4)
    ledger = Ledger(store, clock=FakeClock(), balances=True)
    ledger.grant("acct", MAX_CREDITS - 10)
    outcomes: list[str] = []
    barrier = threading.Barrier(4)

    def grant() -> None:
        barrier.wait()
        try:
            ledger.grant("acct", 6)
            outcomes.append("ok")
        except InvalidArgument:
            outcomes.append("cap")

    threads = [threading.Thread(target=grant) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["cap", "cap", "cap", "ok"]
    assert ledger.balance("acct") == MAX_CREDITS - 4
