"""What only RedisStore's journal can get wrong: the stream written inside the
Lua scripts, its ids, the cursor and trim scripts, threads racing on one
store, the journal switched off, and Redis Cluster, whose entries go to a
stream per slot and are merged by the readers.

The journal's rules on every store kind are in ``test_journal.py``; the lost
answer (a retried script must not journal twice) is in ``test_redis.py`` next
to the other lost-answer test, whose proxy fixture it shares.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from jobcredits_plugin import ConfigurationError, JobInProgress, Ledger
from jobcredits_plugin.stores import ClaimRequest, from_url
from jobcredits_plugin.testing import FakeClock, RecordingPlugin
from tests.stores.conftest import REDIS_DEFAULT, REDIS_URL_ENV, _redis_cleanup, _server_url

redis = pytest.importorskip("redis", reason="the redis extra is not installed")
from jobcredits_plugin.stores import RedisStore  # noqa: E402
from jobcredits_plugin.stores._redis import _keys, _wire  # noqa: E402

MakeStore = Callable[..., RedisStore]


@pytest.fixture
def shared_url() -> str:
    return _server_url(REDIS_URL_ENV, REDIS_DEFAULT, "Redis")


@pytest.fixture
def make_store(shared_url: str) -> Iterator[MakeStore]:
    """Builds stores on the shared server, each under its own fresh prefix
    (or the one given); closes them and deletes their keys after the test."""
    made: list[RedisStore] = []

    def make(**kwargs: Any) -> RedisStore:
        kwargs.setdefault("prefix", f"jcjournal:{uuid.uuid4().hex[:12]}")
        store = RedisStore.from_url(shared_url, **kwargs)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()
        _redis_cleanup(store)


@pytest.fixture
def rstore(make_store: MakeStore) -> RedisStore:
    return make_store()


def _req(job_id: str, charge_id: str, now: float, **kw: Any) -> ClaimRequest:
    fields: dict[str, Any] = {
        "account": "acct", "scope": "default", "job_id": job_id, "charge_id": charge_id,
        "cost": 1, "tier": None, "backend": None, "now": now, "ttl": 100.0, "lease": 10.0,
        "max_uses": None, "balances": True,
    }  # fmt: skip
    fields.update(kw)
    return ClaimRequest(**fields)


def _kinds(store: RedisStore) -> list[str]:
    return [e.kind for e in store.read_journal(0, 10_000)]


# -- options ------------------------------------------------------------------------------


def test_journal_options_from_the_url_and_their_defaults(shared_url: str) -> None:
    """journal, journal_reuses and journal_max_age are URL options; the instance
    carries them (not the BaseStore defaults)."""
    store = from_url(shared_url + "?prefix=o&journal=off&journal_reuses=yes&journal_max_age=60")
    try:
        assert isinstance(store, RedisStore)
        assert (store.journal, store.journal_reuses, store.journal_max_age) == (False, True, 60.0)
        assert store.journal_key == "o:journal"
        assert store.cursors_key == "o:journal:cursors"
    finally:
        store.close()
    for spelled in ("none", "off", ""):
        store = RedisStore.from_url(f"{shared_url}?journal_max_age={spelled}")
        assert store.journal_max_age is None
        store.close()
    store = RedisStore.from_url(shared_url)
    assert (store.journal, store.journal_reuses, store.journal_max_age) == (True, False, 7 * 86400)
    store.close()


@pytest.mark.parametrize(
    "query",
    ["journal=maybe", "journal_reuses=2", "journal_max_age=0", "journal_max_age=-1",
     "journal_max_age=soon"],
)  # fmt: skip
def test_bad_journal_options_are_configuration_errors(query: str) -> None:
    with pytest.raises(ConfigurationError):
        RedisStore.from_url(f"redis://127.0.0.1:1/0?{query}").close()


class _NoServer:
    """Stands in for a cluster client that must not be reached."""

    def register_script(self, source: str) -> Callable[..., Any]:
        def call(**_kw: Any) -> Any:
            raise AssertionError("a script was run")

        return call

    def close(self) -> None:
        pass


def test_every_cluster_slot_has_a_slot_stream_in_it() -> None:
    """The slot tag solved from the CRC's linearity lands in the slot asked
    for, for all 16,384 slots, with no brace (or glob character) in it."""
    from redis.crc import key_slot

    for slot in range(16384):
        tag = _keys.slot_tag(slot)
        assert len(tag) == 5
        assert all("@" <= ch <= "O" for ch in tag)
        assert key_slot(f"p:{{{tag}}}:journal".encode()) == slot


def test_a_cluster_journals_into_the_accounts_slot() -> None:
    """On a cluster the journal is on by default (as everywhere) and every
    script that changes the books gets, as its stream, the stream of the
    account's own slot: all of a script's keys share one slot. The merged
    journal, its cursors, marks and stream set share another."""
    from redis.crc import key_slot

    store = RedisStore(_NoServer(), cluster=True, prefix="p")
    try:
        assert store.journal is True
        for account in ("acct", "other", "ünï{code}", "a" * 256):
            claim = store._claim_call(_req("job", "c1", 1.0, account=account))[0]
            grant = store._grant_call(account, 1, 1.0, "g")[0]
            prune = store._prune_call(store.due_key(account), 1.0, 10)[0]
            refund = store._refund_call((account, "default", "job"), None, 1.0)[0]
            stream = store.journal_stream(account)
            assert stream.startswith("p:{")
            assert stream.endswith("}:journal")
            for keys in (claim, grant, prune, refund):
                assert keys[-1] == stream
            every = [*claim, *grant, *prune, *refund]
            assert len({key_slot(k.encode()) for k in every}) == 1, account
        shared = [store.journal_key, store.cursors_key, store._streams_key, store._marks_key]
        assert store.journal_key == "p:{journal}"
        assert len({key_slot(k.encode()) for k in shared}) == 1
        off = RedisStore(_NoServer(), cluster=True, prefix="p", journal=False)
        assert len(off._claim_call(_req("job", "c1", 1.0))[0]) == 4  # no stream
        off.close()
    finally:
        store.close()


# -- what the scripts write ------------------------------------------------------------


def test_entries_are_compact_stream_entries_numbered_from_one(rstore: RedisStore) -> None:
    """One stream at <prefix>:journal; ids 0-1, 0-2, ...; seven short fields."""
    rstore.grant("acct", 3, 5.0, "g-1")
    rstore.claim(_req("job", "c-1", 6.0, tier="pro", backend="gpu"))
    client = rstore._client
    assert client.type(f"{rstore.prefix}:journal") == "stream"
    raw = client.xrange(rstore.journal_key)
    assert [entry_id for entry_id, _ in raw] == ["0-1", "0-2"]
    assert all(set(fields) == {"k", "a", "c", "x", "d", "b", "t"} for _, fields in raw)
    grant, charge = rstore.read_journal(0, 10)
    assert (grant.seq, grant.kind, grant.charge_id, grant.cost) == (1, "grant", "g-1", 3)
    assert (grant.delta, grant.balance, grant.at) == (3, 3, 5.0)
    assert (charge.seq, charge.kind, charge.job_id, charge.tier, charge.backend) == (
        2, "charge", "job", "pro", "gpu",
    )  # fmt: skip
    assert (charge.delta, charge.balance, charge.at, charge.cost) == (-1, 2, 6.0, 1)


def test_refused_and_repeated_claims_write_nothing(rstore: RedisStore) -> None:
    """A claim refused for credits, one in progress, one exhausted, a replayed
    claim (same charge id, as after a lost answer), a confirm and a reuse
    (journal_reuses off) leave the stream as it was."""
    rstore.grant("acct", 1, 1.0, "g")
    assert rstore.claim(_req("big", "c0", 2.0, cost=2)).status == "insufficient"
    assert _kinds(rstore) == ["grant"]
    first = rstore.claim(_req("job", "c1", 3.0, max_uses=1))
    assert first.status == "charged"
    assert _kinds(rstore) == ["grant", "charge"]
    assert rstore.claim(_req("job", "c2", 4.0, max_uses=1)).status == "in_progress"
    assert rstore.claim(_req("job", "c1", 3.0, max_uses=1)).status == "charged"  # replay
    assert rstore.confirm(("acct", "default", "job"), "c1", 5.0) is not None
    assert rstore.claim(_req("job", "c3", 6.0, max_uses=1)).status == "exhausted"
    assert rstore.claim(_req("job", "c4", 6.0, max_uses=None)).status == "reused"
    assert rstore.refund(("acct", "default", "job"), "wrong", 7.0) is None
    assert rstore.refund(("acct", "default", "nope"), None, 7.0) is None
    assert _kinds(rstore) == ["grant", "charge"]
    assert rstore.claim(_req("other", "c5", 8.0)).status == "insufficient"
    assert _kinds(rstore) == ["grant", "charge"]


def test_a_takeover_journals_the_settlement_before_the_charge(rstore: RedisStore) -> None:
    """A stale pending charge taken over: refund then charge; an expired charged
    record replaced: expire then charge; reuses only with journal_reuses."""
    rstore.grant("acct", 5, 0.0, "g")
    rstore.claim(_req("a", "c1", 1.0, cost=2))
    rstore.claim(_req("a", "c2", 20.0, cost=3))  # lease over: refund c1, charge c2
    rstore.confirm(("acct", "default", "a"), "c2", 21.0)
    rstore.journal_reuses = True
    assert rstore.claim(_req("a", "c3", 22.0)).status == "reused"
    rstore.journal_reuses = False
    assert rstore.claim(_req("a", "c4", 23.0)).status == "reused"
    rstore.claim(_req("a", "c5", 200.0, cost=1))  # expired: expire c2, charge c5
    view = [(e.kind, e.charge_id, e.delta, e.balance) for e in rstore.read_journal(0, 100)]
    assert view == [
        ("grant", "g", 5, 5),
        ("charge", "c1", -2, 3),
        ("refund", "c1", 2, 5),
        ("charge", "c2", -3, 2),
        ("reuse", "c2", 0, 2),
        ("expire", "c2", 0, 2),
        ("charge", "c5", -1, 1),
    ]
    assert rstore.balance("acct") == 1


def test_prune_writes_one_entry_per_settled_record(make_store: MakeStore) -> None:
    """Across several due-sets and prune batches, with balances off for some
    charges: one entry per settled record, in the order prune reports them,
    each balance what GET gives after it."""
    store = make_store(prune_batch=3)
    accounts = [f"acct-{n}" for n in range(4)]
    for account in accounts:
        store.grant(account, 100, 0.0, f"g-{account}")
    for n in range(20):
        account = accounts[n % 4]
        req = _req(f"job-{n}", f"c{n}", 1.0, account=account, balances=n % 3 != 0)
        assert store.claim(req).status == "charged"
        if n % 2:
            store.confirm((account, "default", f"job-{n}"), f"c{n}", 2.0)
    start = store.read_journal(0, 1000)[-1].seq
    events = store.prune(500.0)
    entries = store.read_journal(start, 1000)
    assert len(events) == len(entries) == 20
    assert [(e.kind, e.record.charge_id) for e in events] == [
        (e.kind, e.charge_id) for e in entries
    ]
    assert store.prune(500.0) == []
    assert store.read_journal(start, 1000) == entries
    books: Counter[str] = Counter()
    for entry in store.read_journal(0, 1000):
        books[entry.account] += entry.delta
        assert entry.balance == books[entry.account]
    assert all(books[a] == store.balance(a) for a in accounts)
    assert sum(books.values()) == 400 - 7  # the confirmed charges made with balances on


def test_the_journal_off_writes_nothing(make_store: MakeStore) -> None:
    """journal=False: the stream key never exists, whatever the store does,
    sync or async, even with journal_reuses on."""
    store = make_store(journal=False, journal_reuses=True)
    assert store.journal is False
    ledger = Ledger(store, clock=(clock := FakeClock()), balances=True, ttl=100, lease=10)
    ledger.grant("acct", 10)
    c = ledger.charge("acct", "job-1")
    ledger.confirm("acct", "job-1", charge_id=c.record.charge_id)
    ledger.charge("acct", "job-1")  # reuse
    ledger.charge("acct", "job-2")
    assert ledger.refund("acct", "job-2")
    ledger.charge("acct", "job-3")
    clock.advance(11)
    ledger.charge("acct", "job-3")  # takeover: refund and charge
    ledger.charge("acct", "job-4")
    clock.advance(11)
    assert len(ledger.prune()) == 2  # the stale job-3 and job-4: refunded
    clock.advance(200)
    assert len(ledger.prune()) == 1  # job-1 expires
    ledger.grant("acct", -100)

    async def async_part() -> None:
        await ledger.agrant("acct", 5)
        await ledger.acharge("acct", "async-1")
        assert await ledger.arefund("acct", "async-1")
        await ledger.acharge("acct", "async-2")
        clock.advance(500)
        assert len(await ledger.aprune()) == 1

    asyncio.run(async_part())
    assert store._client.exists(store.journal_key) == 0
    assert store.read_journal(0, 100) == []
    assert ledger.balance("acct") == 5


def test_a_client_without_decoding_reads_the_same_entries(shared_url: str) -> None:
    """A caller's client with bytes replies (async twins then in a thread)."""
    client = redis.Redis.from_url(shared_url)
    store = RedisStore(client, prefix=f"jcjournal:{uuid.uuid4().hex[:12]}")
    try:
        store.grant("ünïcode", 2, 1.5, "g")
        store.claim(_req("j", "c", 2.5, account="ünïcode", scope="s", tier="t"))
        entries = store.read_journal(0, 10)
        assert [(e.kind, e.account, e.scope, e.tier) for e in entries] == [
            ("grant", "ünïcode", None, None),
            ("charge", "ünïcode", "s", "t"),
        ]
        assert asyncio.run(store.aread_journal(0, 10)) == entries
        assert store.set_cursor("bytes", 1) == 1
        assert asyncio.run(store.acursors()) == {"bytes": 1}
        assert asyncio.run(store.atrim_journal(2, None)) == 1
        assert asyncio.run(store.adelete_cursor("bytes")) is True
        assert store.get_cursor("bytes") is None
    finally:
        store.close()
        store.url = shared_url
        _redis_cleanup(store)


# -- threads --------------------------------------------------------------------------


def test_many_threads_get_strictly_increasing_seqs_one_per_event(rstore: RedisStore) -> None:
    """8 threads x 50 charges and refunds on one store: every committed event
    has exactly one entry, seqs strictly increase with no duplicate, and the
    entries alone add up to the balance."""
    events = RecordingPlugin()
    ledger = Ledger(rstore, clock=FakeClock(), plugins=[events], balances=True)
    ledger.grant("acct", 1_000)
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work(n: int) -> None:
        try:
            barrier.wait()
            for i in range(50):
                job = f"t{n}-{i % 5}"
                try:
                    c = ledger.charge("acct", job)
                except JobInProgress:
                    continue
                if c.charged:
                    ledger.refund("acct", job, charge_id=c.record.charge_id)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    entries = rstore.read_journal(0, 10_000)
    seqs = [e.seq for e in entries]
    assert all(a < b for a, b in itertools.pairwise(seqs))
    assert len(set(seqs)) == len(seqs) == 1 + 2 * 8 * 50
    hooks = Counter((e.kind, e.record.charge_id) for e in events.events)
    assert Counter((e.kind, e.charge_id) for e in entries[1:]) == hooks
    assert sum(e.delta for e in entries) == rstore.balance("acct") == 1_000


def test_racing_cursor_updates_end_at_the_highest(rstore: RedisStore) -> None:
    """Threads moving one cursor forward with their own increasing positions:
    it ends at the highest any of them set, and no answer ever went back."""
    barrier = threading.Barrier(6)
    answers: dict[int, list[tuple[int, int]]] = {}
    errors: list[BaseException] = []

    def move(n: int) -> None:
        try:
            barrier.wait()
            got = answers.setdefault(n, [])
            for position in range(n, 300, 6):
                got.append((position, rstore.set_cursor("shared", position)))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=move, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert rstore.get_cursor("shared") == 299
    for got in answers.values():
        assert len(got) == 50
        assert all(stored >= position for position, stored in got)
        stored_values = [stored for _, stored in got]
        assert stored_values == sorted(stored_values)
    assert rstore.set_cursor("shared", 3) == 299
    assert rstore.set_cursor("shared", 3, force=True) == 3
    assert rstore.cursors() == {"shared": 3}


# -- trimming -------------------------------------------------------------------------


def test_trim_never_removes_an_entry_above_the_lowest_cursor(rstore: RedisStore) -> None:
    """Random cursors and bounds, with and without a cutoff, against a model:
    the stream keeps exactly the entries that are above a bound, above the
    lowest cursor, or (after the first such entry) behind one of them."""
    rng = random.Random(7)
    model: list[tuple[int, float]] = []  # (seq, at) still held
    seq = 0
    for _round in range(12):
        for _ in range(rng.randint(0, 8)):
            seq += 1
            at = float(rng.randint(0, 50))  # not monotonic: a trim stops at the first too new
            rstore.grant("acct", 1, at, f"g{seq}")
            model.append((seq, at))
        names = rng.sample(["a", "b", "c"], rng.randint(0, 3))
        for name in ("a", "b", "c"):
            if name in names:
                rstore.set_cursor(name, rng.randint(0, seq + 2), force=True)
            else:
                rstore.delete_cursor(name)
        through = rng.choice([None, rng.randint(0, seq + 2)])
        cutoff = rng.choice([None, float(rng.randint(0, 50)) + 0.5])
        lowest = min(rstore.cursors().values(), default=None)
        held = list(model)
        expected = 0
        if through is not None or cutoff is not None:
            cap = [b for b in (through, lowest) if b is not None]
            for s, at in model:
                if (cap and s > min(cap)) or (cutoff is not None and at >= cutoff):
                    break
                expected += 1
        assert rstore.trim_journal(through, cutoff) == expected
        removed = [s for s, _ in model[:expected]]
        del model[:expected]
        assert [e.seq for e in rstore.read_journal(0, 10_000)] == [s for s, _ in model]
        if lowest is not None:
            assert all(s <= lowest for s in removed)
        if cutoff is not None:
            assert all(at < cutoff for s, at in held if s in removed)


def test_trim_crosses_script_calls_and_chunks(
    rstore: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trim bigger than one script's bound loops; one script call reads the
    stream in chunks; both stop exactly at the cutoff and at the cursor."""
    pipe = rstore._client.pipeline(transaction=False)
    for n in range(1, 2_501):
        keys, args = rstore._grant_call("acct", 1, float(n), f"g{n}")
        rstore._scripts["grant"](keys=keys, args=args, client=pipe)
    pipe.execute()
    assert rstore.trim_journal(None, 1_500.5) == 1_500  # one call, two chunks of 1,000
    assert rstore.read_journal(0, 1)[0].seq == 1_501
    rstore.set_cursor("slow", 2_200)
    monkeypatch.setattr(_wire, "_TRIM_BATCH", 150)
    calls = {"n": 0}
    script = rstore._scripts["trim"]

    def counting(**kwargs: Any) -> Any:
        calls["n"] += 1
        return script(**kwargs)

    monkeypatch.setitem(rstore._scripts, "trim", counting)
    assert rstore.trim_journal(10_000, None) == 700  # capped by the cursor
    assert calls["n"] == 5  # 150 x 4, then 100 < 150
    assert rstore.read_journal(0, 1)[0].seq == 2_201
    assert rstore.trim_journal(None, None) == 0
    rstore.delete_cursor("slow")
    assert rstore.trim_journal(10_000, None) == 300
    assert rstore.read_journal(0, 10) == []
    rstore.grant("acct", 1, 0.0, "after")
    assert [e.seq for e in rstore.read_journal(0, 10)] == [2_501]  # seq never goes back
