"""The Redis store against the peers a user would pick instead, on one server.

Every side makes its calls on the same Redis server in the same run, and its
time per call is divided by that of a bare ``SET key 1 NX PX 3600000`` (the
cheapest write that claims a key) timed beside it:

- **ours, new job**: ``ledger.charge`` then ``ledger.confirm`` of a fresh job
  (two script calls), the store and the ledger with their default settings
  (the journal on, balances off);
- **ours, follow-up**: ``ledger.charge`` of a job already confirmed (a reuse:
  one script call);
- **Powertools, new call**: a function decorated with AWS Lambda Powertools'
  ``idempotent_function`` on its Redis persistence layer
  (``CachePersistenceLayer`` over a ``redis.Redis`` client), called with a
  fresh argument: ``SET NX EX`` of the in-progress record, then ``SET`` of the
  result (two commands);
- **Powertools, replay**: the same function called again with an argument
  already done: the ``SET NX`` that fails, a ``GET`` to see why, a ``GET`` to
  read the stored result (three commands);
- **limits, fixed window**: ``FixedWindowRateLimiter.hit`` on ``limits``'
  ``RedisStorage`` (one script call: ``INCR`` and ``EXPIRE``), the strategy
  Flask-Limiter and slowapi use by default: the one-round-trip floor of a
  library that keeps state on Redis;
- **limits, moving window**: ``MovingWindowRateLimiter.hit`` (one script
  call), for context;
- **the floors**, our calls without any Python of ours: an empty script given
  a charge's keys and arguments (one script call that does nothing), the
  claim script on a confirmed job (a follow-up's server work and redis-py's
  call), and the claim then the confirm script on new jobs, each called
  straight from redis-py with keys and arguments built beforehand. Against the
  same peers they give the ratio no Python of ours could go below.

The headline figures are ours / theirs: a new job / a Powertools new call, a
follow-up / a Powertools replay, a follow-up / a fixed-window ``hit``; each on
one connection and with 8 clients at once (threads, each side's client its
own connection). Within a repeat the sides take turns in chunks of calls, the
order turning round by round; a side's time in a repeat is the median of its
chunks, and each ratio is the median over repeats of per-repeat ratios.

Round trips per call are the **server's own count**: the growth of
``total_reads_processed`` in ``INFO stats`` over a run of calls on one
connection (the server reads once per request when the client waits for each
reply, as all of these do); ``total_commands_processed``, which also counts
the commands a script runs, is reported per call beside it. Beside each timed
comparison comes the same ratio in CPU time (this process's and the server's
``used_cpu_user + used_cpu_sys``, per chunk): the cost of a call whatever else
the machine runs, which the wall clock of a loaded machine blurs.

A private ``redis-server`` is started on a free loopback port when the binary
is installed (so no other client's commands land in the counters), otherwise
``JOBCREDITS_TEST_REDIS_URL`` is used under fresh key prefixes.

    python benchmarks/redis_peers.py           # full sizes
    python benchmarks/redis_peers.py --quick   # a smoke run
"""

from __future__ import annotations

import statistics
import sys
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

try:  # prefer the installed package ...
    import jobcredits_plugin  # noqa: F401
except ImportError:  # ... but let the script run from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import redis
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function

try:
    from aws_lambda_powertools.utilities.idempotency.persistence.cache import (
        CachePersistenceLayer,
    )
except ImportError:  # Powertools before the cache module: the Redis class itself
    from aws_lambda_powertools.utilities.idempotency.persistence.redis import (
        RedisCachePersistenceLayer as CachePersistenceLayer,
    )
from limits import RateLimitItemPerHour
from limits.storage import RedisStorage
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

from jobcredits_plugin import Ledger
from jobcredits_plugin.stores import RedisStore

# The private server and key cleanup of benchmarks/redis_bench.py and the
# shared helpers, imported from the directory of this file (it may have been
# loaded by path).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import at_once, main
from redis_bench import _cleanup, _server

THREADS = 8
ACCOUNT = "acct-bench"
#: Issue 15's goals: ours / theirs, time per call.
TARGETS = {
    "new_job_vs_powertools_new": ("<=", 1.0),
    "follow_up_vs_powertools_replay": ("<=", 0.6),
    "follow_up_vs_limits_hit": ("<=", 1.3),
}

#: A prepared batch of ``n`` calls: run it to make them (untimed set-up done).
Batch = Callable[[], None]


class Client:
    """One client of one side: its own connection, and its own keys."""

    def batch(self, n: int) -> Batch:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class SetNX(Client):
    def __init__(self, url: str, prefix: str) -> None:
        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.client.ping()
        self.prefix = prefix

    def batch(self, n: int) -> Batch:
        keys = [f"{self.prefix}set:{uuid.uuid4().hex}" for _ in range(n)]
        set_ = self.client.set

        def run() -> None:
            for key in keys:
                set_(key, "1", nx=True, px=3_600_000)

        return run

    def close(self) -> None:
        self.client.close()


class Ours(Client):
    """A ledger on a RedisStore, both with their defaults."""

    def __init__(self, url: str, prefix: str, *, follow_up: bool, journal: bool = True) -> None:
        self.store = RedisStore.from_url(url, prefix=prefix, journal=journal)
        self.ledger = Ledger(self.store)
        self.follow_up = follow_up
        self.job = uuid.uuid4().hex
        charge = self.ledger.charge(ACCOUNT, self.job)  # connects, loads the scripts
        self.ledger.confirm(ACCOUNT, self.job, charge_id=charge.record.charge_id)

    def batch(self, n: int) -> Batch:
        charge, confirm = self.ledger.charge, self.ledger.confirm
        if self.follow_up:
            job = self.job

            def follow_ups() -> None:
                for _ in range(n):
                    charge(ACCOUNT, job)

            return follow_ups
        jobs = [uuid.uuid4().hex for _ in range(n)]

        def new_jobs() -> None:
            for job in jobs:
                confirm(ACCOUNT, job, charge_id=charge(ACCOUNT, job).record.charge_id)

        return new_jobs

    def close(self) -> None:
        self.ledger.close()


class Floor(Client):
    """Our calls with none of our Python: the store's scripts called straight
    from redis-py with keys and arguments built before the clock starts
    (private store API, as ``redis_bench.py`` builds them). ``kind``:
    ``"empty"``, a script that does nothing, given a charge's keys and
    arguments (what one script call costs before any work); ``"follow_up"``,
    the claim script on a confirmed job (a reuse: the server's work of a
    follow-up); ``"new_job"``, the claim script then the confirm script on
    new jobs (the server's work of a new job)."""

    def __init__(self, url: str, prefix: str, *, kind: str) -> None:
        self.store = RedisStore.from_url(url, prefix=prefix)
        self.ledger = Ledger(self.store)
        self.kind = kind
        self.job = uuid.uuid4().hex
        charge = self.ledger.charge(ACCOUNT, self.job)  # connects, loads the scripts
        self.ledger.confirm(ACCOUNT, self.job, charge_id=charge.record.charge_id)
        self.empty = self.store._client.register_script("return {'charged', {}, '0'}")

    def batch(self, n: int) -> Batch:
        store, ledger = self.store, self.ledger
        claim, confirm = store._scripts["claim"], store._scripts["confirm"]
        jobs = [self.job] * n if self.kind == "follow_up" else [uuid.uuid4().hex for _ in range(n)]
        requests = [ledger._claim_request(ACCOUNT, j, "default", 1, None, None) for j in jobs]
        calls = [store._claim_call(req) for req in requests]
        if self.kind == "empty":
            empty = self.empty

            def empties() -> None:
                for keys, args in calls:
                    empty(keys=keys, args=args)

            return empties
        if self.kind == "follow_up":

            def reuses() -> None:
                for keys, args in calls:
                    claim(keys=keys, args=args)

            return reuses
        confirms = []
        for req in requests:
            key = (req.account, req.scope, req.job_id)
            keys = [store.job_key(key), store.due_key(req.account)]
            confirms.append((keys, store._confirm_args(key, req.charge_id)))

        def new_jobs() -> None:
            for (keys, args), (ckeys, cargs) in zip(calls, confirms, strict=True):
                claim(keys=keys, args=args)
                confirm(keys=ckeys, args=cargs)

        return new_jobs

    def close(self) -> None:
        self.ledger.close()


class Powertools(Client):
    """``idempotent_function`` on Powertools' Redis persistence layer, set up
    as its documentation shows (a ``redis.Redis`` with ``decode_responses``)."""

    def __init__(self, url: str, prefix: str, *, replay: bool) -> None:
        self.client = redis.Redis.from_url(url, decode_responses=True)
        with warnings.catch_warnings():
            # Powertools 3 marks the Redis class behind this name deprecated
            # in favour of the name itself.
            warnings.simplefilter("ignore", DeprecationWarning)
            layer = CachePersistenceLayer(client=self.client)
        config = IdempotencyConfig(expires_after_seconds=3600)
        # As in a Lambda function: the context gives the in-progress record
        # its expiry (without one, Powertools warns on every new call).
        config.register_lambda_context(_LambdaContext())

        @idempotent_function(
            data_keyword_argument="job",
            persistence_store=layer,
            config=config,
            key_prefix=f"{prefix}powertools",
        )
        def work(job: str) -> dict[str, Any]:
            return {"job": job, "ok": True}

        self.work = work
        self.replay = replay
        self.job = uuid.uuid4().hex
        work(job=self.job)

    def batch(self, n: int) -> Batch:
        work = self.work
        jobs = [self.job] * n if self.replay else [uuid.uuid4().hex for _ in range(n)]

        def run() -> None:
            for job in jobs:
                work(job=job)

        return run

    def close(self) -> None:
        self.client.close()


class _LambdaContext:
    """What Powertools reads of a Lambda context: the time left."""

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


class Limits(Client):
    """``limits``' ``hit`` on its ``RedisStorage``: one client (one key) hitting
    a limit it never reaches."""

    def __init__(self, url: str, prefix: str, *, moving: bool) -> None:
        self.storage = RedisStorage(url, key_prefix=f"{prefix}limits")
        strategy = MovingWindowRateLimiter if moving else FixedWindowRateLimiter
        self.limiter = strategy(self.storage)
        # A window of an hour: a fixed window's key never expires mid-run.
        self.item = RateLimitItemPerHour(10**9)
        self.key = uuid.uuid4().hex
        assert self.limiter.hit(self.item, self.key)

    def batch(self, n: int) -> Batch:
        hit, item, key = self.limiter.hit, self.item, self.key

        def run() -> None:
            for _ in range(n):
                hit(item, key)

        return run

    def close(self) -> None:
        self.storage.storage.close()


@dataclass(frozen=True)
class Side:
    key: str
    label: str
    make: Callable[[str, str], Client]
    #: timed with 8 clients too (the moving window is context only)
    concurrent: bool = True


SIDES = (
    Side("set_nx", "SET NX PX", SetNX),
    Side("ours_new_job", "ours: new job (charge + confirm)", partial(Ours, follow_up=False)),
    Side("ours_follow_up", "ours: follow-up (charge, a reuse)", partial(Ours, follow_up=True)),
    Side(
        "ours_new_job_no_journal",
        "ours, journal off: new job",
        partial(Ours, follow_up=False, journal=False),
        concurrent=False,
    ),
    Side(
        "ours_follow_up_no_journal",
        "ours, journal off: follow-up",
        partial(Ours, follow_up=True, journal=False),
        concurrent=False,
    ),
    Side("floor_empty", "floor: an empty script call", partial(Floor, kind="empty")),
    Side(
        "floor_new_job",
        "floor: new job's two scripts, no Python of ours",
        partial(Floor, kind="new_job"),
    ),
    Side(
        "floor_follow_up",
        "floor: follow-up's script, no Python of ours",
        partial(Floor, kind="follow_up"),
    ),
    Side("powertools_new", "Powertools: new call", partial(Powertools, replay=False)),
    Side("powertools_replay", "Powertools: replay", partial(Powertools, replay=True)),
    Side("limits_fixed_hit", "limits: fixed-window hit", partial(Limits, moving=False)),
    Side(
        "limits_moving_hit",
        "limits: moving-window hit",
        partial(Limits, moving=True),
        concurrent=False,
    ),
)


def _server_cpu(admin: Any) -> float:
    info = admin.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def measure(
    url: str, prefix: str, clients: int, chunk: int, rounds: int, repeats: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per call of each side, with ``clients`` clients at once, one figure
    per repeat: wall seconds, and CPU seconds of this process and the server
    together (what the call costs whatever else runs on the machine)."""
    sides = [s for s in SIDES if clients == 1 or s.concurrent]
    pools = {s.key: [s.make(url, f"{prefix}{s.key}:{c}:") for c in range(clients)] for s in sides}
    admin = redis.Redis.from_url(url)
    try:
        for side in sides:  # warm-up
            at_once([c.batch(20) for c in pools[side.key]])
        wall: dict[str, list[float]] = {s.key: [] for s in sides}
        cpu: dict[str, list[float]] = {s.key: [] for s in sides}
        calls = chunk * clients
        for _ in range(repeats):
            samples: dict[str, list[float]] = {s.key: [] for s in sides}
            cpu_samples: dict[str, list[float]] = {s.key: [] for s in sides}
            for n in range(rounds):
                shift = n % len(sides)
                for side in sides[shift:] + sides[:shift]:
                    batches = [c.batch(chunk) for c in pools[side.key]]
                    server0, client0 = _server_cpu(admin), time.process_time()
                    samples[side.key].append(at_once(batches) / calls)
                    client1, server1 = time.process_time(), _server_cpu(admin)
                    cpu_samples[side.key].append((client1 - client0 + server1 - server0) / calls)
            for key, values in samples.items():
                wall[key].append(statistics.median(values))
                cpu[key].append(statistics.median(cpu_samples[key]))
        return wall, cpu
    finally:
        admin.close()
        for pool in pools.values():
            for client in pool:
                client.close()


def count(url: str, prefix: str, calls: int) -> dict[str, dict[str, float]]:
    """Per call of each side, on one connection: round trips, and the
    commands the server ran (those inside scripts included)."""
    admin = redis.Redis.from_url(url)
    out: dict[str, dict[str, float]] = {}
    try:
        for side in SIDES:
            client = side.make(url, f"{prefix}{side.key}:count:")
            try:
                client.batch(10)()  # warm: the connection is made, the scripts loaded
                run = client.batch(calls)
                before = admin.info("stats")
                run()
                after = admin.info("stats")
            finally:
                client.close()
            # Each INFO is one request; the second one's read and command are
            # in the deltas.
            reads = after["total_reads_processed"] - before["total_reads_processed"]
            commands = after["total_commands_processed"] - before["total_commands_processed"]
            out[side.key] = {
                "round_trips": (reads - 1) / calls,
                "commands": (commands - 1) / calls,
            }
    finally:
        admin.close()
    return out


def run(quick: bool = False, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """The figures as rows (``key``, ``name``, ``figure``, ``unit``, and for the
    targeted ones ``op`` and ``target``), for benchmarks/run.py."""
    chunk, rounds, repeats, calls = (50, 2, 2, 100) if quick else (200, 4, 5, 2000)
    rows: list[dict[str, Any]] = []
    with _server() as url:
        prefix = f"jcpeers:{uuid.uuid4().hex[:8]}:"
        try:
            log(f"(e) redis peers: counting round trips over {calls:,} calls per side")
            counts = count(url, prefix, calls)
            timings: dict[int, dict[str, list[float]]] = {}
            cpu_times: dict[int, dict[str, list[float]]] = {}
            for clients in (1, THREADS):
                log(
                    f"(e) redis peers, {clients} client(s): {repeats} x {rounds} rounds of "
                    f"{chunk} calls per client and side, sides taking turns"
                )
                timings[clients], cpu_times[clients] = measure(
                    url, prefix, clients, chunk, rounds, repeats
                )
        finally:
            admin = redis.Redis.from_url(url)
            try:
                _cleanup(admin, prefix)
            finally:
                admin.close()
    labels = {s.key: s.label for s in SIDES}
    for clients, per in timings.items():
        rows += _time_rows(clients, per, cpu_times[clients], labels)
    for side, c in counts.items():
        rows.append(
            {
                "key": f"redis_{side}_round_trips",
                "name": f"redis: {labels[side]}: round trips per call (server's count)",
                "figure": c["round_trips"],
                "unit": "round trips",
                "details": {"calls": calls},
            }
        )
        rows.append(
            {
                "key": f"redis_{side}_commands",
                "name": f"redis: {labels[side]}: commands the server ran per call",
                "figure": c["commands"],
                "unit": "commands",
                "details": {"calls": calls, "includes": "the commands scripts run"},
            }
        )
    return rows


#: The headline comparisons: (key, our side, their side, what).
COMPARISONS = (
    ("new_job_vs_powertools_new", "ours_new_job", "powertools_new",
     "new job (charge + confirm) / Powertools new call"),
    ("follow_up_vs_powertools_replay", "ours_follow_up", "powertools_replay",
     "follow-up / Powertools replay"),
    ("follow_up_vs_limits_hit", "ours_follow_up", "limits_fixed_hit",
     "follow-up / limits fixed-window hit (the floor)"),
)  # fmt: skip


#: The floors under the headline comparisons (context, no target): the same
#: peer against our calls without our Python (see :class:`Floor`).
FLOORS = (
    ("new_job_floor_vs_powertools_new", "floor_new_job", "powertools_new",
     "floor: new job's two scripts, no Python of ours / Powertools new call"),
    ("follow_up_floor_vs_powertools_replay", "floor_follow_up", "powertools_replay",
     "floor: follow-up's script, no Python of ours / Powertools replay"),
    ("follow_up_floor_vs_limits_hit", "floor_follow_up", "limits_fixed_hit",
     "floor: follow-up's script, no Python of ours / limits fixed-window hit"),
    ("empty_script_vs_limits_hit", "floor_empty", "limits_fixed_hit",
     "floor: an empty script call / limits fixed-window hit"),
)  # fmt: skip


def _time_rows(
    clients: int, wall: dict[str, list[float]], cpu: dict[str, list[float]], labels: dict[str, str]
) -> list[dict[str, Any]]:
    """The rows of one client count: the comparisons held to targets (wall
    time), the same in CPU time (client and server: the cost a loaded machine
    does not blur), and each side against ``SET NX PX``."""
    where = "one connection" if clients == 1 else f"{clients} clients"
    slug = "1" if clients == 1 else str(clients)

    def ratio(per: dict[str, list[float]], a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(per[a], per[b], strict=True))

    rows: list[dict[str, Any]] = []
    for key, ours, theirs, name in COMPARISONS:
        op, target = TARGETS[key]
        rows.append(
            {
                "key": f"redis_{key}_{slug}",
                "name": f"redis: {name}, time per call, {where}",
                "figure": ratio(wall, ours, theirs),
                "unit": "x",
                "op": op,
                "target": target,
                "details": {"clients": clients, "cpu_ratio": ratio(cpu, ours, theirs)},
            }
        )
    for key, ours, theirs, name in FLOORS:
        rows.append(
            {
                "key": f"redis_{key}_{slug}",
                "name": f"redis: {name}, time per call, {where}",
                "figure": ratio(wall, ours, theirs),
                "unit": "x",
                "details": {"clients": clients, "cpu_ratio": ratio(cpu, ours, theirs)},
            }
        )
    for key, ours, theirs, name in COMPARISONS:
        rows.append(
            {
                "key": f"redis_{key}_{slug}_cpu",
                "name": f"redis: {name}, CPU per call (client + server), {where}",
                "figure": ratio(cpu, ours, theirs),
                "unit": "x",
                "details": {"clients": clients},
            }
        )
    for side in wall:
        if side == "set_nx":
            continue
        rows.append(
            {
                "key": f"redis_{side}_vs_set_nx_{slug}",
                "name": f"redis: {labels[side]} / SET NX PX, time per call, {where}",
                "figure": ratio(wall, side, "set_nx"),
                "unit": "x",
                "details": {
                    "clients": clients,
                    "cpu_ratio": ratio(cpu, side, "set_nx"),
                    "s_per_call": wall[side],
                    "set_nx_s_per_call": wall["set_nx"],
                    "cpu_s_per_call": cpu[side],
                    "set_nx_cpu_s_per_call": cpu["set_nx"],
                },
            }
        )
    return rows


if __name__ == "__main__":
    sys.exit(main(run, __doc__))
