"""What only PostgreSQL has: the schema and its migrations, the one round trip
per charge, and the failures of a network server (killed connections, an
outage), with several processes and pruners sharing one schema.

The rules themselves are checked by ``test_store_suite.py`` (and the model in
``test_model_postgres.py``), which run on PostgreSQL like on every store.
These tests need a server (``JOBCREDITS_TEST_POSTGRES_URL``, default
``postgresql://postgres@127.0.0.1:5432/test``); they skip without one, and fail
on CI. No test stops the server: outages go through a proxy of our own.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import tempfile
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from jobcredits_plugin import (
    Charge,
    ConfigurationError,
    JobInProgress,
    Ledger,
    StoreUnavailable,
)
from jobcredits_plugin.stores import from_url
from jobcredits_plugin.testing import FakeClock, RecordingPlugin
from tests.stores._proxy import Proxy
from tests.stores.conftest import POSTGRES_DEFAULT, POSTGRES_URL_ENV, _server_url

psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed")

from jobcredits_plugin.stores._postgres import SCHEMA_VERSION, PostgresStore  # noqa: E402


@pytest.fixture
def url() -> str:
    return _server_url(POSTGRES_URL_ENV, POSTGRES_DEFAULT, "PostgreSQL")


def _with_query(url: str, **params: str) -> str:
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query) + list(params.items())
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _replace_netloc(url: str, host: str, port: int) -> str:
    parts = urllib.parse.urlsplit(url)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}{host}:{port}"))


@pytest.fixture
def make_store(url: str) -> Iterator[Callable[..., PostgresStore]]:
    """Builds stores on fresh schemas (or a given one); closes them and drops
    every schema they used."""
    made: list[PostgresStore] = []

    def make(schema: str | None = None, store_url: str | None = None, **kw: Any) -> PostgresStore:
        kw.setdefault("schema", schema or f"jctest_{uuid.uuid4().hex[:12]}")
        store = PostgresStore.from_url(store_url or url, **kw)
        made.append(store)
        return store

    yield make
    schemas = {s.schema for s in made}
    for store in made:
        store.close()
    for schema in schemas:
        PostgresStore.from_url(url, schema=schema).drop()


def _admin(url: str) -> Any:
    return psycopg.connect(url, autocommit=True)


def _schema_exists(url: str, schema: str) -> bool:
    with _admin(url) as conn:
        row = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
        return row is not None


# -- the schema ----------------------------------------------------------------------------


def test_schema_is_created_on_first_use_and_its_version_recorded(
    url: str, make_store: Callable[..., PostgresStore]
) -> None:
    """Building the store touches nothing; the first operation migrates."""
    store = make_store()
    assert not _schema_exists(url, store.schema)
    assert store.grant("acct", 3) == 3
    assert _schema_exists(url, store.schema)
    assert store.schema_version() == SCHEMA_VERSION
    with _admin(url) as conn:
        rows = conn.execute(
            psycopg.sql.SQL("SELECT version FROM {}.schema_version").format(
                psycopg.sql.Identifier(store.schema)
            )
        ).fetchall()
    assert rows == [(v,) for v in range(1, SCHEMA_VERSION + 1)]  # one row per step


def test_migrate_is_idempotent(make_store: Callable[..., PostgresStore]) -> None:
    """migrate() creates the schema once; running it again changes nothing."""
    store = make_store()
    assert store.schema_version() == 0
    assert store.migrate() == SCHEMA_VERSION
    store.grant("acct", 5)
    assert store.migrate() == SCHEMA_VERSION
    assert store.balance("acct") == 5
    assert store.schema_version() == SCHEMA_VERSION


def test_concurrent_migrations_take_turns(make_store: Callable[..., PostgresStore]) -> None:
    """Eight stores migrating one new schema at once: all succeed, one version row."""
    schema = f"jctest_{uuid.uuid4().hex[:12]}"
    stores = [make_store(schema) for _ in range(8)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(stores))

    def run(store: PostgresStore) -> None:
        barrier.wait(timeout=30)
        try:
            store.migrate()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert stores[0].schema_version() == SCHEMA_VERSION
    assert stores[0].grant("acct", 1) == 1


def test_without_auto_migrate_the_first_use_asks_for_migrate(
    make_store: Callable[..., PostgresStore],
) -> None:
    store = make_store(auto_migrate=False)
    with pytest.raises(StoreUnavailable, match="jobcredits migrate"):
        store.balance("acct")
    store.migrate()
    assert store.balance("acct") == 0


def test_schema_names_are_quoted_identifiers(make_store: Callable[..., PostgresStore]) -> None:
    """The schema name comes from configuration: validated as a plain
    identifier and quoted where it is spliced (a mixed-case name keeps its
    case, which an unquoted one would lose)."""
    store = make_store(f"JcTest_Mixed_{uuid.uuid4().hex[:6]}")
    ledger = Ledger(store, clock=FakeClock())
    c = ledger.charge("acct", "job-1")
    assert c.charged
    assert ledger.lookup("acct", "job-1") == c.record
    assert [e.record.job_id for e in store.prune(c.record.expires_at)] == ["job-1"]


@pytest.mark.parametrize(
    "schema",
    [
        'jctest "odd"; name',
        "a$fn$b",
        "x$$y",
        "has space",
        "1starts_with_digit",
        "dash-ed",
        "ünïcode",
        "x" * 64,
        "",
        "pg_catalog",
        "PG_mine",
        "a\x00b",
        None,
        42,
    ],
)
def test_bad_schema_names_are_configuration_errors(url: str, schema: Any) -> None:
    with pytest.raises(ConfigurationError, match="schema"):
        PostgresStore.from_url(url, schema=schema)
    with pytest.raises(ConfigurationError, match="schema"):
        PostgresStore(url, schema=schema)
    if isinstance(schema, str) and schema and "\x00" not in schema:
        with pytest.raises(ConfigurationError, match="schema"):
            Ledger.from_url(_with_query(url, schema=schema))


# -- URLs and configuration ------------------------------------------------------------------


def test_from_url_separates_store_options_from_libpq_ones(url: str) -> None:
    store = PostgresStore.from_url(
        _with_query(url, schema="abc", max_size="5", timeout="1.5", application_name="x")
    )
    assert (store.schema, store.max_size, store.timeout) == ("abc", 5, 1.5)
    assert "application_name=x" in store.conninfo
    assert "schema" not in store.conninfo
    store.close()


def test_tcp_bounds_are_set_unless_the_url_names_them(url: str) -> None:
    """libpq's tcp_user_timeout and keepalives bound a server that vanishes
    without a FIN or RST; the connections really carry them, and the URL wins."""
    seen: list[dict[str, str]] = []
    # A schema of its own: the default one may hold another version's tables.
    store = PostgresStore.from_url(
        _with_query(url, keepalives_idle="30", schema=f"jctest_{uuid.uuid4().hex[:12]}"),
        configure=lambda c: seen.append(c.info.get_parameters()),
    )
    try:
        store.lookup(("a", "default", "j"), 0.0)
    finally:
        store.drop()
        store.close()
    params = seen[0]
    assert params["tcp_user_timeout"] == str(
        int((store.statement_timeout + store.connect_timeout) * 1000)
    )
    assert params["keepalives"] == "1"
    assert params["keepalives_idle"] == "30"
    assert (params["keepalives_interval"], params["keepalives_count"]) == ("2", "3")


def test_from_url_rejects_unknown_options_and_bad_values(url: str) -> None:
    with pytest.raises(ConfigurationError, match="nonsense"):
        PostgresStore.from_url(_with_query(url, nonsense="1"))
    with pytest.raises(ConfigurationError, match="max_size"):
        PostgresStore.from_url(_with_query(url, max_size="many"))
    with pytest.raises(ConfigurationError):
        PostgresStore.from_url(url, max_size=0)
    with pytest.raises(ConfigurationError):
        PostgresStore.from_url(url, schema="x" * 64)


def test_journal_options_from_the_url_and_their_checks(url: str) -> None:
    store = PostgresStore.from_url(
        _with_query(url, journal="off", journal_reuses="yes", journal_max_age="3600")
    )
    assert (store.journal, store.journal_reuses, store.journal_max_age) == (False, True, 3600.0)
    assert "journal" not in store.conninfo
    store.close()
    defaults = PostgresStore.from_url(url)
    assert (defaults.journal, defaults.journal_reuses) == (True, False)
    assert defaults.journal_max_age == 7 * 86400.0
    defaults.close()
    for none in ("none", "off", ""):
        store = PostgresStore.from_url(_with_query(url, journal_max_age=none))
        assert store.journal_max_age is None
        store.close()
    for bad in ({"journal": "maybe"}, {"journal_reuses": "2"}, {"journal_max_age": "soon"}):
        with pytest.raises(ConfigurationError, match=next(iter(bad))):
            PostgresStore.from_url(_with_query(url, **bad))
    for kwargs in (
        {"journal": 1},
        {"journal_reuses": None},
        {"journal_max_age": 0},
        {"journal_max_age": -5},
        {"journal_max_age": float("inf")},
        {"journal_max_age": True},
        {"journal_max_age": "60"},
    ):
        with pytest.raises(ConfigurationError):
            PostgresStore(url, **kwargs)


def test_generic_from_url_builds_a_postgres_store(url: str) -> None:
    store = from_url(_with_query(url, schema="jctest_generic"))
    assert isinstance(store, PostgresStore)
    store.close()


def test_a_missing_database_is_a_clear_error_without_the_password(url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    host = f"{parts.hostname}:{parts.port or 5432}"
    user = parts.username or "postgres"
    bad = f"postgresql://{user}:s3cret@{host}/no_such_db_{uuid.uuid4().hex[:6]}"
    store = PostgresStore.from_url(bad)
    with pytest.raises(StoreUnavailable) as info:
        store.balance("acct")
    message = str(info.value)
    assert "s3cret" not in message
    assert "***" in message
    assert "no_such_db" in message
    assert "does not exist" in message
    store.close()


def test_connection_refused_is_store_unavailable(url: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    store = PostgresStore.from_url(_replace_netloc(url, "127.0.0.1", port))
    with pytest.raises(StoreUnavailable, match=r"127\.0\.0\.1"):
        Ledger(store).charge("acct", "job-1")
    store.close()


# -- one round trip -------------------------------------------------------------------------


class ProtocolTrace:
    """Traces the wire protocol of every pooled connection (libpq's PQtrace)
    and counts Sync messages: outside pipeline mode, one Sync is one round
    trip."""

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in close()

    def configure(self, conn: Any) -> None:
        conn.pgconn.trace(self.file.fileno())
        conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)

    def round_trips(self) -> int:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.seek(0)
        lines = self.file.read().splitlines()
        self.file.seek(0, os.SEEK_END)
        return sum(1 for line in lines if line.startswith("F") and "\tSync" in line)

    def close(self) -> None:
        self.file.close()


def test_a_charge_is_one_round_trip(make_store: Callable[..., PostgresStore]) -> None:
    """charge (new and follow-up), confirm, refund, lookup and grant each make
    exactly one round trip to the server."""
    trace = ProtocolTrace()
    store = make_store(min_size=1, max_size=1, configure=trace.configure)
    try:
        ledger = Ledger(store, clock=FakeClock(), balances=True)
        ledger.grant("acct", 100)  # migrates, opens the pool
        for what in ("charge", "confirm", "reuse", "refund", "lookup", "grant", "busy"):
            before = trace.round_trips()
            if what == "charge":
                c = ledger.charge("acct", "job-1")
            elif what == "confirm":
                ledger.confirm("acct", "job-1", charge_id=c.record.charge_id)
            elif what == "reuse":
                assert ledger.charge("acct", "job-1").outcome == "reused"
            elif what == "refund":
                assert ledger.refund("acct", "job-1")
            elif what == "lookup":
                assert ledger.lookup("acct", "job-1") is None
            elif what == "grant":
                ledger.grant("acct", 1)
            else:
                ledger.charge("acct", "job-2")
                before = trace.round_trips()
                with pytest.raises(JobInProgress):
                    ledger.charge("acct", "job-2")
            assert trace.round_trips() - before == 1, what
        # and after psycopg starts preparing the statement, still one
        for n in range(8):
            before = trace.round_trips()
            ledger.charge("acct", f"job-p{n}")
            assert trace.round_trips() - before == 1
    finally:
        store.close()  # libpq must stop writing to the file before it closes
        trace.close()


# -- failures -------------------------------------------------------------------------------


def _terminate(url: str, application_name: str) -> int:
    with _admin(url) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid()",
            (application_name,),
        ).fetchall()
    return len(rows)


def _wait_gone(url: str, application_name: str) -> None:
    """pg_terminate_backend only signals: wait (bounded) until the backends exit."""
    for _ in range(100):
        with _admin(url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                (application_name,),
            ).fetchone()
        if row is not None and row[0] == 0:
            return
        threading.Event().wait(0.05)


def test_killed_idle_connections_are_replaced_without_an_error(
    url: str, make_store: Callable[..., PostgresStore]
) -> None:
    """pg_terminate_backend of idle pooled connections: the next call sees no
    error (the dead connection is noticed before anything is sent)."""
    app = f"jctest-{uuid.uuid4().hex[:8]}"
    store = make_store(store_url=_with_query(url, application_name=app), min_size=2)
    ledger = Ledger(store, clock=FakeClock(), balances=True)
    ledger.grant("acct", 10)
    assert _terminate(url, app) >= 1
    _wait_gone(url, app)
    for n in range(5):
        assert ledger.charge("acct", f"job-{n}").charged
    assert ledger.balance("acct") == 5


@pytest.mark.slow
def test_connections_killed_mid_run_lose_no_charge_and_never_double_charge(
    url: str, make_store: Callable[..., PostgresStore]
) -> None:
    """Charges from 4 threads while another thread keeps killing the store's
    connections: every charge reported is committed, a failed one is
    StoreUnavailable, the balance matches the records exactly, and the store
    works again afterwards."""
    app = f"jctest-{uuid.uuid4().hex[:8]}"
    store = make_store(store_url=_with_query(url, application_name=app), max_size=4)
    clock = FakeClock()
    ledger = Ledger(store, clock=clock, balances=True)
    ledger.grant("acct", 10_000)
    stop = threading.Event()
    charged: list[Charge] = []
    unavailable: list[str] = []
    lock = threading.Lock()

    def killer() -> None:
        while not stop.is_set():
            _terminate(url, app)
            stop.wait(0.005)

    def worker(w: int) -> None:
        for n in range(150):
            job = f"job-{w}-{n}"
            try:
                c = ledger.charge("acct", job)
            except StoreUnavailable:
                with lock:
                    unavailable.append(job)
                continue
            with lock:
                charged.append(c)

    kill = threading.Thread(target=killer)
    kill.start()
    workers = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=120)
    stop.set()
    kill.join(timeout=30)

    live = {r.job_id: r for r in _retrying(ledger.snapshot)}
    for c in charged:  # nothing reported as charged was lost
        assert live[c.record.job_id] == c.record
    # a job whose call failed was committed or not, never twice; each live
    # record debited exactly one credit
    assert set(live) <= {c.record.job_id for c in charged} | set(unavailable)
    assert _retrying(lambda: ledger.balance("acct")) == 10_000 - len(live)
    # the store recovers without being rebuilt
    assert _retrying(lambda: ledger.charge("acct", "after")).charged


def _retrying(fn: Callable[[], Any], attempts: int = 50) -> Any:
    """Call fn until the store answers (bounded): the pool may need a moment to
    replace its connections after a storm of kills or an outage."""
    for _ in range(attempts - 1):
        try:
            return fn()
        except StoreUnavailable:
            threading.Event().wait(0.2)
    return fn()


@pytest.mark.slow
def test_an_outage_is_store_unavailable_and_the_store_recovers(
    url: str, make_store: Callable[..., PostgresStore]
) -> None:
    parts = urllib.parse.urlsplit(url)
    proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    try:
        store = make_store(
            store_url=_replace_netloc(url, "127.0.0.1", proxy.port), timeout=1.0, max_size=2
        )
        ledger = Ledger(store, clock=FakeClock(), balances=True)
        ledger.grant("acct", 10)
        assert ledger.charge("acct", "job-1").charged
        proxy.cut()
        for n in range(3):
            with pytest.raises(StoreUnavailable) as info:
                ledger.charge("acct", f"down-{n}")
            assert "127.0.0.1" in str(info.value)
        with pytest.raises(StoreUnavailable):
            ledger.balance("acct")
        proxy.restore()
        c = _retrying(lambda: ledger.charge("acct", "job-2"))
        assert c.charged
        assert ledger.balance("acct") == 8  # nothing was charged while down
    finally:
        proxy.close()


# -- several processes and pruners ----------------------------------------------------------


def _process_charges(url: str, schema: str, jobs: int, queue: Any) -> None:
    store = PostgresStore.from_url(url, schema=schema, max_size=2)
    ledger = Ledger(store, balances=True)
    outcomes: list[tuple[str, str]] = []
    for n in range(jobs):
        job = f"job-{n}"
        try:
            c = ledger.charge("acct", job)
        except JobInProgress:
            outcomes.append((job, "in_progress"))
        else:
            outcomes.append((job, c.outcome))
            if c.charged:
                ledger.confirm("acct", job, charge_id=c.record.charge_id)
    ledger.close()
    queue.put(outcomes)


@pytest.mark.slow
def test_four_processes_charge_each_shared_job_exactly_once(
    url: str, make_store: Callable[..., PostgresStore]
) -> None:
    store = make_store()
    ledger = Ledger(store, balances=True)
    ledger.grant("acct", 1000)
    jobs = 60
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_process_charges, args=(url, store.schema, jobs, queue))
        for _ in range(4)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for n in range(jobs):
        outcomes = [o for r in results for job, o in r if job == f"job-{n}"]
        assert outcomes.count("charged") == 1, (n, outcomes)
    assert ledger.balance("acct") == 1000 - jobs
    assert len(ledger.snapshot()) == jobs


@pytest.mark.slow
def test_two_ledgers_pruning_at_once_fire_on_expire_once_per_record(
    make_store: Callable[..., PostgresStore],
) -> None:
    schema = f"jctest_{uuid.uuid4().hex[:12]}"
    clock = FakeClock()
    seed = Ledger(make_store(schema), clock=clock, balances=True)
    seed.grant("acct", 1000)
    for n in range(300):
        c = seed.charge("acct", f"job-{n}")
        if n % 3:  # the rest stay pending and are refunded by prune
            seed.confirm("acct", f"job-{n}", charge_id=c.record.charge_id)
    clock.advance(3600)
    plugins = [RecordingPlugin(), RecordingPlugin()]
    ledgers = [Ledger(make_store(schema, prune_batch=7), clock=clock, plugins=[p]) for p in plugins]
    barrier = threading.Barrier(2)

    def run(ledger: Ledger) -> None:
        barrier.wait(timeout=30)
        ledger.prune()

    threads = [threading.Thread(target=run, args=(led,)) for led in ledgers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    expired = [r.job_id for p in plugins for r in p.of("expire")]
    refunded = [r.job_id for p in plugins for r in p.of("refund")]
    assert sorted(expired + refunded) == sorted(f"job-{n}" for n in range(300))
    assert len(refunded) == 100
    assert seed.balance("acct") == 1000 - 200
    assert seed.snapshot() == []


# -- the async twins ------------------------------------------------------------------------


def test_async_twins_share_the_pool_from_threads(make_store: Callable[..., PostgresStore]) -> None:
    """Ten concurrent acharge of one job: one charge, nine in progress, on the
    one sync pool (from worker threads)."""
    store = make_store()
    events = RecordingPlugin()
    ledger = Ledger(store, clock=FakeClock(), balances=True, plugins=[events])

    async def scenario() -> None:
        await ledger.agrant("acct", 5)
        results = await asyncio.gather(
            *(ledger.acharge("acct", "job-1") for _ in range(10)), return_exceptions=True
        )
        assert sum(isinstance(r, Charge) and r.charged for r in results) == 1
        assert sum(isinstance(r, JobInProgress) for r in results) == 9
        assert await ledger.abalance("acct") == 4
        await store.aclose()

    asyncio.run(scenario())
    assert events.kinds() == ["charge"]


def test_event_loops_come_and_go_without_hanging(
    make_store: Callable[..., PostgresStore],
) -> None:
    """asyncio.run again and again on one store, each loop torn down while the
    pool may still be connecting. psycopg_pool's async pool swallowed the
    cancellation of such a connection attempt and hung asyncio.run at exit
    (about one run in ten under load); the thread-backed twins leave no task
    of theirs behind to cancel."""
    store = make_store(min_size=2, max_size=4)
    ledger = Ledger(store, clock=FakeClock())
    for n in range(20):
        assert asyncio.run(ledger.acharge("acct", f"job-{n}")).charged
    assert len(ledger.snapshot()) == 20


def test_statements_work_where_psycopg_quotes_identifiers_only_with_a_connection(
    make_store: Callable[..., PostgresStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store renders its statements to bytes once, without a connection,
    which psycopg 3.2 and later can do; psycopg 3.1 (still supported) raises
    ValueError for an identifier without one. There the statements stay
    composed and the store works as before."""
    from psycopg import sql

    from jobcredits_plugin import Ledger

    real = sql.Identifier.as_bytes

    def like_psycopg_3_1(self: sql.Identifier, context: Any) -> bytes:
        if context is None or getattr(context, "connection", None) is None:
            raise ValueError("a connection is necessary for Identifier")
        return real(self, context)

    monkeypatch.setattr(sql.Identifier, "as_bytes", like_psycopg_3_1)
    store = make_store()
    assert isinstance(store._sql.claim, sql.Composed)
    ledger = Ledger(store, clock=FakeClock())
    first = ledger.charge("acct", "job-31")
    assert first.outcome == "charged"
    assert ledger.confirm("acct", "job-31", charge_id=first.record.charge_id) is not None
    assert ledger.charge("acct", "job-31").outcome == "reused"
