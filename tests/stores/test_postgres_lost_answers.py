"""PostgreSQL through a proxy that loses answers (issue 13): the server
commits a claim, refund or prune, and the connection is cut before the answer
reaches the client (the proxy waits for the server's ReadyForQuery, so the
statement's transaction has ended).

The store never retries these operations (a retried claim could debit twice;
see ``PostgresStore``), so the caller gets StoreUnavailable. What must hold:
the books stay exact (balances = grants - live debits; each entry's balance
is the running sum; the journal's sums are the balances), nothing is charged
twice, and no hook fires twice. What does not hold yet is marked xfail: the
hooks of the committed but unanswered operation are never fired, although the
journal has their entries.
"""

from __future__ import annotations

import contextlib
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from jobcredits_plugin import JobInProgress, Ledger, StoreUnavailable
from jobcredits_plugin.testing import FakeClock, RecordingPlugin
from tests.stores._proxy import Proxy
from tests.stores.conftest import POSTGRES_DEFAULT, POSTGRES_URL_ENV, _server_url

psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed")

from jobcredits_plugin.stores._postgres import PostgresStore  # noqa: E402


@pytest.fixture
def url() -> str:
    return _server_url(POSTGRES_URL_ENV, POSTGRES_DEFAULT, "PostgreSQL")


@pytest.fixture
def lossy(url: str) -> Iterator[tuple[PostgresStore, Proxy]]:
    """A store on a fresh schema that reaches the server through a proxy
    (in the clear: the proxy looks for its marker in the request)."""
    parts = urllib.parse.urlsplit(url)
    proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    query = [*urllib.parse.parse_qsl(parts.query), ("sslmode", "disable")]
    proxied = urllib.parse.urlunsplit(
        parts._replace(netloc=f"{user}127.0.0.1:{proxy.port}", query=urllib.parse.urlencode(query))
    )
    schema = f"jctest_{uuid.uuid4().hex[:12]}"
    store = PostgresStore.from_url(proxied, schema=schema, max_size=2, timeout=2.0)
    try:
        yield store, proxy
    finally:
        store.close()
        proxy.close()
        PostgresStore.from_url(url, schema=schema).drop()


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


def _hooks_once(events: RecordingPlugin) -> None:
    seen = [(e.kind, e.record.charge_id) for e in events.events]
    assert len(seen) == len(set(seen)), seen


def test_a_lost_claim_answer_keeps_the_books_exact(
    lossy: tuple[PostgresStore, Proxy],
) -> None:
    """The lost charge committed: its job is pending and debited. The client's
    retry waits (409) while the lease runs, then takes the job over: the lost
    charge is refunded and the job charged anew. One live debit, no hook
    twice."""
    store, proxy = lossy
    clock, events = FakeClock(), RecordingPlugin()
    ledger = _ledger(store, clock, events)
    ledger.grant("acct", 10)
    ledger.charge("acct", "warm-up", cost=1)  # connected, schema ready
    ledger.confirm("acct", "warm-up")

    proxy.lose_next_pg_answer(b".claim(")
    with pytest.raises(StoreUnavailable):
        ledger.charge("acct", "job-1", cost=3)
    assert proxy.lost == 1
    lost = ledger.lookup("acct", "job-1")
    assert lost is not None
    assert lost.state == "pending"  # committed, though nobody was told
    assert ledger.balance("acct") == 6

    with pytest.raises(JobInProgress):
        ledger.charge("acct", "job-1", cost=3)
    clock.advance(6.0)
    again = ledger.charge("acct", "job-1", cost=3)
    assert again.charged
    assert again.record.charge_id != lost.charge_id
    assert ledger.balance("acct") == 6  # one live debit of 3, and the warm-up's 1
    assert [(e.kind, e.record.charge_id) for e in events.events] == [
        ("charge", events.events[0].record.charge_id),
        ("refund", lost.charge_id),
        ("charge", again.record.charge_id),
    ]
    _hooks_once(events)
    entries = _audit(store, ledger, ["acct"])
    assert [(e.kind, e.job_id) for e in entries] == [
        ("grant", None),
        ("charge", "warm-up"),
        ("charge", "job-1"),  # the lost one
        ("refund", "job-1"),
        ("charge", "job-1"),
    ]


def test_a_lost_refund_or_prune_answer_keeps_the_books_exact(
    lossy: tuple[PostgresStore, Proxy],
) -> None:
    """A refund whose answer is lost has refunded (a second refund finds
    nothing); a prune whose answer is lost has settled its records (the next
    prune finds none). Balances and the journal agree; no hook fires twice."""
    store, proxy = lossy
    clock, events = FakeClock(), RecordingPlugin()
    ledger = _ledger(store, clock, events)
    ledger.grant("acct", 10)
    ledger.charge("acct", "job-1", cost=2)
    ledger.charge("acct", "job-2", cost=3)  # left pending: prune refunds it

    proxy.lose_next_pg_answer(b".refund(")
    with pytest.raises(StoreUnavailable):
        ledger.refund("acct", "job-1")
    assert proxy.lost == 1
    assert ledger.balance("acct") == 7
    assert ledger.refund("acct", "job-1") is False

    clock.advance(6.0)
    proxy.lose_next_pg_answer(b".prune(")
    with pytest.raises(StoreUnavailable):
        ledger.prune()
    assert proxy.lost == 2
    assert ledger.prune() == []
    assert ledger.balance("acct") == 10
    _hooks_once(events)
    entries = _audit(store, ledger, ["acct"])
    assert [(e.kind, e.job_id) for e in entries] == [
        ("grant", None),
        ("charge", "job-1"),
        ("charge", "job-2"),
        ("refund", "job-1"),
        ("refund", "job-2"),
    ]


@pytest.mark.xfail(
    strict=True,
    reason="not done: PostgreSQL does not retry a claim, refund or prune whose answer was "
    "lost, so the hooks of what it committed never fire (the journal has the entries)",
)
def test_hooks_match_the_journal_after_lost_answers(
    lossy: tuple[PostgresStore, Proxy],
) -> None:
    """Issue 13's audit: hook counts = journal entries, kind by kind."""
    store, proxy = lossy
    clock, events = FakeClock(), RecordingPlugin()
    ledger = _ledger(store, clock, events)
    ledger.grant("acct", 10)
    ledger.charge("acct", "warm-up", cost=1)
    for marker, call in (
        (b".claim(", lambda: ledger.charge("acct", "job-1", cost=3)),
        (b".refund(", lambda: ledger.refund("acct", "job-1")),
    ):
        proxy.lose_next_pg_answer(marker)
        with contextlib.suppress(StoreUnavailable):
            call()
    entries = _audit(store, ledger, ["acct"])
    for kind in ("charge", "refund"):
        assert len(events.of(kind)) == len([e for e in entries if e.kind == kind]), kind
