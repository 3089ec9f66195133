"""PostgreSQL: a schema upgraded from any earlier version has exactly the
catalog of a fresh one.

The store keeps its schema steps (tables, columns, indexes, types) in
``migrations/`` and every function once in ``functions.sql``, which each
migrate re-applies. A database an older release created at version N (built
here from the historic steps, old function bodies and all) must end, once
migrated, with the same functions (signatures and bodies), tables, columns,
indexes, constraints and types as a schema created fresh by this release.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.stores.conftest import POSTGRES_DEFAULT, POSTGRES_URL_ENV, _server_url

psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed")

from jobcredits_plugin.stores._postgres import SCHEMA_VERSION, PostgresStore  # noqa: E402
from tests.stores._pg_history import VERSIONS, make_schema_at  # noqa: E402

#: What the catalog holds of a schema, one query a part; ``%(ns)s`` is the
#: schema's name. Names of the schema in the answers are replaced by a
#: placeholder, so two schemas compare.
CATALOG = {
    "functions": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid), pg_get_functiondef(p.oid)
          FROM pg_proc p
         WHERE p.pronamespace = %(ns)s::text::regnamespace
         ORDER BY 1, 2""",
    "columns": """
        SELECT table_name, ordinal_position, column_name, data_type, udt_name,
               is_nullable, column_default, collation_name
          FROM information_schema.columns
         WHERE table_schema = %(ns)s
         ORDER BY 1, 2""",
    "relations": """
        SELECT c.relname, c.relkind, a.attnum, a.attname,
               format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attcollation::regcollation
          FROM pg_class c
          LEFT JOIN pg_attribute a
            ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
         WHERE c.relnamespace = %(ns)s::text::regnamespace
         ORDER BY 1, 3""",
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes
         WHERE schemaname = %(ns)s ORDER BY 1, 2""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, contype, pg_get_constraintdef(oid)
          FROM pg_constraint
         WHERE connamespace = %(ns)s::text::regnamespace
         ORDER BY 1, 2""",
    "types": """
        SELECT typname, typtype FROM pg_type
         WHERE typnamespace = %(ns)s::text::regnamespace ORDER BY 1""",
    "versions": "SELECT version FROM {schema}.schema_version ORDER BY 1",
    "journal_state": "SELECT one, last_seq FROM {schema}.journal_state",
}


@pytest.fixture(scope="module")
def url() -> str:
    return _server_url(POSTGRES_URL_ENV, POSTGRES_DEFAULT, "PostgreSQL")


def _catalog(url: str, store: PostgresStore) -> dict[str, list[tuple[Any, ...]]]:
    def plain(value: Any) -> Any:
        return value.replace(store.schema, "{schema}") if isinstance(value, str) else value

    with psycopg.connect(url, autocommit=True) as conn:
        return {
            part: [
                tuple(plain(v) for v in row)
                for row in conn.execute(
                    store._format(query.replace("%(ns)s", "{schema_name}"))
                ).fetchall()
            ]
            for part, query in CATALOG.items()
        }


@pytest.fixture(scope="module")
def fresh(url: str) -> Iterator[dict[str, list[tuple[Any, ...]]]]:
    store = PostgresStore.from_url(url, schema=f"jctest_{uuid.uuid4().hex[:12]}")
    try:
        assert store.migrate() == SCHEMA_VERSION
        yield _catalog(url, store)
    finally:
        store.drop()
        store.close()


def test_the_fresh_catalog_is_what_this_test_expects(
    fresh: dict[str, list[tuple[Any, ...]]],
) -> None:
    """The comparison below compares something: every part is filled in."""
    assert all(fresh.values())
    assert fresh["versions"] == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
    assert len(fresh["functions"]) >= 20
    assert {"claim", "refund", "prune", "grant_credits"} <= {f[0] for f in fresh["functions"]}


@pytest.mark.parametrize("version", VERSIONS)
def test_a_schema_left_at_version_n_migrates_to_the_fresh_catalog(
    url: str, fresh: dict[str, list[tuple[Any, ...]]], version: int
) -> None:
    store = PostgresStore.from_url(url, schema=f"jctest_{uuid.uuid4().hex[:12]}")
    try:
        with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
            make_schema_at(conn, store, version)
        assert store.schema_version() == version
        assert store.migrate() == SCHEMA_VERSION
        got = _catalog(url, store)
        for part in CATALOG:
            assert got[part] == fresh[part], part
        assert store.migrate() == SCHEMA_VERSION  # again: still the same
        assert _catalog(url, store) == fresh
    finally:
        store.drop()
        store.close()
