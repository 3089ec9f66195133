"""PostgreSQL through a proxy that loses answers (issue 13): the server
commits a claim, refund or prune, and the connection is cut before the answer
reaches the client (the proxy waits for the server's ReadyForQuery, so the
statement's transaction has ended).

Since schema version 6 each claim, refund and prune batch carries an
operation id, and the server keeps what it answered (with the records it
found) in ``replies``, in the same transaction as the change. The store
retries a call whose answer was lost on another connection, within its
deadline; the server answers the retry with the original's reply and does
nothing again. So the call succeeds, and the ledger fires the hooks of what
committed exactly once. What every test checks: hook counts = journal
entries, kind by kind; the books exact (balances = grants - live debits; each
entry's balance is the running sum; the journal's sums are the balances).
"""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from jobcredits_plugin import (
    InsufficientCredits,
    JobInProgress,
    Ledger,
    StoreUnavailable,
    hookimpl,
)
from jobcredits_plugin.testing import FakeClock, RecordingPlugin
from tests.stores._proxy import Proxy
from tests.stores.conftest import POSTGRES_DEFAULT, POSTGRES_URL_ENV, _server_url

psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed")

from jobcredits_plugin.stores._postgres import REPLY_RETENTION, PostgresStore  # noqa: E402

KINDS = ("charge", "reuse", "refund", "expire")


class Events(RecordingPlugin):
    """Every hook, rejections included."""

    def __init__(self) -> None:
        super().__init__()
        self.rejected: list[BaseException] = []

    @hookimpl
    def on_reject(
        self, error: BaseException, account: Any, scope: Any, job_id: Any, cost: Any
    ) -> None:
        self.rejected.append(error)


@pytest.fixture
def url() -> str:
    return _server_url(POSTGRES_URL_ENV, POSTGRES_DEFAULT, "PostgreSQL")


LossyMaker = Callable[..., tuple[PostgresStore, Proxy]]


@pytest.fixture
def make_lossy(url: str) -> Iterator[LossyMaker]:
    """Stores on fresh schemas that reach the server through a proxy each
    (in the clear: the proxy looks for its marker in the request)."""
    made: list[tuple[PostgresStore, Proxy]] = []

    def make(**options: Any) -> tuple[PostgresStore, Proxy]:
        parts = urllib.parse.urlsplit(url)
        proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or 5432)
        user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        query = [*urllib.parse.parse_qsl(parts.query), ("sslmode", "disable")]
        proxied = urllib.parse.urlunsplit(
            parts._replace(
                netloc=f"{user}127.0.0.1:{proxy.port}", query=urllib.parse.urlencode(query)
            )
        )
        schema = f"jctest_{uuid.uuid4().hex[:12]}"
        options.setdefault("max_size", 2)
        options.setdefault("timeout", 2.0)
        store = PostgresStore.from_url(proxied, schema=schema, **options)
        made.append((store, proxy))
        return store, proxy

    try:
        yield make
    finally:
        for store, proxy in made:
            store.close()
            proxy.close()
            PostgresStore.from_url(url, schema=store.schema).drop()


@pytest.fixture
def lossy(make_lossy: LossyMaker) -> tuple[PostgresStore, Proxy]:
    return make_lossy()


def _ledger(store: PostgresStore, clock: FakeClock, events: RecordingPlugin) -> Ledger:
    return Ledger(store, clock=clock, balances=True, lease=5.0, ttl=60.0, plugins=[events])


def _audit(store: PostgresStore, ledger: Ledger, accounts: list[str]) -> list[Any]:
    """The journal, after checking that the books are exact by it."""
    entries = store.read_journal(0, 10_000)
    sums: dict[str, int] = {}
    for e in entries:
        sums[e.account] = sums.get(e.account, 0) + e.delta
        assert e.balance == sums[e.account], e
    for account in accounts:
        assert ledger.balance(account) == sums.get(account, 0)
    return entries


def _hooks_match_journal(
    store: PostgresStore, ledger: Ledger, events: RecordingPlugin, accounts: list[str]
) -> list[Any]:
    """The books are exact, no hook fired twice for one charge, and each
    kind's hooks name exactly the charges its journal entries name."""
    entries = _audit(store, ledger, accounts)
    seen = [(e.kind, e.record.charge_id) for e in events.events]
    assert len(seen) == len(set(seen)), seen
    for kind in KINDS:
        hooked = sorted(r.charge_id for r in events.of(kind))
        journaled = sorted(e.charge_id for e in entries if e.kind == kind)
        if kind == "reuse" and not store.journal_reuses:
            continue
        assert hooked == journaled, kind
    return entries


def _replies(store: PostgresStore) -> int:
    with psycopg.connect(store.conninfo, autocommit=True) as conn:
        row = conn.execute(f"SELECT count(*) FROM {store.schema}.replies").fetchone()
    assert row is not None
    return int(row[0])


# -- claims ------------------------------------------------------------------------------


def test_a_lost_claim_answer_is_recovered(lossy: tuple[PostgresStore, Proxy]) -> None:
    """The lost charge committed; the store's retry gets its reply: the call
    succeeds with the charge it made, on_charge fires once, nothing is
    debited twice. The job's next call is a plain reuse."""
    store, proxy = lossy
    clock, events = FakeClock(), Events()
    ledger = _ledger(store, clock, events)
    ledger.grant("acct", 10)
    ledger.charge("acct", "warm-up", cost=1)  # connected, schema ready
    ledger.confirm("acct", "warm-up")

    proxy.lose_next_pg_answer(b".claim(")
    charge = ledger.charge("acct", "job-1", cost=3)
    assert proxy.lost == 1
    assert charge.charged
    assert charge.balance == 6
    assert ledger.lookup("acct", "job-1") == charge.record
    assert ledger.balance("acct") == 6
    assert events.kinds() == ["charge", "charge"]
    assert events.of("charge")[1] == charge.record
    ledger.confirm("acct", "job-1", charge_id=charge.record.charge_id)
    assert ledger.charge("acct", "job-1", cost=3).outcome == "reused"
    entries = _hooks_match_journal(store, ledger, events, ["acct"])
    assert [(e.kind, e.job_id) for e in entries] == [
        ("grant", None),
        ("charge", "warm-up"),
        ("charge", "job-1"),
    ]
    assert events.rejected == []


def test_a_lost_takeover_answer_reports_the_refund_once(
    lossy: tuple[PostgresStore, Proxy],
) -> None:
    """A claim that takes over a stale pending charge commits the refund and
    the new charge together; with its answer lost, the retry reports both:
    on_refund for the old charge and on_charge for the new, once each."""
    store, proxy = lossy
    clock, events = FakeClock(), Events()
    ledger = _ledger(store, clock, events)
    ledger.grant("acct", 10)
    stale = ledger.charge("acct", "job-1", cost=3).record
    clock.advance(6.0)  # past the lease

    proxy.lose_next_pg_answer(b".claim(")
    again = ledger.charge("acct", "job-1", cost=3)
    assert proxy.lost == 1
    assert again.charged
    assert again.record.charge_id != stale.charge_id
    assert again.balance == 7
    assert [(e.kind, e.record.charge_id) for e in events.events] == [
        ("charge", stale.charge_id),
        ("refund", stale.charge_id),
        ("charge", again.record.charge_id),
    ]
    entries = _hooks_match_journal(store, ledger, events, ["acct"])
    assert [e.kind for e in entries] == ["grant", "charge", "refund", "charge"]


def test_a_lost_expire_then_charge_answer_reports_the_expiry_once(
    lossy: tuple[PostgresStore, Proxy],
) -> None:
    """A claim that finds its job past expires_at ends it (on_expire) and
    charges anew; the lost answer's retry reports both once."""
    store, proxy = lossy
    clock, events = FakeClock(), Events()
    ledger = _ledger(store, clock, events)
    ledger.grant("acct", 10)
    old = ledger.charge("acct", "job-1", cost=2).record
    ledger.confirm("acct", "job-1", charge_id=old.charge_id)
    clock.advance(61.0)  # past the ttl

    proxy.lose_next_pg_answer(b".claim(")
    again = ledger.charge("acct", "job-1", cost=2)
    assert proxy.lost == 1
    assert again.charged
    assert ledger.balance("acct") == 6
    assert events.kinds() == ["charge", "expire", "charge"]
    assert events.of("expire")[0].charge_id == old.charge_id
    entries = _hooks_match_journal(store, ledger, events, ["acct"])
    assert [e.kind for e in entries] == ["grant", "charge", "expire", "charge"]


def test_a_lost_402_answer_rejects_once(lossy: tuple[PostgresStore, Proxy]) -> None:
    """A plain 402 writes nothing and keeps no reply: the retry decides
    afresh, answers 402 again, and on_reject fires once. A 402 that settled a
    stale charge first (a takeover short of credit) keeps its reply: the
    retry reports that refund once, and on_reject fires once."""
    store, proxy = lossy
    clock, events = FakeClock(), Events()
    ledger = _ledger(store, clock, events)
    ledger.grant("acct", 2)
    ledger.charge("acct", "warm-up", cost=0)

    proxy.lose_next_pg_answer(b".claim(")
    with pytest.raises(InsufficientCredits):
        ledger.charge("acct", "job-1", cost=3)
    assert proxy.lost == 1
    assert len(events.rejected) == 1
    assert ledger.lookup("acct", "job-1") is None
    assert ledger.balance("acct") == 2

    stale = ledger.charge("acct", "job-2", cost=2).record  # balance 0
    clock.advance(6.0)
    proxy.lose_next_pg_answer(b".claim(")
    with pytest.raises(InsufficientCredits) as caught:
        ledger.charge("acct", "job-2", cost=5)
    assert proxy.lost == 2
    assert caught.value.balance == 2  # type: ignore[attr-defined]
    assert len(events.rejected) == 2
    assert [(e.kind, e.record.charge_id) for e in events.events][-2:] == [
        ("charge", stale.charge_id),
        ("refund", stale.charge_id),
    ]
    entries = _hooks_match_journal(store, ledger, events, ["acct"])
    assert [e.kind for e in entries] == ["grant", "charge", "charge", "refund"]


def test_a_lost_reuse_answer_counts_the_use_once(make_lossy: LossyMaker) -> None:
    """A reuse commits uses + 1 (and, with journal_reuses, an entry): the
    retry answers the original's reuse, so on_reuse fires once and the job
    counts one use, not two."""
    store, proxy = make_lossy(journal_reuses=True)
    clock, events = FakeClock(), Events()
    ledger = _ledger(store, clock, events)
    ledger.grant("acct", 10)
    first = ledger.charge("acct", "job-1", cost=3)
    ledger.confirm("acct", "job-1", charge_id=first.record.charge_id)

    proxy.lose_next_pg_answer(b".claim(")
    reused = ledger.charge("acct", "job-1", cost=3)
    assert proxy.lost == 1
    assert reused.outcome == "reused"
    assert reused.record.uses == 2
    found = ledger.lookup("acct", "job-1")
    assert found is not None
    assert found.uses == 2
    assert events.kinds() == ["charge", "reuse"]
    entries = _hooks_match_journal(store, ledger, events, ["acct"])
    assert [e.kind for e in entries] == ["grant", "charge", "reuse"]


def test_a_lost_in_progress_answer_is_decided_afresh(
    lossy: tuple[PostgresStore, Proxy],
) -> None:
    """A 409 writes nothing: its retry decides again, and answers 409."""
    store, proxy = lossy
    clock, events = FakeClock(), Events()
    ledger = _ledger(store, clock, events)
    ledger.grant("acct", 10)
    ledger.charge("acct", "job-1", cost=3)
    proxy.lose_next_pg_answer(b".claim(")
    with pytest.raises(JobInProgress):
        ledger.charge("acct", "job-1", cost=3)
    assert proxy.lost == 1
    assert len(events.rejected) == 1
    _hooks_match_journal(store, ledger, events, ["acct"])


# -- refunds and prunes ------------------------------------------------------------------


@pytest.mark.parametrize("with_charge_id", [True, False])
def test_a_lost_refund_answer_is_recovered(
    lossy: tuple[PostgresStore, Proxy], with_charge_id: bool
) -> None:
    """The lost refund committed; its retry answers it: refund() returns
    True, on_refund fires once, the credit comes back once."""
    store, proxy = lossy
    clock, events = FakeClock(), Events()
    ledger = _ledger(store, clock, events)
    ledger.grant("acct", 10)
    charge = ledger.charge("acct", "job-1", cost=2)
    charge_id = charge.record.charge_id if with_charge_id else None

    proxy.lose_next_pg_answer(b".refund(")
    assert ledger.refund("acct", "job-1", charge_id=charge_id) is True
    assert proxy.lost == 1
    assert ledger.balance("acct") == 10
    assert ledger.refund("acct", "job-1", charge_id=charge_id) is False
    assert [(e.kind, e.record.charge_id) for e in events.events] == [
        ("charge", charge.record.charge_id),
        ("refund", charge.record.charge_id),
    ]
    entries = _hooks_match_journal(store, ledger, events, ["acct"])
    assert [e.kind for e in entries] == ["grant", "charge", "refund"]


def test_a_refund_retry_never_touches_a_newer_charge(make_lossy: LossyMaker, url: str) -> None:
    """Between the lost refund and its retry, another process charges the
    job anew. The retry answers the original refund (of the old charge) and
    leaves the newer charge alone, although the refund named no charge id."""
    store, proxy = make_lossy()
    clock, events, others = FakeClock(), Events(), Events()
    ledger = _ledger(store, clock, events)
    direct = PostgresStore.from_url(url, schema=store.schema)
    other = _ledger(direct, clock, others)
    try:
        ledger.grant("acct", 10)
        old = ledger.charge("acct", "job-1", cost=2).record
        newer: list[Any] = []
        proxy.lose_next_pg_answer(
            b".refund(", then=lambda: newer.append(other.charge("acct", "job-1", cost=3))
        )
        assert ledger.refund("acct", "job-1") is True
        assert proxy.errors == []
        assert proxy.lost == 1
        assert newer[0].charged
        live = ledger.lookup("acct", "job-1")
        assert live is not None
        assert live.charge_id == newer[0].record.charge_id
        assert ledger.balance("acct") == 7
        assert [r.charge_id for r in events.of("refund")] == [old.charge_id]
        combined = Events()
        combined.events = events.events + others.events
        _hooks_match_journal(store, ledger, combined, ["acct"])
    finally:
        direct.close()


def test_a_lost_prune_answer_is_recovered(lossy: tuple[PostgresStore, Proxy]) -> None:
    """The lost prune batch committed; its retry answers the same records in
    the same order: prune() returns them, each hook fires once."""
    store, proxy = lossy
    clock, events = FakeClock(), Events()
    ledger = _ledger(store, clock, events)
    ledger.grant("acct", 10)
    ledger.grant("other", 10)
    expired = ledger.charge("acct", "job-1", cost=2).record
    ledger.confirm("acct", "job-1")
    stale = ledger.charge("other", "job-2", cost=3).record  # left pending
    clock.advance(61.0)

    proxy.lose_next_pg_answer(b".prune(")
    pruned = ledger.prune()
    assert proxy.lost == 1
    assert [(r.charge_id, r.state) for r in pruned] == [
        (stale.charge_id, "refunded"),
        (expired.charge_id, "charged"),
    ]
    assert ledger.prune() == []
    assert ledger.balance("acct") == 8
    assert ledger.balance("other") == 10
    assert sorted(events.kinds()) == ["charge", "charge", "expire", "refund"]
    entries = _hooks_match_journal(store, ledger, events, ["acct", "other"])
    kinds = sorted(e.kind for e in entries)
    assert kinds == ["charge", "charge", "expire", "grant", "grant", "refund"]


@pytest.mark.parametrize("marker", [b".forget_replies(", b".forget_grants("])
def test_a_lost_housekeeping_answer_does_not_fail_the_prune(
    lossy: tuple[PostgresStore, Proxy], marker: bytes
) -> None:
    """After its batches, prune deletes the replies and grant ids past their
    retention: idempotent deletes, retried like a read. A lost answer there
    used to fail the whole prune with StoreUnavailable (found by the fault
    suite, tests/system/test_store_faults.py), though every batch had
    committed and been reported."""
    store, proxy = lossy
    clock, events = FakeClock(), Events()
    ledger = _ledger(store, clock, events)
    ledger.grant("acct", 10)
    expired = ledger.charge("acct", "job-1", cost=2).record
    ledger.confirm("acct", "job-1")
    clock.advance(61.0)

    proxy.lose_next_pg_answer(marker)
    pruned = ledger.prune()
    assert proxy.lost == 1
    assert [(r.charge_id, r.state) for r in pruned] == [(expired.charge_id, "charged")]
    assert sorted(events.kinds()) == ["charge", "expire"]
    _hooks_match_journal(store, ledger, events, ["acct"])


def test_hooks_match_the_journal_after_lost_answers(
    lossy: tuple[PostgresStore, Proxy],
) -> None:
    """Issue 13's audit: hook counts = journal entries, kind by kind."""
    store, proxy = lossy
    clock, events = FakeClock(), Events()
    ledger = _ledger(store, clock, events)
    ledger.grant("acct", 10)
    ledger.charge("acct", "warm-up", cost=1)
    for marker, call in (
        (b".claim(", lambda: ledger.charge("acct", "job-1", cost=3)),
        (b".refund(", lambda: ledger.refund("acct", "job-1")),
    ):
        proxy.lose_next_pg_answer(marker)
        call()
    assert proxy.lost == 2
    entries = _audit(store, ledger, ["acct"])
    for kind in ("charge", "refund"):
        assert len(events.of(kind)) == len([e for e in entries if e.kind == kind]), kind


def test_a_lost_answer_whose_retry_cannot_reach_the_server(
    lossy: tuple[PostgresStore, Proxy],
) -> None:
    """The server becomes unreachable right after committing: every retry
    fails, and the call raises StoreUnavailable within the store's deadline,
    as before version 6. The books stay exact; the journal has the charge
    that no hook reported (the one case left: the caller cannot know)."""
    store, proxy = lossy
    clock, events = FakeClock(), Events()
    ledger = _ledger(store, clock, events)
    ledger.grant("acct", 10)
    proxy.lose_next_pg_answer(b".claim(", then=proxy.cut)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        ledger.charge("acct", "job-1", cost=3)
    assert time.monotonic() - started < store.deadline + 2.0
    proxy.restore()
    lost = ledger.lookup("acct", "job-1")
    assert lost is not None
    assert lost.state == "pending"
    assert ledger.balance("acct") == 7
    entries = _audit(store, ledger, ["acct"])
    assert [e.kind for e in entries] == ["grant", "charge"]
    assert events.events == []


def test_lost_answers_on_the_server_clock(make_lossy: LossyMaker) -> None:
    """With server_clock the retry reads a later now than the original: the
    claim's reply carries the original's, so the result's record is the one
    stored, to the bit; refund and prune events are the original's too."""
    store, proxy = make_lossy(server_clock=True)
    events = Events()
    ledger = Ledger(store, balances=True, lease=0.2, ttl=60.0, plugins=[events])
    ledger.grant("acct", 10)
    ledger.charge("acct", "warm-up", cost=1)

    proxy.lose_next_pg_answer(b".claim(", then=lambda: time.sleep(0.01))
    charge = ledger.charge("acct", "job-1", cost=3)
    assert proxy.lost == 1
    assert ledger.lookup("acct", "job-1") == charge.record
    assert events.of("charge")[-1] == charge.record

    proxy.lose_next_pg_answer(b".refund(")
    assert ledger.refund("acct", "job-1", charge_id=charge.record.charge_id) is True
    time.sleep(0.3)  # the warm-up's lease ends
    proxy.lose_next_pg_answer(b".prune(")
    assert [r.job_id for r in ledger.prune()] == ["warm-up"]
    assert proxy.lost == 3
    assert events.kinds() == ["charge", "charge", "refund", "refund"]
    _hooks_match_journal(store, ledger, events, ["acct"])
    assert ledger.balance("acct") == 10


# -- the async twins ---------------------------------------------------------------------


def test_lost_answers_of_the_async_twins_are_recovered(
    lossy: tuple[PostgresStore, Proxy],
) -> None:
    """acharge, arefund and aprune run the same retried operation."""
    store, proxy = lossy
    clock, events = FakeClock(), Events()
    ledger = _ledger(store, clock, events)

    async def main() -> None:
        await ledger.agrant("acct", 10)
        await ledger.acharge("acct", "warm-up", cost=1)
        proxy.lose_next_pg_answer(b".claim(")
        charge = await ledger.acharge("acct", "job-1", cost=3)
        assert charge.charged
        proxy.lose_next_pg_answer(b".refund(")
        assert await ledger.arefund("acct", "job-1", charge_id=charge.record.charge_id)
        clock.advance(6.0)
        proxy.lose_next_pg_answer(b".prune(")
        pruned = await ledger.aprune()
        assert [r.job_id for r in pruned] == ["warm-up"]
        assert await ledger.abalance("acct") == 10

    asyncio.run(main())
    assert proxy.lost == 3
    assert events.kinds() == ["charge", "charge", "refund", "refund"]
    _hooks_match_journal(store, ledger, events, ["acct"])


# -- the server side ---------------------------------------------------------------------


def _claim_params(store: PostgresStore, op_id: str, charge_id: str) -> tuple[Any, ...]:
    return (
        "acct", "default", "job-1", charge_id, 3, None, None, 1000.0, 60.0, 5.0, None, True,
        True, False, op_id, store.reply_retention,
    )  # fmt: skip


def test_a_retry_waits_for_its_original_and_answers_its_reply(url: str) -> None:
    """A retry that reaches the server while the original still runs (its
    transaction open) waits for it, then answers its reply: one charge."""
    store = PostgresStore.from_url(url, schema=f"jctest_{uuid.uuid4().hex[:12]}")
    try:
        store.migrate()
        store.grant("acct", 10, 1000.0)
        op_id = uuid.uuid4().hex
        answers: list[Any] = []
        with psycopg.connect(url, autocommit=True) as first, first.transaction():
            answers.append(
                first.execute(store._sql.claim, _claim_params(store, op_id, "c1")).fetchone()
            )

            def retry() -> None:
                with psycopg.connect(url, autocommit=True) as second:
                    answers.append(
                        second.execute(
                            store._sql.claim, _claim_params(store, op_id, "c1")
                        ).fetchone()
                    )

            thread = threading.Thread(target=retry)
            thread.start()
            thread.join(0.5)
            assert thread.is_alive()  # waiting for the original's lock
        thread.join(10)
        assert not thread.is_alive()
        assert answers[0] == answers[1]
        assert answers[0][0] == "charged"
        assert store.balance("acct") == 7
        assert [e.kind for e in store.read_journal(0, 100)] == ["grant", "charge"]
    finally:
        store.close()
        store.drop()


def test_replies_do_not_grow_without_bound(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every reply is dropped once its retention has passed: a reply written
    with an operation id that starts with "0" (one in sixteen) deletes up to
    32 past it, and prune deletes them all."""
    from jobcredits_plugin.stores._postgres import _store

    drawn = _store._op_id
    first = {"digit": "f"}
    monkeypatch.setattr(_store, "_op_id", lambda: first["digit"] + drawn()[1:])
    store = PostgresStore.from_url(url, schema=f"jctest_{uuid.uuid4().hex[:12]}")
    clock, events = FakeClock(), Events()
    ledger = _ledger(store, clock, events)
    try:
        assert store.reply_retention == max(REPLY_RETENTION, 2 * store.deadline)
        ledger.grant("acct", 100)
        for i in range(40):
            ledger.charge("acct", f"job-{i}", cost=1)
        assert _replies(store) == 40
        clock.advance(store.reply_retention - 1)
        first["digit"] = "0"
        ledger.charge("acct", "one-more", cost=1)
        assert _replies(store) == 41  # none past its retention yet

        clock.advance(2.0)  # the first forty are past it
        first["digit"] = "f"
        ledger.charge("acct", "late-0", cost=1)
        assert _replies(store) == 42  # this write does not clean up
        first["digit"] = "0"
        ledger.charge("acct", "late-1", cost=1)
        assert _replies(store) == 43 - 32  # this one deletes 32
        ledger.charge("acct", "late-2", cost=1)
        assert _replies(store) == 4  # and the next the other 8

        first["digit"] = "f"
        clock.advance(store.reply_retention + 1)
        assert len(ledger.prune()) == 44  # every job pending past its lease: refunded
        assert _replies(store) == 1  # that prune batch's own reply
        clock.advance(store.reply_retention + 1)
        assert ledger.prune() == []
        assert _replies(store) == 0
    finally:
        ledger.close()
        store.drop()


def test_a_version_5_schema_is_migrated_to_version_6(url: str) -> None:
    """The migration keeps jobs, balances and the journal; the version-5
    signatures still work for processes running the old code (they keep no
    reply); the new ones keep replies."""
    from psycopg import sql

    from jobcredits_plugin.stores._postgres import SCHEMA_VERSION
    from tests.stores._pg_history import make_schema_at

    schema = f"jctest_{uuid.uuid4().hex[:12]}"
    store = PostgresStore.from_url(url, schema=schema)
    v5_claim = (
        "SELECT status FROM {schema}.claim('acct', 'default', %s, %s, 2, NULL, "
        "NULL, 100.0, 3600.0, 60.0, NULL, true, true, false)"
    )
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            with conn.transaction():
                make_schema_at(conn, store, 5)
            conn.execute(
                store._format(
                    "SELECT * FROM {schema}.grant_credits('acct', 10, 100.0, 'g-1', true, 60.0)"
                )
            )
            conn.execute(store._format(v5_claim), ("open", "c-open"))
            assert store.migrate() == SCHEMA_VERSION == 6
            versions = conn.execute(
                sql.SQL("SELECT version FROM {}.schema_version ORDER BY version").format(
                    sql.Identifier(schema)
                )
            ).fetchall()
            assert versions == [(v,) for v in range(1, 7)]
            # an old process's claim, during the rolling upgrade
            assert conn.execute(store._format(v5_claim), ("old", "c-old")).fetchone() == (
                "charged",
            )
        assert _replies(store) == 0
        clock, events = FakeClock(start=100.0), Events()
        ledger = _ledger(store, clock, events)
        assert ledger.balance("acct") == 6  # the data survived
        ledger.charge("acct", "new", cost=1)
        assert _replies(store) == 1
        clock.advance(6.0)
        assert [r.job_id for r in ledger.prune()] == ["new"]
        assert [(e.kind, e.job_id) for e in _audit(store, ledger, ["acct"])] == [
            ("grant", None),
            ("charge", "open"),
            ("charge", "old"),
            ("charge", "new"),
            ("refund", "new"),
        ]
        assert store.migrate() == SCHEMA_VERSION  # idempotent
    finally:
        store.close()
        store.drop()
