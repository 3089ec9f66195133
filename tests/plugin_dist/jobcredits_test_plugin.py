"""A plugin as a third-party package ships one: a module-level object whose
``@hookimpl`` methods see the ledger's events, declared in ``pyproject.toml``::

    [project.entry-points.jobcredits_plugin]
    counter = "jobcredits_test_plugin:plugin"

It is imported only when a ledger is asked to load entry points
(``Ledger(entry_points=True)``, ``JOBCREDITS_ENTRY_POINTS``,
``JOBCREDITS["ENTRY_POINTS"]``, FastAPI's ``JobCredits(..., entry_points=True)``).
One object serves every ledger that loads it, as a module-level plugin does;
the tests call :meth:`ChargeCounter.reset` first.
"""

from __future__ import annotations

import threading
from typing import Any

from jobcredits_plugin import hookimpl

__all__ = ["ChargeCounter", "plugin"]


class ChargeCounter:
    """Counts the charges (and refunds) of every ledger it is registered on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.charged: list[tuple[str, str, str]] = []
        self.refunded: list[tuple[str, str, str]] = []

    @hookimpl
    def on_charge(self, record: Any) -> None:
        with self._lock:
            self.charged.append((record.account, record.scope, record.job_id))

    @hookimpl
    def on_refund(self, record: Any) -> None:
        with self._lock:
            self.refunded.append((record.account, record.scope, record.job_id))

    @property
    def charges(self) -> int:
        return len(self.charged)

    def reset(self) -> None:
        with self._lock:
            self.charged.clear()
            self.refunded.clear()


#: The entry point's object.
plugin = ChargeCounter()
