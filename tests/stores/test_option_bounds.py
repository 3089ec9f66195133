"""Every time and number option of every store is bounded at construction
(issue 12, item 5): a value no driver or script can use is refused with a
clear error naming the option, before any connection is made, never found
later as an OverflowError, a driver error or a script failing half-way.

The checks raise :class:`InvalidArgument`; store constructors report it as the
app's :class:`ConfigurationError` where that conversion is in place. Both are
ValueErrors and JobCreditsErrors, which is what these tests hold on to.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest

from jobcredits_plugin import JobCreditsError, Ledger
from jobcredits_plugin._validation import MAX_CREDITS, MAX_SECONDS
from jobcredits_plugin.stores import MemoryStore, SQLiteStore
from jobcredits_plugin.stores import from_url as store_from_url
from tests.stores.conftest import POSTGRES_DEFAULT, POSTGRES_URL_ENV, REDIS_DEFAULT, REDIS_URL_ENV

NAN = math.nan
INF = math.inf

#: Durations nothing can hold: past ten years, not finite, not positive, not numbers.
BAD_SECONDS: list[Any] = [MAX_SECONDS * 2, 1e16, 2**70, INF, NAN, 0, -1, True, "5"]


def _refused(option: str, build: Any) -> None:
    with pytest.raises(ValueError, match=option) as info:
        build()
    assert isinstance(info.value, JobCreditsError)


# -- the ledger -------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["ttl", "lease"])
@pytest.mark.parametrize("value", BAD_SECONDS)
def test_ledger_durations_are_bounded(option: str, value: Any) -> None:
    _refused(option, lambda: Ledger(**{option: value}))


@pytest.mark.parametrize("value", [0, -1, 2**53, 2**63, 2**64, 1.5, True])
def test_ledger_max_uses_is_bounded(value: Any) -> None:
    _refused("max_uses", lambda: Ledger(max_uses=value))


def test_ledger_takes_the_largest_values() -> None:
    ledger = Ledger(ttl=MAX_SECONDS, lease=MAX_SECONDS, max_uses=MAX_CREDITS)
    assert (ledger.ttl, ledger.lease, ledger.max_uses) == (MAX_SECONDS, MAX_SECONDS, MAX_CREDITS)


# -- memory -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("settle_batch", -1),
        ("settle_batch", 10**6),
        ("settle_batch", 2**64),
        ("settle_batch", 1.5),
        ("journal_limit", 0),
        ("journal_limit", 10**12),
        *[("journal_max_age", v) for v in BAD_SECONDS],
    ],
)
def test_memory_options_are_bounded(option: str, value: Any) -> None:
    _refused(option, lambda: MemoryStore(**{option: value}))


# -- SQLite -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        *[("timeout", v) for v in BAD_SECONDS],
        ("timeout", 2_147_484.0),  # past a C int of milliseconds
        ("prune_batch", 0),
        ("prune_batch", -1),  # LIMIT -1 would mean "no limit" to SQLite
        ("prune_batch", 10**6),
        ("prune_batch", 2**63),
        *[("journal_max_age", v) for v in BAD_SECONDS],
    ],
)
def test_sqlite_options_are_bounded(tmp_path: Path, option: str, value: Any) -> None:
    _refused(option, lambda: SQLiteStore(tmp_path / "jobs.db", **{option: value}))
    assert not (tmp_path / "jobs.db").exists()  # refused before the file was made


@pytest.mark.parametrize(
    "query", ["timeout=inf", "timeout=nan", "timeout=1e300", "prune_batch=0", "journal_max_age=inf"]
)
def test_sqlite_url_options_are_bounded(tmp_path: Path, query: str) -> None:
    _refused(query.split("=")[0], lambda: store_from_url(f"sqlite:///{tmp_path}/jobs.db?{query}"))


def test_sqlite_takes_the_largest_values(tmp_path: Path) -> None:
    store = SQLiteStore(
        tmp_path / "jobs.db", timeout=2_147_483.0, prune_batch=100_000, journal_max_age=MAX_SECONDS
    )
    store.close()


# -- Redis (construction connects to nothing) ------------------------------------------

REDIS_URL = os.environ.get(REDIS_URL_ENV, REDIS_DEFAULT)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        *[("socket_timeout", v) for v in BAD_SECONDS],
        *[("socket_connect_timeout", v) for v in BAD_SECONDS],
        ("socket_timeout", 1e6 + 1),
        ("retries", -1),
        ("retries", 101),
        ("retries", 2**64),
        ("retries", 1.5),
        ("prune_batch", 0),
        ("prune_batch", 10**6),
        *[("safety_expiry", v) for v in BAD_SECONDS],
        *[("journal_max_age", v) for v in BAD_SECONDS],
    ],
)
def test_redis_options_are_bounded(option: str, value: Any) -> None:
    pytest.importorskip("redis")
    from jobcredits_plugin.stores import RedisStore

    _refused(option, lambda: RedisStore(url=REDIS_URL, **{option: value}))


@pytest.mark.parametrize(
    "query",
    [
        "safety_expiry=1e16",
        "safety_expiry=nan",
        "socket_timeout=inf",
        "retries=1000",
        "prune_batch=0",
        "journal_max_age=1e300",
    ],
)
def test_redis_url_options_are_bounded(query: str) -> None:
    pytest.importorskip("redis")
    _refused(query.split("=")[0], lambda: store_from_url(f"{REDIS_URL}?{query}"))


def test_redis_takes_the_largest_values() -> None:
    pytest.importorskip("redis")
    from jobcredits_plugin.stores import RedisStore

    store = RedisStore(
        url=REDIS_URL,
        socket_timeout=1e6,
        socket_connect_timeout=1e6,
        retries=100,
        prune_batch=100_000,
        safety_expiry=MAX_SECONDS,
        journal_max_age=MAX_SECONDS,
    )
    store.close()


# -- PostgreSQL (construction connects to nothing) -------------------------------------

PG_URL = os.environ.get(POSTGRES_URL_ENV, POSTGRES_DEFAULT)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        *[("connect_timeout", v) for v in BAD_SECONDS],
        *[("timeout", v) for v in BAD_SECONDS],
        *[("statement_timeout", v) for v in BAD_SECONDS],
        ("statement_timeout", 1e6 + 1),
        ("max_size", 1001),
        ("max_size", 2**64),
        ("prune_batch", 0),
        ("prune_batch", 2**31),  # the prune function's limit is an integer
        *[("journal_max_age", v) for v in BAD_SECONDS],
    ],
)
def test_postgres_options_are_bounded(option: str, value: Any) -> None:
    pytest.importorskip("psycopg")
    from jobcredits_plugin.stores import PostgresStore

    _refused(option, lambda: PostgresStore(PG_URL, **{option: value}))


@pytest.mark.parametrize(
    "query",
    ["statement_timeout=inf", "timeout=nan", "connect_timeout=1e300", "max_size=100000"],
)
def test_postgres_url_options_are_bounded(query: str) -> None:
    pytest.importorskip("psycopg")
    _refused(query.split("=")[0], lambda: store_from_url(f"{PG_URL}?{query}"))


def test_postgres_takes_the_largest_values() -> None:
    pytest.importorskip("psycopg")
    from jobcredits_plugin.stores import PostgresStore

    store = PostgresStore(
        PG_URL,
        max_size=1000,
        connect_timeout=1e6,
        timeout=1e6,
        statement_timeout=1e6,
        prune_batch=100_000,
        journal_max_age=MAX_SECONDS,
        auto_migrate=False,
    )
    store.close()
