"""A lean HTTP/1.1 load for the throughput comparison, and server CPU time.

The load driver of ``_load.py`` uses httpx, which spends 2 to 5 ms of CPU on
each call: more than the example servers spend serving it. On two cores shared
by the client and the servers it would measure itself, and the charged route
would look as fast as the free one. This client speaks just enough HTTP/1.1 on
asyncio streams (Content-Length or chunked bodies) to cost a fraction of that,
so the server is what runs out of CPU first.

Every request asks for ``Connection: close``, a new connection per call: what
gunicorn's sync workers do anyway, and it keeps uvicorn's keep-alive out of
the figures. uvicorn ``--workers N`` (0.54 at least) leaves Nagle's algorithm
on for the connections it accepts (Kludex/uvicorn#3149), so each keep-alive
request after a connection's first waits about 40 ms for the client's delayed
ACK: a constant that would swamp what the adapter costs.

:func:`cpu_seconds` reads the CPU time the server's workers used from /proc:
charged and free calls are also compared by server CPU per call, which does
not depend on who else shares the cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class BenchResult:
    """Latencies (seconds) of every call, and the statuses and charges seen."""

    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    charges: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    errors: int = 0

    @property
    def calls(self) -> int:
        return len(self.latencies)

    def throughput(self) -> float:
        return self.calls / self.seconds if self.seconds > 0 else math.nan

    def percentile(self, q: float) -> float:
        values = sorted(self.latencies)
        if not values:
            return math.nan
        rank = max(1, math.ceil(q / 100 * len(values)))
        return values[min(rank, len(values)) - 1]

    @classmethod
    def merge(cls, results: Iterable[BenchResult]) -> BenchResult:
        out = cls()
        for r in results:
            out.latencies += r.latencies
            out.statuses += r.statuses
            out.charges += r.charges
            out.seconds += r.seconds
            out.errors += r.errors
        return out


class _Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None

    async def request(self, raw: bytes) -> tuple[int, dict[str, str]]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(raw)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        version, status = lines[0].split(" ", 2)[:2]
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        else:
            await self.reader.read()
            headers["connection"] = "close"
        if headers.get("connection", "").lower() == "close" or version == "HTTP/1.0":
            await self.close()
        return int(status), headers


async def bench(
    base_url: str,
    paths: Sequence[str],
    *,
    jobs: int,
    calls_per_job: int = 3,
    clients: int = 20,
    api_key: str = "key-bench",
    timeout: float = 15.0,
    deadline: float = 60.0,
) -> BenchResult:
    """``jobs`` jobs of ``calls_per_job`` calls (call n on ``paths[n]``, the
    last path beyond), from ``clients`` concurrent connections. Bounded: each
    call by ``timeout``, the run by ``deadline`` seconds."""
    parts = urllib.parse.urlsplit(base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    body = json.dumps({"text": "the quick brown fox jumps over the lazy dog"}).encode()
    run = uuid.uuid4().hex[:8]
    result = BenchResult()
    todo = iter(range(jobs))
    started = time.monotonic()
    stop = started + deadline

    def raw(path: str, job_id: str) -> bytes:
        return (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nX-Api-Key: {api_key}\r\n"
            f"Authorization: Bearer {api_key}\r\nX-Job-Id: {job_id}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode() + body

    async def client() -> None:
        conn = _Connection(host, port)
        try:
            for n in todo:
                if time.monotonic() > stop:
                    return
                job_id = f"{run}-{n:06d}"
                for index in range(calls_per_job):
                    request = raw(paths[min(index, len(paths) - 1)], job_id)
                    t0 = time.perf_counter()
                    try:
                        status, headers = await asyncio.wait_for(conn.request(request), timeout)
                    except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
                        result.errors += 1
                        await conn.close()
                        continue
                    result.latencies.append(time.perf_counter() - t0)
                    result.statuses[status] += 1
                    result.charges[headers.get("x-job-charge", "-")] += 1
        finally:
            await conn.close()

    await asyncio.wait_for(
        asyncio.gather(*(client() for _ in range(clients))), deadline + timeout + 5
    )
    result.seconds = time.monotonic() - started
    return result


def bench_sync(base_url: str, paths: Sequence[str], **kwargs: object) -> BenchResult:
    return asyncio.run(bench(base_url, paths, **kwargs))  # type: ignore[arg-type]


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds the processes have used so far (gone ones: 0)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / tick
