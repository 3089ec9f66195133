"""Process bodies for the multiprocess tests of the Prometheus plugin.

Module-level functions so that the "spawn" start method can import them in a
fresh child, which inherits ``PROMETHEUS_MULTIPROC_DIR`` from the test's
environment and so imports prometheus_client in multiprocess mode.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

from jobcredits_plugin import Ledger
from jobcredits_plugin.stores import SQLiteStore
from jobcredits_plugin.testing import FakeClock, RecordingPlugin

JOIN_TIMEOUT = 120.0


def pruning_worker(path: str, now: float, barrier: Any, results: Any) -> None:
    """Prune the shared file at ``now`` with PrometheusMetrics registered and
    report what this process's own hooks saw."""
    try:
        from prometheus_client import values

        from jobcredits_plugin.contrib.prometheus import PrometheusMetrics

        events = RecordingPlugin()
        store = SQLiteStore(Path(path), timeout=60.0, prune_batch=8)
        ledger = Ledger(store, clock=FakeClock(now), plugins=[PrometheusMetrics(), events])
        barrier.wait(JOIN_TIMEOUT)
        removed = ledger.prune()
        ledger.close()
        results.put(
            {
                "multiprocess": values.ValueClass is not values.MutexValue,
                "removed": len(removed),
                "expired": len(events.of("expire")),
                "refunded": len(events.of("refund")),
            }
        )
    except BaseException:
        results.put({"error": traceback.format_exc()})
