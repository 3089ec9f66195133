"""A prune that fails part-way keeps what it already committed (issue 12, item 5).

SQLite, Redis and PostgreSQL prune in batches, each its own transaction or
script. When a later batch fails (the store went away), the earlier batches
are committed: their records are gone and their refunds credited, so their
hooks must still fire, exactly once, before the error reaches the caller.
Before, the events of the committed batches were dropped with the exception:
an audit plugin never heard of those expiries and refunds at all.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobcredits_plugin import Ledger, StoreUnavailable
from jobcredits_plugin.stores import BaseStore, SQLiteStore
from jobcredits_plugin.testing import FakeClock, RecordingPlugin
from tests.stores.conftest import (
    POSTGRES_DEFAULT,
    POSTGRES_URL_ENV,
    REDIS_DEFAULT,
    REDIS_URL_ENV,
    _redis_cleanup,
    _server_url,
)

BATCH = 2
JOBS = 5


class FailAfter:
    """Lets ``ok`` prune batches through, then fails every later one."""

    def __init__(self, ok: int) -> None:
        self.ok = ok
        self.calls = 0
        self.armed = True

    def batch(self) -> None:
        if not self.armed:
            return
        self.calls += 1
        if self.calls > self.ok:
            raise StoreUnavailable("the store went away mid-prune (injected)")


def _sqlite(tmp_path: Path, fail: FailAfter) -> Iterator[BaseStore]:
    store = SQLiteStore(tmp_path / "jobs.db", prune_batch=BATCH)
    real = store._transaction
    pruning = {"on": False}

    def transaction() -> Any:
        if pruning["on"]:
            fail.batch()
        return real()

    real_batches = store._prune_batches

    def prune_batches(*args: Any) -> None:
        pruning["on"] = True
        try:
            real_batches(*args)
        finally:
            pruning["on"] = False

    store._transaction = transaction  # type: ignore[method-assign]
    store._prune_batches = prune_batches  # type: ignore[method-assign]
    yield store
    store.close()


def _redis(tmp_path: Path, fail: FailAfter) -> Iterator[BaseStore]:
    pytest.importorskip("redis")
    from jobcredits_plugin.stores import RedisStore

    url = _server_url(REDIS_URL_ENV, REDIS_DEFAULT, "Redis")
    store = RedisStore.from_url(url, prefix=f"jctest:{uuid.uuid4().hex[:12]}", prune_batch=BATCH)
    real_call = store._prune_call  # one call per batch, sync and async paths alike

    def prune_call(*args: Any) -> Any:
        fail.batch()
        return real_call(*args)

    store._prune_call = prune_call  # type: ignore[method-assign]
    yield store
    store.close()
    _redis_cleanup(store)


def _postgres(tmp_path: Path, fail: FailAfter) -> Iterator[BaseStore]:
    pytest.importorskip("psycopg")
    from jobcredits_plugin.stores import PostgresStore

    url = _server_url(POSTGRES_URL_ENV, POSTGRES_DEFAULT, "PostgreSQL")
    store = PostgresStore.from_url(url, schema=f"jctest_{uuid.uuid4().hex[:12]}", prune_batch=BATCH)
    real_batches = store._batches  # one call per batch

    def batches(*args: Any) -> int:
        fail.batch()
        return real_batches(*args)

    store._batches = batches  # type: ignore[method-assign]
    yield store
    store.close()
    store.drop()


KINDS = {"sqlite": _sqlite, "redis": _redis, "postgres": _postgres}


@pytest.fixture
def fail() -> FailAfter:
    return FailAfter(ok=1)


@pytest.fixture(params=list(KINDS))
def store(request: pytest.FixtureRequest, tmp_path: Path, fail: FailAfter) -> Iterator[BaseStore]:
    yield from KINDS[request.param](tmp_path, fail)


def _books(store: BaseStore, clock: FakeClock, events: RecordingPlugin) -> Ledger:
    """JOBS charged jobs of one account, all expired, and a stale pending one."""
    fail_free = Ledger(store, clock=clock)
    for n in range(JOBS):
        fail_free.charge("acct", f"job-{n}")
        fail_free.confirm("acct", f"job-{n}")
    clock.advance(3601)
    return Ledger(store, clock=clock, plugins=[events])


def test_a_failed_batch_keeps_the_hooks_of_the_batches_before_it(
    store: BaseStore, fail: FailAfter
) -> None:
    clock, events = FakeClock(), RecordingPlugin()
    ledger = _books(store, clock, events)
    with pytest.raises(StoreUnavailable, match="injected"):
        ledger.prune()
    first = events.of("expire")
    assert len(first) == BATCH  # the committed batch is reported
    assert events.kinds() == ["expire"] * BATCH
    fail.armed = False
    rest = ledger.prune()
    assert len(rest) == JOBS - BATCH
    assert {r.job_id for r in first} | {r.job_id for r in rest} == {f"job-{n}" for n in range(JOBS)}
    assert events.kinds() == ["expire"] * JOBS  # each exactly once
    assert ledger.prune() == []


def test_a_failed_batch_keeps_its_predecessors_hooks_async(
    store: BaseStore, fail: FailAfter
) -> None:
    clock, events = FakeClock(), RecordingPlugin()
    ledger = _books(store, clock, events)

    async def scenario() -> None:
        with pytest.raises(StoreUnavailable, match="injected"):
            await ledger.aprune()

    asyncio.run(scenario())
    assert events.kinds() == ["expire"] * BATCH
    fail.armed = False
    assert len(ledger.prune()) == JOBS - BATCH
    assert events.kinds() == ["expire"] * JOBS
