"""Run one request path many times, for a profiler or an instruction counter.

Not a benchmark (it prints no figure): a fixed amount of work per scenario,
so that ``valgrind --tool=callgrind`` counts instructions per call
repeatably on a loaded machine (run it at two sizes and take the difference
over the extra calls: start-up cancels out), and cProfile or pyinstrument
show where the time goes. The scenarios are the paths issue 15 asks about:

    fastapi-bare, fastapi-dep-new, fastapi-dep-follow, fastapi-dec-new,
    fastapi-dec-follow, slowapi                     (ASGI, memory stores)
    fastapi-free (an uncharged endpoint of the charged app), fastapi-installed
    (the bare app with JobCredits installed), fastapi-plain-dep (a bare
    app's endpoint with a do-nothing dependency taking the request)
    flask-bare, flask-new, flask-follow, flask-limiter        (WSGI, memory)
    memory-new, memory-follow          (Ledger on a MemoryStore, no web)
    memory-anew, memory-afollow        (the same through acharge/aconfirm)
    redis-set, redis-empty, redis-charge, redis-new, redis-follow,
    powertools-new, powertools-replay, limits-hit      (Redis: a server needed)
    postgres-charge, postgres-new, postgres-follow    (PostgreSQL: a server needed)

Examples (docs/performance.md and /work/plan/perf-notes.md use these):

    python benchmarks/profile_paths.py fastapi-dep-new 2000
    python benchmarks/profile_paths.py fastapi-dep-new 2000 --profile cprofile
    python benchmarks/profile_paths.py flask-new 2000 --profile pyinstrument
    valgrind --tool=callgrind --toggle-collect=functools_reduce \\
        --callgrind-out-file=/tmp/cg.out python benchmarks/profile_paths.py redis-charge 1000

With ``--toggle-collect=functools_reduce`` callgrind counts only the calls
(they run inside C's ``functools.reduce``), not the start-up or the set-up:
divide by the number of calls. A run still counts a constant of its own (the
web scenarios' event loop, the WSGI driver's ``gc.collect()``): compare
scenarios run with the same number of calls (an extension's overhead is its
scenario minus the bare one), or take the difference of two sizes.

Redis scenarios use ``JOBCREDITS_BENCH_REDIS_URL`` (default
``redis://127.0.0.1:6379/5``) under a fresh prefix, and delete their keys;
PostgreSQL scenarios use ``JOBCREDITS_BENCH_POSTGRES_URL`` (else
``JOBCREDITS_TEST_POSTGRES_URL``, as benchmarks/postgres_bench.py) under a
fresh schema, and drop it.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import gc
import os
import pstats
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:  # prefer the installed package ...
    import jobcredits_plugin  # noqa: F401
except ImportError:  # ... but let the script run from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: A scenario: given the number of calls, it makes everything ready (untimed)
#: and returns the function that makes the calls.
Prepared = Callable[[], None]


def _asgi(path_of: Callable[[], tuple[Any, str]], new: bool) -> Callable[[int], Prepared]:
    def prepare(n: int) -> Prepared:
        import fastapi_bench

        app, path = path_of()
        follow = str(uuid.uuid4())
        asyncio.run(fastapi_bench.timed(app, fastapi_bench.scopes(path, [follow])))
        jobs = [str(uuid.uuid4()) for _ in range(n)] if new else [follow] * n
        batch = fastapi_bench.scopes(path, jobs)

        def go() -> None:
            asyncio.run(fastapi_bench.timed(app, batch))

        return go

    return prepare


def _fastapi(kind: str) -> Callable[[], tuple[Any, str]]:
    def build() -> tuple[Any, str]:
        import fastapi_bench

        from jobcredits_plugin.testing import make_ledger

        bare, ours = fastapi_bench.build_apps(make_ledger())
        return (bare, "/run") if kind == "bare" else (ours, f"/{kind}")

    return build


def _plain_dependency() -> tuple[Any, str]:
    """FastAPI's own cost of any dependency taking the request: an endpoint
    with ``Depends`` on ``async def dep(request: Request): return None`` (the
    floor under ``charge_credit``'s, see docs/performance.md)."""
    from typing import Annotated

    from fastapi import Depends, FastAPI, Request

    async def dep(request: Request) -> None:
        return None

    async def with_dep(value: None) -> dict[str, bool]:
        return {"ok": True}

    # This module's annotations are strings (``from __future__ import
    # annotations``) that FastAPI would look up among its globals: give the
    # two functions theirs as objects.
    dep.__annotations__ = {"request": Request, "return": None}
    with_dep.__annotations__ = {"value": Annotated[None, Depends(dep)], "return": dict[str, bool]}
    app = FastAPI()
    app.add_api_route("/dep", with_dep, methods=["POST"])
    return app, "/dep"


def _installed() -> tuple[Any, str]:
    """The bare app's endpoint, uncharged, in an app with ``JobCredits``
    installed: what the middleware alone costs a request (its watch, its
    context and the response start it passes through)."""
    import fastapi_bench

    from jobcredits_plugin.fastapi import JobCredits
    from jobcredits_plugin.testing import make_ledger

    bare, _ours = fastapi_bench.build_apps(make_ledger())
    JobCredits(make_ledger(), account=lambda request: "acct").install(bare)
    return bare, "/run"


def _slowapi() -> tuple[Any, str]:
    import fastapi_peers

    return fastapi_peers.build_slowapi_app(), "/limited"


def _wsgi(name: str, path: str, new: bool) -> Callable[[int], Prepared]:
    def prepare(n: int) -> Prepared:
        import adapters

        app = adapters.build_apps()[name].wsgi_app
        template = adapters._template(path)
        follow = str(uuid.uuid4())
        adapters._drive(app, adapters._environs(template, [follow]))
        jobs = [str(uuid.uuid4()) for _ in range(n)] if new else [follow] * n
        environs = adapters._environs(template, jobs)

        def go() -> None:
            adapters._drive(app, environs)

        return go

    return prepare


def _amemory(new: bool) -> Callable[[int], Prepared]:
    """As :func:`_memory`, through the ledger's async twins in one event loop
    (the path of the ASGI adapters)."""

    def prepare(n: int) -> Prepared:
        from jobcredits_plugin.testing import make_ledger

        ledger = make_ledger()
        follow = str(uuid.uuid4())
        ledger.confirm("acct", follow, charge_id=ledger.charge("acct", follow).record.charge_id)
        jobs = [str(uuid.uuid4()) for _ in range(n)]

        async def new_jobs() -> None:
            for job in jobs:
                charge = await ledger.acharge("acct", job)
                await ledger.aconfirm("acct", job, charge_id=charge.record.charge_id)

        async def follow_ups() -> None:
            for _ in range(n):
                await ledger.acharge("acct", follow)

        def go() -> None:
            asyncio.run(new_jobs() if new else follow_ups())

        return go

    return prepare


def _memory(new: bool) -> Callable[[int], Prepared]:
    def prepare(n: int) -> Prepared:
        from jobcredits_plugin.testing import make_ledger

        ledger = make_ledger()
        charge, confirm = ledger.charge, ledger.confirm
        follow = str(uuid.uuid4())
        confirm("acct", follow, charge_id=charge("acct", follow).record.charge_id)
        jobs = [str(uuid.uuid4()) for _ in range(n)]

        def new_jobs() -> None:
            for job in jobs:
                confirm("acct", job, charge_id=charge("acct", job).record.charge_id)

        def follow_ups() -> None:
            for _ in range(n):
                charge("acct", follow)

        return new_jobs if new else follow_ups

    return prepare


_REDIS_URL = os.environ.get("JOBCREDITS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/5")
_PREFIX = f"jcprof:{uuid.uuid4().hex[:8]}:"


def _redis_peer(key: str) -> Callable[[int], Prepared]:
    """A side of benchmarks/redis_peers.py: its client makes ``n`` calls."""

    def prepare(n: int) -> Prepared:
        import redis_peers

        side = next(s for s in redis_peers.SIDES if s.key == key)
        client = side.make(_REDIS_URL, _PREFIX)
        client.batch(5)()
        return client.batch(n)

    return prepare


def _redis_claims(empty: bool) -> Callable[[int], Prepared]:
    """``ledger.charge`` of new jobs (journal on, as the store's default), or
    an empty script called with the very keys and arguments of those charges
    (private store API: how redis_bench.py builds them)."""

    def prepare(n: int) -> Prepared:
        from jobcredits_plugin import Ledger
        from jobcredits_plugin.stores import RedisStore

        store = RedisStore.from_url(_REDIS_URL, prefix=_PREFIX)
        ledger = Ledger(store)
        ledger.charge("acct", uuid.uuid4().hex)
        jobs = [uuid.uuid4().hex for _ in range(n)]
        if not empty:
            charge = ledger.charge

            def charges() -> None:
                for job in jobs:
                    charge("acct", job)

            return charges
        script = store._client.register_script("return {'charged', {}, '0'}")
        calls = [
            store._claim_call(ledger._claim_request("acct", job, "default", 1, None, None))
            for job in jobs
        ]
        script(keys=calls[0][0], args=calls[0][1])

        def empties() -> None:
            for keys, args in calls:
                script(keys=keys, args=args)

        return empties

    return prepare


_POSTGRES_URL = os.environ.get(
    "JOBCREDITS_BENCH_POSTGRES_URL",
    os.environ.get("JOBCREDITS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
)
#: The PostgreSQL stores a run made, whose schemas main() drops at the end.
_POSTGRES_STORES: list[Any] = []


def _postgres(kind: str) -> Callable[[int], Prepared]:
    """``ledger.charge`` on a PostgreSQL store set up as postgres_bench.py's
    (balances on, journal off, a schema of its own): of new jobs
    (``"charge"``, what postgres_bench.py sets against a bare INSERT), of new
    jobs each confirmed (``"new"``), or follow-ups of one confirmed job
    (``"follow"``)."""

    def prepare(n: int) -> Prepared:
        from jobcredits_plugin import Ledger
        from jobcredits_plugin.stores._postgres import PostgresStore

        schema = f"jcprof_{uuid.uuid4().hex[:10]}"
        store = PostgresStore.from_url(_POSTGRES_URL, schema=schema, max_size=1, journal=False)
        _POSTGRES_STORES.append(store)
        store.migrate()
        ledger = Ledger(store, balances=True)
        ledger.grant("acct", 10**12)
        charge, confirm = ledger.charge, ledger.confirm
        follow = uuid.uuid4().hex
        confirm("acct", follow, charge_id=charge("acct", follow).record.charge_id)
        jobs = [uuid.uuid4().hex for _ in range(n)]

        def charges() -> None:
            for job in jobs:
                charge("acct", job)

        def new_jobs() -> None:
            for job in jobs:
                confirm("acct", job, charge_id=charge("acct", job).record.charge_id)

        def follow_ups() -> None:
            for _ in range(n):
                charge("acct", follow)

        return {"charge": charges, "new": new_jobs, "follow": follow_ups}[kind]

    return prepare


SCENARIOS: dict[str, Callable[[int], Prepared]] = {
    "fastapi-bare": _asgi(_fastapi("bare"), new=True),
    "fastapi-dep-new": _asgi(_fastapi("dependency"), new=True),
    "fastapi-dep-follow": _asgi(_fastapi("dependency"), new=False),
    "fastapi-dec-new": _asgi(_fastapi("decorator"), new=True),
    "fastapi-dec-follow": _asgi(_fastapi("decorator"), new=False),
    "fastapi-free": _asgi(_fastapi("free"), new=True),
    "fastapi-plain-dep": _asgi(_plain_dependency, new=True),
    "fastapi-installed": _asgi(_installed, new=True),
    "slowapi": _asgi(_slowapi, new=True),
    "flask-bare": _wsgi("bare", "/bare", new=True),
    "flask-new": _wsgi("ours", "/ours", new=True),
    "flask-follow": _wsgi("ours", "/ours", new=False),
    "flask-limiter": _wsgi("theirs", "/theirs", new=True),
    "memory-new": _memory(new=True),
    "memory-follow": _memory(new=False),
    "memory-anew": _amemory(new=True),
    "memory-afollow": _amemory(new=False),
    "redis-set": _redis_peer("set_nx"),
    "redis-empty": _redis_claims(empty=True),
    "redis-charge": _redis_claims(empty=False),
    "redis-new": _redis_peer("ours_new_job"),
    "redis-follow": _redis_peer("ours_follow_up"),
    "powertools-new": _redis_peer("powertools_new"),
    "powertools-replay": _redis_peer("powertools_replay"),
    "limits-hit": _redis_peer("limits_fixed_hit"),
    "postgres-charge": _postgres("charge"),
    "postgres-new": _postgres("new"),
    "postgres-follow": _postgres("follow"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("calls", type=int, nargs="?", default=1000)
    parser.add_argument("--profile", choices=("none", "cprofile", "pyinstrument"), default="none")
    parser.add_argument("--top", type=int, default=40, help="cProfile: lines of the table")
    parser.add_argument("--sort", default="tottime", help="cProfile: sort key")
    parser.add_argument(
        "--no-hiredis",
        action="store_true",
        help="keep redis-py on its pure-Python reply parser even when hiredis is installed",
    )
    parser.add_argument(
        "--no-gc",
        action="store_true",
        help="disable the cyclic garbage collector before the calls: its share of a count "
        "depends on everything the process holds, so counts taken on two trees compare "
        "only without it",
    )
    args = parser.parse_args(argv)
    if args.no_hiredis:
        sys.modules["hiredis"] = None  # type: ignore[assignment]  # redis-py then finds none
    go = SCENARIOS[args.scenario](args.calls)
    if args.no_gc:
        gc.collect()
        gc.disable()
    try:
        if args.profile == "cprofile":
            profiler = cProfile.Profile()
            profiler.runcall(go)
            pstats.Stats(profiler).strip_dirs().sort_stats(args.sort).print_stats(args.top)
        elif args.profile == "pyinstrument":
            from pyinstrument import Profiler

            with Profiler(interval=0.0002) as pyi:
                go()
            print(pyi.output_text(unicode=False, color=False, show_all=False))
        else:
            # Called from C's functools.reduce, which nothing else here
            # calls, so that an instruction counter can count the calls
            # alone: valgrind --tool=callgrind --toggle-collect=functools_reduce
            functools.reduce(lambda _a, _b: go(), (0, 1))
    finally:
        if args.scenario.startswith(("redis", "powertools", "limits")):
            import redis
            from redis_bench import _cleanup

            admin = redis.Redis.from_url(_REDIS_URL)
            _cleanup(admin, _PREFIX)
            admin.close()
        for store in _POSTGRES_STORES:
            store.drop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
