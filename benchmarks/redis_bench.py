"""What RedisStore costs per charge, against the cheapest Redis write there is.

Three figures, all measured in this run on the same server:

- round trips per charge: the server's ``INFO commandstats`` count of
  ``evalsha``/``eval`` calls over many ``Ledger.charge`` calls of new jobs,
  divided by the number of charges (the design says exactly 1);
- throughput of ``Ledger.charge`` (a new job each call, balances on) against a
  bare ``SET key val NX PX 3600000`` loop, one connection: the ratio of
  charges per second to SETs per second (target >= 0.8);
- the same with 8 concurrent clients (threads, each with its own connection);
- as context, three floors under a charge against the same ``SET``: an empty
  script called with a charge's keys and arguments (the round trip of one
  script call), the store's claim script called with arguments built
  beforehand (the server's work of a charge, without the ledger's and the
  store's Python), and the store's ``claim`` given the request the ledger
  would draw (what a charge must do around its script: the checked request,
  the keys and arguments, the reply read into a record; no ledger layer);
- ``server_clock=True`` (the scripts read ``TIME``) against the default (the
  ledger's clock), one connection: the ratio of charges per second.

A private ``redis-server`` is started on a free loopback port when the binary
is installed (so that nobody else's commands land in the counters), otherwise
``JOBCREDITS_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/15``) is used
under a fresh key prefix.

    python benchmarks/redis_bench.py           # full sizes
    python benchmarks/redis_bench.py --quick   # a smoke run
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:  # prefer the installed package ...
    import jobcredits_plugin  # noqa: F401
except ImportError:  # ... but let the script run from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import redis

from jobcredits_plugin import Ledger
from jobcredits_plugin.stores import RedisStore

# The shared helpers, from the directory of this file (it may have been
# loaded by path).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import at_once

THREADS = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _server() -> Iterator[str]:
    """A private server's URL (stopped afterwards), or the configured one."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield os.environ.get("JOBCREDITS_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
        return
    port = _free_port()
    with tempfile.TemporaryDirectory() as directory:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", directory,
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 10
            while True:
                client = redis.Redis(port=port, socket_timeout=1)
                try:
                    client.ping()
                    break
                except redis.exceptions.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
                finally:
                    client.close()
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def _script_calls(admin: Any) -> int:
    stats = admin.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))


def _cleanup(admin: Any, prefix: str) -> None:
    keys = list(admin.scan_iter(match=f"{prefix}*", count=1000))
    for start in range(0, len(keys), 1000):
        admin.delete(*keys[start : start + 1000])


def _charge_worker(url: str, prefix: str, n: int, server_clock: bool = False) -> Callable[[], None]:
    # The journal (an XADD in the same script, section g) is off: this is the
    # ledger's cost over the one write a charge must do, as issue 4 defined it.
    store = RedisStore.from_url(url, prefix=prefix, journal=False, server_clock=server_clock)
    ledger = Ledger(store, balances=True)
    ledger.grant("bench", 10**12)
    ledger.charge("bench", "warm-" + uuid.uuid4().hex)  # connect, load the script
    jobs = [uuid.uuid4().hex for _ in range(n)]

    def work() -> None:
        charge = ledger.charge
        for job in jobs:
            charge("bench", job)
        store.close()

    return work


def _empty_script_worker(url: str, prefix: str, n: int) -> Callable[[], None]:
    """A script that does nothing, called with the very keys and arguments of a
    charge: what one EVALSHA round trip costs before the script does any work,
    the ceiling of any design that makes each charge one script call."""
    store = RedisStore.from_url(url, prefix=prefix)
    ledger = Ledger(store, balances=True)
    client = store._client
    empty = client.register_script("return {'charged', {}, '0'}")
    requests = [
        ledger._claim_request("bench", uuid.uuid4().hex, "default", 1, None, None) for _ in range(n)
    ]
    calls = [store._claim_call(req) for req in requests]
    empty(keys=calls[0][0], args=calls[0][1])  # load it

    def work() -> None:
        for keys, args in calls:
            empty(keys=keys, args=args)
        store.close()

    return work


def _claim_script_worker(url: str, prefix: str, n: int) -> Callable[[], None]:
    """The store's own claim script, called straight from redis-py with the
    keys and arguments of ``n`` new-job charges built beforehand: the
    server's work of a charge and redis-py's call, without the ledger's or
    the store's Python (the request, the keys, the record read back)."""
    store = RedisStore.from_url(url, prefix=prefix, journal=False)
    ledger = Ledger(store, balances=True)
    ledger.grant("bench", 10**12)
    ledger.charge("bench", "warm-" + uuid.uuid4().hex)  # connect, load the script
    script = store._scripts["claim"]
    calls = [
        store._claim_call(
            ledger._claim_request("bench", uuid.uuid4().hex, "default", 1, None, None)
        )
        for _ in range(n)
    ]

    def work() -> None:
        for keys, args in calls:
            script(keys=keys, args=args)
        store.close()

    return work


def _store_claim_worker(url: str, prefix: str, n: int) -> Callable[[], None]:
    """What a charge must do around its script, without the ledger around
    it: the request checked and drawn as the ledger draws it (account, job
    id, charge id, clock), the script's keys and arguments built, the script
    called, its reply read into the result and record (``store.claim``).
    Against the claim script alone, what the store's own Python costs; against
    the charge, what the ledger's layer adds (the store-call wrapper, hooks,
    the ``Charge``)."""
    store = RedisStore.from_url(url, prefix=prefix, journal=False)
    ledger = Ledger(store, balances=True)
    ledger.grant("bench", 10**12)
    ledger.charge("bench", "warm-" + uuid.uuid4().hex)  # connect, load the script
    jobs = [uuid.uuid4().hex for _ in range(n)]

    def work() -> None:
        request, claim = ledger._claim_request, store.claim
        for job in jobs:
            claim(request("bench", job, "default", 1, None, None))
        store.close()

    return work


def _set_worker(url: str, prefix: str, n: int) -> Callable[[], None]:
    client = redis.Redis.from_url(url, socket_timeout=2, decode_responses=True)
    client.ping()
    keys = [f"{prefix}set:{uuid.uuid4().hex}" for _ in range(n)]

    def work() -> None:
        set_ = client.set
        for key in keys:
            set_(key, "1", nx=True, px=3_600_000)
        client.close()

    return work


def _rate(make: Callable[[str, str, int], Callable[[], None]], url: str, n: int, k: int) -> float:
    """Operations per second of ``k`` clients doing ``n`` operations each at once."""
    prefix = f"jcbench:{uuid.uuid4().hex[:8]}:"
    elapsed = at_once([make(url, prefix, n) for _ in range(k)])
    admin = redis.Redis.from_url(url)
    try:
        _cleanup(admin, prefix)
    finally:
        admin.close()
    return n * k / elapsed


def run(quick: bool = False) -> list[dict[str, Any]]:
    """The figures as rows of ``name``, ``figure``, ``unit`` (and ``op``/``target``)."""
    n = 300 if quick else 5000
    repeats = 1 if quick else 5
    rows: list[dict[str, Any]] = []
    with _server() as url:
        admin = redis.Redis.from_url(url, decode_responses=True)
        prefix = f"jcbench:{uuid.uuid4().hex[:8]}"
        store = RedisStore.from_url(url, prefix=prefix)
        try:
            ledger = Ledger(store, balances=True)
            ledger.grant("bench", 10**9)
            ledger.charge("bench", "warm-up")
            count = 200 if quick else 2000
            before = _script_calls(admin)
            for _ in range(count):
                ledger.charge("bench", uuid.uuid4().hex)
            per_charge = (_script_calls(admin) - before) / count
        finally:
            store.close()
            _cleanup(admin, prefix)
            admin.close()
        rows.append(
            {
                "name": "redis: script calls (round trips) per charge",
                "figure": per_charge,
                "unit": "calls",
                "op": "<=",
                "target": 1.0,
            }
        )
        for k in (1, THREADS):
            ratios, charges, sets, empties, scripts, claims = [], [], [], [], [], []
            each = n // k if k > 1 else n  # calls per client
            for _ in range(repeats):
                # Sides take turns, so drift in the machine's speed hits both.
                s = _rate(_set_worker, url, each, k)
                c = _rate(_charge_worker, url, each, k)
                e = _rate(_empty_script_worker, url, each, k)
                w = _rate(_claim_script_worker, url, each, k)
                m = _rate(_store_claim_worker, url, each, k)
                sets.append(s)
                charges.append(c)
                ratios.append(c / s)
                empties.append(e / s)
                scripts.append(w / s)
                claims.append(m / s)
            label = "one connection" if k == 1 else f"{k} concurrent clients"
            rows.append(
                {
                    "name": f"redis: charges/s, {label}",
                    "figure": statistics.median(charges),
                    "unit": "/s",
                }
            )
            rows.append(
                {
                    "name": f"redis: SET NX PX/s, {label}",
                    "figure": statistics.median(sets),
                    "unit": "/s",
                }
            )
            rows.append(
                {
                    "name": f"redis: empty script (charge's keys+args) vs SET NX, {label}",
                    "figure": statistics.median(empties),
                    "unit": "x",
                }
            )
            rows.append(
                {
                    "name": f"redis: claim script alone (no ledger Python) vs SET NX, {label}",
                    "figure": statistics.median(scripts),
                    "unit": "x",
                }
            )
            rows.append(
                {
                    "name": f"redis: store claim + its request (no ledger) vs SET NX, {label}",
                    "figure": statistics.median(claims),
                    "unit": "x",
                }
            )
            rows.append(
                {
                    "name": f"redis: charge throughput vs SET NX, {label}",
                    "figure": statistics.median(ratios),
                    "unit": "x",
                    "op": ">=",
                    "target": 0.8,
                }
            )
        server_clock = functools.partial(_charge_worker, server_clock=True)
        clock_ratios = []
        for _ in range(repeats):
            off = _rate(_charge_worker, url, n, 1)
            on = _rate(server_clock, url, n, 1)
            clock_ratios.append(on / off)
        rows.append(
            {
                "name": "redis: charges/s with server_clock vs the ledger's clock",
                "figure": statistics.median(clock_ratios),
                "unit": "x",
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run with small sizes")
    args = parser.parse_args(argv)
    rows = run(quick=args.quick)
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        target = f"{r['op']} {r['target']}" if "target" in r else ""
        print(f"{r['name']:<{width}}  {r['figure']:>12.3f} {r['unit']:<6} {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
