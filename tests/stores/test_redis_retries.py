"""A retried script reports exactly what its original committed (issue 13,
defects 2, 3 and 5).

redis-py re-sends a script whose answer was lost (the server ran it, the
connection died before the reply arrived). The retry must neither commit
again nor lose what the original committed: its events come back with it, so
the ledger fires each hook exactly once. A loopback proxy (tests/stores/
_proxy.py) forwards the request and cuts the connection instead of passing
on the answer; redis-py then retries. Every test runs on a standalone server
and on a 3-master Redis Cluster (one proxy per node, the cluster client's
``address_remap`` sending it through them), whose journal is merged from its
slots' streams by the reads here.

Each test asserts hooks once per committed event, exact balances, and one
journal entry per event. The last one does it under
load: threads charging, reusing, refunding, abandoning and pruning while the
proxies lose an answer every few milliseconds, audited afterwards (each charge
settled exactly once by a hook, reuse hooks = uses - 1, balances from the
hooks, journal = hooks kind by kind). Every test here failed before the fix.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from jobcredits_plugin import (
    InsufficientCredits,
    JobExhausted,
    JobInProgress,
    Ledger,
    StoreUnavailable,
)
from jobcredits_plugin.testing import FakeClock, RecordingPlugin
from tests.stores._proxy import Proxy
from tests.stores.conftest import REDIS_DEFAULT, REDIS_URL_ENV, _redis_cleanup, _server_url

redis = pytest.importorskip("redis", reason="the redis extra is not installed")
from redis.backoff import ExponentialBackoff  # noqa: E402
from redis.retry import Retry  # noqa: E402

from jobcredits_plugin.stores import RedisStore  # noqa: E402

EVALSHA = b"EVALSHA"


class Lossy:
    """Stores that reach Redis (or every node of a cluster) through proxies
    that can lose one answer, and stores of the same prefix that do not."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.prefix = f"jctest:{uuid.uuid4().hex[:12]}"
        self.proxies: dict[int, Proxy] = {}  # a real port -> the proxy in front of it
        self.stores: list[RedisStore] = []
        self.clients: list[Any] = []
        self.url = ""
        self.node_ports: list[int] = []

    # -- building --------------------------------------------------------------------

    def start(self) -> None:
        if self.kind == "redis":
            self.url = _server_url(REDIS_URL_ENV, REDIS_DEFAULT, "Redis")
            parts = urllib.parse.urlsplit(self.url)
            if parts.scheme != "redis":
                pytest.skip("the proxy speaks plain TCP: needs a redis:// URL")
            port = parts.port or 6379
            self.proxies[port] = Proxy(parts.hostname or "127.0.0.1", port)
            self.node_ports = [port]
            return
        from tests.stores._redis_cluster import REDIS_CLI, REDIS_SERVER, session_cluster_url

        _server_url(REDIS_URL_ENV, REDIS_DEFAULT, "Redis")  # skip or fail as the suite does
        if REDIS_SERVER is None or REDIS_CLI is None:
            message = "redis-server and redis-cli are needed to start a test cluster"
            if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
                pytest.fail(message)
            pytest.skip(message)
        self.url = session_cluster_url()
        direct = redis.cluster.RedisCluster.from_url(self.url.split("?")[0])
        try:
            self.node_ports = sorted(int(n.port) for n in direct.get_primaries())
        finally:
            direct.close()
        for port in self.node_ports:
            self.proxies[port] = Proxy("127.0.0.1", port)

    def _remap(self, address: tuple[str, int]) -> tuple[str, int]:
        proxy = self.proxies.get(int(address[1]))
        return address if proxy is None else ("127.0.0.1", proxy.port)

    def store(self, **options: Any) -> RedisStore:
        """A store whose every connection goes through the proxies."""
        if self.kind == "redis":
            parts = urllib.parse.urlsplit(self.url)
            proxy = self.proxies[parts.port or 6379]
            url = urllib.parse.urlunsplit(parts._replace(netloc=f"127.0.0.1:{proxy.port}"))
            made = RedisStore.from_url(url, prefix=self.prefix, **options)
        else:
            first = self.proxies[self.node_ports[0]]
            retries = int(options.pop("retries", 1))
            client = redis.cluster.RedisCluster(
                host="127.0.0.1",
                port=first.port,
                address_remap=self._remap,
                decode_responses=True,
                socket_timeout=2.0,
                socket_connect_timeout=2.0,
                retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), retries),
                require_full_coverage=True,
            )
            self.clients.append(client)
            made = RedisStore(client, cluster=True, prefix=self.prefix, **options)
        self.stores.append(made)
        return made

    def direct(self, **options: Any) -> RedisStore:
        """A store of the same prefix that reaches the server(s) directly."""
        made = RedisStore.from_url(self.url, prefix=self.prefix, **options)
        self.stores.append(made)
        return made

    # -- faults ----------------------------------------------------------------------

    def arm(
        self, store: RedisStore, account: str, then: Callable[[], object] | None = None
    ) -> None:
        """Lose the answer to the next script call for ``account``'s slot."""
        if self.kind == "redis":
            proxy = next(iter(self.proxies.values()))
        else:
            node = store._client.get_node_from_key(store.due_key(account))
            proxy = next(p for p in self.proxies.values() if p.port == int(node.port))
        proxy.lose_next_answer(EVALSHA, then)

    @property
    def lost(self) -> int:
        return sum(p.lost for p in self.proxies.values())

    def check_proxies(self) -> None:
        for proxy in self.proxies.values():
            if proxy.errors:
                raise proxy.errors[0]

    # -- clean-up --------------------------------------------------------------------

    def close(self) -> None:
        for made in self.stores:
            made.close()
        for client in self.clients:
            client.close()
        for proxy in self.proxies.values():
            proxy.close()
        if self.kind == "redis":
            if self.stores:
                probe = RedisStore.from_url(self.url, prefix=self.prefix)
                probe.close()
                _redis_cleanup(probe)
            return
        pattern = self.prefix.replace("*", "\\*") + ":*"
        for port in self.node_ports:
            node = redis.Redis(port=port, socket_timeout=5)
            try:
                keys = list(node.scan_iter(match=pattern, count=1000))
                if keys:
                    # one slot per call: a node refuses a DEL across slots
                    for key in keys:
                        node.delete(key)
            except redis.exceptions.RedisError:
                pass
            finally:
                node.close()


@pytest.fixture(params=["redis", "redis-cluster"])
def lossy(request: pytest.FixtureRequest) -> Iterator[Lossy]:
    made = Lossy("redis" if request.param == "redis" else "cluster")
    try:
        made.start()
        yield made
        made.check_proxies()
    finally:
        made.close()


def _ledger(store: RedisStore, clock: FakeClock, events: RecordingPlugin, **kw: Any) -> Ledger:
    kw.setdefault("balances", True)
    return Ledger(store, clock=clock, plugins=[events], **kw)


def _journal(store: RedisStore, start: int) -> list[tuple[str, str | None, str, int, int]]:
    """(kind, job id, charge id, delta, balance) of the entries after ``start``
    (on a cluster, merged from the slot streams by this read)."""
    return [
        (e.kind, e.job_id, e.charge_id, e.delta, e.balance) for e in store.read_journal(start, 1000)
    ]


def _last_seq(store: RedisStore) -> int:
    entries = store.read_journal(0, 100_000)
    return entries[-1].seq if entries else 0


def _warm_up(ledger: Ledger, account: str) -> None:
    """Connect and load the scripts on the account's node, so the lost answer
    is the call's own (not a NOSCRIPT)."""
    warm = ledger.charge(account, "warm-up", cost=0)
    assert ledger.prune() == []  # runs the script on the warm-up's due-set
    assert ledger.refund(account, "warm-up", charge_id=warm.record.charge_id)


# -- defect 2: a retried claim reports the settlement its original committed -------------


def test_a_retried_takeover_reports_the_stale_refund(lossy: Lossy) -> None:
    """The original took over a stale pending charge (refund, then charge):
    the retry reports both, so on_refund fires once for the old charge."""
    store = lossy.store()
    clock, events = FakeClock(), RecordingPlugin()
    ledger = _ledger(store, clock, events)
    ledger.grant("acct", 10)
    _warm_up(ledger, "acct")
    old = ledger.charge("acct", "job", cost=2)  # never settled: its worker died
    clock.advance(61)
    start = _last_seq(store)
    events.clear()

    lossy.arm(store, "acct")
    new = ledger.charge("acct", "job", cost=3)
    assert lossy.lost == 1
    assert new.charged
    assert new.balance == 10 - 3
    assert events.kinds() == ["refund", "charge"]
    assert [r.charge_id for r in events.of("refund")] == [old.record.charge_id]
    assert [r.charge_id for r in events.of("charge")] == [new.record.charge_id]
    assert ledger.balance("acct") == 7
    rec = ledger.lookup("acct", "job")
    assert rec is not None
    assert rec.charge_id == new.record.charge_id
    assert rec.uses == 1
    assert _journal(store, start) == [
        ("refund", "job", old.record.charge_id, 2, 10),
        ("charge", "job", new.record.charge_id, -3, 7),
    ]


def test_a_retried_expiry_reports_the_expire(lossy: Lossy) -> None:
    """The original expired an old charge, then charged: on_expire fires once."""
    store = lossy.store()
    clock, events = FakeClock(), RecordingPlugin()
    ledger = _ledger(store, clock, events)
    ledger.grant("acct", 10)
    _warm_up(ledger, "acct")
    old = ledger.charge("acct", "job", cost=2)
    ledger.confirm("acct", "job", charge_id=old.record.charge_id)
    clock.advance(3601)
    start = _last_seq(store)
    events.clear()

    lossy.arm(store, "acct")
    new = ledger.charge("acct", "job", cost=2)
    assert lossy.lost == 1
    assert new.charged
    assert new.balance == 6
    assert events.kinds() == ["expire", "charge"]
    assert events.of("expire")[0].charge_id == old.record.charge_id
    assert ledger.balance("acct") == 6
    assert _journal(store, start) == [
        ("expire", "job", old.record.charge_id, 0, 8),
        ("charge", "job", new.record.charge_id, -2, 6),
    ]


@pytest.mark.parametrize("stale", ["pending", "expired"])
def test_a_retried_402_reports_the_settlement_before_it(lossy: Lossy, stale: str) -> None:
    """The original settled the old charge (refund or expire) and then found
    too little credit (402): the retry answers 402 again and reports the
    settlement, so its hook fires once."""
    store = lossy.store()
    clock, events = FakeClock(), RecordingPlugin()
    ledger = _ledger(store, clock, events)
    ledger.grant("acct", 3)
    _warm_up(ledger, "acct")
    old = ledger.charge("acct", "job", cost=2)
    if stale == "expired":
        ledger.confirm("acct", "job", charge_id=old.record.charge_id)
        clock.advance(3601)
        balance = 1
    else:
        clock.advance(61)
        balance = 3
    start = _last_seq(store)
    events.clear()

    lossy.arm(store, "acct")
    with pytest.raises(InsufficientCredits) as info:
        ledger.charge("acct", "job", cost=5)
    assert lossy.lost == 1
    assert info.value.balance == balance
    kind = "refund" if stale == "pending" else "expire"
    assert events.kinds() == [kind]
    assert events.of(kind)[0].charge_id == old.record.charge_id
    assert ledger.balance("acct") == balance
    assert ledger.lookup("acct", "job") is None
    delta = 2 if stale == "pending" else 0
    assert _journal(store, start) == [(kind, "job", old.record.charge_id, delta, balance)]


def test_a_retried_prune_reports_what_it_settled(lossy: Lossy) -> None:
    """The original prune batch settled records (an expiry and a stale
    charge's refund): the retry returns them, so their hooks fire once."""
    store = lossy.store()
    clock, events = FakeClock(), RecordingPlugin()
    ledger = _ledger(store, clock, events)
    ledger.grant("acct", 10)
    _warm_up(ledger, "acct")
    done = ledger.charge("acct", "done", cost=1)
    ledger.confirm("acct", "done", charge_id=done.record.charge_id)
    clock.advance(3000)
    stale = ledger.charge("acct", "stale", cost=2)
    clock.advance(700)  # "done" expired, "stale"'s lease is over
    start = _last_seq(store)
    events.clear()

    lossy.arm(store, "acct")
    settled = ledger.prune()
    assert lossy.lost == 1
    assert sorted((r.job_id, r.state) for r in settled) == [
        ("done", "charged"),
        ("stale", "refunded"),
    ]
    assert sorted(events.kinds()) == ["expire", "refund"]
    assert events.of("expire")[0].charge_id == done.record.charge_id
    assert events.of("refund")[0].charge_id == stale.record.charge_id
    assert ledger.balance("acct") == 10 - 1
    assert ledger.prune() == []
    assert len(events.kinds()) == 2
    assert sorted(_journal(store, start)) == sorted(
        [
            ("expire", "done", done.record.charge_id, 0, 9),
            ("refund", "stale", stale.record.charge_id, 2, 9),
        ]
    )


# -- defect 3: a retried refund replays its own refund, never a newer charge ----------


@pytest.mark.parametrize("by_id", [False, True], ids=["no-charge-id", "charge-id"])
def test_a_retried_refund_never_lands_on_a_newer_charge(lossy: Lossy, by_id: bool) -> None:
    """A refunds its charge; before its retry arrives, B charges the same job
    anew. The retry answers A's refund again (True, on_refund once for A's
    charge) and leaves B's charge alone: B is not served free."""
    store = lossy.store()
    clock, events = FakeClock(), RecordingPlugin()
    ledger = _ledger(store, clock, events)
    other_events = RecordingPlugin()
    other = _ledger(lossy.direct(), clock, other_events)
    ledger.grant("acct", 10)
    _warm_up(ledger, "acct")
    mine = ledger.charge("acct", "job", cost=2)
    start = _last_seq(store)
    events.clear()
    theirs: list[Any] = []

    def charge_meanwhile() -> None:
        theirs.append(other.charge("acct", "job", cost=3))

    lossy.arm(store, "acct", then=charge_meanwhile)
    cid = mine.record.charge_id if by_id else None
    assert ledger.refund("acct", "job", charge_id=cid) is True
    assert lossy.lost == 1
    lossy.check_proxies()
    assert len(theirs) == 1
    assert theirs[0].charged
    assert events.kinds() == ["refund"]
    assert events.of("refund")[0].charge_id == mine.record.charge_id
    assert other_events.kinds() == ["charge"]
    rec = ledger.lookup("acct", "job")
    assert rec is not None
    assert rec.charge_id == theirs[0].record.charge_id
    assert rec.state == "pending"
    assert ledger.balance("acct") == 10 - 3
    assert _journal(store, start) == [
        ("refund", "job", mine.record.charge_id, 2, 10),
        ("charge", "job", theirs[0].record.charge_id, -3, 7),
    ]


# -- defect 5: a retried reuse counts (and journals) once -------------------------------


def test_a_retried_reuse_counts_once(lossy: Lossy) -> None:
    """uses goes 1 -> 2, on_reuse fires once, and with journal_reuses one
    reuse entry is written."""
    options = {"journal_reuses": True}
    store = lossy.store(**options)
    clock, events = FakeClock(), RecordingPlugin()
    ledger = _ledger(store, clock, events)
    ledger.grant("acct", 10)
    _warm_up(ledger, "acct")
    first = ledger.charge("acct", "job", cost=2)
    ledger.confirm("acct", "job", charge_id=first.record.charge_id)
    start = _last_seq(store)
    events.clear()

    lossy.arm(store, "acct")
    again = ledger.charge("acct", "job", cost=2)
    assert lossy.lost == 1
    assert again.outcome == "reused"
    assert again.record.uses == 2
    assert events.kinds() == ["reuse"]
    rec = ledger.lookup("acct", "job")
    assert rec is not None
    assert rec.uses == 2
    assert ledger.balance("acct") == 8
    assert _journal(store, start) == [("reuse", "job", first.record.charge_id, 0, 8)]


def test_a_retried_last_reuse_is_not_exhausted(lossy: Lossy) -> None:
    """With max_uses=2 the reuse that took uses to 2 is answered as that
    reuse, not as "exhausted" by its own count."""
    store = lossy.store()
    clock, events = FakeClock(), RecordingPlugin()
    ledger = _ledger(store, clock, events, max_uses=2)
    ledger.grant("acct", 10)
    _warm_up(ledger, "acct")
    first = ledger.charge("acct", "job")
    ledger.confirm("acct", "job", charge_id=first.record.charge_id)
    events.clear()

    lossy.arm(store, "acct")
    again = ledger.charge("acct", "job")
    assert lossy.lost == 1
    assert again.outcome == "reused"
    assert again.record.uses == 2
    assert events.kinds() == ["reuse"]
    with pytest.raises(JobExhausted):
        ledger.charge("acct", "job")


# -- the async twins --------------------------------------------------------------------


def test_async_retries_report_what_the_original_committed(lossy: Lossy) -> None:
    """The same through the async twins: a takeover, a reuse, a refund with a
    charge made meanwhile, and a prune, each with its answer lost once."""
    options = {"journal_reuses": True}
    store = lossy.store(**options)
    clock, events = FakeClock(), RecordingPlugin()
    ledger = _ledger(store, clock, events)
    other = _ledger(lossy.direct(), clock, RecordingPlugin())
    ledger.grant("acct", 20)
    _warm_up(ledger, "acct")

    async def scenario() -> None:
        warm = await ledger.acharge("acct", "warm-up-async", cost=0)  # this loop's client
        await ledger.arefund("acct", "warm-up-async", charge_id=warm.record.charge_id)
        old = await ledger.acharge("acct", "job", cost=2)
        clock.advance(61)
        events.clear()
        lossy.arm(store, "acct")
        new = await ledger.acharge("acct", "job", cost=2)
        assert events.kinds() == ["refund", "charge"]
        assert events.of("refund")[0].charge_id == old.record.charge_id
        await ledger.aconfirm("acct", "job", charge_id=new.record.charge_id)

        events.clear()
        lossy.arm(store, "acct")
        reused = await ledger.acharge("acct", "job")
        assert reused.outcome == "reused"
        assert reused.record.uses == 2
        assert events.kinds() == ["reuse"]

        events.clear()
        mine = await ledger.acharge("acct", "other-job", cost=4)
        lossy.arm(store, "acct", then=lambda: other.charge("acct", "other-job", cost=1))
        assert await ledger.arefund("acct", "other-job") is True
        assert events.kinds() == ["charge", "refund"]
        assert events.of("refund")[0].charge_id == mine.record.charge_id

        clock.advance(3600)
        events.clear()
        lossy.arm(store, "acct")
        settled = await ledger.aprune()
        assert sorted(r.job_id for r in settled) == ["job", "other-job"]
        assert sorted(events.kinds()) == ["expire", "refund"]

    asyncio.run(scenario())
    assert lossy.lost == 4
    # 20, the takeover refunds 2 and charges 2, "other-job" is charged 4 and
    # refunded, B charges it 1, the prune expires "job" and refunds B's charge.
    assert ledger.balance("acct") == 20 - 2
    rec = ledger.lookup("acct", "job")
    assert rec is None


# -- under load: answers lost all the time, hooks audited against the books -------------


@pytest.mark.slow
def test_lost_answers_under_load_keep_every_hook_exactly_once(lossy: Lossy) -> None:
    """Six threads charge, reuse, confirm, refund (with and without a charge
    id) and abandon charges over a few accounts and jobs with small balances,
    a seventh prunes, on a clock that makes leases and windows run out within
    the run, while a loser thread makes the proxies lose an answer every few
    milliseconds. Then everything is settled and audited:

    - every charge hook has exactly one settlement hook (refund or expire) for
      its charge id, and no settlement hook is for an unknown charge;
    - reuse hooks per charge = the charge's uses when it was settled, minus 1;
    - each account's balance = its grant - debits charged + debits refunded,
      all from the hooks;
    - the journal's entries equal the hooks, kind by kind and charge id by
      charge id (on the cluster: merged from the four accounts' slot streams).
    """
    # Each arm loses one answer on one node, every 40 ms. A call whose every
    # attempt meets a fresh arm fails with StoreUnavailable, which this test
    # reports as a failure: with 3 retries that happened once, in a CI run
    # on a machine loaded well past its cores, where a call's four attempts
    # spanned several arms. What is tested is that each lost answer is
    # counted once, not how many losses in a row a call survives: 8 retries.
    options: dict[str, Any] = {"retries": 8, "journal_reuses": True}
    store = lossy.store(**options)
    events = RecordingPlugin()
    t0, base = time.monotonic(), 1_700_000_000.0

    def fast_clock() -> float:  # 50 s a second: leases of 0.5 s, windows of 2 s
        return base + (time.monotonic() - t0) * 50

    ledger = Ledger(
        store, clock=fast_clock, plugins=[events], balances=True, lease=25, ttl=100, max_uses=3
    )
    accounts = [f"acct-{n}" for n in range(4)]
    for account in accounts:
        ledger.grant(account, 200)
        _warm_up(ledger, account)
    events.clear()
    start = _last_seq(store)
    stop = threading.Event()
    failures: list[BaseException] = []

    def worker(seed: int) -> None:
        rnd = random.Random(seed)
        try:
            while not stop.is_set():
                account, job = rnd.choice(accounts), f"job-{rnd.randrange(8)}"
                try:
                    c = ledger.charge(account, job, cost=rnd.randint(1, 3))
                except (JobInProgress, JobExhausted, InsufficientCredits):
                    continue
                if not c.charged:
                    continue
                roll = rnd.random()
                if roll < 0.6:
                    ledger.confirm(account, job, charge_id=c.record.charge_id)
                elif roll < 0.8:
                    ledger.refund(account, job, charge_id=c.record.charge_id)
                elif roll < 0.85:
                    ledger.refund(account, job)
                # else: abandoned, its lease runs out (a takeover or prune refunds it)
        except StoreUnavailable as exc:  # retries=8: every lost answer is retried
            failures.append(exc)
        except BaseException as exc:
            failures.append(exc)

    def pruner() -> None:
        try:
            while not stop.is_set():
                ledger.prune()
                time.sleep(0.03)
        except BaseException as exc:
            failures.append(exc)

    def loser() -> None:
        rnd = random.Random(99)
        while not stop.is_set():
            lossy.arm(store, rnd.choice(accounts))
            time.sleep(0.04)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    threads += [threading.Thread(target=pruner), threading.Thread(target=loser)]
    for t in threads:
        t.start()
    time.sleep(4.0)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    for proxy in lossy.proxies.values():
        proxy.lose_marker = None
    assert not failures, failures[:3]
    assert lossy.lost >= 20, "the proxies should have lost answers all along"

    # Settle everything that is left, then audit the hooks.
    later = Ledger(store, clock=lambda: fast_clock() + 10_000, plugins=[events], balances=True)
    later.prune()
    assert later.snapshot() == []
    charges = {r.charge_id: r for r in events.of("charge")}
    assert len(charges) == len(events.of("charge")), "a charge hook fired twice"
    settled: dict[str, Any] = {}
    for kind in ("refund", "expire"):
        for r in events.of(kind):
            assert r.charge_id in charges, f"{kind} of an unknown charge {r.charge_id}"
            assert r.charge_id not in settled, f"charge {r.charge_id} settled twice"
            settled[r.charge_id] = r
    assert set(settled) == set(charges), "a charge was never reported settled"
    reuses: dict[str, int] = {}
    for r in events.of("reuse"):
        reuses[r.charge_id] = reuses.get(r.charge_id, 0) + 1
    for cid, r in settled.items():
        assert r.uses - 1 == reuses.get(cid, 0), f"charge {cid}: uses {r.uses}"
    for account in accounts:
        debited = sum(r.debited for r in charges.values() if r.account == account)
        refunded = sum(r.debited for r in events.of("refund") if r.account == account)
        assert ledger.balance(account) == 200 - debited + refunded, account
    entries = store.read_journal(start, 1_000_000)
    journaled = sorted((e.kind, e.charge_id) for e in entries)
    hooked = sorted((e.kind, e.record.charge_id) for e in events.events)
    assert journaled == hooked
