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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobcredits_plugin import Ledger
from jobcredits_plugin.stores import BaseStore, MemoryStore, SQLiteStore
from jobcredits_plugin.testing import FakeClock, RecordingPlugin

#: A factory gets a directory nobody else uses and returns a fresh, empty store.
StoreMaker = Callable[[Path], BaseStore]


def _memory(directory: Path) -> BaseStore:
    return MemoryStore()


def _sqlite(directory: Path) -> BaseStore:
    # A generous busy timeout: a suite run on two slow cores must never turn
    # ordinary contention into StoreUnavailable.
    return SQLiteStore(directory / "jobs.db", timeout=30.0)


#: Every store kind the suite runs on. Redis and PostgreSQL join here (see the
#: module docstring): one entry each, skipping when their server is not set.
STORES: dict[str, StoreMaker] = {
    "memory": _memory,
    "sqlite": _sqlite,
}


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
