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

The module is also a pytest plugin, opt-in: ``-p jobcredits_plugin.testing``
on the command line (or in ``addopts``), or ``pytest_plugins =
["jobcredits_plugin.testing"]`` in the root ``conftest.py``. It provides the
fixtures ``jobcredits_clock`` (a :class:`FakeClock`), ``jobcredits_events``
(a :class:`RecordingPlugin`), ``jobcredits_ledger`` (a fresh memory ledger on
both, closed after the test; ``@pytest.mark.jobcredits(balances=True, ...)``
passes it :class:`~jobcredits_plugin.Ledger` options) and
``jobcredits_django_ledger`` (that ledger made Django's for the test). Not
automatic through a ``pytest11`` entry point: that would import the library
into every pytest run of every project that has it installed, before the
run's coverage measurement starts, for fixtures few of those runs use. The
helpers work without pytest: the fixtures are only defined when it is
installed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import attrs

from ._ledger import Ledger
from ._records import JobRecord
from .hookspecs import hookimpl
from .stores import MemoryStore

__all__ = ["FakeClock", "RecordingPlugin", "make_ledger"]

#: The marker whose keyword arguments go to the ``jobcredits_ledger`` fixture's
#: :class:`~jobcredits_plugin.Ledger` (the marker closest to the test wins).
MARKER = "jobcredits"

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


# -- the pytest plugin (opt-in: -p jobcredits_plugin.testing) -----------------------------

try:
    import pytest
except ImportError:  # the helpers above serve tests of any runner
    pass
else:

    def pytest_configure(config: pytest.Config) -> None:
        config.addinivalue_line(
            "markers",
            f"{MARKER}(**options): Ledger options for the jobcredits_ledger fixture, "
            "e.g. balances=True, ttl=60, lease=5, max_uses=3",
        )

    @pytest.fixture
    def jobcredits_clock() -> FakeClock:
        """A :class:`FakeClock` at :data:`DEFAULT_START`, the clock of
        ``jobcredits_ledger``: ``jobcredits_clock.advance(3601)`` closes a
        job's window."""
        return FakeClock()

    @pytest.fixture
    def jobcredits_events() -> RecordingPlugin:
        """A :class:`RecordingPlugin` registered on ``jobcredits_ledger``:
        ``jobcredits_events.kinds()`` lists the hooks fired so far."""
        return RecordingPlugin()

    @pytest.fixture
    def jobcredits_ledger(
        request: pytest.FixtureRequest,
        jobcredits_clock: FakeClock,
        jobcredits_events: RecordingPlugin,
    ) -> Iterator[Ledger]:
        """A fresh ledger on a :class:`~jobcredits_plugin.stores.MemoryStore`,
        with ``jobcredits_clock`` and ``jobcredits_events``; closed after the
        test. ``@pytest.mark.jobcredits(balances=True)`` (on the test, its
        class or module) passes options to :class:`~jobcredits_plugin.Ledger`."""
        options: dict[str, Any] = {}
        for marker in reversed(list(request.node.iter_markers(MARKER))):
            if marker.args:
                raise TypeError(f"@pytest.mark.{MARKER} takes Ledger options by keyword only")
            options.update(marker.kwargs)
        if "clock" in options:
            raise TypeError(
                f"@pytest.mark.{MARKER}: the ledger's clock is the jobcredits_clock fixture; "
                "override that fixture to start elsewhere"
            )
        plugins = [jobcredits_events, *options.pop("plugins", ())]
        ledger = make_ledger(clock=jobcredits_clock, plugins=plugins, **options)
        with ledger:
            yield ledger

    @pytest.fixture
    def jobcredits_django_ledger(jobcredits_ledger: Ledger) -> Iterator[Ledger]:
        """``jobcredits_ledger``, made the ledger of every Django view that
        charges (:func:`jobcredits_plugin.django.use_ledger`) for the test."""
        from .django import use_ledger  # Django is optional: imported when asked for

        with use_ledger(jobcredits_ledger):
            yield jobcredits_ledger
