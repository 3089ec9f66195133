"""The PostgreSQL store's schema as earlier versions of this package left it,
for the tests of upgrades.

``postgres_history/vN.sql`` is the migration step to schema version N exactly
as it shipped, tables and functions together (before the store kept its schema
steps in ``migrations/`` and its functions, written once, in
``functions.sql``). A schema built from these is the one a database upgraded
release by release has, old function bodies included: what ``migrate()`` must
bring to the current version, and what processes still running an older
release call during a rolling upgrade.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jobcredits_plugin.stores._postgres import PostgresStore
from jobcredits_plugin.stores._postgres._schema import _VERSION_TABLE

HISTORY = Path(__file__).parent / "postgres_history"

#: The versions a historic schema can be built at.
VERSIONS = tuple(range(1, len(list(HISTORY.glob("v*.sql"))) + 1))


def historic_step(version: int) -> str:
    """The migration step to ``version`` as it shipped (placeholders unfilled)."""
    return (HISTORY / f"v{version}.sql").read_text(encoding="utf-8")


def make_schema_at(conn: Any, store: PostgresStore, version: int) -> None:
    """Create ``store.schema`` on ``conn`` (in its current transaction, if any)
    exactly as release after release up to ``version`` left it, its versions
    recorded in ``schema_version``."""
    conn.execute(store._format(_VERSION_TABLE))
    for step in range(1, version + 1):
        conn.execute(store._format(historic_step(step)))
        conn.execute(
            store._format("INSERT INTO {schema}.schema_version VALUES (%s)"),
            (step,),
        )
