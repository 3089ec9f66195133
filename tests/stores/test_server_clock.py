"""Shared stores on the server's clock (issue 13, item 8).

Every lease and window is decided by ``now``. By default that is the ledger's
clock, so on a store shared by several hosts each host decides by its own
clock, and every boundary moves by the difference between them. These tests
put two ledgers on one store with clocks 10 s apart and show each failure the
issue names, first as it happens on the ledgers' clocks (fake clocks: the
defect, deterministic), then gone with ``server_clock=True``, where both
ledgers decide by the server's clock inside the same atomic step. The
server's clock cannot be faked, so those runs use windows and leases of a
second or two and at most one real sleep past one.

Runs on a standalone Redis, on the session's Redis Cluster and on
PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest

from jobcredits_plugin import ConfigurationError, Ledger
from jobcredits_plugin.stores import BaseStore
from jobcredits_plugin.testing import FakeClock, RecordingPlugin
from tests.stores.conftest import (
    CLEANUP,
    POSTGRES_DEFAULT,
    POSTGRES_URL_ENV,
    REDIS_DEFAULT,
    REDIS_URL_ENV,
    _server_url,
)

#: How far apart the two hosts' clocks are, in seconds.
SKEW = 10.0
#: The real windows and leases of the server-clock runs: far below SKEW, so
#: any decision made on a host's clock would come out the other way.
SHORT = 1.0
#: A real sleep that takes a SHORT window or lease past its end.
PAST = SHORT + 0.2
#: Windows and leases that a test never waits out: the steps that must fall
#: inside them take milliseconds, this much leaves room for a loaded machine.
LONG = 30.0

SHARED_KINDS = ["redis", "redis-cluster", "postgres"]

#: Builds one host's store on the shared server (the same keys or schema for
#: every call of one test), with or without the server's clock.
HostStore = Callable[[bool], BaseStore]


def _redis_url(kind: str) -> str:
    url = _server_url(REDIS_URL_ENV, REDIS_DEFAULT, "Redis")
    pytest.importorskip("redis", reason="the redis extra is not installed")
    if kind == "redis":
        return url
    from tests.stores._redis_cluster import REDIS_CLI, REDIS_SERVER, session_cluster_url

    if REDIS_SERVER is None or REDIS_CLI is None:
        message = "redis-server and redis-cli are needed to start a test cluster"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return session_cluster_url()


@pytest.fixture(params=SHARED_KINDS)
def host_store(request: pytest.FixtureRequest) -> Iterator[HostStore]:
    """One shared store, as each host builds it: every call returns a new
    store object on the same keys (Redis) or schema (PostgreSQL)."""
    kind = str(request.param)
    made: list[BaseStore] = []
    tag = uuid.uuid4().hex[:12]
    if kind == "postgres":
        url = _server_url(POSTGRES_URL_ENV, POSTGRES_DEFAULT, "PostgreSQL")
        pytest.importorskip("psycopg", reason="the postgres extra is not installed")
        from jobcredits_plugin.stores import PostgresStore

        def make(server_clock: bool) -> BaseStore:
            made.append(
                PostgresStore.from_url(url, schema=f"jctest_{tag}", server_clock=server_clock)
            )
            return made[-1]
    else:
        url = _redis_url(kind)
        from jobcredits_plugin.stores import RedisStore

        def make(server_clock: bool) -> BaseStore:
            made.append(RedisStore.from_url(url, prefix=f"jctest:{tag}", server_clock=server_clock))
            return made[-1]

    yield make
    for store in made:
        store.close()
    if made and kind in CLEANUP:
        CLEANUP[kind](made[0])


def _hosts(
    host_store: HostStore,
    server_clock: bool,
    offsets: tuple[float, float],
    *,
    ttl: float,
    lease: float,
    start: float | None = None,
) -> tuple[Ledger, Ledger, FakeClock, FakeClock, RecordingPlugin]:
    """Two ledgers (host A, host B) on one store, with fake clocks at
    ``start + offsets``, both reporting to one recorder."""
    base = time.time() if start is None else start
    clock_a, clock_b = FakeClock(base + offsets[0]), FakeClock(base + offsets[1])
    events = RecordingPlugin()
    a = Ledger(host_store(server_clock), clock=clock_a, ttl=ttl, lease=lease, plugins=[events])
    b = Ledger(host_store(server_clock), clock=clock_b, ttl=ttl, lease=lease, plugins=[events])
    return a, b, clock_a, clock_b, events


def _warm(*ledgers: Ledger) -> None:
    """Connect every ledger's store (and check PostgreSQL's schema) before a
    test's timed steps, so that a slow first connection cannot use up a
    SHORT window."""
    for ledger in ledgers:
        ledger.lookup("warm", "up")


def _advance(seconds: float, *clocks: FakeClock) -> None:
    for clock in clocks:
        clock.advance(seconds)


# -- on the ledgers' clocks: the defect --------------------------------------------------


def test_fast_host_ends_a_window_early_on_its_own_clock(host_store: HostStore) -> None:
    """Host B's clock runs 10 s ahead: a follow-up 11 s into a 20 s window
    finds the window over and is charged again."""
    a, b, clock_a, clock_b, events = _hosts(host_store, False, (0.0, SKEW), ttl=20, lease=5)
    first = a.charge("acct", "job")
    a.confirm("acct", "job", charge_id=first.record.charge_id)
    _advance(11, clock_a, clock_b)
    follow_up = b.charge("acct", "job")
    assert follow_up.outcome == "charged"  # the defect: paid twice for one job
    assert events.kinds() == ["charge", "expire", "charge"]


def test_fast_pruner_refunds_a_running_call_on_its_own_clock(host_store: HostStore) -> None:
    """The pruner's clock runs 10 s ahead: 11 s into a 20 s lease it takes
    the call still running for a dead one and refunds it, and the call's own
    confirm then finds nothing."""
    a, b, clock_a, clock_b, events = _hosts(host_store, False, (0.0, SKEW), ttl=60, lease=20)
    first = a.charge("acct", "job")
    _advance(11, clock_a, clock_b)
    settled = b.prune()
    assert [r.charge_id for r in settled] == [first.record.charge_id]  # the defect
    assert a.confirm("acct", "job", charge_id=first.record.charge_id) is None
    assert events.kinds() == ["charge", "refund"]


def test_slow_host_reuses_past_the_window_on_its_own_clock(host_store: HostStore) -> None:
    """Host B's clock runs 10 s behind: 21 s into a 20 s window it still
    sees the window open and serves the job for free."""
    a, b, clock_a, clock_b, events = _hosts(host_store, False, (0.0, -SKEW), ttl=20, lease=5)
    first = a.charge("acct", "job")
    a.confirm("acct", "job", charge_id=first.record.charge_id)
    _advance(21, clock_a, clock_b)
    assert b.lookup("acct", "job") is not None
    assert b.charge("acct", "job").outcome == "reused"  # the defect: a free call
    assert events.kinds() == ["charge", "reuse"]


# -- on the server's clock: fixed --------------------------------------------------------


def test_fast_host_reuses_within_the_window_on_the_server_clock(host_store: HostStore) -> None:
    """The same skew, on the server's clock: the follow-up is inside the
    window (by the one clock both hosts share) and reused."""
    a, b, _, _, events = _hosts(host_store, True, (0.0, SKEW), ttl=LONG, lease=LONG / 2)
    first = a.charge("acct", "job")
    a.confirm("acct", "job", charge_id=first.record.charge_id)
    follow_up = b.charge("acct", "job")
    assert follow_up.outcome == "reused"
    assert follow_up.record.charge_id == first.record.charge_id
    assert events.kinds() == ["charge", "reuse"]


def test_fast_pruner_leaves_a_running_call_on_the_server_clock(host_store: HostStore) -> None:
    """A pruner whose clock runs 10 s ahead leaves a call within its lease
    alone; the call confirms. A pruner whose clock runs 10 s behind still
    settles a lease that the server's clock says is over."""
    a, b, _, _, events = _hosts(host_store, True, (0.0, SKEW), ttl=LONG, lease=LONG / 2)
    first = a.charge("acct", "job")
    assert b.prune() == []
    confirmed = a.confirm("acct", "job", charge_id=first.record.charge_id)
    assert confirmed is not None
    assert confirmed.state == "charged"
    assert events.kinds() == ["charge"]

    slow = Ledger(
        host_store(True), clock=FakeClock(time.time() - SKEW), lease=SHORT, plugins=[events]
    )
    second = slow.charge("acct", "other")
    time.sleep(PAST)
    assert [r.charge_id for r in slow.prune()] == [second.record.charge_id]
    assert events.kinds() == ["charge", "charge", "refund"]
    slow.close()


def test_slow_host_charges_past_the_window_on_the_server_clock(host_store: HostStore) -> None:
    """A host whose clock runs 10 s behind sees the window end when the
    server's clock says it ends: no free reuse, no live record in lookups or
    snapshots, and the follow-up is a new charge."""
    a, b, _, _, events = _hosts(host_store, True, (0.0, -SKEW), ttl=SHORT, lease=SHORT / 2)
    _warm(a, b)
    first = a.charge("acct", "job")
    a.confirm("acct", "job", charge_id=first.record.charge_id)
    assert b.lookup("acct", "job") is not None
    time.sleep(PAST)
    assert b.lookup("acct", "job") is None
    assert b.snapshot() == []
    again = b.charge("acct", "job")
    assert again.outcome == "charged"
    assert again.record.charge_id != first.record.charge_id
    assert events.kinds() == ["charge", "expire", "charge"]


def test_the_async_twins_use_the_server_clock(host_store: HostStore) -> None:
    """The three cases again through the async methods (Redis's native async
    client, a worker thread for the cluster and PostgreSQL)."""

    async def scenario() -> list[str]:
        a, b, _, _, events = _hosts(host_store, True, (0.0, SKEW), ttl=LONG, lease=LONG / 2)
        first = await a.acharge("acct", "job")
        assert await b.aprune() == []  # the fast pruner leaves it running
        await a.aconfirm("acct", "job", charge_id=first.record.charge_id)
        assert (await b.acharge("acct", "job")).outcome == "reused"  # fast host
        assert [r.job_id for r in await b.asnapshot()] == ["job"]
        short, slow = (
            Ledger(host_store(True), clock=clock, ttl=SHORT, lease=SHORT / 2, plugins=[events])
            for clock in (FakeClock(time.time() + SKEW), FakeClock(time.time() - SKEW))
        )
        charged = await short.acharge("acct", "brief")
        await short.aconfirm("acct", "brief", charge_id=charged.record.charge_id)
        await asyncio.sleep(PAST)
        assert await slow.alookup("acct", "brief") is None
        assert (await slow.acharge("acct", "brief")).outcome == "charged"  # slow host
        for ledger in (a, b, short, slow):
            await ledger.aclose()
        return events.kinds()

    kinds = asyncio.run(scenario())
    assert kinds == ["charge", "reuse", "charge", "expire", "charge"]


def test_reported_records_are_the_stored_ones(host_store: HostStore) -> None:
    """The store answers the ``now`` the server used, so every record the
    ledger reports (the Charge, the hook payloads) carries the server's
    times, identical to the stored record, whatever the ledger's clock says."""
    events = RecordingPlugin()
    ledger = Ledger(
        host_store(True), clock=FakeClock(1_000_000.0), ttl=60, lease=30, plugins=[events]
    )
    charge = ledger.charge("acct", "job", tier="t", backend="b")
    record = charge.record
    stored = ledger.lookup("acct", "job")
    assert stored == record
    assert record.charged_at > 1_000_000.0 + 86400  # the server's time, not the fake clock's
    assert (record.expires_at, record.lease_until) == (
        record.charged_at + 60,
        record.charged_at + 30,
    )
    assert events.of("charge") == [record]
    confirmed = ledger.confirm("acct", "job", charge_id=record.charge_id)
    assert confirmed == record.with_state("charged")
    assert ledger.refund("acct", "job", charge_id=record.charge_id)
    if getattr(ledger.store, "journal", False):
        entries = ledger.journal()
        assert [e.kind for e in entries] == ["charge", "refund"]
        assert entries[0].at == record.charged_at
        assert entries[1].at >= entries[0].at
    ledger.close()


def test_the_ledger_clock_still_rules_by_default(host_store: HostStore) -> None:
    """Without the option the store takes the ledger's now, as before: a fake
    clock far from the real time moves every boundary."""
    ledger = Ledger(host_store(False), clock=FakeClock(1_000_000.0), ttl=60)
    record = ledger.charge("acct", "job").record
    assert record.charged_at == 1_000_000.0
    ledger.close()


# -- options ------------------------------------------------------------------------------


def test_redis_retried_claim_answers_the_first_now() -> None:
    """redis-py re-sends a claim (or a prune batch) whose answer was lost; on
    the server's clock the retry must rebuild the very records the first run
    stored and settled, so the retry marker keeps the first run's now (and a
    charge under an empty key, which keeps no marker, is rebuilt from the
    record it stored)."""
    url = _redis_url("redis")
    from jobcredits_plugin.stores import ClaimRequest, RedisStore

    store = RedisStore.from_url(url, prefix=f"jctest:{uuid.uuid4().hex[:12]}", server_clock=True)
    try:
        req = ClaimRequest(
            account="acct",
            scope="default",
            job_id="job",
            charge_id="c1",
            cost=1,
            tier=None,
            backend=None,
            now=1.0,
            ttl=60.0,
            lease=30.0,
            max_uses=None,
            balances=False,
        )
        keys, args = store._claim_call(req)
        first = store._scripts["claim"](keys=keys, args=args)
        time.sleep(0.01)
        retry = store._scripts["claim"](keys=keys, args=args)
        assert (first[0], retry[0]) == ("charged", "replay")  # found by its record
        assert store._claim_result(req, retry) == store._claim_result(req, first)

        # A reuse keeps a marker: its retry answers the first run's reply.
        store.confirm(("acct", "default", "job"), "c1", 1.0)
        follow = attrs.evolve(req, charge_id="c2")
        keys, args = store._claim_call(follow)
        first = store._scripts["claim"](keys=keys, args=args)
        time.sleep(0.01)
        retry = store._scripts["claim"](keys=keys, args=args)
        assert first[0] == "reused"
        assert retry == first
        assert store._claim_result(follow, retry) == store._claim_result(follow, first)

        # A prune batch's retry answers the first run's now and records too.
        ledger = Ledger(store, lease=SHORT)
        charged = ledger.charge("acct", "stale")
        time.sleep(PAST)
        keys, args = store._prune_call(store.due_key("acct"), 1.0, 10)
        first = store._scripts["prune"](keys=keys, args=args)
        time.sleep(0.01)
        retry = store._scripts["prune"](keys=keys, args=args)
        assert retry == first
        _, events = store._prune_events(retry, 1.0)
        assert [(e.kind, e.record.charge_id) for e in events] == [
            ("refund", charged.record.charge_id)
        ]
    finally:
        store.close()
        CLEANUP["redis"](store)


@pytest.mark.parametrize("kind", ["redis", "postgres"])
def test_server_clock_option(kind: str) -> None:
    """``server_clock`` is a flag: True/False as a keyword, true/false/1/0...
    in a URL; anything else is the app's configuration error."""
    if kind == "redis":
        pytest.importorskip("redis", reason="the redis extra is not installed")
        from jobcredits_plugin.stores import RedisStore

        store_class: Any = RedisStore
        url = "redis://127.0.0.1:6379/2"
        extra: dict[str, Any] = {"prefix": "jctest:unused"}
    else:
        pytest.importorskip("psycopg", reason="the postgres extra is not installed")
        from jobcredits_plugin.stores import PostgresStore

        store_class = PostgresStore
        url = "postgresql://postgres@127.0.0.1:5432/unused"
        extra = {}
    for query, expected in (("", False), ("?server_clock=true", True), ("?server_clock=0", False)):
        store = store_class.from_url(url + query, **extra)
        assert store.server_clock is expected
        store.close()
    with pytest.raises(ConfigurationError, match="server_clock"):
        store_class.from_url(url + "?server_clock=sometimes", **extra)
    for bad in ("true", 1, None):
        with pytest.raises(ConfigurationError, match="server_clock"):
            store_class.from_url(url, server_clock=bad, **extra)


@pytest.mark.parametrize("url", ["memory://?server_clock=true", "sqlite://?server_clock=true"])
def test_embedded_stores_keep_the_ledger_clock(url: str) -> None:
    """Memory and SQLite live on the ledger's host: its clock is the only
    one, and they take no such option."""
    from jobcredits_plugin.stores import from_url

    with pytest.raises(ConfigurationError, match="server_clock"):
        from_url(url)
