"""Helpers the benchmark modules share: timing several clients at once, and
the command line of a module run on its own.

Imported by the modules as ``_common`` with ``benchmarks/`` put on sys.path
(they may themselves have been loaded by path, by run.py or a smoke test).
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any


def at_once(runs: Sequence[Callable[[], None]]) -> float:
    """Wall seconds for all ``runs`` at once: one thread each when several,
    released together by a barrier so that no thread's start-up is timed."""
    if len(runs) == 1:
        start = time.perf_counter()
        runs[0]()
        return time.perf_counter() - start
    barrier = threading.Barrier(len(runs) + 1)

    def go(run: Callable[[], None]) -> None:
        barrier.wait()
        run()

    threads = [threading.Thread(target=go, args=(r,)) for r in runs]
    for th in threads:
        th.start()
    barrier.wait()
    start = time.perf_counter()
    for th in threads:
        th.join()
    return time.perf_counter() - start


def format_rows(rows: Sequence[dict[str, Any]]) -> str:
    """A module's rows as a table: name, figure with its unit, target."""
    width = max(len(r["name"]) for r in rows)
    lines = []
    for r in rows:
        target = f"{r['op']} {r['target']}" if r.get("target") is not None else ""
        lines.append(f"{r['name']:<{width}}  {r['figure']:>10.3f} {r['unit']:<11} {target}")
    return "\n".join(lines)


def main(run: Callable[..., list[dict[str, Any]]], doc: str | None) -> int:
    """``python benchmarks/<module>.py [--quick]``: run it, print its rows."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run with small sizes")
    args = parser.parse_args()
    print(format_rows(run(quick=args.quick)))
    return 0
