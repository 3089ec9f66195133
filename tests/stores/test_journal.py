"""The journal, on every store kind: one entry per committed change, written in
the same atomic step, readable in order without skipping, with named cursors
and trimming that never drops what a cursor has not read.

Redis Cluster keeps one too: each slot's entries in a stream of that slot,
merged by the readers (see ``test_redis_journal.py`` for what only it can get
wrong). Across accounts its order is the merge's, not the commit order, so the
tests that compare the journal's order with the hooks' compare each account's
own order there (``same_order``).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
import urllib.parse
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from jobcredits_plugin import (
    InsufficientCredits,
    InvalidArgument,
    JobExhausted,
    JobInProgress,
    JournalEntry,
    Ledger,
)
from jobcredits_plugin.stores import BaseStore
from jobcredits_plugin.testing import FakeClock, RecordingPlugin
from tests.stores.conftest import IN_PROCESS

MakeLedger = Callable[..., Ledger]


def everything(ledger: Ledger) -> list[JournalEntry]:
    """The whole journal, read in small pages the way an exporter would."""
    out: list[JournalEntry] = []
    after = 0
    while True:
        page = ledger.journal(after=after, limit=3)
        if not page:
            return out
        out.extend(page)
        after = page[-1].seq


def hook_view(events: RecordingPlugin) -> list[tuple[str, str]]:
    return [(e.kind, e.record.charge_id) for e in events.events if e.kind != "reuse"]


def entry_view(entries: list[JournalEntry]) -> list[tuple[str, str]]:
    return [(e.kind, e.charge_id) for e in entries if e.kind not in ("grant", "reuse")]


def same_order(entries: list[JournalEntry], events: RecordingPlugin, store_kind: str) -> None:
    """The journal's entries are the hooks' events in the hooks' order: on
    every store in total, on Redis Cluster account by account (its journal
    merges the slots' streams: one account's entries are in commit order,
    entries of accounts in different slots in the order of the merge)."""
    if store_kind != "redis-cluster":
        assert entry_view(entries) == hook_view(events)
        return
    assert Counter(entry_view(entries)) == Counter(hook_view(events))
    for account in {e.account for e in entries} | {e.record.account for e in events.events}:
        mine = [e for e in entries if e.account == account]
        theirs = [
            (e.kind, e.record.charge_id)
            for e in events.events
            if e.kind != "reuse" and e.record.account == account
        ]
        assert entry_view(mine) == theirs, account


# -- one entry per committed change ------------------------------------------------------


def test_every_committed_change_has_one_entry_and_matches_the_hooks(
    make_ledger: MakeLedger, clock: FakeClock, events: RecordingPlugin, store_kind: str
) -> None:
    ledger = make_ledger(balances=True, ttl=100, lease=10, max_uses=3)
    ledger.grant("acct", 10)
    ledger.grant("other", 1)
    a = ledger.charge("acct", "job-a", cost=2, tier="pro", backend="gpu")  # charge
    ledger.confirm("acct", "job-a", charge_id=a.record.charge_id)
    ledger.charge("acct", "job-a")  # reuse: not journaled by default
    b = ledger.charge("acct", "job-b", cost=3)  # charge
    assert ledger.refund("acct", "job-b", charge_id=b.record.charge_id)  # refund
    ledger.charge("acct", "job-c")  # charge, left pending
    clock.advance(11)
    ledger.charge("acct", "job-c")  # takeover: refund + charge
    ledger.charge("other", "job-d")  # charge (balance 1 -> 0)
    clock.advance(100)
    ledger.prune()  # expire job-a, job-c (charged? no: pending -> refund), job-d
    entries = everything(ledger)

    assert [e.seq for e in entries] == sorted({e.seq for e in entries})
    same_order(entries, events, store_kind)
    grants = [e for e in entries if e.kind == "grant"]
    assert sorted((g.account, g.cost, g.delta, g.balance) for g in grants) == [
        ("acct", 10, 10, 10),
        ("other", 1, 1, 1),
    ]
    assert all(g.scope is None and g.job_id is None and g.charge_id for g in grants)
    first = next(e for e in entries if e.kind == "charge" and e.account == "acct")
    assert (first.account, first.scope, first.job_id, first.cost) == ("acct", "default", "job-a", 2)
    assert (first.tier, first.backend, first.delta, first.balance) == ("pro", "gpu", -2, 8)
    assert first.charge_id == a.record.charge_id
    assert first.idempotency_key == f"{a.record.charge_id}:charge"


def test_the_journal_alone_rebuilds_every_balance(
    make_ledger: MakeLedger, clock: FakeClock
) -> None:
    ledger = make_ledger(balances=True, ttl=50, lease=5)
    ledger.grant("a", 4)
    ledger.grant("b", 2)
    ledger.grant("b", -5)  # clamped at 0: delta is what really moved
    ledger.grant("b", 3)
    for i in range(6):
        for account in ("a", "b"):
            try:
                c = ledger.charge(account, f"j{i}", cost=1 + i % 2)
            except InsufficientCredits:
                continue
            if i % 3 == 0:
                ledger.refund(account, f"j{i}", charge_id=c.record.charge_id)
            elif i % 3 == 1:
                ledger.confirm(account, f"j{i}", charge_id=c.record.charge_id)
    clock.advance(60)
    ledger.prune()
    entries = everything(ledger)
    books: Counter[str] = Counter()
    last: dict[str, int] = {}
    for e in entries:
        books[e.account] += e.delta
        assert e.balance == books[e.account], e  # each balance is the running sum
        last[e.account] = e.balance
    for account in ("a", "b"):
        assert books[account] == ledger.balance(account) == last[account]
    clamp = [e for e in entries if e.kind == "grant" and e.cost == -5]
    assert len(clamp) == 1
    assert (clamp[0].delta, clamp[0].balance) == (-2, 0)


def test_refused_and_invalid_calls_write_nothing(make_ledger: MakeLedger) -> None:
    ledger = make_ledger(balances=True, max_uses=1)
    ledger.grant("acct", 1)
    c = ledger.charge("acct", "job")
    before = everything(ledger)
    with pytest.raises(JobInProgress):
        ledger.charge("acct", "job")
    ledger.confirm("acct", "job", charge_id=c.record.charge_id)
    with pytest.raises(JobExhausted):
        ledger.charge("acct", "job")
    with pytest.raises(InsufficientCredits):
        ledger.charge("acct", "job-2")
    for bad in ("", "a b", "x" * 500, "job\n"):
        with pytest.raises(InvalidArgument):
            ledger.charge("acct", bad)
    with pytest.raises(InvalidArgument):
        ledger.charge("acct", "job-3", cost=-1)
    with pytest.raises(InvalidArgument):
        ledger.grant("acct", 1.5)  # type: ignore[arg-type]
    assert ledger.confirm("acct", "job", charge_id=c.record.charge_id) is not None
    assert ledger.refund("acct", "nope") is False
    assert everything(ledger) == before


def test_a_takeover_refused_for_credits_still_journals_its_refund(
    make_ledger: MakeLedger, clock: FakeClock, events: RecordingPlugin
) -> None:
    ledger = make_ledger(balances=True, ttl=100, lease=10)
    ledger.grant("acct", 2)
    ledger.charge("acct", "job", cost=2)
    clock.advance(11)
    with pytest.raises(InsufficientCredits):
        ledger.charge("acct", "job", cost=3)  # the stale charge is refunded first
    kinds = [(e.kind, e.delta, e.balance) for e in everything(ledger)]
    assert kinds == [("grant", 2, 2), ("charge", -2, 0), ("refund", 2, 2)]
    assert events.kinds() == ["charge", "refund"]


def test_reuses_are_journaled_only_when_asked(make_ledger: MakeLedger, store: BaseStore) -> None:
    ledger = make_ledger()
    c = ledger.charge("acct", "job")
    ledger.confirm("acct", "job", charge_id=c.record.charge_id)
    ledger.charge("acct", "job")
    assert [e.kind for e in everything(ledger)] == ["charge"]
    store.journal_reuses = True
    ledger.charge("acct", "job")
    ledger.charge("acct", "job")
    entries = everything(ledger)
    assert [e.kind for e in entries] == ["charge", "reuse", "reuse"]
    keys = [e.idempotency_key for e in entries]
    assert len(set(keys)) == 3
    assert all(k.startswith(c.record.charge_id) for k in keys)
    assert all(e.delta == 0 for e in entries[1:])


def test_a_store_with_the_journal_off_writes_nothing(
    make_ledger: MakeLedger, store: BaseStore, clock: FakeClock
) -> None:
    store.journal = False
    ledger = make_ledger(balances=True, ttl=10, lease=5)
    ledger.grant("acct", 5)
    c = ledger.charge("acct", "job")
    ledger.refund("acct", "job", charge_id=c.record.charge_id)
    ledger.charge("acct", "job-2")
    clock.advance(20)
    ledger.prune()
    assert ledger.journal() == []
    assert ledger.balance("acct") == 5


# -- reading ---------------------------------------------------------------------------


def test_reading_pages_in_order_without_repeats(make_ledger: MakeLedger) -> None:
    ledger = make_ledger()
    for i in range(10):
        ledger.charge("acct", f"job-{i}")
    entries = ledger.journal(limit=100)
    seqs = [e.seq for e in entries]
    assert len(set(seqs)) == 10
    assert seqs == sorted(seqs)
    assert ledger.journal(after=seqs[3], limit=2) == entries[4:6]
    assert ledger.journal(after=seqs[-1]) == []
    assert [e.job_id for e in everything(ledger)] == [f"job-{i}" for i in range(10)]


@pytest.mark.parametrize(
    "kwargs",
    [{"after": -1}, {"after": 1.5}, {"after": True}, {"limit": 0}, {"limit": 10_001}],
)
def test_bad_read_arguments_are_refused(make_ledger: MakeLedger, kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument):
        make_ledger().journal(**kwargs)  # type: ignore[arg-type]


def test_two_cursors_each_see_every_entry_once(make_ledger: MakeLedger) -> None:
    ledger = make_ledger()
    stripe, warehouse = ledger.cursor("stripe"), ledger.cursor("warehouse")
    seen: dict[str, list[int]] = {"stripe": [], "warehouse": []}

    def drain(cursor: object, name: str, batch: int) -> None:
        while True:
            page = cursor.read(limit=batch)  # type: ignore[attr-defined]
            if not page:
                return
            seen[name].extend(e.seq for e in page)
            cursor.advance(page[-1])  # type: ignore[attr-defined]

    for i in range(7):
        ledger.charge("acct", f"job-{i}")
        if i % 2:
            drain(stripe, "stripe", 2)
    drain(stripe, "stripe", 2)
    drain(warehouse, "warehouse", 5)
    all_seqs = [e.seq for e in everything(ledger)]
    assert seen["stripe"] == seen["warehouse"] == all_seqs
    assert ledger.cursors() == {"stripe": all_seqs[-1], "warehouse": all_seqs[-1]}


def test_cursors_move_forward_unless_rewound(make_ledger: MakeLedger) -> None:
    ledger = make_ledger()
    for i in range(4):
        ledger.charge("acct", f"job-{i}")
    seqs = [e.seq for e in everything(ledger)]
    cursor = ledger.cursor("billing")
    assert cursor.position() == 0
    assert cursor.advance(seqs[2]) == seqs[2]
    assert cursor.advance(seqs[0]) == seqs[2]  # never backwards by accident
    assert ledger.cursor("billing").position() == seqs[2]  # asking again keeps it
    assert cursor.rewind(seqs[0]) == seqs[0]
    assert [e.seq for e in cursor.read()] == seqs[1:]
    assert ledger.cursor_exists("billing")
    assert cursor.delete() is True
    assert cursor.delete() is False
    assert not ledger.cursor_exists("billing")
    ledger.cursor("other")
    assert ledger.delete_cursor("other") is True
    assert ledger.cursors() == {}
    with pytest.raises(InvalidArgument, match="does not exist"):
        cursor.position()
    for bad in ("", "a b", "x" * 65, "x\n", 3):
        with pytest.raises(InvalidArgument):
            ledger.cursor(bad)  # type: ignore[arg-type]


def test_the_ledgers_cursor_methods_are_what_cursors_are_built_on(
    make_ledger: MakeLedger,
) -> None:
    """JournalCursor uses only public Ledger methods: they work by name, move
    forward unless forced, and refuse a cursor that does not exist."""
    ledger = make_ledger()
    for i in range(3):
        ledger.charge("acct", f"job-{i}")
    seqs = [e.seq for e in everything(ledger)]
    with pytest.raises(InvalidArgument, match="does not exist"):
        ledger.cursor_position("feed")
    assert ledger.move_cursor("feed", seqs[1]) == seqs[1]  # created by moving it
    assert ledger.cursor_position("feed") == seqs[1]
    assert ledger.move_cursor("feed", seqs[0]) == seqs[1]  # never backwards unforced
    assert ledger.move_cursor("feed", seqs[0], force=True) == seqs[0]
    assert ledger.cursor("feed").position() == seqs[0]
    for bad in ({"name": "a b"}, {"position": -1}, {"position": 1.5}, {"force": "yes"}):
        args: dict[str, object] = {"name": "feed", "position": 1, **bad}
        with pytest.raises(InvalidArgument):
            ledger.move_cursor(**args)  # type: ignore[arg-type]

    async def main() -> None:
        assert await ledger.amove_cursor("feed", seqs[2]) == seqs[2]
        assert await ledger.acursor_position("feed") == seqs[2]
        assert await ledger.adelete_cursor("feed") is True
        with pytest.raises(InvalidArgument, match="does not exist"):
            await ledger.acursor_position("feed")

    asyncio.run(main())


# -- retention -------------------------------------------------------------------------


def test_trimming_never_drops_what_a_cursor_has_not_read(
    make_ledger: MakeLedger, clock: FakeClock, store_kind: str
) -> None:
    ledger = make_ledger()
    for i in range(6):
        ledger.charge("acct", f"job-{i}")
        clock.advance(10)
    seqs = [e.seq for e in everything(ledger)]
    slow = ledger.cursor("slow")
    slow.advance(seqs[1])
    assert ledger.trim_journal(seqs[4]) == 2  # capped at the slow cursor
    assert [e.seq for e in everything(ledger)] == seqs[2:]
    assert ledger.trim_journal(max_age=1) == 0  # everything older, but unread
    slow.advance(seqs[4])
    assert ledger.trim_journal(max_age=15) == 3  # older than 15 s and read: seqs 2-4
    assert [e.seq for e in everything(ledger)] == seqs[5:]
    slow.delete()
    # SQLite keeps its newest entry (its next seq counts from it); the others
    # can be emptied
    kept = 1 if store_kind == "sqlite" else 0
    assert ledger.trim_journal(seqs[5]) == 1 - kept
    assert len(ledger.journal()) == kept
    ledger.charge("acct", "later")
    assert ledger.journal()[-1].seq > seqs[5]  # seq never goes back after a trim


def test_trimming_with_no_bound_applies_the_stores_max_age(
    make_ledger: MakeLedger, store: BaseStore, clock: FakeClock
) -> None:
    ledger = make_ledger()
    old = ledger.charge("acct", "old")
    ledger.confirm("acct", "old", charge_id=old.record.charge_id)
    clock.advance(100)
    ledger.charge("acct", "new")
    store.journal_max_age = 50
    assert ledger.trim_journal() == 1
    assert [e.job_id for e in ledger.journal()] == ["new"]
    store.journal_max_age = None
    assert ledger.trim_journal() == 0
    for bad in ({"before": -1}, {"max_age": 0}, {"max_age": "1"}):
        with pytest.raises(InvalidArgument):
            ledger.trim_journal(**bad)  # type: ignore[arg-type]


# -- async -------------------------------------------------------------------------------


def test_the_async_twins(make_ledger: MakeLedger, clock: FakeClock) -> None:
    ledger = make_ledger(balances=True)

    async def main() -> None:
        await ledger.agrant("acct", 3)
        await ledger.acharge("acct", "job")
        cursor = await ledger.acursor("async")
        page = await cursor.aread()
        assert [e.kind for e in page] == ["grant", "charge"]
        assert await cursor.aadvance(page[0]) == page[0].seq
        assert await cursor.aposition() == page[0].seq
        assert await ledger.ajournal(after=page[0].seq) == page[1:]
        assert await ledger.acursors() == {"async": page[0].seq}
        assert await ledger.atrim_journal(page[1].seq) == 1
        assert await cursor.arewind(0) == 0
        assert await cursor.adelete() is True

    asyncio.run(main())


# -- races -------------------------------------------------------------------------------


def charge_refund_confirm(
    ledger: Ledger, prefix: str, *, calls: int, jobs: int, errors: list[BaseException]
) -> None:
    """One writer thread's work: ``calls`` charges over ``jobs`` reused ids
    (charge, refund, charge again), every other charge refunded, the rest
    confirmed. Errors go to ``errors`` for the test to report."""
    try:
        for i in range(calls):
            job = f"{prefix}-{i % jobs}"
            try:
                c = ledger.charge("acct", job)
            except JobInProgress:
                continue
            if c.charged and i % 2:
                ledger.refund("acct", job, charge_id=c.record.charge_id)
            elif c.charged:
                ledger.confirm("acct", job, charge_id=c.record.charge_id)
    except BaseException as exc:  # pragma: no cover - reported by the test
        errors.append(exc)


def test_concurrent_writers_and_readers_lose_and_repeat_nothing(
    make_ledger: MakeLedger, events: RecordingPlugin
) -> None:
    """Writers charge and refund from 6 threads while 2 readers follow the
    journal with their own positions: each reader sees every entry exactly
    once in increasing seq, and the entries match the hooks one to one."""
    ledger = make_ledger(balances=True)
    ledger.grant("acct", 10_000)
    stop = threading.Event()
    errors: list[BaseException] = []
    read: dict[int, list[JournalEntry]] = {0: [], 1: []}

    def writer(n: int) -> None:
        charge_refund_confirm(ledger, f"w{n}", calls=25, jobs=10, errors=errors)

    def reader(r: int) -> None:
        after = 0
        try:
            while True:
                done = stop.is_set()
                page = ledger.journal(after=after, limit=7)
                read[r].extend(page)
                if page:
                    after = page[-1].seq
                elif done:
                    return
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    readers = [threading.Thread(target=reader, args=(r,)) for r in (0, 1)]
    writers = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert not errors, errors
    final = everything(ledger)
    for r in (0, 1):
        assert read[r] == final
    seqs = [e.seq for e in final]
    assert seqs == sorted(set(seqs))
    assert Counter(entry_view(final)) == Counter(hook_view(events))
    assert sum(e.delta for e in final) == ledger.balance("acct")


# -- a process killed between the commit and its hooks --------------------------------


def _url_of(store: BaseStore, store_kind: str) -> str:
    if store_kind == "sqlite":
        return "sqlite:///" + str(store.path)  # type: ignore[attr-defined]
    if store_kind in ("redis", "redis-cluster"):
        url = str(store.url)  # type: ignore[attr-defined]
        prefix = urllib.parse.quote(store.prefix)  # type: ignore[attr-defined]
        cluster = "&cluster=true" if store_kind == "redis-cluster" else ""
        return f"{url}{'&' if '?' in url else '?'}prefix={prefix}{cluster}"
    if store_kind == "postgres":
        from tests.stores.conftest import POSTGRES_DEFAULT, POSTGRES_URL_ENV

        url = os.environ.get(POSTGRES_URL_ENV, POSTGRES_DEFAULT)
        schema = store.schema  # type: ignore[attr-defined]
        return f"{url}{'&' if '?' in url else '?'}schema={schema}"
    if store_kind.startswith("django-"):
        return f"django://{store.using}"  # type: ignore[attr-defined]
    raise AssertionError(store_kind)


_KILLED_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from jobcredits_plugin import Ledger, hookimpl

    class DieInHook:
        @hookimpl
        def on_charge(self, record):
            os.kill(os.getpid(), signal.SIGKILL)  # after the commit, before anyone hears

    ledger = Ledger.from_url(sys.argv[1], plugins=[DieInHook()])
    ledger.charge("acct", "job-killed", cost=4)
    print("unreachable")
    """
)


def test_a_process_killed_before_its_hooks_still_leaves_the_entry(
    store: BaseStore, store_kind: str, tmp_path: Path
) -> None:
    if store_kind in IN_PROCESS:
        pytest.skip(f"the {store_kind} store dies with its process, journal and all")
    script = tmp_path / "child.py"
    preamble = ""
    if store_kind.startswith("django-"):
        # The child configures the same Django databases first.
        from tests.stores import _django

        preamble = _django.child_preamble(_django.configure())
    script.write_text(preamble + _KILLED_CHILD)
    done = subprocess.run(
        [sys.executable, str(script), _url_of(store, store_kind)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert done.returncode == -9, done.stderr
    assert "unreachable" not in done.stdout
    ledger = Ledger(store)
    entries = ledger.journal()
    assert [(e.kind, e.job_id, e.cost) for e in entries] == [("charge", "job-killed", 4)]
    record = ledger.lookup("acct", "job-killed")
    assert record is not None
    assert record.charge_id == entries[0].charge_id
