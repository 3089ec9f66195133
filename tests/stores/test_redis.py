"""What RedisStore adds to the generic store suite: its key layout, its one
round trip per operation, script reloading, faults, several processes, and
Redis Cluster.

The generic rules run on Redis through ``test_store_suite.py`` and the model
(``test_model_redis.py``); this module checks what only a networked, shared
store can get wrong. Fault and cluster tests start private ``redis-server``
processes on free loopback ports and always stop them.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobcredits_plugin import (
    Charge,
    ConfigurationError,
    InsufficientCredits,
    JobInProgress,
    Ledger,
    StoreUnavailable,
)
from jobcredits_plugin._ledger import grant_charge_id
from jobcredits_plugin.stores import ClaimRequest, from_url
from jobcredits_plugin.testing import FakeClock, RecordingPlugin
from tests.stores._proxy import Proxy
from tests.stores._redis_cluster import redis_cluster
from tests.stores.conftest import REDIS_DEFAULT, REDIS_URL_ENV, _redis_cleanup, _server_url
from tests.stores.test_store_suite import CONFUSABLE_KEYS, UNICODE_ACCOUNTS

redis = pytest.importorskip("redis", reason="the redis extra is not installed")
from jobcredits_plugin.stores import RedisStore  # noqa: E402

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
needs_binaries = pytest.mark.skipif(
    REDIS_SERVER is None or REDIS_CLI is None, reason="redis-server/redis-cli not installed"
)


# -- helpers -----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ping(port: int, password: str | None = None, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        client = redis.Redis(port=port, password=password, socket_timeout=1)
        try:
            client.ping()
            return
        except redis.exceptions.BusyLoadingError:
            pass
        except redis.exceptions.ConnectionError:
            if time.monotonic() > deadline:
                raise
        finally:
            client.close()
        time.sleep(0.05)


class PrivateRedis:
    """One redis-server process we own, on a free loopback port."""

    def __init__(self, directory: Path, *extra: str) -> None:
        self.directory = directory
        self.port = _free_port()
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.directory),
                "--dbfilename", "dump.rdb",
                "--save", "",
                "--appendonly", "no",
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        password = None
        if "--requirepass" in self.extra:
            password = self.extra[self.extra.index("--requirepass") + 1]
        _wait_ping(self.port, password)

    def stop(self, save: bool = False) -> None:
        """Stop the server (saving its data first when asked, so a restart
        brings the same data back)."""
        if self.proc is None:
            return
        if save:
            client = redis.Redis(port=self.port, socket_timeout=5)
            try:
                client.save()
            finally:
                client.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def admin(self) -> Any:
        return redis.Redis(port=self.port, socket_timeout=5, decode_responses=True)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def shared_url() -> str:
    return _server_url(REDIS_URL_ENV, REDIS_DEFAULT, "Redis")


@pytest.fixture
def redis_store(shared_url: str) -> Iterator[RedisStore]:
    store = RedisStore.from_url(shared_url, prefix=f"jctest:{uuid.uuid4().hex[:12]}")
    yield store
    store.close()
    _redis_cleanup(store)


def _ledger(store: Any, clock: FakeClock, events: RecordingPlugin, **kw: Any) -> Ledger:
    return Ledger(store, clock=clock, plugins=[events], **kw)


# -- URLs and options --------------------------------------------------------------------


def test_from_url_routes_redis_schemes_and_reads_options(shared_url: str) -> None:
    """redis:// URLs build a RedisStore; query options become constructor arguments."""
    store = from_url(shared_url + "?prefix=abc&socket_timeout=1.5&retries=0&prune_batch=7")
    try:
        assert isinstance(store, RedisStore)
        assert store.prefix == "abc"
        assert store.prune_batch == 7
        assert "abc" in repr(store)
    finally:
        store.close()
    unix = RedisStore.from_url("redis+unix:///tmp/nothing.sock?db=3&prefix=u")
    unix.close()


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0?bogus=1",
        "redis://127.0.0.1:notaport/0",
        "redis://127.0.0.1:6379/0?socket_timeout=soon",
        "redis://127.0.0.1:6379/0?cluster=maybe",
        "redis://127.0.0.1:6379/0?prefix=a{b}",
        "redis://127.0.0.1:6379/notadb",
        "http://127.0.0.1:6379/0",
        # found by tests/test_hostile_input.py: each was a raw driver error
        "redis://127.0.0.1:6379/6?cluster=true",
        "redis://127.0.0.1:6379/0?db=-1",
        "redis://127.0.0.1:6379/0?db=99999999999999999999",
        "redis://127.0.0.1:6379/\udc80",
        "redis://u:pw@\udc80:6379/0",
        "redis://\x00:6379/0",
    ],
)
def test_bad_urls_are_configuration_errors(url: str) -> None:
    """A URL the store cannot use raises ConfigurationError before any connection."""
    with pytest.raises(ConfigurationError) as info:
        RedisStore.from_url(url).close()
    if "bogus" in url:
        assert "accepted:" in str(info.value)
        assert "prefix" in str(info.value)


def test_a_database_the_server_does_not_have_is_a_configuration_error(shared_url: str) -> None:
    """db=9999 passes the URL check (the number of databases is the server's
    setting) and every call then got a raw ResponseError ("DB index is out of
    range"): it is the app's ConfigurationError, and nothing is recorded."""
    base = shared_url.rsplit("/", 1)[0]
    store = RedisStore.from_url(f"{base}/9999?prefix=jctest:{uuid.uuid4().hex[:12]}")
    try:
        ledger = Ledger(store, clock=FakeClock())
        with pytest.raises(ConfigurationError, match="no database"):
            ledger.charge("acct", "job-1")
    finally:
        store.close()


def test_unreachable_server_is_store_unavailable_with_a_redacted_url() -> None:
    """Nothing listening: StoreUnavailable (bounded by the timeouts), no password shown."""
    url = f"redis://user:s3cret@127.0.0.1:{_free_port()}/0?socket_connect_timeout=0.5"
    ledger = Ledger.from_url(url)
    try:
        with pytest.raises(StoreUnavailable) as info:
            ledger.charge("acct", "job-1")
        assert "s3cret" not in str(info.value)
        assert "127.0.0.1" in str(info.value)
        with pytest.raises(StoreUnavailable):
            asyncio.run(ledger.acharge("acct", "job-1"))
    finally:
        ledger.close()


@needs_binaries
def test_wrong_password_is_a_clear_store_unavailable(tmp_path: Path) -> None:
    """A bad password answers StoreUnavailable saying authentication failed."""
    server = PrivateRedis(tmp_path, "--requirepass", "right")
    server.start()
    try:
        store = RedisStore.from_url(f"redis://:wrong@127.0.0.1:{server.port}/0")
        with pytest.raises(StoreUnavailable) as info:
            Ledger(store).charge("acct", "job-1")
        assert "authentication" in str(info.value)
        assert "wrong" not in str(info.value).replace("wrong password", "")
        store.close()
        good = RedisStore.from_url(f"redis://:right@127.0.0.1:{server.port}/0")
        assert Ledger(good).charge("acct", "job-1").charged
        good.close()
    finally:
        server.stop()


def test_an_existing_client_can_be_given(shared_url: str) -> None:
    """RedisStore(client) uses the caller's client; the async twins then run it in a thread."""
    client = redis.Redis.from_url(shared_url)  # bytes replies: the store copes
    store = RedisStore(client, prefix=f"jctest:{uuid.uuid4().hex[:12]}")
    try:
        ledger = Ledger(store, balances=True)
        ledger.grant("acct", 2)
        assert ledger.charge("acct", "job-1").charged
        assert asyncio.run(ledger.acharge("acct", "job-2")).balance == 0
        assert {r.job_id for r in ledger.snapshot()} == {"job-1", "job-2"}
    finally:
        store.close()
        store.url = shared_url
        _redis_cleanup(store)


def test_a_given_client_sees_every_call_through_its_execute_command(shared_url: str) -> None:
    """A client you pass is driven only through its public ``execute_command``, so
    what you wrapped around it (instrumentation, say) sees every script call. The
    store's own client sends its scripts over its pooled connections instead
    (docs/performance.md): its ``execute_command`` is not called for them."""
    client = redis.Redis.from_url(shared_url, decode_responses=True)
    seen: list[str] = []
    execute = client.execute_command

    def wrapped(*args: Any, **options: Any) -> Any:
        seen.append(str(args[0]))
        return execute(*args, **options)

    client.execute_command = wrapped  # type: ignore[method-assign]
    prefix = f"jctest:{uuid.uuid4().hex[:12]}"
    given = RedisStore(client, prefix=prefix)
    own = RedisStore.from_url(shared_url, prefix=prefix)
    own_calls: list[str] = []
    own_execute = own._client.execute_command
    own._client.execute_command = lambda *a, **o: (
        own_calls.append(str(a[0])) or own_execute(*a, **o)
    )
    try:
        ledger = Ledger(given, balances=True)
        ledger.grant("acct", 3)
        charge = ledger.charge("acct", "job-1")
        ledger.confirm("acct", "job-1", charge_id=charge.record.charge_id)
        ledger.charge("acct", "job-1")
        # grant, charge, confirm, the follow-up (and one more per script not yet loaded)
        assert seen.count("EVALSHA") >= 4
        theirs = Ledger(own, balances=True)
        assert theirs.charge("acct", "job-1").outcome == "reused"  # the given store's job
        assert theirs.charge("acct", "job-2").charged
        assert theirs.balance("acct") == 1
        assert "EVALSHA" not in own_calls
    finally:
        given.close()
        own.close()
        given.url = shared_url
        _redis_cleanup(given)


def test_a_given_async_client_sees_every_call_too(shared_url: str) -> None:
    """The same for the async twins: an async client you pass is driven through
    its ``execute_command``; the async client the store builds for an event
    loop sends its scripts over its pooled connections."""
    import redis.asyncio

    prefix = f"jctest:{uuid.uuid4().hex[:12]}"
    seen: list[str] = []

    async def run() -> None:
        given = redis.asyncio.Redis.from_url(shared_url, decode_responses=True)
        execute = given.execute_command

        async def wrapped(*args: Any, **options: Any) -> Any:
            seen.append(str(args[0]))
            return await execute(*args, **options)

        given.execute_command = wrapped  # type: ignore[method-assign]
        theirs = RedisStore(url=shared_url, prefix=prefix, async_client=given)
        own = RedisStore.from_url(shared_url, prefix=prefix)
        try:
            ledger = Ledger(theirs, balances=True)
            await ledger.agrant("acct", 3)
            first = await ledger.acharge("acct", "job-1")
            await ledger.aconfirm("acct", "job-1", charge_id=first.record.charge_id)
            assert (await ledger.acharge("acct", "job-1")).outcome == "reused"
            assert seen.count("EVALSHA") >= 4  # and one more per script not yet loaded
            client, _scripts = await own._aclient()  # type: ignore[misc]
            own_calls: list[str] = []
            own_execute = client.execute_command

            async def own_wrapped(*args: Any, **options: Any) -> Any:
                own_calls.append(str(args[0]))
                return await own_execute(*args, **options)

            client.execute_command = own_wrapped
            mine = Ledger(own, balances=True)
            assert (await mine.acharge("acct", "job-1")).outcome == "reused"
            assert (await mine.acharge("acct", "job-2")).outcome == "charged"
            assert "EVALSHA" not in own_calls
            await given.aclose()
        finally:
            await own.aclose()
            theirs.close()

    try:
        asyncio.run(run())
    finally:
        cleanup = RedisStore.from_url(shared_url, prefix=prefix)
        cleanup.close()
        _redis_cleanup(cleanup)


@pytest.mark.parametrize("hiredis", [True, False], ids=["hiredis", "python-packer"])
def test_the_store_s_own_client_works_with_either_packer(
    shared_url: str, monkeypatch: pytest.MonkeyPatch, hiredis: bool
) -> None:
    """The store's own client packs its script calls with hiredis when redis-py
    uses it, else with the connection's own packer (text outside ASCII
    included); a connection that asks to reconnect (redis-py 7's maintenance
    notices) is disconnected after its call."""
    import redis.utils

    if not hiredis:
        monkeypatch.setattr(redis.utils, "HIREDIS_AVAILABLE", False)
    store = RedisStore.from_url(shared_url, prefix=f"jctest:{uuid.uuid4().hex[:12]}")
    try:
        assert (store._scripts["claim"]._pack is not None) is hiredis
        ledger = Ledger(store, balances=True)
        ledger.grant("用户", 1)
        ledger.grant("acct", 1)
        first = ledger.charge("用户", "job-1")
        assert first.outcome == "charged"
        ledger.confirm("用户", "job-1", charge_id=first.record.charge_id)
        assert ledger.charge("用户", "job-1").outcome == "reused"
        assert [r.account for r in ledger.snapshot()] == ["用户"]

        async def async_calls() -> None:
            assert (await ledger.acharge("用户", "job-1")).outcome == "reused"
            got = await store._aclient()
            assert got is not None
            assert (got[1]["claim"]._pack is not None) is hiredis

        asyncio.run(async_calls())  # its client closes with its event loop
        conn = _lent(store)
        if hasattr(conn, "should_reconnect"):
            disconnected: list[bool] = []
            disconnect = conn.disconnect
            monkeypatch.setattr(conn, "should_reconnect", lambda: True)
            monkeypatch.setattr(
                conn, "disconnect", lambda *a, **k: disconnected.append(True) or disconnect()
            )
            assert ledger.charge("acct", "job-2").outcome == "charged"
            assert disconnected
        assert ledger.balance("用户") == 0
    finally:
        store.close()
        store.url = shared_url
        _redis_cleanup(store)


@pytest.mark.parametrize("hiredis", [True, False], ids=["hiredis", "python-packer"])
def test_a_call_that_cannot_be_sent_hands_back_every_connection_it_took(
    shared_url: str, monkeypatch: pytest.MonkeyPatch, hiredis: bool
) -> None:
    """An argument that cannot be packed fails the call, sync and async, and
    leaves no connection taken from the pool and never handed back (or kept
    by the store's lender for its next call)."""
    import redis.utils

    if not hiredis:
        monkeypatch.setattr(redis.utils, "HIREDIS_AVAILABLE", False)
    store = RedisStore.from_url(shared_url, prefix=f"jctest:{uuid.uuid4().hex[:12]}")

    def taken(seen: list[str]) -> int:
        return seen.count("get") - seen.count("release")

    seen = _counting_pool(store._client.connection_pool, monkeypatch)
    aseen: list[list[str]] = []  # the async client's pool's, once it exists
    try:
        with pytest.raises((TypeError, redis.exceptions.DataError)):
            store._scripts["lookup"](keys=[object()])
        # every connection taken from the pool is back there, or waits in the
        # store's lender for the next call
        assert store._lender is not None
        assert taken(seen) == len(store._lender._idle)

        async def async_call() -> None:
            got = await store._aclient()
            assert got is not None
            aseen.append(_counting_apool(got[0].connection_pool, monkeypatch))
            with pytest.raises((TypeError, redis.exceptions.DataError)):
                await got[1]["lookup"](keys=[object()])

        asyncio.run(async_call())  # its client closes with its loop
        assert taken(seen) == len(store._lender._idle)
        assert taken(aseen[0]) == 0
        assert Ledger(store).charge("acct", "job-1").charged  # and the store still works
    finally:
        store.close()
        store.url = shared_url
        _redis_cleanup(store)


def _lent(store: RedisStore) -> Any:
    """The connection the store's scripts will use next (it waits in the lender)."""
    lender = store._lender
    assert lender is not None
    conn, _since = lender._idle[-1]
    return conn


def _counting_pool(pool: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every checkout ("get") and return ("release") of ``pool``."""
    seen: list[str] = []
    get, release = pool.get_connection, pool.release

    def get_connection(*args: Any, **kwargs: Any) -> Any:
        seen.append("get")
        return get(*args, **kwargs)

    def release_connection(conn: Any) -> Any:
        seen.append("release")
        return release(conn)

    monkeypatch.setattr(pool, "get_connection", get_connection)
    monkeypatch.setattr(pool, "release", release_connection)
    return seen


def test_script_calls_reuse_a_lent_connection_without_the_pool(
    redis_store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's own client lends one connection to call after call: the
    pool's checkout and return (a lock, a poll, its metrics) are not paid per
    call. Its other commands still use the pool, which the lent connection
    is not taken from twice."""
    ledger = Ledger(redis_store, balances=True)
    ledger.grant("acct", 100)  # connects
    seen = _counting_pool(redis_store._client.connection_pool, monkeypatch)
    conn = _lent(redis_store)
    for i in range(20):
        charge = ledger.charge("acct", f"job-{i}")
        ledger.confirm("acct", f"job-{i}", charge_id=charge.record.charge_id)
        assert ledger.charge("acct", f"job-{i}").outcome == "reused"
    assert seen == []
    assert _lent(redis_store) is conn
    assert ledger.balance("acct") == 80  # a plain command: through the pool
    assert seen == ["get", "release"]


def test_an_answer_left_unread_is_never_read_by_the_next_call(
    redis_store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call interrupted between its send and its read (a KeyboardInterrupt,
    a timeout) leaves its answer on the connection. Were the connection lent
    again as it is, the next call would read that answer as its own: a
    follow-up's "reused" taken for a new job's charge, a job served that was
    never charged. The lender disconnects such a connection first."""
    ledger = Ledger(redis_store, balances=True)
    ledger.grant("acct", 5)
    first = ledger.charge("acct", "job-a")
    ledger.confirm("acct", "job-a", charge_id=first.record.charge_id)
    conn = _lent(redis_store)
    read = conn.read_response

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(conn, "read_response", read)
        raise KeyboardInterrupt

    monkeypatch.setattr(conn, "read_response", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ledger.charge("acct", "job-a")  # sent (a reuse), its answer never read
    second = ledger.charge("acct", "job-b")
    assert second.outcome == "charged"
    assert second.record.job_id == "job-b"
    record = ledger.lookup("acct", "job-b")
    assert record is not None
    assert record.charge_id == second.record.charge_id
    assert ledger.balance("acct") == 3


def test_a_connection_that_waited_goes_through_the_pool_s_checks(
    shared_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection idle for longer than the lender trusts is checked out
    through the pool again, whose check finds one the server closed (Redis's
    ``timeout``, a ``CLIENT KILL``) and reconnects it: with no driver retry
    at all, the call still succeeds."""
    from jobcredits_plugin.stores._redis import _clients

    store = RedisStore.from_url(shared_url, prefix=f"jctest:{uuid.uuid4().hex[:12]}", retries=0)
    admin = redis.Redis.from_url(shared_url)
    try:
        ledger = Ledger(store)
        assert ledger.charge("acct", "job-1").charged
        conn = _lent(store)
        conn.send_command("CLIENT", "ID")
        client_id = conn.read_response()
        assert admin.client_kill_filter(_id=client_id) == 1
        monkeypatch.setattr(_clients, "_FRESH", 0.0)  # as if it had waited long
        assert ledger.charge("acct", "job-2").charged
        assert ledger.lookup("acct", "job-2") is not None
    finally:
        admin.close()
        store.close()
        store.url = shared_url
        _redis_cleanup(store)


def test_async_script_calls_reuse_a_lent_connection_too(
    redis_store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The async client the store builds for an event loop lends its script
    calls one connection the same way: no pool checkout per call, and a call
    cancelled between its send and its read never leaves its answer for the
    next call to read as its own."""
    ledger = Ledger(redis_store, balances=True)

    async def run() -> None:
        await ledger.agrant("acct", 5)  # connects
        got = await redis_store._aclient()
        assert got is not None
        client, scripts = got
        lender = scripts["claim"]._lender
        seen = _counting_apool(client.connection_pool, monkeypatch)
        first = await ledger.acharge("acct", "job-a")
        await ledger.aconfirm("acct", "job-a", charge_id=first.record.charge_id)
        for _ in range(10):
            assert (await ledger.acharge("acct", "job-a")).outcome == "reused"
        assert seen == []
        conn, _since = lender._idle[-1]
        read = conn.read_response

        async def cancelled(*args: Any, **kwargs: Any) -> Any:
            monkeypatch.setattr(conn, "read_response", read)
            raise asyncio.CancelledError

        monkeypatch.setattr(conn, "read_response", cancelled)
        with pytest.raises(asyncio.CancelledError):
            await ledger.acharge("acct", "job-a")  # sent (a reuse), its answer never read
        second = await ledger.acharge("acct", "job-b")
        assert second.outcome == "charged"
        assert second.record.job_id == "job-b"
        record = await ledger.alookup("acct", "job-b")
        assert record is not None
        assert record.charge_id == second.record.charge_id
        assert await ledger.abalance("acct") == 3

    asyncio.run(run())


def _counting_apool(pool: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every checkout and return of an asyncio ``pool``."""
    seen: list[str] = []
    get, release = pool.get_connection, pool.release

    async def get_connection(*args: Any, **kwargs: Any) -> Any:
        seen.append("get")
        return await get(*args, **kwargs)

    async def release_connection(conn: Any) -> Any:
        seen.append("release")
        return await release(conn)

    monkeypatch.setattr(pool, "get_connection", get_connection)
    monkeypatch.setattr(pool, "release", release_connection)
    return seen


def _take_in_child(store: RedisStore, parent_conn_id: int, out: Any) -> None:
    conn = store._lender.take()  # type: ignore[union-attr]
    store._lender.give(conn, clean=True)  # type: ignore[union-attr]
    outcome = Ledger(store).charge("acct", "child-job").outcome
    out.send((id(conn) != parent_conn_id, outcome))


@pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="needs the fork start method"
)
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_never_uses_its_parent_s_lent_connection(redis_store: RedisStore) -> None:
    """The parent's waiting connection is a socket the parent still reads
    from: a child that used it would read the parent's answers. A forked
    child takes a connection of its own."""
    ledger = Ledger(redis_store)
    assert ledger.charge("acct", "parent-job").charged
    conn = _lent(redis_store)
    ctx = multiprocessing.get_context("fork")
    theirs, ours = ctx.Pipe()
    child = ctx.Process(target=_take_in_child, args=(redis_store, id(conn), ours))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert theirs.recv() == (True, "charged")
    assert _lent(redis_store) is conn
    assert ledger.charge("acct", "parent-job-2").charged


class _FakeConn:
    def __init__(self) -> None:
        self.disconnected = 0

    def disconnect(self) -> None:
        self.disconnected += 1

    def should_reconnect(self) -> bool:
        return False


class _FakePool:
    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self.out: list[_FakeConn] = []
        self.released: list[_FakeConn] = []

    def get_connection(self) -> _FakeConn:
        conn = _FakeConn()
        self.out.append(conn)
        return conn

    def release(self, conn: _FakeConn) -> None:
        self.released.append(conn)


@pytest.mark.parametrize(("max_connections", "kept"), [(100, 16), (20, 5), (3, 0)])
def test_the_lender_keeps_few_connections_and_hands_the_rest_back(
    max_connections: int, kept: int
) -> None:
    """At most 16 connections, and a quarter of the pool's limit, wait in the
    lender: the rest go back to the pool for the client's other commands. A
    connection whose call failed is disconnected; closing hands every
    waiting connection back."""
    from jobcredits_plugin.stores._redis._clients import _Lender

    pool = _FakePool(max_connections)
    lender = _Lender(pool)
    taken = [lender.take() for _ in range(30)]
    assert len(pool.out) == 30
    for conn in taken:
        lender.give(conn, clean=True)
    assert len(lender._idle) == kept
    assert pool.released == taken[kept:]
    failed = lender.take()  # the last one handed back, if any was kept
    assert (failed is taken[kept - 1]) if kept else (failed is pool.out[-1])
    lender.give(failed, clean=False)
    assert failed.disconnected == 1
    lender.close()
    assert lender._idle == []
    assert sorted(map(id, pool.released)) == sorted(map(id, pool.out))
    late = _FakeConn()
    lender.give(late, clean=True)  # a call that ends after the close
    assert pool.released[-1] is late


def test_a_pool_that_wants_the_command_name_is_given_it(shared_url: str) -> None:
    """redis-py 5's ``ConnectionPool.get_connection`` requires the command's name
    (later releases deprecate it): the store's scripts give it one there only."""
    from jobcredits_plugin.stores._redis._clients import _PooledScript

    names: list[str] = []

    class OldPool(redis.ConnectionPool):  # type: ignore[misc]
        def get_connection(self, command_name: str, *keys: Any, **options: Any) -> Any:
            names.append(command_name)
            return super().get_connection()

    source = "return ARGV[1] .. KEYS[1]"
    admin = redis.Redis.from_url(shared_url)
    admin.script_load(source)  # the old pool's client only runs it (no SCRIPT LOAD)
    old = redis.Redis(connection_pool=OldPool.from_url(shared_url, decode_responses=True))
    new = redis.Redis.from_url(shared_url, decode_responses=True)
    try:
        script = _PooledScript(old.register_script(source))
        assert script(keys=["b"], args=["ä"]) == "äb"
        assert names == ["EVALSHA"]
        again = _PooledScript(new.register_script(source))
        assert again(keys=["b"], args=["ä"]) == "äb"
        assert again._lender._pool_args == ()
    finally:
        admin.close()
        old.close()
        new.close()


# -- key layout ----------------------------------------------------------------------


def test_job_keys_are_injective_and_one_slot_per_account() -> None:
    """No two (account, scope, job_id) share a key; an account's keys share one cluster slot."""
    from redis.crc import key_slot

    store = RedisStore(url="redis://127.0.0.1:1/0", prefix="p")
    try:
        keys = CONFUSABLE_KEYS + [(a, "s", "j") for a in UNICODE_ACCOUNTS]
        keys += [("a", "bc", "d"), ("ab", "c", "d"), ("a", "b", "cd"), ("}{", "x", "y")]
        names = {store.job_key(k) for k in keys}
        assert len(names) == len(set(keys))
        for account, scope, job_id in keys:
            slot = key_slot(store.job_key((account, scope, job_id)).encode())
            assert key_slot(store.balance_key(account).encode()) == slot
            assert key_slot(store.due_key(account).encode()) == slot
        # Braces in an account never choose the hash tag.
        assert store.job_key(("{x}", "s", "j")).startswith("p:{")
        assert "{x}" not in store.job_key(("{x}", "s", "j")).split("}", 1)[0]
        # Balance keys never match the due-set pattern, whatever the account.
        import fnmatch

        pattern = store._due_pattern()
        assert not fnmatch.fnmatchcase(store.balance_key("x}:due"), pattern)
        assert fnmatch.fnmatchcase(store.due_key("x}:due"), pattern)
    finally:
        store.close()


def test_safety_expiry_is_set_on_job_keys_only(redis_store: RedisStore) -> None:
    """Job keys and due-sets expire a day after the job; balances never expire."""
    ledger = Ledger(redis_store, balances=True, ttl=3600)
    ledger.grant("acct", 5)
    ledger.charge("acct", "job-1")
    admin = redis_store._client
    job_ttl = admin.pttl(redis_store.job_key(("acct", "default", "job-1")))
    assert 3600_000 < job_ttl <= (3600 + 86400) * 1000
    assert admin.pttl(redis_store.due_key("acct")) >= job_ttl - 1000
    assert admin.pttl(redis_store.balance_key("acct")) == -1


def test_the_due_set_lives_as_long_as_its_longest_lived_job(redis_store: RedisStore) -> None:
    """A due-set's expiry moves later with a longer-lived job (to at most a second past
    it, so that the charges of the next second need not move it again) and never earlier
    with a shorter-lived one, and a due-set that lost its expiry gets one again from the
    next charge."""
    admin = redis_store._client
    due = redis_store.due_key("acct")
    Ledger(redis_store, ttl=60, lease=30).charge("acct", "job-short")
    job_ttl = admin.pttl(redis_store.job_key(("acct", "default", "job-short")))
    assert job_ttl <= admin.pttl(due) <= (60 + 86400 + 1) * 1000
    Ledger(redis_store, ttl=7200, lease=30).charge("acct", "job-long")
    long = admin.pttl(due)
    assert (7200 + 86400) * 1000 - 5000 < long <= (7200 + 86400 + 1) * 1000
    Ledger(redis_store, ttl=60, lease=30).charge("acct", "job-short-2")
    assert admin.pttl(due) > (7200 + 86400) * 1000 - 10_000  # not shortened
    admin.persist(due)
    Ledger(redis_store, ttl=60, lease=30).charge("acct", "job-short-3")
    assert 0 < admin.pttl(due) <= (60 + 86400 + 1) * 1000


# -- scripts and round trips ------------------------------------------------------------


def test_scripts_are_reloaded_after_script_flush(redis_store: RedisStore) -> None:
    """After SCRIPT FLUSH (a restarted server) the next call re-sends the script and works."""
    clock, events = FakeClock(), RecordingPlugin()
    ledger = _ledger(redis_store, clock, events)
    assert ledger.charge("acct", "job-1").charged
    redis_store._client.script_flush()
    assert ledger.charge("acct", "job-2").charged
    redis_store._client.script_flush()

    async def again() -> Charge:
        return await ledger.acharge("acct", "job-3")

    assert asyncio.run(again()).charged
    redis_store._client.script_flush()
    assert [r.job_id for r in ledger.prune()] == []
    assert events.kinds() == ["charge"] * 3


def _evalsha_calls(admin: Any) -> int:
    stats = admin.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


@needs_binaries
def test_each_operation_is_one_round_trip(
    private_redis: PrivateRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One request/answer per charge, confirm, refund and grant, and the server sees it as
    one EVALSHA (the script's own commands run inside it)."""
    import redis.asyncio.connection
    import redis.connection

    replies = {"n": 0}

    def counting(cls: Any) -> None:
        original = cls.read_response

        def read_response(self: Any, *args: Any, **kwargs: Any) -> Any:
            replies["n"] += 1
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "read_response", read_response)

    counting(redis.connection.AbstractConnection)
    counting(redis.asyncio.connection.AbstractConnection)

    store = RedisStore.from_url(private_redis.url)
    admin = private_redis.admin()
    try:
        ledger = Ledger(store, balances=True)
        ledger.grant("acct", 100)
        # Warm-up: the connection's set-up and each script's first load (a
        # fresh server answers NOSCRIPT once per script).
        ledger.charge("acct", "warm-up")
        ledger.confirm("acct", "warm-up")
        ledger.refund("acct", "warm-up")
        for op in (
            lambda: ledger.charge("acct", "job-1"),
            lambda: ledger.confirm("acct", "job-1"),
            lambda: ledger.charge("acct", "job-1"),
            lambda: ledger.refund("acct", "job-1"),
            lambda: ledger.grant("acct", 1),
            lambda: ledger.lookup("acct", "job-1"),
            lambda: ledger.balance("acct"),
        ):
            before = _evalsha_calls(admin)
            replies["n"] = 0
            op()
            count = replies["n"]
            after = _evalsha_calls(admin)
            assert count == 1
            assert after - before in (0, 1)
        before = _evalsha_calls(admin)
        ledger.charge("acct", "job-2")
        assert _evalsha_calls(admin) - before == 1

        async def async_charges() -> None:
            await ledger.acharge("acct", "async-warm-up")
            replies["n"] = 0
            await ledger.acharge("acct", "async-1")

        asyncio.run(async_charges())
        assert replies["n"] == 1
    finally:
        admin.close()
        store.close()


def test_a_retried_claim_is_answered_as_its_own_charge(redis_store: RedisStore) -> None:
    """A claim re-sent after a lost answer (same charge_id) is not charged twice."""
    req = ClaimRequest(
        account="acct", scope="default", job_id="job-1", charge_id="c1", cost=2,
        tier=None, backend=None, now=1000.0, ttl=3600.0, lease=60.0, max_uses=None,
        balances=True,
    )  # fmt: skip
    redis_store.grant("acct", 5)
    first = redis_store.claim(req)
    again = redis_store.claim(req)
    assert first.status == again.status == "charged"
    assert first.record == again.record
    assert [e.kind for e in again.events] == ["charge"]
    assert redis_store.balance("acct") == 3


def test_only_a_claim_over_a_record_keeps_a_retry_marker(redis_store: RedisStore) -> None:
    """A charge of a job with no record keeps no retry marker: its record
    carries its charge id, which is how a re-sent claim finds it (answered as
    that charge, once debited, once journaled). A reuse, which changes a
    record that is not its own, keeps one, and is counted once when re-sent."""

    def req(job_id: str, charge_id: str, now: float) -> ClaimRequest:
        return ClaimRequest(
            account="acct", scope="default", job_id=job_id, charge_id=charge_id, cost=2,
            tier=None, backend=None, now=now, ttl=3600.0, lease=60.0, max_uses=None,
            balances=True,
        )  # fmt: skip

    def marker(r: ClaimRequest) -> int:
        keys, _args = redis_store._claim_call(r)
        return int(redis_store._client.exists(keys[3]))

    redis_store.grant("acct", 5)
    new = req("job-1", "c1", 1000.0)
    first = redis_store.claim(new)
    assert first.status == "charged"
    assert marker(new) == 0
    again = redis_store.claim(new)  # the retry of a call whose answer was lost
    assert (again.status, again.record, again.balance) == ("charged", first.record, 3)
    assert [e.kind for e in again.events] == ["charge"]
    assert redis_store.balance("acct") == 3
    assert [e.kind for e in redis_store.read_journal(0, 10)] == ["grant", "charge"]
    redis_store.confirm(("acct", "default", "job-1"), "c1", 1001.0)
    follow = req("job-1", "c2", 1002.0)
    reused = redis_store.claim(follow)
    assert reused.status == "reused"
    assert marker(follow) == 1
    assert redis_store.claim(follow).record == reused.record  # re-sent: counted once
    record = redis_store.lookup(("acct", "default", "job-1"), 1003.0)
    assert record is not None
    assert record.uses == 2


# -- faults --------------------------------------------------------------------------


@pytest.fixture
def lossy(shared_url: str) -> Iterator[tuple[RedisStore, Proxy]]:
    """A store that reaches the shared server through a proxy that can lose an answer."""
    parts = urllib.parse.urlsplit(shared_url)
    if parts.scheme != "redis":
        pytest.skip("the proxy speaks plain TCP: needs a redis:// URL")
    proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    url = urllib.parse.urlunsplit(parts._replace(netloc=f"127.0.0.1:{proxy.port}"))
    store = RedisStore.from_url(url, prefix=f"jctest:{uuid.uuid4().hex[:12]}")
    try:
        yield store, proxy
    finally:
        store.close()
        proxy.close()
        store.url = url.replace(f"127.0.0.1:{proxy.port}", parts.netloc)
        _redis_cleanup(store)


def test_a_lost_answer_charges_and_refunds_exactly_once(
    lossy: tuple[RedisStore, Proxy],
) -> None:
    """The server commits a charge (or a refund) and the connection dies before
    the answer arrives: redis-py re-sends the call, the script recognises its
    own work (the charge id, the refund's token), and the caller gets the
    answer it missed. One debit, one refund, one hook each, on both paths."""
    store, proxy = lossy
    clock, events = FakeClock(), RecordingPlugin()
    ledger = _ledger(store, clock, events, balances=True)
    ledger.grant("acct", 20)
    ledger.charge("acct", "warm-up")  # connected, scripts loaded

    proxy.lose_next_answer(b"EVALSHA")
    charge = ledger.charge("acct", "job-1", cost=3)
    assert proxy.lost == 1
    assert charge.charged
    assert [r.job_id for r in events.of("charge")] == ["warm-up", "job-1"]
    assert ledger.balance("acct") == 16

    proxy.lose_next_answer(b"EVALSHA")
    assert ledger.refund("acct", "job-1") is True
    assert proxy.lost == 2
    assert [r.job_id for r in events.of("refund")] == ["job-1"]
    assert ledger.balance("acct") == 19
    assert ledger.refund("acct", "job-1") is False  # a second refund finds nothing
    assert ledger.charge("acct", "job-1").charged  # the refunded job charges anew

    async def async_part() -> None:
        await ledger.acharge("acct", "async-warm-up")
        proxy.lose_next_answer(b"EVALSHA")
        again = await ledger.acharge("acct", "async-1", cost=2)
        assert again.charged
        proxy.lose_next_answer(b"EVALSHA")
        assert await ledger.arefund("acct", "async-1") is True

    asyncio.run(async_part())
    assert proxy.lost == 4
    assert [r.job_id for r in events.of("refund")] == ["job-1", "async-1"]
    assert len(events.of("charge")) == 5
    assert ledger.balance("acct") == 20 - 1 - 1 - 1  # warm-ups and the second job-1


def test_a_lost_answer_journals_each_change_once(lossy: tuple[RedisStore, Proxy]) -> None:
    """A script whose answer is lost is re-sent and recognises its own work:
    it answers again without journaling again. One charge entry and one
    refund entry per job (and one grant entry), on both paths."""
    store, proxy = lossy
    clock, events = FakeClock(), RecordingPlugin()
    ledger = _ledger(store, clock, events, balances=True)
    ledger.grant("acct", 20)
    ledger.charge("acct", "warm-up")  # connected, scripts loaded
    start = store.read_journal(0, 100)[-1].seq

    proxy.lose_next_answer(b"EVALSHA")
    assert ledger.charge("acct", "job-1", cost=3).charged
    proxy.lose_next_answer(b"EVALSHA")
    assert ledger.refund("acct", "job-1") is True
    proxy.lose_next_answer(b"EVALSHA")
    assert ledger.grant("acct", 5) == 24
    assert proxy.lost == 3

    async def async_part() -> None:
        await ledger.acharge("acct", "async-warm-up")
        proxy.lose_next_answer(b"EVALSHA")
        assert (await ledger.acharge("acct", "async-1", cost=2)).charged
        proxy.lose_next_answer(b"EVALSHA")
        assert await ledger.arefund("acct", "async-1") is True
        proxy.lose_next_answer(b"EVALSHA")
        assert await ledger.agrant("acct", 1) == 24

    asyncio.run(async_part())
    assert proxy.lost == 6
    entries = store.read_journal(start, 100)
    assert [(e.kind, e.job_id, e.delta, e.balance) for e in entries] == [
        ("charge", "job-1", -3, 16),
        ("refund", "job-1", 3, 19),
        ("grant", None, 5, 24),
        ("charge", "async-warm-up", -1, 23),
        ("charge", "async-1", -2, 21),
        ("refund", "async-1", 2, 23),
        ("grant", None, 1, 24),
    ]
    assert ledger.balance("acct") == 24
    charge_ids = [e.charge_id for e in entries if e.kind == "charge"]
    assert charge_ids[0] == events.of("charge")[1].charge_id


def test_a_grant_whose_answer_was_lost_is_retried_safely_with_its_grant_id(
    shared_url: str,
) -> None:
    """Issue 13, item 6: with no driver retry (retries=0) a lost answer reaches
    the caller as StoreUnavailable although the grant committed; the caller
    retries with the same grant_id and gets the first grant's answer, with one
    credit and one journal entry. Without a grant_id that retry credited twice."""
    parts = urllib.parse.urlsplit(shared_url)
    if parts.scheme != "redis":
        pytest.skip("the proxy speaks plain TCP: needs a redis:// URL")
    proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    url = urllib.parse.urlunsplit(parts._replace(netloc=f"127.0.0.1:{proxy.port}"))
    store = RedisStore.from_url(url, prefix=f"jctest:{uuid.uuid4().hex[:12]}", retries=0)
    try:
        ledger = Ledger(store, clock=FakeClock(), balances=True)
        assert ledger.grant("acct", 5) == 5  # connected, scripts loaded
        start = store.read_journal(0, 100)[-1].seq
        proxy.lose_next_answer(b"EVALSHA")
        with pytest.raises(StoreUnavailable):
            ledger.grant("acct", 7, grant_id="pay-1")
        assert proxy.lost == 1
        assert ledger.grant("acct", 7, grant_id="pay-1") == 12
        assert ledger.grant("acct", 7, grant_id="pay-1") == 12

        async def async_part() -> None:
            proxy.lose_next_answer(b"EVALSHA")
            with pytest.raises(StoreUnavailable):
                await ledger.agrant("acct", 2, grant_id="pay-2")
            assert await ledger.agrant("acct", 2, grant_id="pay-2") == 14

        asyncio.run(async_part())
        assert proxy.lost == 2
        assert ledger.balance("acct") == 14  # 5 + 7 + 2, not 5 + 7 + 7 + 2 + 2
        entries = store.read_journal(start, 100)
        assert [(e.kind, e.cost, e.balance) for e in entries] == [
            ("grant", 7, 12),
            ("grant", 2, 14),
        ]
        assert entries[0].charge_id == grant_charge_id("acct", "pay-1")
    finally:
        store.close()
        proxy.close()
        store.url = url.replace(f"127.0.0.1:{proxy.port}", parts.netloc)
        _redis_cleanup(store)


@needs_binaries
@pytest.mark.slow
def test_server_stopped_then_restarted(private_redis: PrivateRedis) -> None:
    """Stopped: calls return StoreUnavailable (bounded). Restarted: the same ledger works again."""
    clock, events = FakeClock(), RecordingPlugin()
    store = RedisStore.from_url(private_redis.url + "?socket_timeout=1&socket_connect_timeout=1")
    ledger = _ledger(store, clock, events, balances=True)
    try:
        ledger.grant("acct", 10)
        first = ledger.charge("acct", "job-1")
        ledger.confirm("acct", "job-1", charge_id=first.record.charge_id)

        stop, charging, refused = threading.Event(), threading.Event(), threading.Event()
        outcomes: list[str] = []

        def hammer() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    ledger.charge("acct", f"loop-{n}", cost=0)
                    outcomes.append("ok")
                    charging.set()
                except StoreUnavailable:
                    outcomes.append("unavailable")
                    refused.set()

        worker = threading.Thread(target=hammer)
        worker.start()
        # Events, not sleeps: the server stops while calls are flowing, and
        # the hammer stops once one call saw the server gone.
        assert charging.wait(30), "no charge went through before the stop"
        private_redis.stop(save=True)
        refused.wait(30)
        stop.set()
        worker.join(timeout=30)
        assert not worker.is_alive()
        assert "unavailable" in outcomes
        with pytest.raises(StoreUnavailable):
            ledger.charge("acct", "job-2")
        with pytest.raises(StoreUnavailable):
            asyncio.run(ledger.acharge("acct", "job-2"))

        private_redis.start()
        # Same ledger, same store object: it reconnects by itself, the data
        # saved before the stop is there, and the scripts are re-sent.
        again = ledger.charge("acct", "job-1")
        assert again.outcome == "reused"
        assert ledger.charge("acct", "job-2").charged
        assert asyncio.run(ledger.acharge("acct", "job-3")).charged
        assert ledger.balance("acct") == 7
    finally:
        ledger.close()


@needs_binaries
def test_client_kill_loses_no_charge_and_charges_nothing_twice(
    private_redis: PrivateRedis,
) -> None:
    """Killing the store's connections between calls: the next call reconnects; every
    committed charge stays, none is made twice."""
    clock, events = FakeClock(), RecordingPlugin()
    store = RedisStore.from_url(private_redis.url)
    admin = private_redis.admin()
    ledger = _ledger(store, clock, events, balances=True)
    try:
        ledger.grant("acct", 100)
        for n in range(20):
            c = ledger.charge("acct", f"job-{n}")
            assert c.charged
            admin.client_kill_filter(_type="normal", skipme=True)
            ledger.confirm("acct", f"job-{n}", charge_id=c.record.charge_id)
            admin.client_kill_filter(_type="normal", skipme=True)
            assert ledger.charge("acct", f"job-{n}").outcome == "reused"

        async def async_part() -> None:
            for n in range(5):
                c = await ledger.acharge("acct", f"async-{n}")
                assert c.charged
                admin.client_kill_filter(_type="normal", skipme=True)
                with pytest.raises(JobInProgress):
                    await ledger.acharge("acct", f"async-{n}")

        asyncio.run(async_part())
        assert len(events.of("charge")) == 25
        assert ledger.balance("acct") == 75
        assert len(ledger.snapshot()) == 25
    finally:
        admin.close()
        ledger.close()


def _process_worker(url: str, prefix: str, jobs: list[str], seed: int) -> list[str]:
    """One of several processes charging the same jobs; returns the jobs it charged."""
    store = RedisStore.from_url(url, prefix=prefix)
    charged: list[str] = []
    rng = random.Random(seed)
    order = jobs[:]
    rng.shuffle(order)
    try:
        ledger = Ledger(store, balances=True)
        for _round in range(3):
            for job in order:
                try:
                    c = ledger.charge("shared", job)
                except (JobInProgress, InsufficientCredits):
                    continue
                if c.charged:
                    charged.append(job)
                    ledger.confirm("shared", job, charge_id=c.record.charge_id)
                balance = ledger.balance("shared")
                assert balance is not None
                assert balance >= 0
    finally:
        store.close()
    return charged


@pytest.mark.slow
def test_processes_sharing_a_store_charge_each_job_once(redis_store: RedisStore) -> None:
    """4 processes charging the same 40 jobs with 30 credits: 30 jobs charged once each."""
    assert redis_store.url is not None
    Ledger(redis_store).grant("shared", 30)
    jobs = [f"job-{n}" for n in range(40)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        results = pool.starmap(
            _process_worker,
            [(redis_store.url, redis_store.prefix, jobs, seed) for seed in range(4)],
        )
    charged = [job for result in results for job in result]
    assert len(charged) == len(set(charged)) == 30
    assert redis_store.balance("shared") == 0


def test_two_ledgers_pruning_at_once_settle_each_record_once(
    redis_store: RedisStore, shared_url: str
) -> None:
    """Two stores (own connections) pruning the same due records: one on_expire per record."""
    clock = FakeClock()
    events_a, events_b = RecordingPlugin(), RecordingPlugin()
    other = RedisStore.from_url(shared_url, prefix=redis_store.prefix, prune_batch=3)
    a = Ledger(redis_store, clock=clock, plugins=[events_a], ttl=10, lease=5)
    b = Ledger(other, clock=clock, plugins=[events_b], ttl=10, lease=5)
    try:
        for n in range(120):
            account = f"acct-{n % 7}"
            a.charge(account, f"job-{n}")
            a.confirm(account, f"job-{n}")
        clock.advance(11)
        barrier = threading.Barrier(2)
        removed: dict[str, list[Any]] = {}

        def run(name: str, ledger: Ledger) -> None:
            barrier.wait()
            removed[name] = ledger.prune()

        threads = [threading.Thread(target=run, args=(n, led)) for n, led in (("a", a), ("b", b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        keys = [r.key for r in removed["a"] + removed["b"]]
        assert len(keys) == len(set(keys)) == 120
        assert len(events_a.of("expire")) + len(events_b.of("expire")) == 120
        assert a.prune() == []
        assert b.prune() == []
    finally:
        other.close()


def test_async_clients_follow_each_event_loop(redis_store: RedisStore) -> None:
    """Each asyncio.run gets its own async client, closed with its loop."""
    ledger = Ledger(redis_store)

    async def charge(job: str) -> bool:
        return (await ledger.acharge("acct", job)).charged

    for n in range(3):
        assert asyncio.run(charge(f"job-{n}"))
    assert len(redis_store.snapshot(FakeClock().now)) == 3


# -- Redis Cluster -------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A 3-master Redis Cluster on loopback ports, torn down after the module."""
    if REDIS_SERVER is None or REDIS_CLI is None:
        pytest.skip("redis-server/redis-cli not installed")
    with redis_cluster(tmp_path_factory.mktemp("cluster")) as url:
        yield url


@pytest.fixture
def cluster_store(cluster_url: str) -> Iterator[RedisStore]:
    store = RedisStore.from_url(cluster_url, prefix=f"jccluster:{uuid.uuid4().hex[:8]}")
    yield store
    store.close()


@pytest.mark.slow
def test_cluster_runs_the_rules_across_nodes(cluster_store: RedisStore) -> None:
    """On a 3-master cluster: charges, reuse, stale takeover, refunds, balances, snapshot and
    prune work for accounts spread over every node."""
    clock, events = FakeClock(), RecordingPlugin()
    ledger = _ledger(cluster_store, clock, events, balances=True)
    assert cluster_store.journal is True  # one stream per slot, merged by readers
    accounts = [f"acct-{n}" for n in range(30)] + ["{a}", "a|b:c", "用户"]
    for account in accounts:
        assert ledger.grant(account, 3) == 3
    # The accounts' slots land on all three masters.
    client = cluster_store._client
    nodes = {client.get_node_from_key(cluster_store.due_key(a)).name for a in accounts}
    assert len(nodes) == 3
    for account in accounts:
        c = ledger.charge(account, "job-1", tier="pro")
        assert c.charged
        assert c.balance == 2
        ledger.confirm(account, "job-1", charge_id=c.record.charge_id)
        assert ledger.charge(account, "job-1").outcome == "reused"
        ledger.charge(account, "job-2")
        with pytest.raises(JobInProgress):
            ledger.charge(account, "job-2")
        assert ledger.refund(account, "job-2") is True
        ledger.charge(account, "stale", cost=2)
    clock.advance(60)  # the "stale" charges' leases are over
    # Too poor even with the stale charge refunded: the refund still commits.
    with pytest.raises(InsufficientCredits):
        ledger.charge(accounts[0], "stale", cost=3)
    assert len(ledger.snapshot()) == 2 * len(accounts) - 1
    removed = ledger.prune()
    assert sorted(r.account for r in removed) == sorted(accounts[1:])
    assert {r.state for r in removed} == {"refunded"}
    assert all(ledger.balance(a) == 2 for a in accounts)
    assert len(events.of("refund")) == 2 * len(accounts)
    clock.advance(3600)
    expired = ledger.prune(limit=10)
    assert len(expired) == 10
    expired += ledger.prune()
    assert len(expired) == len(accounts)
    assert ledger.snapshot() == []
    assert len(events.of("expire")) == len(accounts)
    # The journal has every hook's event (and the grants), each account's in
    # commit order: its balances are the running sums.
    entries = ledger.journal(limit=10_000)
    assert sorted((e.kind, e.charge_id) for e in entries if e.kind != "grant") == sorted(
        (e.kind, e.record.charge_id) for e in events.events if e.kind != "reuse"
    )
    running: dict[str, int] = {}
    for e in entries:
        running[e.account] = running.get(e.account, 0) + e.delta
        assert e.balance == running[e.account]
    assert running == {a: ledger.balance(a) for a in accounts}


@pytest.mark.slow
def test_cluster_async_twins(cluster_store: RedisStore) -> None:
    """The redis.asyncio cluster client follows the same rules."""
    clock, events = FakeClock(), RecordingPlugin()
    ledger = _ledger(cluster_store, clock, events, balances=True)

    async def scenario() -> None:
        for n in range(12):
            account = f"acct-{n}"
            assert await ledger.agrant(account, 1) == 1
            c = await ledger.acharge(account, "job-1")
            assert c.charged
            assert c.balance == 0
            await ledger.aconfirm(account, "job-1")
            assert (await ledger.acharge(account, "job-1")).outcome == "reused"
        assert len(await ledger.asnapshot()) == 12
        clock.advance(3600)
        assert len(await ledger.aprune()) == 12

    asyncio.run(scenario())
    assert events.kinds().count("expire") == 12
