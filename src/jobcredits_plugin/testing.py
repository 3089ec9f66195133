"""Helpers for testing code that uses jobcredits-plugin.

::

    from jobcredits_plugin.testing import FakeClock, RecordingPlugin, make_ledger

    def test_follow_up_is_free():
        clock = FakeClock()
        events = RecordingPlugin()
        ledger = make_ledger(clock=clock, plugins=[events])
        first = ledger.charge("acct", "job-1")
        assert first.charged
        ledger.confirm("acct", "job-1")              # the first call finished
        assert not ledger.charge("acct", "job-1").charged
        clock.advance(3601)
        assert ledger.charge("acct", "job-1").charged   # the window closed
        assert events.kinds() == ["charge", "reuse", "expire", "charge"]

Time never passes by itself under a :class:`FakeClock`, so tests that cover
the one-hour window or the lease run instantly and deterministically.

Under pytest the same helpers come as fixtures (``jobcredits_clock``,
``jobcredits_events``, ``jobcredits_ledger``, ``jobcredits_django_ledger``)
and a ``jobcredits`` marker for the ledger's options: the plugin
``_jobcredits_pytestplugin``, which pytest loads by itself through the
``pytest11`` entry point (see docs/testing.md). This module does not need
pytest.
"""

from __future__ import annotations

import threading
from typing import Any

import attrs

from ._ledger import Ledger
from ._records import JobRecord
from .hookspecs import hookimpl
from .stores import MemoryStore

__all__ = ["FakeClock", "RecordingPlugin", "make_ledger"]

#: Where a FakeClock starts: a fixed, realistic epoch time (2023-11-14).
DEFAULT_START = 1_700_000_000.0


class FakeClock:
    """A clock that only moves when told to. Pass it as ``Ledger(clock=...)``.

    Thread-safe, so race tests can share one.
    """

    def __init__(self, start: float = DEFAULT_START) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self._now

    def __repr__(self) -> str:
        return f"FakeClock({self._now!r})"

    @property
    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds`` (must be >= 0); returns the new time."""
        if seconds < 0:
            raise ValueError("a FakeClock does not go backwards; use set() to jump")
        with self._lock:
            self._now += seconds
            return self._now

    def set(self, when: float) -> None:
        """Jump to ``when``, forwards or backwards (to test clock skew)."""
        with self._lock:
            self._now = float(when)


@attrs.frozen
class RecordedEvent:
    """One hook call seen by :class:`RecordingPlugin`."""

    kind: str
    record: JobRecord


class RecordingPlugin:
    """A plugin that remembers every hook call, in order; for assertions."""

    def __init__(self) -> None:
        self.events: list[RecordedEvent] = []
        self._lock = threading.Lock()

    def _add(self, kind: str, record: JobRecord) -> None:
        with self._lock:
            self.events.append(RecordedEvent(kind, record))

    @hookimpl
    def on_charge(self, record: JobRecord) -> None:
        self._add("charge", record)

    @hookimpl
    def on_reuse(self, record: JobRecord) -> None:
        self._add("reuse", record)

    @hookimpl
    def on_refund(self, record: JobRecord) -> None:
        self._add("refund", record)

    @hookimpl
    def on_expire(self, record: JobRecord) -> None:
        self._add("expire", record)

    def kinds(self) -> list[str]:
        """The event kinds seen so far, in order."""
        return [e.kind for e in self.events]

    def of(self, kind: str) -> list[JobRecord]:
        """The records of every event of one kind."""
        return [e.record for e in self.events if e.kind == kind]

    def clear(self) -> None:
        with self._lock:
            self.events.clear()


def make_ledger(*, clock: FakeClock | None = None, **kwargs: Any) -> Ledger:
    """A ready ledger for tests: a fresh
    :class:`~jobcredits_plugin.stores.MemoryStore` and a
    :class:`FakeClock` (a new one unless given; reach it as ``ledger.clock``).
    Other keyword arguments go to :class:`~jobcredits_plugin.Ledger`."""
    kwargs.setdefault("store", MemoryStore())
    return Ledger(clock=clock if clock is not None else FakeClock(), **kwargs)
