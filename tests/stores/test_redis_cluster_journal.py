"""The journal on a 3-master Redis Cluster: each change's entry is written to
the stream of its account's slot by the script that makes the change, and
readers merge those streams into one numbered journal (see
``RedisStore._merge_pass``). The journal's rules on every store kind, the
cluster included, are in ``test_journal.py``; here is what only the merge can
get wrong: entries left in a slot stream, an entry merged twice or never when
readers on several hosts merge while writers write in every slot, the order
of one account's entries, a cursor resumed between pages, and trimming, of
the merged journal (never past a cursor) and of the slot streams (only what
is merged).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from jobcredits_plugin import InsufficientCredits, JobInProgress, JournalEntry, Ledger
from jobcredits_plugin.testing import FakeClock, RecordingPlugin
from tests.stores.conftest import REDIS_DEFAULT, REDIS_URL_ENV, _server_url

redis = pytest.importorskip("redis", reason="the redis extra is not installed")
from jobcredits_plugin.stores import RedisStore  # noqa: E402
from jobcredits_plugin.stores._redis import _merge  # noqa: E402

MakeStore = Callable[..., RedisStore]


@pytest.fixture
def cluster_url() -> str:
    _server_url(REDIS_URL_ENV, REDIS_DEFAULT, "Redis")
    from tests.stores._redis_cluster import REDIS_CLI, REDIS_SERVER, session_cluster_url

    if REDIS_SERVER is None or REDIS_CLI is None:
        message = "redis-server and redis-cli are needed to start a test cluster"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return session_cluster_url()


@pytest.fixture
def make_store(cluster_url: str) -> Iterator[MakeStore]:
    """Stores on the session's cluster, all under one fresh prefix unless told
    otherwise (several stores on one prefix are several hosts on one
    deployment); closed after the test."""
    prefix = f"jccj:{uuid.uuid4().hex[:12]}"
    made: list[RedisStore] = []

    def make(**kwargs: Any) -> RedisStore:
        kwargs.setdefault("prefix", prefix)
        store = RedisStore.from_url(cluster_url, **kwargs)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def _accounts(store: RedisStore, n: int = 12) -> list[str]:
    """``n`` accounts whose slots are spread over all three masters."""
    accounts = [f"acct-{i}" for i in range(n)]
    nodes = {store._client.get_node_from_key(store.balance_key(a)).name for a in accounts}
    assert len(nodes) == 3
    assert len({store.journal_stream(a) for a in accounts}) == n  # n slots, n streams
    return accounts


def _slot_backlog(store: RedisStore) -> int:
    client = store._client
    return sum(int(client.xlen(s)) for s in client.smembers(store._streams_key))


def _per_account(entries: list[JournalEntry]) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for e in entries:
        out.setdefault(e.account, []).append((e.kind, e.charge_id))
    return out


def _hooks_per_account(events: RecordingPlugin) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for e in events.events:
        if e.kind != "reuse":
            out.setdefault(e.record.account, []).append((e.kind, e.record.charge_id))
    return out


def _everything(ledger: Ledger, page: int = 5) -> list[JournalEntry]:
    out: list[JournalEntry] = []
    while batch := ledger.journal(after=out[-1].seq if out else 0, limit=page):
        out.extend(batch)
    return out


def test_entries_wait_in_their_slot_streams_until_a_reader_merges_them(
    make_store: MakeStore,
) -> None:
    """Writes leave their entries in the slot streams (registered before the
    first write); the first read numbers them 1..n, each account's in commit
    order, and trims the slot streams; every later read, by any host, sees
    the same numbering, and a new change is numbered after it."""
    store = make_store()
    events = RecordingPlugin()
    clock = FakeClock()
    ledger = Ledger(store, clock=clock, plugins=[events], balances=True, lease=10)
    accounts = _accounts(store)
    for n, account in enumerate(accounts):
        ledger.grant(account, 5)
        c = ledger.charge(account, "job-1", cost=2)
        if n % 2:
            ledger.refund(account, "job-1", charge_id=c.record.charge_id)
        clock.advance(1)
    client = store._client
    assert client.exists(store.journal_key) == 0  # nothing merged yet
    assert client.smembers(store._streams_key) == {store.journal_stream(a) for a in accounts}
    total = 2 * len(accounts) + len(accounts) // 2
    assert _slot_backlog(store) == total

    entries = _everything(ledger, page=7)
    assert [e.seq for e in entries] == list(range(1, total + 1))
    assert _per_account(entries) == {
        a: [("grant", e.charge_id) for e in entries if e.account == a and e.kind == "grant"]
        + _hooks_per_account(events)[a]
        for a in accounts
    }
    assert [e.at for e in entries] == sorted(e.at for e in entries)  # merged by time
    assert _slot_backlog(store) == 0  # merged entries leave the slot streams
    marks = client.hgetall(store._marks_key)
    assert sum(int(m) for m in marks.values()) == total

    other_host = make_store()
    assert Ledger(other_host).journal(limit=1000) == entries  # stable across readers
    ledger.charge(accounts[0], "job-2")
    assert [(e.seq, e.job_id) for e in Ledger(other_host).journal(after=total)] == [
        (total + 1, "job-2")
    ]


def test_a_cursor_resumes_exactly_while_every_slot_is_written(make_store: MakeStore) -> None:
    """Six writers charge, refund and confirm on twelve accounts (twelve
    slots, three masters) while two exporters on their own clients each
    follow the journal through a named cursor, seven entries a page,
    re-opening the cursor now and then as a restarted exporter would, and
    merging concurrently with each other. Each exporter sees every entry
    exactly once, in the journal's one order; the entries are the hooks' events
    one to one; each account's entries are in its commit order (their
    balances are the running sums) and add up to its balance."""
    store = make_store()
    events = RecordingPlugin()
    ledger = Ledger(store, clock=FakeClock(), plugins=[events], balances=True)
    accounts = _accounts(store)
    for account in accounts:
        ledger.grant(account, 1_000)
    stop = threading.Event()
    errors: list[BaseException] = []
    seen: dict[str, list[JournalEntry]] = {"billing": [], "warehouse": []}

    def writer(n: int) -> None:
        try:
            for i in range(40):
                account = accounts[(n * 7 + i) % len(accounts)]
                job = f"w{n}-{i % 6}"
                try:
                    c = ledger.charge(account, job)
                except (JobInProgress, InsufficientCredits):
                    continue
                if c.charged and i % 3 == 0:
                    ledger.refund(account, job, charge_id=c.record.charge_id)
                elif c.charged:
                    ledger.confirm(account, job, charge_id=c.record.charge_id)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def exporter(name: str) -> None:
        own = make_store()  # another host: its own clients and registrations
        reader = Ledger(own)
        try:
            for round_ in itertools.count():
                done = stop.is_set()
                cursor = reader.cursor(name)  # re-opened: resumes at the stored position
                page = cursor.read(limit=7)
                seen[name].extend(page)
                if page:
                    cursor.advance(page[-1])
                elif done:
                    return
                assert round_ < 10_000
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    readers = [threading.Thread(target=exporter, args=(name,)) for name in seen]
    writers = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join(timeout=120)
    stop.set()
    for t in readers:
        t.join(timeout=120)
    assert not errors, errors
    final = _everything(ledger, page=50)
    assert [e.seq for e in final] == list(range(1, len(final) + 1))
    for name, got in seen.items():
        assert got == final, name
    assert ledger.cursors() == {"billing": len(final), "warehouse": len(final)}
    hooks = Counter((e.kind, e.record.charge_id) for e in events.events if e.kind != "reuse")
    charges = Counter((e.kind, e.charge_id) for e in final if e.kind != "grant")
    assert charges == hooks
    # Each account's entries are in its commit order: every entry's balance is
    # the running sum of the account's deltas (hooks from racing threads may
    # fire in another order than their commits, so they cannot tell), and a
    # charge comes before its refund.
    running: Counter[str] = Counter()
    position = {(e.kind, e.charge_id): n for n, e in enumerate(final)}
    for e in final:
        running[e.account] += e.delta
        assert e.balance == running[e.account], e
        if e.kind == "refund":
            assert position[("charge", e.charge_id)] < position[("refund", e.charge_id)]
    assert all(running[a] == ledger.balance(a) for a in accounts)
    assert _slot_backlog(store) == 0


def test_trimming_merges_first_and_never_passes_a_cursor(make_store: MakeStore) -> None:
    """trim_journal() with nothing read yet merges the slot streams (so a
    journal nobody reads stays bounded by its age), then trims the merged
    journal exactly as a standalone one: never past the lowest cursor, by age
    up to the first entry too new; the slot streams keep only unmerged
    entries; seq never goes back after the journal is emptied."""
    store = make_store()
    clock = FakeClock()
    ledger = Ledger(store, clock=clock)
    accounts = _accounts(store, 6)
    for i in range(4):
        for account in accounts:
            ledger.charge(account, f"job-{i}")
        clock.advance(10)
    assert _slot_backlog(store) == 24
    assert store._client.exists(store.journal_key) == 0
    assert ledger.trim_journal(max_age=25) == 12  # the two oldest rounds, merged first
    assert _slot_backlog(store) == 0
    entries = ledger.journal(limit=100)
    assert [e.seq for e in entries] == list(range(13, 25))
    assert {e.job_id for e in entries} == {"job-2", "job-3"}
    slow = ledger.cursor("slow")
    slow.advance(15)
    assert ledger.trim_journal(20) == 3  # capped by the cursor: seqs 13-15
    assert ledger.journal(limit=1)[0].seq == 16
    assert ledger.trim_journal(max_age=0.5) == 0  # old enough, but unread
    slow.delete()
    assert ledger.trim_journal(100) == 9
    assert ledger.journal() == []
    ledger.charge(accounts[0], "later")
    assert [e.seq for e in ledger.journal()] == [25]


def test_a_given_async_cluster_client_registers_its_streams(
    make_store: MakeStore, cluster_url: str
) -> None:
    """With a redis.asyncio cluster client of the caller's, the async twins
    run their scripts on it and register the slot streams through it too,
    so their entries are merged like any other."""
    async_client = redis.asyncio.cluster.RedisCluster.from_url(
        cluster_url.split("?")[0], decode_responses=True
    )
    store = make_store(async_client=async_client)
    ledger = Ledger(store, clock=FakeClock(), balances=True)
    accounts = _accounts(store, 4)

    async def main() -> list[JournalEntry]:
        try:
            for account in accounts:
                await ledger.agrant(account, 3)
                await ledger.acharge(account, "job")
                assert await ledger.arefund(account, "job")
            return await ledger.ajournal(limit=100)
        finally:
            await async_client.aclose()

    entries = asyncio.run(main())
    assert Counter(e.kind for e in entries) == {"grant": 4, "charge": 4, "refund": 4}
    assert store._registered == {store.journal_stream(a) for a in accounts}
    assert all(ledger.balance(a) == 3 for a in accounts)


def test_a_merge_that_died_before_its_trim_is_finished_by_the_next_reader(
    make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that merged entries and died before trimming them from their
    slot streams leaves those entries behind; another reader, which knows
    nothing of the marks, skips them (the merge script answers the true
    marks), trims them, and merges only the rest, each once, even when the
    stale entries fill its first pass."""
    store = make_store()
    ledger = Ledger(store, clock=FakeClock())
    accounts = _accounts(store, 6)
    for i in range(5):
        for account in accounts:
            ledger.charge(account, f"job-{i}")
    dying = make_store()
    streams = dying._slot_streams()
    args = [a for run in dying._read_slot_streams(streams, 3, {}) for values in run for a in values]
    reply = dying._scripts["merge"](keys=[dying.journal_key, dying._marks_key], args=args)
    assert int(reply[0]) == 18  # merged, never trimmed
    assert _slot_backlog(store) == 30
    reader = Ledger(make_store())
    # Passes of about 4 entries: 1 per slot stream, all stale at first.
    monkeypatch.setattr(_merge, "_MERGE_BATCH", 1)
    assert [e.seq for e in reader.journal(after=18, limit=4)] == [19, 20, 21, 22]
    got = _everything(reader, page=4)
    assert [e.seq for e in got] == list(range(1, 31))
    assert Counter((e.account, e.job_id) for e in got) == Counter(
        (a, f"job-{i}") for a in accounts for i in range(5)
    )
    for account in accounts:
        assert [e.job_id for e in got if e.account == account] == [f"job-{i}" for i in range(5)]
    assert _slot_backlog(store) == 0


def test_turning_the_journal_on_moves_no_key_of_the_books(make_store: MakeStore) -> None:
    """The upgrade path: a cluster deployment that ran without a journal (the
    only way before) turns it on in place. Its balances and live jobs are
    where the journaling store looks for them; only what happens from then on
    is journaled."""
    old = make_store(journal=False)
    before = Ledger(old, clock=(clock := FakeClock()), balances=True)
    before.grant("acct", 5)
    pending = before.charge("acct", "job", cost=2)
    assert old._client.exists(old.journal_stream("acct")) == 0
    assert old._client.exists(old._streams_key) == 0
    new = make_store()
    assert new.journal is True
    after = Ledger(new, clock=clock, balances=True)
    assert after.balance("acct") == 3
    record = after.lookup("acct", "job")
    assert record is not None
    assert record.charge_id == pending.record.charge_id
    assert after.refund("acct", "job", charge_id=pending.record.charge_id)
    after.charge("acct", "job-2")
    entries = after.journal()
    assert [(e.kind, e.delta, e.balance) for e in entries] == [("refund", 2, 5), ("charge", -1, 4)]


def test_a_client_without_decoding_reads_the_same_journal(
    make_store: MakeStore, cluster_url: str
) -> None:
    """A caller's cluster client with bytes replies merges and reads the same
    entries as the store's own."""
    client = redis.cluster.RedisCluster.from_url(cluster_url.split("?")[0])
    mine = make_store()
    store = RedisStore(client, cluster=True, prefix=mine.prefix)
    try:
        ledger = Ledger(store, clock=FakeClock(), balances=True)
        for account in [*_accounts(store, 6), "ünïcode"]:
            ledger.grant(account, 2)
            ledger.charge(account, "job", tier="tïer")
        entries = ledger.journal(limit=100)
        assert len(entries) == 14
        assert {(e.account, e.tier) for e in entries if e.account == "ünïcode"} == {
            ("ünïcode", None),
            ("ünïcode", "tïer"),
        }
        assert Ledger(mine).journal(limit=100) == entries
    finally:
        store.close()
