"""Fixtures that run a test once per store kind.

``STORES`` is the registry: a store kind's name mapped to a factory that takes
a directory of its own (a fresh subdirectory of the test's ``tmp_path``) and
returns a fresh, isolated, empty store. Every test that asks for
``store_factory``, ``store`` or ``make_ledger`` runs once per entry.

Adding a store kind is one entry. Stores that need a server (Redis,
PostgreSQL) must make their factory call ``pytest.skip(...)`` when the server
URL is not configured (e.g. ``JOBCREDITS_TEST_REDIS_URL`` /
``JOBCREDITS_TEST_POSTGRES_URL`` unset) and isolate each store they build
(a unique key prefix / schema, or a flush of a dedicated database), so that
tests never see each other's jobs::

    def _redis(directory: Path) -> BaseStore:
        url = os.environ.get("JOBCREDITS_TEST_REDIS_URL")
        if not url:
            pytest.skip("set JOBCREDITS_TEST_REDIS_URL to run the store suite on Redis")
        return RedisStore.from_url(url, prefix=f"test-{uuid.uuid4().hex}")

    STORES["redis"] = _redis
"""

from __future__ import annotations

import itertools
import os
import socket
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobcredits_plugin import Ledger
from jobcredits_plugin.stores import BaseStore, MemoryStore, SQLiteStore, redact_url
from jobcredits_plugin.testing import FakeClock, RecordingPlugin

#: A factory gets a directory nobody else uses and returns a fresh, empty store.
StoreMaker = Callable[[Path], BaseStore]


def _memory(directory: Path) -> BaseStore:
    return MemoryStore()


def _sqlite(directory: Path) -> BaseStore:
    # A generous busy timeout: a suite run on two slow cores must never turn
    # ordinary contention into StoreUnavailable.
    return SQLiteStore(directory / "jobs.db", timeout=30.0)


def _example(directory: Path) -> BaseStore:
    # The store of docs/custom-stores.md, built from public names only: the
    # suite passing on it is what the page promises a store of one's own.
    from examples.dict_store import DictStore

    return DictStore()


def _server_url(env: str, default: str, kind: str) -> str:
    """The test server's URL. Off CI a server that does not answer skips the
    test with a message saying how to run it; on CI (``CI=true``) it fails:
    the shared stores must never pass by not running."""
    url = os.environ.get(env, default)
    reachable = _reachable(url)
    if not reachable:
        message = (
            f"no {kind} server at {redact_url(url)}: start one, or set {env} to one "
            f"(tox passes it through), to run the store suite on {kind}"
        )
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message + " (CI=true: shared-store tests must run)")
        pytest.skip(message)
    return url


_REACHABLE: dict[str, bool] = {}


def _reachable(url: str) -> bool:
    """Whether something listens at the URL's host and port (cached per run)."""
    if url not in _REACHABLE:
        parts = urllib.parse.urlsplit(url)
        default_port = 6379 if parts.scheme.startswith("redis") else 5432
        try:
            with socket.create_connection(
                (parts.hostname or "127.0.0.1", parts.port or default_port), timeout=2
            ):
                _REACHABLE[url] = True
        except OSError:
            _REACHABLE[url] = False
    return _REACHABLE[url]


REDIS_URL_ENV = "JOBCREDITS_TEST_REDIS_URL"
POSTGRES_URL_ENV = "JOBCREDITS_TEST_POSTGRES_URL"
REDIS_DEFAULT = "redis://127.0.0.1:6379/15"
POSTGRES_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"


def _redis(directory: Path) -> BaseStore:
    url = _server_url(REDIS_URL_ENV, REDIS_DEFAULT, "Redis")
    redis_mod = pytest.importorskip("redis", reason="the redis extra is not installed")
    del redis_mod
    from jobcredits_plugin.stores import RedisStore

    # A fresh key prefix per store: tests never see each other's jobs.
    return RedisStore.from_url(url, prefix=f"jctest:{uuid.uuid4().hex[:12]}")


def _redis_cluster(directory: Path) -> BaseStore:
    # The cluster's nodes are started here; the server at the Redis URL is only
    # asked whether Redis is meant to be tested at all (skip or fail off it).
    _server_url(REDIS_URL_ENV, REDIS_DEFAULT, "Redis")
    pytest.importorskip("redis", reason="the redis extra is not installed")
    from jobcredits_plugin.stores import RedisStore
    from tests.stores._redis_cluster import REDIS_CLI, REDIS_SERVER, session_cluster_url

    if REDIS_SERVER is None or REDIS_CLI is None:
        message = "redis-server and redis-cli are needed to start a test cluster"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    url = session_cluster_url()
    return RedisStore.from_url(url, prefix=f"jctest:{uuid.uuid4().hex[:12]}")


def _postgres(directory: Path) -> BaseStore:
    url = _server_url(POSTGRES_URL_ENV, POSTGRES_DEFAULT, "PostgreSQL")
    pytest.importorskip("psycopg", reason="the postgres extra is not installed")
    from jobcredits_plugin.stores import PostgresStore

    # A fresh schema per store: tests never see each other's jobs.
    return PostgresStore.from_url(url, schema=f"jctest_{uuid.uuid4().hex[:12]}")


def _django_sqlite(directory: Path) -> BaseStore:
    pytest.importorskip("django", reason="the django extra is not installed")
    from tests.stores import _django

    return _django.fresh_store(_django.SQLITE_ALIAS)  # type: ignore[no-any-return]


def _django_postgres(directory: Path) -> BaseStore:
    _server_url(POSTGRES_URL_ENV, POSTGRES_DEFAULT, "PostgreSQL")
    pytest.importorskip("django", reason="the django extra is not installed")
    pytest.importorskip("psycopg", reason="the postgres extra is not installed")
    from tests.stores import _django

    return _django.fresh_store(_django.POSTGRES_ALIAS)  # type: ignore[no-any-return]


def _django_mysql(directory: Path) -> BaseStore:
    # Only against a server someone started and named: the suite starts none
    # (see docs/django.md on MySQL/MariaDB), so this kind skips otherwise,
    # also under CI.
    from tests.stores import _django

    if not os.environ.get(_django.MYSQL_URL_ENV):
        pytest.skip(f"set {_django.MYSQL_URL_ENV} to run DjangoStore on MySQL/MariaDB")
    pytest.importorskip("django", reason="the django extra is not installed")
    return _django.fresh_store(_django.MYSQL_ALIAS)  # type: ignore[no-any-return]


#: Every store kind the suite runs on; one entry per kind. Server-backed kinds
#: skip off CI when their server does not answer (see _server_url).
STORES: dict[str, StoreMaker] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "redis": _redis,
    "redis-cluster": _redis_cluster,
    "postgres": _postgres,
    "example": _example,
    "django-sqlite": _django_sqlite,
    "django-postgres": _django_postgres,
    "django-mysql": _django_mysql,
}

#: Store kinds whose data lives and dies with this process.
IN_PROCESS = {"memory", "example"}

#: Optional clean-up after a store of a kind is closed (dropping its schema or
#: keys), registered by the store kinds that leave data on a server.
CLEANUP: dict[str, Callable[[BaseStore], None]] = {}


def _drop_postgres_schema(store: BaseStore) -> None:
    """Drop the test store's schema, so runs leave nothing on the server."""
    drop = getattr(store, "drop", None)
    if drop is not None:
        drop()


CLEANUP["postgres"] = _drop_postgres_schema


def _redis_cleanup(store: BaseStore) -> None:
    """Delete every key under the store's private prefix (with a fresh client:
    the store itself is closed by now)."""
    import redis

    prefix = getattr(store, "prefix", None)
    url = getattr(store, "url", None)
    if not prefix or not url or getattr(store, "cluster", False):
        return
    client = redis.Redis.from_url(url.replace("redis+unix://", "unix://"), socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=prefix.replace("*", "\\*") + ":*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    except redis.exceptions.RedisError:
        pass  # the server is gone (a fault test): nothing left to clean
    finally:
        client.close()


CLEANUP["redis"] = _redis_cleanup


@pytest.fixture(params=list(STORES))
def store_kind(request: pytest.FixtureRequest) -> str:
    """The name of the store kind this run of the test uses."""
    return str(request.param)


@pytest.fixture
def store_factory(store_kind: str, tmp_path: Path) -> Iterator[Callable[[], BaseStore]]:
    """Builds fresh, isolated stores of this run's kind; closes them all after
    the test."""
    made: list[BaseStore] = []
    counter = itertools.count()

    def make() -> BaseStore:
        directory = tmp_path / f"{store_kind}-{next(counter)}"
        directory.mkdir()
        store = STORES[store_kind](directory)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()
        cleanup = CLEANUP.get(store_kind)
        if cleanup is not None:
            cleanup(store)


@pytest.fixture
def store(store_factory: Callable[[], BaseStore]) -> BaseStore:
    """One fresh store of this run's kind."""
    return store_factory()


@pytest.fixture
def make_ledger(
    store: BaseStore, clock: FakeClock, events: RecordingPlugin
) -> Callable[..., Ledger]:
    """Builds a Ledger on this run's store (unless ``store=`` is given), on the
    test's FakeClock, with the test's RecordingPlugin registered. Keyword
    arguments go to :class:`Ledger`; several ledgers may share the store."""

    def make(**kwargs: Any) -> Ledger:
        kwargs.setdefault("store", store)
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("plugins", [events])
        return Ledger(**kwargs)

    return make
