"""The one URL redactor (issue 12, item 2): every URL printed by a store, the
ledger, the CLI or the Django checks shows no credential: neither the
userinfo password nor a query option that holds a secret (``password``,
``sslpassword``, ``passfile``, a token...)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from jobcredits_plugin import ConfigurationError, Ledger, StoreUnavailable
from jobcredits_plugin.stores import SQLiteStore, from_url, redact_url
from jobcredits_plugin.stores._urls import MASK, is_secret_option, redact_text

from .._secrets import CANARY, POSTGRES_URL, assert_no_secret


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the redactor itself -------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            f"postgresql://u:{CANARY}@db.example:5432/app?password={CANARY}&sslmode=require",
            "postgresql://u:***@db.example:5432/app?password=***&sslmode=require",
        ),
        (
            f"postgresql://u@h/d?sslpassword={CANARY}&passfile=/home/u/.pgpass&application_name=x",
            "postgresql://u@h/d?sslpassword=***&passfile=***&application_name=x",
        ),
        (f"redis://:{CANARY}@h:6379/0?password={CANARY}", "redis://:***@h:6379/0?password=***"),
        (f"rediss://user:{CANARY}@h/0?prefix=jc", "rediss://user:***@h/0?prefix=jc"),
        (
            f"redis+unix:///tmp/r.sock?db=1&password={CANARY}",
            "redis+unix:///tmp/r.sock?db=1&password=***",
        ),
        (
            f"sqlite:///jobs.db?api_token={CANARY}&timeout=2",
            "sqlite:///jobs.db?api_token=***&timeout=2",
        ),
        (
            f"postgresql://h/d?Client_Secret={CANARY}&x_cred={CANARY}&pwd={CANARY}",
            "postgresql://h/d?Client_Secret=***&x_cred=***&pwd=***",
        ),
        ("sqlite:////var/lib/app/jobs.db?timeout=2", "sqlite:////var/lib/app/jobs.db?timeout=2"),
        ("memory://", "memory://"),
        ("postgresql://u@h:5432/d", "postgresql://u@h:5432/d"),
    ],
)
def test_redact_url_masks_every_credential_and_keeps_the_rest(url: str, expected: str) -> None:
    """The userinfo password and every secret-bearing query option are masked; the
    host, port, database and other options stay, written as they were."""
    assert redact_url(url) == expected
    assert_no_secret(redact_url(url))


@pytest.mark.parametrize(
    "name",
    [
        "password",
        "sslpassword",
        "passfile",
        "PASSWORD",
        "pwd",
        "client_secret",
        "token",
        "sslkey",
        "credentials",
        "auth_token",
        "require_auth",
    ],
)
def test_secret_option_names(name: str) -> None:
    assert is_secret_option(name)


@pytest.mark.parametrize(
    "name",
    [
        "sslmode",
        "host",
        "db",
        "prefix",
        "timeout",
        "journal_max_age",
        "schema",
        "user",
        "JOBCREDITS_TRACEBACK",
        "JOBCREDITS_URL",
    ],
)
def test_ordinary_option_names(name: str) -> None:
    assert not is_secret_option(name)


def test_redact_url_of_something_unparsable_shows_no_part_of_it() -> None:
    assert redact_url(f"postgresql://u:{CANARY}@[::1") == "<unparsable URL>"


def test_redact_text_masks_urls_conninfo_pairs_and_echoed_secrets() -> None:
    """In free text: a URL anywhere, a libpq ``password='...'`` pair, and a secret
    of the URL the store was opened with, echoed on its own by a driver."""
    text = (
        f"failed: 'postgresql://u:{CANARY}@h/d?sslpassword={CANARY}' "
        f"host=h password='{CANARY} x' user=u; auth failed for {CANARY}"
    )
    out = redact_text(text, f"redis://u:{CANARY}@h/0")
    assert_no_secret(out)
    assert "postgresql://u:***@h/d?sslpassword=***" in out
    assert f"password={MASK}" in out
    assert "host=h" in out
    assert "user=u" in out
    assert redact_text("set JOBCREDITS_TRACEBACK=1") == "set JOBCREDITS_TRACEBACK=1"


# -- where URLs are printed ----------------------------------------------------------


def test_a_postgres_store_repr_ledger_repr_and_store_unavailable_show_no_secret() -> None:
    """repr(store), repr(ledger) and the StoreUnavailable of an unreachable server
    (the message a log line and a 503's log get) mask the password everywhere."""
    pytest.importorskip("psycopg")
    ledger = Ledger.from_url(POSTGRES_URL)
    try:
        assert_no_secret(repr(ledger), repr(ledger.store))
        assert "password=***" in repr(ledger.store)
        with pytest.raises(StoreUnavailable) as info:
            ledger.charge("acct", "job-1")
        assert_no_secret(str(info.value), info.value.detail)
        assert "127.0.0.1" in str(info.value)  # the operator still learns where
    finally:
        ledger.close()


def test_a_postgres_keyword_conninfo_repr_shows_no_secret() -> None:
    pytest.importorskip("psycopg")
    from jobcredits_plugin.stores import PostgresStore

    store = PostgresStore(f"host=127.0.0.1 port=1 user=u password={CANARY} sslpassword={CANARY}")
    try:
        assert_no_secret(repr(store))
    finally:
        store.close()


def test_a_redis_url_with_a_password_option_is_rejected_without_repeating_it() -> None:
    """A Redis URL with ?password= is still rejected as an unknown option, but
    the message does not repeat the password."""
    pytest.importorskip("redis")
    with pytest.raises(ConfigurationError) as info:
        from_url(f"redis://127.0.0.1:{_free_port()}/0?password={CANARY}")
    assert "password" in str(info.value)
    assert_no_secret(str(info.value))


def test_an_unreachable_redis_store_shows_no_secret() -> None:
    pytest.importorskip("redis")
    url = f"redis://user:{CANARY}@127.0.0.1:{_free_port()}/0?socket_connect_timeout=0.5&retries=0"
    try:
        ledger = Ledger.from_url(url)
    except ConfigurationError:  # no retries option on this version
        ledger = Ledger.from_url(url.replace("&retries=0", ""))
    try:
        assert_no_secret(repr(ledger), repr(ledger.store))
        with pytest.raises(StoreUnavailable) as info:
            ledger.charge("acct", "job-1")
        assert_no_secret(str(info.value))
    finally:
        ledger.close()


def test_a_sqlite_url_with_a_password_option_is_rejected_without_repeating_it(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigurationError) as info:
        from_url(f"sqlite:///{tmp_path}/jobs.db?password={CANARY}")
    assert "password" in str(info.value)
    assert_no_secret(str(info.value))


def test_the_cli_prints_no_secret_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    """``jobcredits stats --url ...`` against an unreachable server: one error line,
    without the password."""
    pytest.importorskip("psycopg")
    from jobcredits_plugin.cli import main

    status = main(["stats", "--url", POSTGRES_URL])
    out, err = capsys.readouterr()
    assert status != 0
    assert "error" in err
    assert_no_secret(out, err)


def test_migrate_prints_no_secret(capsys: pytest.CaptureFixture[str]) -> None:
    """``jobcredits migrate --url ...`` against an unreachable server."""
    pytest.importorskip("psycopg")
    from jobcredits_plugin.cli import main

    status = main(["migrate", "--url", POSTGRES_URL])
    out, err = capsys.readouterr()
    assert status != 0
    assert_no_secret(out, err)
    assert "127.0.0.1" in err


def test_migrate_with_a_bad_url_option_prints_no_secret(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("psycopg")
    from jobcredits_plugin.cli import main

    status = main(["migrate", "--url", f"postgresql://u@h/d?sslpassword={CANARY}&bogus_opt=1"])
    out, err = capsys.readouterr()
    assert status != 0
    assert_no_secret(out, err)


def test_the_flask_command_prints_no_secret() -> None:
    """``flask jobcredits snapshot`` on an unreachable store: one error line, no password."""
    flask = pytest.importorskip("flask")
    pytest.importorskip("psycopg")
    from jobcredits_plugin import header
    from jobcredits_plugin.flask import JobCredits

    app = flask.Flask(__name__)
    app.config.update(JOBCREDITS_URL=POSTGRES_URL, JOBCREDITS_ACCOUNT=header("X-Account"))
    JobCredits(app)
    result = app.test_cli_runner().invoke(args=["jobcredits", "snapshot"])
    assert result.exit_code != 0
    assert_no_secret(result.output, getattr(result, "stderr", ""))
    assert "127.0.0.1" in result.output + getattr(result, "stderr", "")


@pytest.mark.parametrize(
    "text", ["x" * 200_000, "a." * 100_000, "a-b" * 60_000, "h://" * 50_000, "k=" * 100_000]
)
def test_redact_text_is_linear_in_a_long_argument(text: str) -> None:
    """A 100,000-character CLI argument or message took minutes to redact:
    both patterns were retried at every position inside a long run of name
    characters. Now each run is scanned once (well under a second here)."""
    start = time.perf_counter()
    redact_text(text)
    assert time.perf_counter() - start < 1.0


def test_redact_text_still_masks_a_dotted_secret_name() -> None:
    """Starting a name only where a run starts keeps a dotted or prefixed
    name whole, and such a name that holds a secret word is still masked."""
    assert redact_text("x.password=abc user=bob") == "x.password=*** user=bob"
    assert redact_text("see xpostgresql://u:pw@h/db") == "see xpostgresql://u:***@h/db"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres:pw@127.0.0.1/x?x=\udc80",
        "postgresql://postgres:pw@127.0.0.1/x?application_name=\udc80",
        "postgresql://postgres:pw@127.0.0.1/\udc80",
        "postgresql://postgres:pw@127.0.0.1/x?schema=a\udc80",
        "postgresql://postgres:pw@127.0.0.1/x?sslmode=\x00",
        "redis://u:pw@\udc80:6379/0",
        "memory://\udc80",
    ],
)
def test_a_url_holding_a_lone_surrogate_or_nul_is_a_configuration_error(url: str) -> None:
    """A lone surrogate raised UnicodeEncodeError from PostgreSQL's URL
    parsing (and so from the Django checks, which call from_url); a NUL cuts a
    C string short. Refused before any driver sees them, password masked."""
    with pytest.raises(ConfigurationError) as info:
        from_url(url).close()
    assert ":pw@" not in str(info.value)


def test_postgres_store_itself_refuses_a_surrogate_in_its_url_or_conninfo() -> None:
    """The same check when PostgresStore is built directly (from_url or a
    conninfo string), not through the stores' from_url."""
    pytest.importorskip("psycopg")
    from jobcredits_plugin.stores import PostgresStore

    with pytest.raises(ConfigurationError):
        PostgresStore.from_url("postgresql://postgres@127.0.0.1/x?x=\udc80")
    with pytest.raises(ConfigurationError):
        PostgresStore("host=127.0.0.1 dbname=\udc80")


def test_a_sqlite_path_holding_nul_is_a_configuration_error(tmp_path: Path) -> None:
    """sqlite3 raised a bare ValueError ("embedded null byte")."""
    with pytest.raises(ConfigurationError):
        from_url(f"sqlite:///{tmp_path}/a%00b.db")
    with pytest.raises(ConfigurationError):
        SQLiteStore(f"{tmp_path}/a\x00b.db")


@pytest.mark.parametrize(
    "url",
    ["sqlite:///file::memory:", "sqlite:///file::memory:?timeout=1", "sqlite:////:memory:"],
)
def test_a_sqlite_url_that_means_memory_but_names_a_file_is_refused(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sqlite:///file::memory: (SQLAlchemy's URI spelling) silently created a
    file named "file::memory:" in the working directory; sqlite:////:memory:
    one named ":memory:" in /. Both are the app's mistake, and nothing is created."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError):
        from_url(url)
    assert list(tmp_path.iterdir()) == []
