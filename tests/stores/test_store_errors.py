"""Which store errors are StoreUnavailable (issue 12, item 9).

Only "could not reach the store, or it cannot serve right now" is
StoreUnavailable: the 503 with Retry-After that ``fail_open`` may let through
uncharged. Integrity, programming and data errors are bugs: they are raised
as they are, nothing is recorded, and ``fail_open`` never turns them into
free service. (SQLite used to map every DatabaseError to StoreUnavailable,
Redis every RedisError.)
"""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobcredits_plugin import ConfigurationError, Ledger, StoreUnavailable, charges_credit
from jobcredits_plugin.stores import BaseStore, MemoryStore, SQLiteStore
from jobcredits_plugin.stores._sqlite import is_unavailable as sqlite_unavailable
from jobcredits_plugin.testing import FakeClock
from tests.stores.conftest import CLEANUP, STORES


def _fail_open_handler(ledger: Ledger) -> tuple[Callable[[], str], list[int]]:
    calls: list[int] = []

    @charges_credit(ledger, account=lambda: "acct", job_id=lambda: "job-1", fail_open=True)
    def handler() -> str:
        calls.append(1)
        return "ok"

    return handler, calls


# -- the ledger, whatever the store ----------------------------------------------------


class _Raising(MemoryStore):
    """A store whose claim raises ``error``."""

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error

    def claim(self, req: Any) -> Any:
        raise self.error


def test_unreachable_os_error_from_any_store_is_unavailable_and_fail_open_passes_it() -> None:
    ledger = Ledger(_Raising(ConnectionRefusedError("refused")), clock=FakeClock())
    with pytest.raises(StoreUnavailable):
        ledger.charge("acct", "job-1")
    handler, calls = _fail_open_handler(ledger)
    assert handler() == "ok"
    assert calls == [1]


@pytest.mark.parametrize(
    "error", [KeyError("k"), TypeError("t"), ValueError("v"), RuntimeError("r")]
)
def test_a_bug_in_any_store_is_raised_and_fail_open_does_not_pass_it(
    error: BaseException,
) -> None:
    ledger = Ledger(_Raising(error), clock=FakeClock())
    with pytest.raises(type(error)):
        ledger.charge("acct", "job-1")
    handler, calls = _fail_open_handler(ledger)
    with pytest.raises(type(error)):
        handler()
    assert calls == []


# -- SQLite ----------------------------------------------------------------------------


def _sqlite_error(cls: type[sqlite3.Error], code: int, text: str = "x") -> sqlite3.Error:
    exc = cls(text)
    exc.sqlite_errorcode = code  # type: ignore[attr-defined]
    return exc


@pytest.mark.parametrize(
    ("code", "unavailable"),
    [
        (5, True),  # SQLITE_BUSY
        (6, True),  # SQLITE_LOCKED
        (10, True),  # SQLITE_IOERR
        (10 | (1 << 8), True),  # SQLITE_IOERR_READ, an extended code
        (13, True),  # SQLITE_FULL
        (14, True),  # SQLITE_CANTOPEN
        (1, False),  # SQLITE_ERROR: a malformed statement
        (19, False),  # SQLITE_CONSTRAINT
        (20, False),  # SQLITE_MISMATCH
        (11, False),  # SQLITE_CORRUPT
        (26, False),  # SQLITE_NOTADB
    ],
)
def test_sqlite_classifies_by_error_code(code: int, unavailable: bool) -> None:
    for cls in (sqlite3.OperationalError, sqlite3.DatabaseError, sqlite3.IntegrityError):
        assert sqlite_unavailable(_sqlite_error(cls, code)) is unavailable


def test_sqlite_classifies_by_message_without_an_error_code() -> None:
    assert sqlite_unavailable(sqlite3.OperationalError("database is locked"))
    assert sqlite_unavailable(sqlite3.OperationalError("disk I/O error"))
    assert not sqlite_unavailable(sqlite3.OperationalError("no such column: x"))
    assert not sqlite_unavailable(sqlite3.IntegrityError("CHECK constraint failed"))
    assert not sqlite_unavailable(KeyError("not a driver error"))


def _sqlite_with_trigger(tmp_path: Path, body: str) -> SQLiteStore:
    path = tmp_path / "jobs.db"
    store = SQLiteStore(path, timeout=0.2)
    store.balance("warm-up")  # creates the schema
    # sqlite3's own context manager commits but does not close.
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(f"CREATE TRIGGER boom BEFORE INSERT ON jobcredits_jobs BEGIN {body}; END")
    return store


def test_sqlite_constraint_error_is_raised_not_unavailable(tmp_path: Path) -> None:
    store = _sqlite_with_trigger(tmp_path, "SELECT RAISE(ABORT, 'a bug')")
    ledger = Ledger(store, clock=FakeClock(), balances=True)
    ledger.grant("acct", 5)
    with pytest.raises(sqlite3.IntegrityError, match="a bug"):
        ledger.charge("acct", "job-1")
    handler, calls = _fail_open_handler(ledger)
    with pytest.raises(sqlite3.IntegrityError):
        handler()
    assert calls == []
    assert ledger.snapshot() == []
    assert ledger.balance("acct") == 5  # rolled back
    store.close()


def test_sqlite_locked_past_the_busy_timeout_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = SQLiteStore(path, timeout=0.2)
    store.balance("warm-up")
    ledger = Ledger(store, clock=FakeClock())
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreUnavailable):
            ledger.charge("acct", "job-1")
        handler, calls = _fail_open_handler(ledger)
        assert handler() == "ok"
        assert calls == [1]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert ledger.charge("acct", "job-1").charged
    store.close()


def test_sqlite_unopenable_file_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()  # a directory where the file should be
    with pytest.raises(StoreUnavailable):  # at construction or at the first use
        Ledger(SQLiteStore(tmp_path / "dir.db"), clock=FakeClock()).charge("acct", "job-1")


# -- Redis -----------------------------------------------------------------------------


@pytest.fixture
def redis_store(tmp_path: Path) -> Iterator[BaseStore]:
    store = STORES["redis"](tmp_path)
    yield store
    store.close()
    CLEANUP["redis"](store)


def _redis_cases() -> list[Any]:
    redis = pytest.importorskip("redis")
    e = redis.exceptions
    return [
        pytest.param(e.ConnectionError("refused"), True, id="ConnectionError"),
        pytest.param(e.TimeoutError("timed out"), True, id="TimeoutError"),
        pytest.param(e.BusyLoadingError("loading"), True, id="BusyLoadingError"),
        pytest.param(e.ReadOnlyError("replica"), True, id="ReadOnlyError"),
        pytest.param(e.TryAgainError("resharding"), True, id="TryAgainError"),
        pytest.param(e.ClusterDownError("down"), True, id="ClusterDownError"),
        pytest.param(e.AuthenticationError("WRONGPASS"), True, id="AuthenticationError"),
        pytest.param(e.ResponseError("BUSY Redis is busy running a script"), True, id="BUSY"),
        pytest.param(OSError("reset"), True, id="OSError"),
        pytest.param(e.ResponseError("ERR user_script:12: oops"), False, id="script-error"),
        pytest.param(
            e.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
            False,
            id="WRONGTYPE",
        ),
        pytest.param(e.DataError("Invalid input of type: 'dict'"), False, id="DataError"),
        pytest.param(e.NoScriptError("NOSCRIPT"), False, id="NoScriptError"),
    ]


@pytest.mark.parametrize(("error", "unavailable"), _redis_cases())
def test_redis_classifies_by_exception_type(
    redis_store: BaseStore, error: BaseException, unavailable: bool
) -> None:
    from jobcredits_plugin.stores._redis import is_unavailable

    assert is_unavailable(error) is unavailable

    class Raiser:
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            raise error

    redis_store._scripts = {  # type: ignore[attr-defined]
        name: Raiser()
        for name in redis_store._scripts  # type: ignore[attr-defined]
    }
    ledger = Ledger(redis_store, clock=FakeClock())
    handler, calls = _fail_open_handler(ledger)
    if unavailable:
        with pytest.raises(StoreUnavailable):
            ledger.charge("acct", "job-1")
        assert handler() == "ok"
        assert calls == [1]
    else:
        with pytest.raises(type(error)):
            ledger.charge("acct", "job-1")
        with pytest.raises(type(error)):
            handler()
        assert calls == []


def test_redis_wrong_type_in_a_key_is_a_bug_not_unavailable(redis_store: BaseStore) -> None:
    """A real error reply from a script (the balance key holds a list): raised
    as it is, the script wrote nothing, and fail_open does not pass it."""
    redis = pytest.importorskip("redis")
    ledger = Ledger(redis_store, clock=FakeClock(), balances=True)
    client = redis_store._client  # type: ignore[attr-defined]
    client.rpush(redis_store.balance_key("acct"), "not-a-number")  # type: ignore[attr-defined]
    with pytest.raises(redis.exceptions.ResponseError):
        ledger.charge("acct", "job-1")
    handler, calls = _fail_open_handler(ledger)
    with pytest.raises(redis.exceptions.ResponseError):
        handler()
    assert calls == []
    assert ledger.snapshot() == []


def test_redis_unreachable_server_is_unavailable() -> None:
    pytest.importorskip("redis")
    from jobcredits_plugin.stores import RedisStore

    store = RedisStore.from_url(
        "redis://127.0.0.1:9/0", socket_timeout=0.2, socket_connect_timeout=0.2, retries=0
    )
    ledger = Ledger(store, clock=FakeClock())
    with pytest.raises(StoreUnavailable):
        ledger.charge("acct", "job-1")
    handler, calls = _fail_open_handler(ledger)
    assert handler() == "ok"
    assert calls == [1]
    store.close()


# -- PostgreSQL ------------------------------------------------------------------------


@pytest.fixture
def postgres_store(tmp_path: Path) -> Iterator[BaseStore]:
    store = STORES["postgres"](tmp_path)
    yield store
    store.close()
    CLEANUP["postgres"](store)


def _pg_trigger(store: BaseStore, sqlstate: str) -> None:
    import psycopg

    store.migrate()  # type: ignore[attr-defined]
    schema = store.schema  # type: ignore[attr-defined]
    fn = f"boom_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(store.conninfo, autocommit=True) as conn:  # type: ignore[attr-defined]
        conn.execute(
            f"CREATE FUNCTION {schema}.{fn}() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '{sqlstate}'; END $$"
        )
        conn.execute(
            f"CREATE TRIGGER {fn} BEFORE INSERT OR UPDATE ON {schema}.jobs "
            f"FOR EACH ROW EXECUTE FUNCTION {schema}.{fn}()"
        )


@pytest.mark.parametrize(
    ("sqlstate", "unavailable"),
    [
        ("23505", False),  # unique_violation: IntegrityError
        ("22003", False),  # numeric_value_out_of_range: DataError
        ("42703", False),  # undefined_column: ProgrammingError
        ("54001", False),  # statement_too_complex: an OperationalError, but a bug
        ("55P03", True),  # lock_not_available
        ("53100", True),  # disk_full
        ("57P01", True),  # admin_shutdown
        ("40001", True),  # serialization_failure: rolled back
    ],
)
def test_postgres_classifies_by_error_class(
    postgres_store: BaseStore, sqlstate: str, unavailable: bool
) -> None:
    import psycopg

    _pg_trigger(postgres_store, sqlstate)
    ledger = Ledger(postgres_store, clock=FakeClock(), balances=True)
    ledger.grant("acct", 5)
    handler, calls = _fail_open_handler(ledger)
    if unavailable:
        with pytest.raises(StoreUnavailable):
            ledger.charge("acct", "job-1")
        assert handler() == "ok"
        assert calls == [1]
    else:
        with pytest.raises(psycopg.Error) as info:
            ledger.charge("acct", "job-1")
        assert info.value.sqlstate == sqlstate
        assert not isinstance(info.value, StoreUnavailable)
        with pytest.raises(psycopg.Error):
            handler()
        assert calls == []
    assert ledger.snapshot() == []
    assert ledger.balance("acct") == 5


def test_sqlite_file_that_is_not_a_database_is_a_configuration_error(tmp_path: Path) -> None:
    """Some other file at the path is the app's setup mistake: neither an
    outage to wait out (or to fail open through) nor a raw driver error."""
    (tmp_path / "junk.db").write_bytes(b"this is not a SQLite database" * 100)
    with pytest.raises(ConfigurationError, match="not a SQLite database"):
        Ledger(SQLiteStore(tmp_path / "junk.db"), clock=FakeClock()).charge("acct", "job-1")


def test_redis_too_old_for_the_journal_is_a_configuration_error(redis_store: BaseStore) -> None:
    """The scripts answer an error reply on a server without Redis 7 features
    when the journal is on: the deployment does not fit the settings."""
    redis = pytest.importorskip("redis")
    reply = redis.exceptions.ResponseError(
        "the jobcredits journal needs Redis 7.0 or newer (or journal=false)"
    )

    class Raiser:
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            raise reply

    redis_store._scripts = {  # type: ignore[attr-defined]
        name: Raiser()
        for name in redis_store._scripts  # type: ignore[attr-defined]
    }
    ledger = Ledger(redis_store, clock=FakeClock())
    with pytest.raises(ConfigurationError, match=r"Redis 7\.0"):
        ledger.charge("acct", "job-1")
    handler, calls = _fail_open_handler(ledger)
    with pytest.raises(ConfigurationError):
        handler()
    assert calls == []
