"""``jobcredits migrate``: creates or updates a PostgreSQL store's schema and
prints its version; other stores have nothing to migrate."""

from __future__ import annotations

import os
import urllib.parse
import uuid

import pytest

from jobcredits_plugin.cli import main

POSTGRES_URL = os.environ.get(
    "JOBCREDITS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


@pytest.mark.parametrize("url", ["memory://", "sqlite:///jobs.db", "redis://127.0.0.1:6379/0"])
def test_other_stores_have_nothing_to_migrate(
    url: str, capsys: pytest.CaptureFixture[str], tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(str(tmp_path))
    assert main(["migrate", "--url", url]) == 0
    assert "nothing to migrate" in capsys.readouterr().out
    assert not os.path.exists("jobs.db")  # nothing was created


def test_a_bad_url_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate", "--url", "nosuch://x"]) != 0
    assert "unknown store URL scheme" in capsys.readouterr().err


def test_no_url_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JOBCREDITS_URL", raising=False)
    assert main(["migrate"]) == 2
    assert "no store URL" in capsys.readouterr().err


@pytest.fixture
def pg_url() -> str:
    pytest.importorskip("psycopg", reason="the postgres extra is not installed")
    from tests.stores.conftest import POSTGRES_DEFAULT, POSTGRES_URL_ENV, _server_url

    return _server_url(POSTGRES_URL_ENV, POSTGRES_DEFAULT, "PostgreSQL")


def test_migrate_creates_the_schema_and_is_idempotent(
    pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from jobcredits_plugin.stores._postgres import SCHEMA_VERSION, PostgresStore

    schema = f"jctest_{uuid.uuid4().hex[:12]}"
    parts = urllib.parse.urlsplit(pg_url)
    query = urllib.parse.urlencode([*urllib.parse.parse_qsl(parts.query), ("schema", schema)])
    url = urllib.parse.urlunsplit(parts._replace(query=query))
    try:
        assert main(["migrate", "--url", url]) == 0
        assert f"is at version {SCHEMA_VERSION}" in capsys.readouterr().out
        assert main(["migrate", "--url", url]) == 0
        assert f"is at version {SCHEMA_VERSION}" in capsys.readouterr().out
        assert PostgresStore.from_url(url).schema_version() == SCHEMA_VERSION
    finally:
        PostgresStore.from_url(pg_url, schema=schema).drop()


def test_an_unreachable_server_is_an_error_without_the_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("psycopg", reason="the postgres extra is not installed")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["migrate", "--url", f"postgresql://u:s3cret@127.0.0.1:{port}/db"]) == 1
    err = capsys.readouterr().err
    assert "s3cret" not in err
    assert "cannot connect" in err


def test_migrate_upgrades_a_version_1_schema(
    pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A schema left at version 1 (before the journal) is brought to the current
    version, its data kept, and the journal works afterwards."""
    from jobcredits_plugin import Ledger
    from jobcredits_plugin.stores._postgres import SCHEMA_VERSION, PostgresStore
    from tests.stores.test_postgres_journal import make_v1_schema

    schema = f"jctest_{uuid.uuid4().hex[:12]}"
    parts = urllib.parse.urlsplit(pg_url)
    query = urllib.parse.urlencode([*urllib.parse.parse_qsl(parts.query), ("schema", schema)])
    url = urllib.parse.urlunsplit(parts._replace(query=query))
    try:
        make_v1_schema(pg_url, schema)
        store = PostgresStore.from_url(url, auto_migrate=False)
        try:
            assert store.schema_version() == 1
            assert main(["migrate", "--url", url]) == 0
            assert f"is at version {SCHEMA_VERSION}" in capsys.readouterr().out
            assert store.schema_version() == SCHEMA_VERSION
            ledger = Ledger(store, balances=True)
            assert ledger.balance("acct") == 5
            ledger.grant("acct", 1)
            assert [(e.kind, e.balance) for e in store.read_journal(0, 10)] == [("grant", 6)]
        finally:
            store.close()
    finally:
        PostgresStore.from_url(pg_url, schema=schema).drop()
