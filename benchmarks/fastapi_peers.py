"""The FastAPI adapter's overhead against slowapi's, each in an app of its own.

A rate limiter is the extension a FastAPI developer already puts in front of
a paid endpoint, so slowapi's ``@limiter.limit`` (memory storage, its default)
is the yardstick, as Flask-Limiter is for the Flask adapter
(benchmarks/adapters.py). An extension's overhead is what a request costs
with it minus what the same request costs in an app without it:

- the bare app: one endpoint returning ``{"ok": true}``;
- our app (``fastapi_bench.build_apps``): ``JobCredits(...).install(app)``, an
  endpoint taking ``Depends(charge_credit())`` and one decorated with
  ``@charges_credit()``, each for a *new job* (a fresh job id: a charge and a
  confirm) and a *follow-up* (one job id, already confirmed: a reuse);
- slowapi's app: the same endpoint with ``@limiter.limit("1000000/second")``
  and the ``request: Request`` parameter slowapi requires, the limiter on
  ``app.state`` and its 429 handler installed, as slowapi's documentation sets
  it up. It does the same work for a new job and a follow-up.

The figures are ours / slowapi's overhead, the median over repeats of
per-repeat ratios. Within a repeat the sides take turns in chunks of
requests; a side's time in a repeat is the median of its chunks (a chunk
that shared the CPU with something else is an outlier, not part of the
cost). Time is the CPU time of this process (``time.process_time``): every
side is single-threaded CPU-bound work on memory stores, and on a loaded
machine the wall clock would also count the slices the process did not run.
The apps are called as ASGI callables (no server, no network).

Targets (issue 15): a follow-up at most 1.0x slowapi's overhead, a new job
(two ledger calls) at most 1.5x, for the dependency and the decorator alike.

    python benchmarks/fastapi_peers.py           # full sizes
    python benchmarks/fastapi_peers.py --quick   # a smoke run
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

try:  # prefer the installed package ...
    import jobcredits_plugin  # noqa: F401
except ImportError:  # ... but let the script run from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from fastapi import FastAPI, Request
from slowapi import Limiter, _rate_limit_exceeded_handler
from slowapi.errors import RateLimitExceeded
from slowapi.util import get_remote_address

from jobcredits_plugin.testing import make_ledger

# The endpoints and scopes of benchmarks/fastapi_bench.py, imported from the
# directory of this file (it may have been loaded by path, not as a module).
sys.path.insert(0, str(Path(__file__).resolve().parent))
import fastapi_bench as _fastapi_bench
from _common import main

scopes = _fastapi_bench.scopes


async def timed(app: ASGIApp, batch: Sequence[dict[str, Any]]) -> float:
    """CPU seconds to serve every scope of ``batch`` in turn (all must answer 200)."""
    return await _fastapi_bench.timed(app, batch, clock=time.process_time)


ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]

#: Targets of issue 15: ours / slowapi's overhead, at most.
TARGET_FOLLOW_UP = 1.0
TARGET_NEW_JOB = 1.5


def build_slowapi_app() -> FastAPI:
    """slowapi as its documentation installs it, memory storage, headers off
    (its defaults)."""
    limiter = Limiter(key_func=get_remote_address)
    app = FastAPI()
    app.state.limiter = limiter
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]

    @app.post("/limited")
    @limiter.limit("1000000/second")
    async def limited(request: Request) -> dict[str, bool]:
        return {"ok": True}

    return app


def settle_slowapi(app: FastAPI) -> None:
    """Wait, untimed, for the expiry timer of slowapi's in-memory storage.

    ``limits``' ``MemoryStorage`` starts a ``threading.Timer`` (10 ms) on a
    hit when none is running. Left running, it fires during whichever side
    is timed next, and that side paid for slowapi: on 2026-12-07 it added 8
    to 13 us per request to our paths (docs/performance.md), and disabling
    the timer took it away. Its cost while slowapi's own requests run stays
    in slowapi's figure, as it would in an app."""
    storage = getattr(app.state.limiter, "_storage", None)
    timer = getattr(storage, "timer", None)
    if isinstance(timer, threading.Timer):
        timer.join()


#: A side: (name, app, path, new jobs?).
Side = tuple[str, ASGIApp, str, bool]


async def measure(requests: int, chunk: int, repeats: int) -> dict[str, list[float]]:
    """CPU seconds per request of each side, one figure per repeat."""
    bare, ours = _fastapi_bench.build_apps(make_ledger())
    theirs = build_slowapi_app()
    sides: list[Side] = [
        ("bare", bare, "/run", False),
        ("slowapi", theirs, "/limited", False),
        ("dependency/new", ours, "/dependency", True),
        ("dependency/follow-up", ours, "/dependency", False),
        ("decorator/new", ours, "/decorator", True),
        ("decorator/follow-up", ours, "/decorator", False),
    ]
    follow_job = str(uuid.uuid4())  # the job every follow-up rides on, one per path
    for _, app, path, _ in sides:  # warm-up: imports, caches, the first request's set-up
        await timed(app, scopes(path, [str(uuid.uuid4()) for _ in range(50)]))
        await timed(app, scopes(path, [follow_job]))
    rounds = max(1, requests // chunk)
    per_side: dict[str, list[float]] = {name: [] for name, _, _, _ in sides}
    for _ in range(repeats):
        samples: dict[str, list[float]] = {name: [] for name in per_side}
        for n in range(rounds):
            # Scopes and job ids are made before the timed loops; the order of
            # the sides turns round by round.
            batches = [
                (
                    name,
                    app,
                    scopes(
                        path,
                        [str(uuid.uuid4()) for _ in range(chunk)] if new else [follow_job] * chunk,
                    ),
                )
                for name, app, path, new in sides
            ]
            shift = n % len(batches)
            gc.collect()
            gc.disable()  # a collection would land in one side's sample at random
            try:
                for name, app, batch in batches[shift:] + batches[:shift]:
                    samples[name].append(await timed(app, batch) / chunk)
                    if app is theirs:
                        settle_slowapi(theirs)
            finally:
                gc.enable()
        for name, values in samples.items():
            per_side[name].append(statistics.median(values))
    return per_side


def run(quick: bool = False, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """The figures as rows (``key``, ``name``, ``figure``, ``unit``, ``op``,
    ``target``, ``details``) for benchmarks/run.py."""
    requests, chunk, repeats = (300, 50, 3) if quick else (3_000, 100, 9)
    log(
        f"(d) fastapi vs slowapi: {repeats} x {requests:,} requests on each of 6 sides, "
        f"{chunk} at a time"
    )
    per = asyncio.run(measure(requests, chunk, repeats))
    bare = per["bare"]

    def overhead(side: str) -> list[float]:
        return [s - b for s, b in zip(per[side], bare, strict=True)]

    theirs = overhead("slowapi")
    rows: list[dict[str, Any]] = []
    for kind, label in (
        ("dependency", "Depends(charge_credit())"),
        ("decorator", "@charges_credit"),
    ):
        for case, slug, what, target in (
            ("new", "new_job", "new job", TARGET_NEW_JOB),
            ("follow-up", "follow_up", "follow-up", TARGET_FOLLOW_UP),
        ):
            ours = overhead(f"{kind}/{case}")
            rows.append(
                {
                    "key": f"fastapi_{kind}_vs_slowapi_{slug}",
                    "name": f"fastapi: {label} / slowapi @limit overhead, {what}",
                    "figure": statistics.median(o / t for o, t in zip(ours, theirs, strict=True)),
                    "unit": "x",
                    "op": "<=",
                    "target": target,
                    "details": {"ours_overhead_vs_bare": _vs(ours, bare)},
                }
            )
    rows.append(
        {
            "key": "fastapi_slowapi_overhead_vs_bare",
            "name": "fastapi: slowapi @limit overhead / bare request",
            "figure": _vs(theirs, bare),
            "unit": "x",
            "details": {
                "requests": max(1, requests // chunk) * chunk,
                "chunk": chunk,
                "repeats": repeats,
                "cpu_s_per_request": per,
            },
        }
    )
    return rows


def _vs(overheads: Sequence[float], bare: Sequence[float]) -> float:
    """An overhead as a multiple of the bare request's time (median of repeats)."""
    return statistics.median(o / b for o, b in zip(overheads, bare, strict=True))


if __name__ == "__main__":
    raise SystemExit(main(run, __doc__))
