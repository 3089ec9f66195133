"""The gunicorn configuration docs/prometheus.md documents for multiprocess mode.

The test passes it with ``-c``; gunicorn calls ``child_exit`` in the master
when a worker exits.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import multiprocess


def child_exit(server: Any, worker: Any) -> None:
    # Drops the dead worker's live gauges; its counters stay, as they must.
    multiprocess.mark_process_dead(worker.pid)
