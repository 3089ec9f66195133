"""What the journal costs on Redis Cluster, where readers merge the slots' streams.

Starts a throwaway 3-master cluster on loopback ports (``redis-server`` and
``redis-cli`` must be installed; ``tests/stores/_redis_cluster.py``) and
reports, as ratios measured in this run:

- **charge time, journal on / off** on the cluster: new jobs charged on accounts
  spread over every slot's master, in chunks that take turns (the slot
  streams are registered first, as a long-running process has them);
- **catch-up read, cluster / standalone**: entries per second read through
  ``Ledger.journal(limit=1000)`` from a backlog written to 12 accounts, on
  the cluster (each read merges) against the same backlog on a standalone
  server (``JOBCREDITS_TEST_REDIS_URL``, default ``redis://127.0.0.1:6379/15``);

and, as context, the milliseconds one read at the end of the journal takes
with nothing waiting, for 12 and for about 1,900 registered slot streams
(a merge pass reads every registered slot stream).

    python benchmarks/cluster_journal_bench.py           # full sizes
    python benchmarks/cluster_journal_bench.py --quick   # a smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
try:  # prefer the installed package ...
    import jobcredits_plugin  # noqa: F401
except ImportError:  # ... but let the script run from a checkout
    sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from tests.stores._redis_cluster import REDIS_CLI, REDIS_SERVER, redis_cluster  # noqa: E402

from jobcredits_plugin import Ledger  # noqa: E402
from jobcredits_plugin.stores import RedisStore  # noqa: E402
from jobcredits_plugin.testing import FakeClock  # noqa: E402

REDIS_URL = os.environ.get("JOBCREDITS_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _charges_per_second(url: str, journal: bool, n: int, chunks: int) -> tuple[float, float]:
    """Charges a second with the journal off and on, chunks taking turns."""
    stores = {
        flag: RedisStore.from_url(url, prefix=f"bench:{uuid.uuid4().hex[:8]}", journal=flag)
        for flag in (False, journal)
    }
    ledgers = {flag: Ledger(store, clock=FakeClock()) for flag, store in stores.items()}
    accounts = [f"acct-{i}" for i in range(500)]
    for ledger in ledgers.values():
        for account in accounts:  # connect every node, register every slot stream
            ledger.charge(account, "warm-up")
    spent = dict.fromkeys(ledgers, 0.0)
    per_chunk = n // chunks
    for chunk in range(chunks):
        order = (False, True) if chunk % 2 else (True, False)
        for flag in order:
            ledger = ledgers[flag]
            start = time.perf_counter()
            for i in range(per_chunk):
                ledger.charge(accounts[i % len(accounts)], f"c{chunk}-{i}")
            spent[flag] += time.perf_counter() - start
    for store in stores.values():
        store.close()
    return per_chunk * chunks / spent[False], per_chunk * chunks / spent[True]


def _read_rate(url: str, n: int) -> float:
    """Entries a second read from the start of a fresh journal of ``n`` entries."""
    store = RedisStore.from_url(url, prefix=f"bench:{uuid.uuid4().hex[:8]}")
    for i in range(n):
        store.grant(f"acct-{i % 12}", 1, float(i), "")
    ledger = Ledger(store)
    start = time.perf_counter()
    got, after = 0, 0
    while page := ledger.journal(after=after, limit=1000):
        got += len(page)
        after = page[-1].seq
    rate = got / (time.perf_counter() - start)
    store.close()
    assert got == n, (got, n)
    return rate


def _tail_ms(url: str, accounts: int, reads: int) -> tuple[int, float]:
    """Milliseconds of one read at the end of the journal, nothing waiting."""
    store = RedisStore.from_url(url, prefix=f"bench:{uuid.uuid4().hex[:8]}")
    ledger = Ledger(store, clock=FakeClock())
    for i in range(accounts):
        ledger.charge(f"acct-{i}", "job")
    entries = ledger.journal(limit=10_000)
    streams = len(store._slot_streams())
    start = time.perf_counter()
    for _ in range(reads):
        assert ledger.journal(after=entries[-1].seq) == []
    spent = (time.perf_counter() - start) / reads * 1000
    store.close()
    return streams, spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    quick = parser.parse_args().quick
    if REDIS_SERVER is None or REDIS_CLI is None:
        print("redis-server and redis-cli are needed to start a cluster: skipped")
        return
    charges, backlog, many = (400, 2_000, 300) if quick else (4_000, 20_000, 2_000)
    with tempfile.TemporaryDirectory() as tmp, redis_cluster(Path(tmp)) as url:
        off, on = _charges_per_second(url, True, charges, 8)
        print(
            f"charge time on the cluster, journal on / off:  {off / on:.2f}x  "
            f"({on:.0f} / {off:.0f} charges/s)"
        )
        cluster_rate = _read_rate(url, backlog)
        try:
            standalone_rate = _read_rate(REDIS_URL, backlog)
        except Exception as exc:
            print(f"catch-up read: no standalone server at {REDIS_URL} ({exc})")
            standalone_rate = None
        if standalone_rate:
            print(
                f"catch-up read, cluster / standalone:     {cluster_rate / standalone_rate:.2f}  "
                f"({cluster_rate:.0f} / {standalone_rate:.0f} entries/s)"
            )
        for accounts in (12, many):
            streams, ms = _tail_ms(url, accounts, 10)
            print(f"read at the end, nothing waiting, {streams:>5} slot streams: {ms:.1f} ms")


if __name__ == "__main__":
    main()
