"""The PostgreSQL journal: what only a server with concurrent transactions
can get wrong.

Writers append entries with no number; a read numbers the entries it can
see (those of committed transactions), under a lock, from a counter. These
tests hold transactions open by hand on separate connections to check that
an entry committed late is never skipped, that a rolled-back one leaves no
gap, that concurrent writers and readers lose and repeat nothing, that
refused calls write nothing, that trimming respects cursors and unnumbered
entries, and that a version-1 schema is upgraded.

The rules every store shares are in ``test_journal.py``. These tests need a
server (``JOBCREDITS_TEST_POSTGRES_URL``, default
``postgresql://postgres@127.0.0.1:5432/test``); they skip without one, and fail
on CI.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from jobcredits_plugin import (
    InsufficientCredits,
    JobExhausted,
    JobInProgress,
    JournalEntry,
    Ledger,
    StoreUnavailable,
)
from jobcredits_plugin.stores import ClaimRequest
from jobcredits_plugin.testing import FakeClock, RecordingPlugin
from tests.stores.conftest import POSTGRES_DEFAULT, POSTGRES_URL_ENV, _server_url
from tests.stores.test_journal import charge_refund_confirm

psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed")

from psycopg import sql  # noqa: E402

from jobcredits_plugin.stores._postgres import SCHEMA_VERSION, PostgresStore  # noqa: E402
from tests.stores._pg_history import make_schema_at  # noqa: E402


@pytest.fixture
def url() -> str:
    return _server_url(POSTGRES_URL_ENV, POSTGRES_DEFAULT, "PostgreSQL")


@pytest.fixture
def make_store(url: str) -> Iterator[Callable[..., PostgresStore]]:
    """Builds stores on fresh schemas (or a given one); closes them and drops
    every schema they used."""
    made: list[PostgresStore] = []

    def make(schema: str | None = None, **kw: Any) -> PostgresStore:
        kw.setdefault("schema", schema or f"jctest_{uuid.uuid4().hex[:12]}")
        store = PostgresStore.from_url(url, **kw)
        made.append(store)
        return store

    yield make
    schemas = {s.schema for s in made}
    for store in made:
        store.close()
    for schema in schemas:
        PostgresStore.from_url(url, schema=schema).drop()


@pytest.fixture
def open_transactions(url: str) -> Iterator[Callable[[], Any]]:
    """Opens connections that are *not* autocommit, so that what they run stays
    in one open transaction until the test commits or rolls it back; rolls
    back and closes whatever the test left open."""
    conns: list[Any] = []

    def make() -> Any:
        conn = psycopg.connect(url, autocommit=False)
        conns.append(conn)
        return conn

    yield make
    for conn in conns:
        if not conn.closed:
            conn.rollback()
            conn.close()


def _request(job_id: str, *, account: str = "acct", balances: bool = False) -> ClaimRequest:
    return ClaimRequest(
        account=account,
        scope="default",
        job_id=job_id,
        charge_id=uuid.uuid4().hex,
        cost=1,
        tier=None,
        backend=None,
        now=FakeClock().now,
        ttl=3600.0,
        lease=60.0,
        max_uses=None,
        balances=balances,
    )


def _claim_in(conn: Any, store: PostgresStore, req: ClaimRequest) -> str:
    """Run the store's own claim function on ``conn`` (inside its open
    transaction); returns the status."""
    row = conn.execute(store._sql.claim, store._claim_params(req)).fetchone()
    assert row is not None
    return str(row[0])


def _raw(url: str, schema: str) -> list[tuple[Any, ...]]:
    """Every row of the journal table, numbered or not: (seq, kind, job_id)."""
    with psycopg.connect(url, autocommit=True) as conn:
        query = sql.SQL("SELECT seq, kind, job_id FROM {}.journal ORDER BY id")
        return conn.execute(query.format(sql.Identifier(schema))).fetchall()


def _last_seq(url: str, schema: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        query = sql.SQL("SELECT last_seq FROM {}.journal_state")
        row = conn.execute(query.format(sql.Identifier(schema))).fetchone()
    assert row is not None
    return int(row[0])


def _all(store: PostgresStore, after: int = 0) -> list[JournalEntry]:
    out: list[JournalEntry] = []
    while page := store.read_journal(after, 4):
        out.extend(page)
        after = page[-1].seq
    return out


# -- late commits ------------------------------------------------------------------------


def test_an_entry_committed_late_is_never_skipped(
    url: str, make_store: Callable[..., PostgresStore], open_transactions: Callable[[], Any]
) -> None:
    """A transaction claims through the store's own function and stays open;
    meanwhile a charge commits and a reader reads it and moves its cursor past
    it. The open entry (which took the lower id) is not numbered while it is
    in flight; once it commits, the reader continuing from its cursor finds
    it, above the seq it already passed: nothing skipped, nothing twice."""
    store = make_store()
    ledger = Ledger(store, clock=FakeClock(), balances=True)
    ledger.grant("acct", 10)
    (grant,) = store.read_journal(0, 100)
    store.set_cursor("billing", grant.seq)

    late = open_transactions()
    # Another account: an entry in flight holds its own account's balance row
    # (shared), so that a debit of that account is numbered after it.
    assert _claim_in(late, store, _request("late", account="other")) == "charged"
    assert ledger.charge("acct", "early").charged  # commits now, after "late" began

    page = store.read_journal(grant.seq, 100)
    assert [(e.job_id, e.seq) for e in page] == [("early", grant.seq + 1)]
    store.set_cursor("billing", page[-1].seq)
    unnumbered = [r for r in _raw(url, store.schema) if r[0] is None]
    assert unnumbered == []  # "late" is invisible to the numbering, not held as NULL

    late.commit()
    position = store.get_cursor("billing")
    assert position == grant.seq + 1
    page = store.read_journal(position, 100)
    assert [(e.job_id, e.seq) for e in page] == [("late", grant.seq + 2)]
    assert [e.job_id for e in _all(store)] == [None, "early", "late"]


def test_a_raw_insert_held_open_is_numbered_after_it_commits(
    url: str, make_store: Callable[..., PostgresStore], open_transactions: Callable[[], Any]
) -> None:
    """The same with a bare INSERT into the journal table: the numbering does
    not depend on how a row was written, only on whether it has committed."""
    store = make_store()
    ledger = Ledger(store, clock=FakeClock())
    ledger.charge("acct", "first")
    (first,) = store.read_journal(0, 10)

    held = open_transactions()
    held.execute(
        sql.SQL(
            "INSERT INTO {}.journal (kind, account, charge_id, cost, delta, balance, at) "
            "VALUES ('grant', 'acct', 'g-held', 5, 5, 5, 0)"
        ).format(sql.Identifier(store.schema))
    )
    for n in range(3):
        ledger.charge("acct", f"after-{n}")
    page = store.read_journal(first.seq, 100)
    assert [e.job_id for e in page] == ["after-0", "after-1", "after-2"]
    held.commit()
    late = store.read_journal(page[-1].seq, 100)
    assert [(e.kind, e.charge_id) for e in late] == [("grant", "g-held")]
    assert [e.seq for e in page + late] == list(range(first.seq + 1, first.seq + 5))


def test_an_unrelated_open_transaction_delays_nothing(
    make_store: Callable[..., PostgresStore], open_transactions: Callable[[], Any]
) -> None:
    """A transaction that holds an xid elsewhere on the server (one that
    touches nothing of ours) does not hold the journal back."""
    store = make_store()
    ledger = Ledger(store, clock=FakeClock())
    other = open_transactions()
    other.execute("SELECT pg_current_xact_id()")  # takes an xid, writes nothing
    ledger.charge("acct", "job")
    assert [e.job_id for e in store.read_journal(0, 10)] == ["job"]
    other.rollback()


def test_a_rolled_back_entry_never_appears_and_leaves_no_gap(
    url: str, make_store: Callable[..., PostgresStore], open_transactions: Callable[[], Any]
) -> None:
    store = make_store()
    ledger = Ledger(store, clock=FakeClock(), balances=True)
    ledger.grant("acct", 10)
    (grant,) = store.read_journal(0, 10)

    ghost = open_transactions()
    # another account (see test_an_entry_committed_late_is_never_skipped)
    assert _claim_in(ghost, store, _request("ghost", account="other")) == "charged"
    ledger.charge("acct", "real")
    ghost.rollback()

    page = store.read_journal(grant.seq, 10)
    assert [(e.job_id, e.seq) for e in page] == [("real", grant.seq + 1)]
    ledger.charge("acct", "next")
    assert [(e.job_id, e.seq) for e in store.read_journal(page[-1].seq, 10)] == [
        ("next", grant.seq + 2)
    ]
    rows = _raw(url, store.schema)
    assert [r[2] for r in rows] == [None, "real", "next"]  # no ghost row anywhere
    assert [r[0] for r in rows] == [1, 2, 3]  # no gap, none waiting to fill one
    assert _last_seq(url, store.schema) == 3
    assert ledger.lookup("other", "ghost") is None


# -- concurrency ---------------------------------------------------------------------------


@pytest.mark.slow
def test_many_writers_and_two_readers_see_every_entry_exactly_once(
    make_store: Callable[..., PostgresStore],
) -> None:
    """8 threads x 50 charges (half refunded, some reused ids) while 2 readers
    follow the journal with their own stored cursors: each page continues the
    last without a gap, each reader sees every entry exactly once in
    increasing seq, and the entries are one per committed event."""
    store = make_store(max_size=12)
    events = RecordingPlugin()
    ledger = Ledger(store, clock=FakeClock(), balances=True, plugins=[events])
    ledger.grant("acct", 100_000)
    stop = threading.Event()
    errors: list[BaseException] = []
    seen: dict[str, list[JournalEntry]] = {"r0": [], "r1": []}

    def writer(w: int) -> None:
        charge_refund_confirm(ledger, f"w{w}", calls=50, jobs=20, errors=errors)

    def reader(name: str, limit: int) -> None:
        try:
            store.set_cursor(name, 0)
            while True:
                done = stop.is_set()
                after = store.get_cursor(name)
                assert after is not None
                page = store.read_journal(after, limit)
                assert [e.seq for e in page] == list(range(after + 1, after + 1 + len(page)))
                seen[name].extend(page)
                if page:
                    assert store.set_cursor(name, page[-1].seq) == page[-1].seq
                elif done:
                    return
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    readers = [threading.Thread(target=reader, args=(n, lim)) for n, lim in (("r0", 7), ("r1", 50))]
    writers = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join(timeout=120)
    stop.set()
    for t in readers:
        t.join(timeout=120)
    assert not errors, errors

    final = _all(store)
    assert seen["r0"] == seen["r1"] == final
    assert [e.seq for e in final] == list(range(1, len(final) + 1))
    journaled = Counter((e.kind, e.charge_id) for e in final if e.kind != "grant")
    hooked = Counter((e.kind, e.record.charge_id) for e in events.events if e.kind != "reuse")
    assert journaled == hooked
    assert sum(journaled.values()) == len(final) - 1
    assert sum(e.delta for e in final) == ledger.balance("acct")
    assert store.cursors() == {"r0": final[-1].seq, "r1": final[-1].seq}


# -- what writes nothing ------------------------------------------------------------------


def test_refused_claims_write_no_row_at_all(
    url: str, make_store: Callable[..., PostgresStore]
) -> None:
    """Not just nothing readable: no row, numbered or not, for an insufficient,
    in-progress or exhausted claim, or a refund or confirm that found nothing."""
    store = make_store()
    ledger = Ledger(store, clock=FakeClock(), balances=True, max_uses=1)
    ledger.grant("acct", 1)
    c = ledger.charge("acct", "job")
    rows = _raw(url, store.schema)
    assert [r[1] for r in rows] == ["grant", "charge"]
    with pytest.raises(JobInProgress):
        ledger.charge("acct", "job")
    ledger.confirm("acct", "job", charge_id=c.record.charge_id)
    with pytest.raises(JobExhausted):
        ledger.charge("acct", "job")
    with pytest.raises(InsufficientCredits):
        ledger.charge("acct", "other")
    assert ledger.refund("acct", "nothing") is False
    assert ledger.confirm("acct", "nothing") is None
    assert _raw(url, store.schema) == rows


def test_an_insufficient_takeover_journals_only_the_refund(
    url: str, make_store: Callable[..., PostgresStore]
) -> None:
    store = make_store()
    clock = FakeClock()
    ledger = Ledger(store, clock=clock, balances=True, lease=10)
    ledger.grant("acct", 2)
    ledger.charge("acct", "job", cost=2)
    clock.advance(11)
    with pytest.raises(InsufficientCredits):
        ledger.charge("acct", "job", cost=5)
    entries = _all(store)
    assert [(e.kind, e.delta, e.balance) for e in entries] == [
        ("grant", 2, 2),
        ("charge", -2, 0),
        ("refund", 2, 2),
    ]


def test_journal_off_writes_no_row_and_stores_share_a_schema_with_their_own_settings(
    url: str, make_store: Callable[..., PostgresStore]
) -> None:
    quiet = make_store(journal=False, journal_reuses=True)
    clock = FakeClock()
    ledger = Ledger(quiet, clock=clock, balances=True, lease=5, ttl=10)
    ledger.grant("acct", 5)
    c = ledger.charge("acct", "job")
    ledger.confirm("acct", "job", charge_id=c.record.charge_id)
    ledger.charge("acct", "job")  # a reuse
    d = ledger.charge("acct", "job-2")
    ledger.refund("acct", "job-2", charge_id=d.record.charge_id)
    ledger.charge("acct", "job-3")
    clock.advance(20)
    assert len(ledger.prune()) == 2
    assert _raw(url, quiet.schema) == []
    assert quiet.read_journal(0, 100) == []

    # the same schema, through a store that journals (reuses too)
    loud = make_store(quiet.schema, journal_reuses=True)
    other = Ledger(loud, clock=clock, balances=True)
    e = other.charge("acct", "job-4")
    other.confirm("acct", "job-4", charge_id=e.record.charge_id)
    other.charge("acct", "job-4")
    ledger.charge("acct", "job-5")  # the quiet store still writes nothing
    assert [(x.kind, x.job_id) for x in loud.read_journal(0, 100)] == [
        ("charge", "job-4"),
        ("reuse", "job-4"),
    ]


def test_prune_journals_each_settlement_with_its_running_balance(
    make_store: Callable[..., PostgresStore],
) -> None:
    """One prune statement settling several records of two accounts: one entry
    per event in the order of the events, each balance the running one."""
    store = make_store(prune_batch=50)
    clock = FakeClock()
    events = RecordingPlugin()
    ledger = Ledger(store, clock=clock, balances=True, lease=10, ttl=100, plugins=[events])
    ledger.grant("a", 20)
    ledger.grant("b", 20)
    for n in range(6):
        account = "ab"[n % 2]
        c = ledger.charge(account, f"job-{n}", cost=n + 1)
        if n % 3 == 0:
            ledger.confirm(account, f"job-{n}", charge_id=c.record.charge_id)
        clock.advance(1)
    clock.advance(200)
    before = len(events.events)
    assert len(ledger.prune()) == 6
    settled = events.events[before:]
    entries = _all(store)
    tail = entries[-len(settled) :]
    assert [(e.kind, e.job_id) for e in tail] == [(ev.kind, ev.record.job_id) for ev in settled]
    assert {e.kind for e in tail} == {"refund", "expire"}
    running: Counter[str] = Counter()
    for e in entries:
        running[e.account] += e.delta
        assert e.balance == running[e.account], e
    assert running["a"] == ledger.balance("a")
    assert running["b"] == ledger.balance("b")


# -- trimming -----------------------------------------------------------------------------


def test_trim_never_removes_above_the_lowest_cursor_nor_an_unnumbered_entry(
    url: str,
    make_store: Callable[..., PostgresStore],
    open_transactions: Callable[[], Any],
) -> None:
    store = make_store()
    ledger = Ledger(store, clock=FakeClock())
    for n in range(6):
        ledger.charge("acct", f"job-{n}")
    seqs = [e.seq for e in _all(store)]
    assert store.trim_journal(None, None) == 0  # no bound: nothing goes
    store.set_cursor("slow", seqs[1])
    store.set_cursor("fast", seqs[4])
    assert store.trim_journal(seqs[-1], None) == 2  # capped by "slow"
    assert store.trim_journal(None, float("inf")) == 0  # still capped
    assert [e.seq for e in _all(store)] == seqs[2:]
    assert store.set_cursor("slow", seqs[0]) == seqs[1]  # no silent rewind
    assert store.set_cursor("slow", seqs[0], force=True) == seqs[0]
    assert store.trim_journal(seqs[-1], None) == 0

    # an entry still in flight is neither numbered nor trimmed; once it
    # commits it is numbered after everything trimmed before it
    assert store.delete_cursor("slow")
    assert store.delete_cursor("fast")
    assert not store.delete_cursor("slow")
    held = open_transactions()
    held.execute(
        sql.SQL(
            "INSERT INTO {}.journal (kind, account, charge_id, cost, delta, balance, at) "
            "VALUES ('grant', 'acct', 'g-held', 5, 5, 5, 0)"
        ).format(sql.Identifier(store.schema))
    )
    for n in range(3):
        ledger.charge("acct", f"later-{n}")
    assert store.trim_journal(None, float("inf")) == 4 + 3  # numbered, then trimmed
    assert _raw(url, store.schema) == []  # the held row is invisible until it commits
    held.commit()
    kept = store.read_journal(0, 100)
    assert [e.charge_id for e in kept] == ["g-held"]
    assert [e.seq for e in kept] == [seqs[-1] + 4]


def test_trim_deletes_in_bounded_batches(
    url: str, make_store: Callable[..., PostgresStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    from jobcredits_plugin.stores._postgres import _store

    monkeypatch.setattr(_store, "_TRIM_BATCH", 3)
    store = make_store()
    ledger = Ledger(store, clock=FakeClock())
    for n in range(10):
        ledger.charge("acct", f"job-{n}")
    assert store.trim_journal(None, float("inf")) == 10
    assert _raw(url, store.schema) == []
    ledger.charge("acct", "later")
    assert [e.seq for e in store.read_journal(0, 10)] == [11]  # seq never goes back


def test_reading_numbers_a_bounded_batch_per_call(
    make_store: Callable[..., PostgresStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    from jobcredits_plugin.stores._postgres import _store

    monkeypatch.setattr(_store, "_SEQUENCE_BATCH", 2)
    store = make_store()
    ledger = Ledger(store, clock=FakeClock())
    for n in range(5):
        ledger.charge("acct", f"job-{n}")
    assert [e.job_id for e in store.read_journal(0, 1)] == ["job-0"]  # numbered 2
    assert [e.seq for e in store.read_journal(0, 3)] == [1, 2, 3]  # numbered 3 more
    assert [e.seq for e in _all(store)] == [1, 2, 3, 4, 5]


# -- the async twins --------------------------------------------------------------------


def test_async_twins_of_the_journal_methods(make_store: Callable[..., PostgresStore]) -> None:
    store = make_store()

    async def main() -> None:
        assert await store.agrant("acct", 4, 1.5, "g-1") == 4
        (entry,) = await store.aread_journal(0, 10)
        assert (entry.kind, entry.charge_id, entry.cost, entry.at) == ("grant", "g-1", 4, 1.5)
        assert await store.aset_cursor("c", entry.seq) == entry.seq
        assert await store.aget_cursor("c") == entry.seq
        assert await store.acursors() == {"c": entry.seq}
        assert await store.atrim_journal(entry.seq, None) == 1
        assert await store.adelete_cursor("c") is True
        assert await store.aget_cursor("c") is None

    asyncio.run(main())


# -- migrating a version-1 schema -----------------------------------------------------------


def make_v1_schema(url: str, schema: str) -> None:
    """A schema exactly as version 1 of this package left it, with a balance
    and a pending job written through its functions."""
    store = PostgresStore.from_url(url, schema=schema)
    try:
        with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
            make_schema_at(conn, store, 1)
            conn.execute(store._format("SELECT {schema}.credit('acct', 7)"))
            conn.execute(
                store._format(
                    "SELECT * FROM {schema}.claim('acct', 'default', 'old-job', 'c-old', 2, "
                    "NULL, NULL, %s, 3600, 60, NULL, true)"
                ),
                (FakeClock().now,),
            )
    finally:
        store.close()


def test_a_version_1_schema_is_upgraded_on_first_use(
    url: str, make_store: Callable[..., PostgresStore]
) -> None:
    schema = f"jctest_{uuid.uuid4().hex[:12]}"
    make_v1_schema(url, schema)
    strict = make_store(schema, auto_migrate=False)
    assert strict.schema_version() == 1
    with pytest.raises(StoreUnavailable, match="jobcredits migrate"):
        strict.balance("acct")

    store = make_store(schema)  # auto_migrate
    ledger = Ledger(store, clock=FakeClock(), balances=True)
    assert ledger.balance("acct") == 5  # the data survived
    old = ledger.lookup("acct", "old-job")
    assert old is not None
    assert old.charge_id == "c-old"
    assert store.schema_version() == SCHEMA_VERSION
    with psycopg.connect(url, autocommit=True) as conn:
        versions = conn.execute(
            sql.SQL("SELECT version FROM {}.schema_version ORDER BY version").format(
                sql.Identifier(schema)
            )
        ).fetchall()
    assert versions == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
    assert store.read_journal(0, 10) == []  # nothing before the upgrade is invented
    ledger.charge("acct", "new-job")
    assert ledger.refund("acct", "old-job")
    assert [(e.kind, e.job_id, e.balance) for e in _all(store)] == [
        ("charge", "new-job", 4),
        ("refund", "old-job", 6),
    ]
    assert strict.balance("acct") == 6  # the strict store now finds version 2
    assert store.migrate() == SCHEMA_VERSION  # idempotent


def test_the_version_1_functions_keep_working_and_journal_after_the_upgrade(
    url: str, make_store: Callable[..., PostgresStore]
) -> None:
    """A process still running the old code during a rolling upgrade calls the
    old signatures: they work, and what they commit is journaled."""
    schema = f"jctest_{uuid.uuid4().hex[:12]}"
    make_v1_schema(url, schema)
    store = make_store(schema)
    assert store.migrate() == SCHEMA_VERSION
    with psycopg.connect(url, autocommit=True) as conn:
        fmt = store._format
        row = conn.execute(
            fmt(
                "SELECT status FROM {schema}.claim('acct', 'default', 'legacy', 'c-leg', 1, "
                "NULL, NULL, 200, 3600, 60, NULL, true)"
            )
        ).fetchone()
        assert row == ("charged",)
        conn.execute(fmt("SELECT * FROM {schema}.refund('acct', 'default', 'legacy', NULL, 201)"))
        gone = conn.execute(fmt("SELECT job_id FROM {schema}.prune(1e10, 10)")).fetchall()
        assert gone == [("old-job",)]
    assert [(e.kind, e.job_id, e.delta, e.balance) for e in _all(store)] == [
        ("charge", "legacy", -1, 4),
        ("refund", "legacy", 1, 5),
        ("refund", "old-job", 2, 7),
    ]
