"""DjangoStore for the store tests: Django configured, the tables migrated,
and an emptied store per test.

Django is configured once per process (``settings.configure``, with the
aliases of ``tests/integrations/django/settings.py``): ``jc_sqlite``, a SQLite
file, and ``jc_postgres``, a schema of this run on the test PostgreSQL
server. The tables are created by the app's real migrations (``migrate``),
once per alias and process; each store a test asks for starts empty.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import Any

SQLITE_ALIAS = "jc_sqlite"
POSTGRES_ALIAS = "jc_postgres"
MYSQL_ALIAS = "jc_mysql"
MYSQL_URL_ENV = "JOBCREDITS_TEST_MYSQL_URL"

_migrated: set[str] = set()


def configure(values: tuple[str, str, str] | None = None) -> tuple[str, str, str]:
    """Configure Django (if no one has) and return the store databases'
    values, for a child process to configure itself the same way."""
    from tests.integrations.django import settings as test_settings

    if os.environ.get(MYSQL_URL_ENV):
        try:
            import MySQLdb  # noqa: F401
        except ImportError:  # PyMySQL stands in for mysqlclient, if it is there
            import pymysql

            pymysql.install_as_MySQLdb()

    test_settings.configure_once(values)
    from django.conf import settings

    if values is not None:
        return values
    db = settings.DATABASES[SQLITE_ALIAS]["NAME"]
    options = settings.DATABASES[POSTGRES_ALIAS]["OPTIONS"]["options"]
    return (db, test_settings.STORE_DATABASES[1], options.rpartition("=")[2])


def _create_schema(schema: str) -> None:
    import psycopg

    from tests.integrations.django import settings as test_settings

    url = test_settings.STORE_DATABASES[1]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')

    def drop() -> None:
        from django.db import connections

        connections.close_all()
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        except psycopg.Error:  # pragma: no cover - the server went away
            pass

    atexit.register(drop)


def _create_mysql_database(name: str) -> None:
    from django.db import connections

    conn = connections[MYSQL_ALIAS]
    settings = conn.settings_dict
    import MySQLdb

    server = MySQLdb.connect(
        host=settings["HOST"],
        port=int(settings["PORT"] or 3306),
        user=settings["USER"],
        password=settings["PASSWORD"],
    )
    try:
        server.cursor().execute(f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4")
    finally:
        server.close()

    def drop() -> None:
        connections.close_all()
        again = MySQLdb.connect(
            host=settings["HOST"],
            port=int(settings["PORT"] or 3306),
            user=settings["USER"],
            password=settings["PASSWORD"],
        )
        try:
            again.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            again.close()

    atexit.register(drop)


def migrate(alias: str) -> None:
    """Create the store's tables on ``alias`` with the app's migrations (once)."""
    if alias in _migrated:
        return
    from django.core.management import call_command

    values = configure()
    if alias == POSTGRES_ALIAS:
        _create_schema(values[2])
    if alias == MYSQL_ALIAS:
        _create_mysql_database(values[2])
    call_command("migrate", "jobcredits", database=alias, verbosity=0)
    _migrated.add(alias)


def empty(alias: str) -> None:
    """Delete every row of the store's tables on ``alias``."""
    from jobcredits_plugin.django import models

    for model in (
        models.Job,
        models.Balance,
        models.GrantId,
        models.JournalEntry,
        models.JournalCursor,
    ):
        model.objects.using(alias).all().delete()
    models.JournalState.objects.using(alias).update(last_seq=0)


def fresh_store(alias: str, **options: Any) -> Any:
    """An empty DjangoStore on ``alias``."""
    from jobcredits_plugin.django import DjangoStore

    migrate(alias)
    empty(alias)
    return DjangoStore(alias, **options)


def child_preamble(values: tuple[str, str, str]) -> str:
    """Python source a child process runs first to configure the same
    Django databases (its ``sys.path`` must reach the tests package)."""
    return (
        f"import sys; sys.path[:0] = {sys.path!r}\n"
        "from tests.stores._django import configure\n"
        f"configure({values!r})\n"
    )


def env() -> dict[str, str]:
    """The environment for such a child."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
