"""What the FastAPI adapter adds to a request, against the same endpoint bare.

The app is called directly as an ASGI callable (scope, receive and send built
here, driven by asyncio), so the figures hold the adapter's work and FastAPI's,
and nothing of a server or a network. Four cases, each against a bare twin
of the endpoint in an app without the adapter:

- the ``charge_credit`` dependency, a new job on every request;
- the dependency, every request a follow-up of one job;
- the ``charges_credit`` decorator, new jobs;
- the decorator, follow-ups.

For each: the added time per request (decorated minus bare, in microseconds)
and the ratio of decorated to bare time per request. One more figure is what
the installed adapter (its middleware) adds to an endpoint that does not
charge. The store is a
:class:`~jobcredits_plugin.stores.MemoryStore` on a frozen fake clock, so
nothing expires during a run. Within a repeat the sides take turns in chunks
of requests, the garbage collector off; each figure is the median over the
repeats. There is no target: the figures are reported.

    python benchmarks/fastapi_bench.py           # full sizes
    python benchmarks/fastapi_bench.py --quick   # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

try:  # prefer the installed package ...
    import jobcredits_plugin  # noqa: F401
except ImportError:  # ... but let the script run from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from fastapi import Depends, FastAPI

from jobcredits_plugin import Charge, Ledger
from jobcredits_plugin.fastapi import JobCredits, charge_credit, charges_credit
from jobcredits_plugin.testing import make_ledger

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]

ACCOUNT = "acct-bench"
REQUEST = {"type": "http.request", "body": b"", "more_body": False}
#: Requests each side serves before the next side takes its turn.
CHUNK = 100


def build_apps(ledger: Ledger) -> tuple[FastAPI, FastAPI]:
    """The bare app and the charged app, with endpoints that do the same work."""
    bare = FastAPI()

    @bare.post("/run")
    async def bare_run() -> dict[str, bool]:
        return {"ok": True}

    charged = FastAPI()
    JobCredits(ledger, account=lambda request: ACCOUNT).install(charged)

    @charged.post("/dependency")
    async def with_dependency(
        charge: Annotated[Charge | None, Depends(charge_credit())],
    ) -> dict[str, bool]:
        return {"ok": True}

    @charged.post("/decorator")
    @charges_credit()
    async def with_decorator() -> dict[str, bool]:
        return {"ok": True}

    @charged.post("/free")
    async def free() -> dict[str, bool]:
        return {"ok": True}

    return bare, charged


def scopes(path: str, job_ids: list[str]) -> list[Scope]:
    """One fresh scope per request (FastAPI and the adapter write into it)."""
    return [
        {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(b"host", b"bench"), (b"x-job-id", job.encode())],
            "client": ("127.0.0.1", 50000),
            "server": ("bench", 80),
        }
        for job in job_ids
    ]


async def receive() -> dict[str, Any]:
    return REQUEST


async def timed(
    app: ASGIApp, batch: Sequence[Scope], clock: Callable[[], float] = time.perf_counter
) -> float:
    """Seconds to serve every scope of ``batch`` in turn, read on ``clock``
    (benchmarks/fastapi_peers.py reads CPU time)."""
    statuses: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    start = clock()
    for scope in batch:
        await app(scope, receive, send)
    elapsed = clock() - start
    if statuses != [200] * len(batch):
        raise RuntimeError(f"unexpected answers: {sorted(set(statuses))}")
    return elapsed


async def measure(requests: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per request of each side, one sample per repeat."""
    ledger = make_ledger()  # memory store, frozen fake clock
    bare, charged = build_apps(ledger)
    follow_job = {"dependency": str(uuid.uuid4()), "decorator": str(uuid.uuid4())}
    for kind, job in follow_job.items():  # the jobs the follow-ups ride on
        await timed(charged, scopes(f"/{kind}", [job]))
    # Warm-up: imports, caches, FastAPI's first-request set-up.
    await timed(bare, scopes("/run", ["warm"] * 50))
    await timed(charged, scopes("/free", ["warm"] * 50))
    for kind in follow_job:
        await timed(charged, scopes(f"/{kind}", [str(uuid.uuid4()) for _ in range(50)]))

    samples: dict[str, list[float]] = {}
    for _ in range(repeats):
        # Every side's scopes and job ids are made before the timed loops.
        batches: list[tuple[str, ASGIApp, list[Scope]]] = [
            ("bare", bare, scopes("/run", ["j"] * requests)),
            ("free", charged, scopes("/free", ["j"] * requests)),
        ]
        for kind, job in follow_job.items():
            new_ids = [str(uuid.uuid4()) for _ in range(requests)]
            batches.append((f"{kind}/new", charged, scopes(f"/{kind}", new_ids)))
            batches.append((f"{kind}/follow-up", charged, scopes(f"/{kind}", [job] * requests)))
        # The sides take turns in chunks, so that a burst of load elsewhere on
        # the machine hits all of them rather than one.
        totals = dict.fromkeys((name for name, _, _ in batches), 0.0)
        gc.collect()
        gc.disable()  # a collection would land in one side's sample at random
        try:
            for at in range(0, requests, CHUNK):
                for name, app, batch in batches:
                    totals[name] += await timed(app, batch[at : at + CHUNK])
        finally:
            gc.enable()
        for name, total in totals.items():
            samples.setdefault(name, []).append(total / requests)
    return samples


def run(quick: bool) -> list[dict[str, Any]]:
    """The figures as rows of ``name``, ``figure`` and ``unit``."""
    requests, repeats = (500, 3) if quick else (3000, 7)
    samples = asyncio.run(measure(requests, repeats))
    bare = samples["bare"]
    rows: list[dict[str, Any]] = [
        {
            "name": "fastapi: bare endpoint, time per request",
            "figure": statistics.median(bare) * 1e6,
            "unit": "us",
        }
    ]
    free = samples["free"]
    rows.append(
        {
            "name": "fastapi: installed, endpoint not charged: added per request",
            "figure": statistics.median(f - b for f, b in zip(free, bare, strict=True)) * 1e6,
            "unit": "us",
        }
    )
    labels = {"dependency": "charge_credit dependency", "decorator": "charges_credit decorator"}
    for kind, label in labels.items():
        for case, what in (("new", "new job"), ("follow-up", "follow-up")):
            side = samples[f"{kind}/{case}"]
            # Per-repeat differences and ratios, then the median: the two sides
            # of a repeat ran back to back, so drift hits both alike.
            added = statistics.median(s - b for s, b in zip(side, bare, strict=True)) * 1e6
            ratio = statistics.median(s / b for s, b in zip(side, bare, strict=True))
            rows.append(
                {
                    "name": f"fastapi: {label}, {what}: added per request",
                    "figure": added,
                    "unit": "us",
                }
            )
            rows.append(
                {"name": f"fastapi: {label}, {what}: time vs bare", "figure": ratio, "unit": "x"}
            )
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    width = max(len(r["name"]) for r in rows)
    lines = [f"{'benchmark':<{width}}  figure", f"{'-' * width}  ------"]
    for r in rows:
        figure = f"{r['figure']:.2f}x" if r["unit"] == "x" else f"{r['figure']:.1f} {r['unit']}"
        lines.append(f"{r['name']:<{width}}  {figure}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args(argv)
    print(format_rows(run(args.quick)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
