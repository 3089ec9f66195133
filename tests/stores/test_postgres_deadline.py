"""A frozen PostgreSQL server (issue 13, item 7): every store call ends within
the store's deadline, ``timeout + connect_timeout + statement_timeout``.

A ``SIGSTOP``ped server still has its kernel accept connections and
acknowledge packets, so the server's ``statement_timeout``, libpq's
``tcp_user_timeout`` and the pool's ``timeout`` never fire: a call waited as
long as the pause. The shared test server cannot be stopped, so a loopback
proxy in front of it freezes instead (it accepts and holds every byte, both
ways). Each call must raise StoreUnavailable, saying the outcome is unknown,
within the deadline (plus a generous margin, never a tight timing), and the
store must work again once the proxy thaws: the frozen connection was
discarded, not handed out again.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from jobcredits_plugin import Ledger, StoreUnavailable
from jobcredits_plugin.testing import FakeClock
from tests.stores._proxy import Proxy
from tests.stores.conftest import POSTGRES_DEFAULT, POSTGRES_URL_ENV, _server_url

psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed")

from jobcredits_plugin.stores._postgres import PostgresStore  # noqa: E402

#: Small timeouts keep the test short: a deadline of 0.5 + 0.5 + 0.5 s.
OPTIONS: dict[str, Any] = {"timeout": 0.5, "connect_timeout": 0.5, "statement_timeout": 0.5}
DEADLINE = 1.5
#: What the test allows above the deadline: scheduling on a loaded machine
#: (3.6 s were seen at a load average of 15 on two cores). Deadline + margin
#: stays well below FREEZE, so a call that waits out the freeze still fails.
MARGIN = 3.0
#: The proxy thaws by itself after this long, so that code without a
#: deadline ends the test (failing it) instead of hanging.
FREEZE = 6.0


@pytest.fixture
def frozen(request: pytest.FixtureRequest) -> Iterator[tuple[PostgresStore, Proxy]]:
    url = _server_url(POSTGRES_URL_ENV, POSTGRES_DEFAULT, "PostgreSQL")
    parts = urllib.parse.urlsplit(url)
    proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    query = [*urllib.parse.parse_qsl(parts.query), ("sslmode", "disable")]
    proxied = urllib.parse.urlunsplit(
        parts._replace(netloc=f"{user}127.0.0.1:{proxy.port}", query=urllib.parse.urlencode(query))
    )
    schema = f"jctest_{uuid.uuid4().hex[:12]}"
    PostgresStore.from_url(url, schema=schema).migrate()
    store = PostgresStore.from_url(proxied, schema=schema, max_size=2, **OPTIONS)
    try:
        yield store, proxy
    finally:
        store.close()
        proxy.close()
        PostgresStore.from_url(url, schema=schema).drop()


def _frozen_call(proxy: Proxy, call: Callable[[], object], bound: float) -> float:
    """Run ``call`` with the proxy frozen; it must fail within the bound."""
    proxy.freeze(FREEZE)
    start = time.monotonic()
    try:
        with pytest.raises(StoreUnavailable, match="may or may not have been applied"):
            call()
    finally:
        elapsed = time.monotonic() - start
        proxy.thaw()
    print(f"frozen call: {elapsed:.2f} s")
    assert elapsed < bound + MARGIN, f"blocked {elapsed:.1f} s, the deadline is {bound:g} s"
    return elapsed


def test_the_deadline_is_the_sum_of_the_documented_timeouts() -> None:
    store = PostgresStore("", timeout=2, connect_timeout=3, statement_timeout=5)
    assert store.deadline == 10.0
    assert PostgresStore("").deadline == 9.0  # the defaults: 2 + 2 + 5
    assert PostgresStore("", **OPTIONS).deadline == DEADLINE


def test_every_call_ends_within_the_deadline_and_the_store_recovers(
    frozen: tuple[PostgresStore, Proxy],
) -> None:
    store, proxy = frozen
    ledger = Ledger(store, clock=FakeClock(), balances=True, lease=5.0, ttl=60.0)
    ledger.grant("acct", 100)
    ledger.charge("acct", "warm-up", cost=1)
    calls: list[tuple[str, Callable[[], object]]] = [
        ("charge", lambda: ledger.charge("acct", "job-1", cost=2)),
        ("lookup", lambda: ledger.lookup("acct", "warm-up")),
        ("grant", lambda: ledger.grant("acct", 5)),
        ("prune", lambda: ledger.prune()),
    ]
    for name, call in calls:
        _frozen_call(proxy, call, DEADLINE)
        # Thawed: the frozen connection was discarded, a fresh one serves.
        assert ledger.lookup("acct", "warm-up") is not None, name
        assert ledger.balance("acct") in range(90, 106), name
    again = ledger.charge("acct", "job-2", cost=2)
    assert again.charged


def test_an_async_charge_ends_within_the_deadline_and_the_store_recovers(
    frozen: tuple[PostgresStore, Proxy],
) -> None:
    store, proxy = frozen
    ledger = Ledger(store, clock=FakeClock(), balances=True, lease=5.0, ttl=60.0)

    async def main() -> None:
        await ledger.agrant("acct", 10)
        await ledger.acharge("acct", "warm-up", cost=1)
        proxy.freeze(FREEZE)
        start = time.monotonic()
        try:
            with pytest.raises(StoreUnavailable, match="may or may not have been applied"):
                await ledger.acharge("acct", "job-1", cost=2)
        finally:
            elapsed = time.monotonic() - start
            proxy.thaw()
        print(f"frozen acharge: {elapsed:.2f} s")
        assert elapsed < DEADLINE + MARGIN, f"blocked {elapsed:.1f} s"
        again = await ledger.acharge("acct", "job-2", cost=2)
        assert again.charged

    asyncio.run(main())


def test_a_schema_check_or_migration_ends_within_its_deadline(
    frozen: tuple[PostgresStore, Proxy],
) -> None:
    """The first use of a store checks or migrates the schema on a
    connection of its own: a server that freezes after that connection is
    made ends each statement within statement_timeout + connect_timeout."""
    store, proxy = frozen
    bound = OPTIONS["statement_timeout"] + OPTIONS["connect_timeout"]
    fresh = PostgresStore(store.conninfo, schema=f"jctest_{uuid.uuid4().hex[:12]}", **OPTIONS)
    try:
        for marker, call in (
            (b"to_regclass", fresh.schema_version),
            (b"pg_advisory_xact_lock", lambda: Ledger(fresh).grant("acct", 5)),
        ):
            proxy.freeze_on(marker, FREEZE)
            start = time.monotonic()
            try:
                with pytest.raises(StoreUnavailable, match="may or may not have been applied"):
                    call()
            finally:
                elapsed = time.monotonic() - start
                proxy.thaw()
            assert elapsed < bound + MARGIN, f"blocked {elapsed:.1f} s ({marker!r})"
        assert Ledger(fresh).grant("acct", 5) == 5  # migrated now
    finally:
        fresh.close()
        fresh.drop()
