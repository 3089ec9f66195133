"""The pytest plugin of jobcredits-plugin: its fixtures and its marker.

pytest loads this module by itself, through the ``pytest11`` entry point
``jobcredits`` (``-p no:jobcredits`` turns it off). It is a top-level module
of its own, and it imports nothing of the library until a test asks for one
of its fixtures: loading it costs a test run that never uses it nothing, and
imports no module of the library before a coverage measurement of the run
has started (hypothesis ships its plugin the same way, for the same reason).
The helpers the fixtures hand out live in :mod:`jobcredits_plugin.testing`,
which serves tests of any runner.

Fixtures: ``jobcredits_clock`` (a ``FakeClock``), ``jobcredits_events`` (a
``RecordingPlugin``), ``jobcredits_ledger`` (a fresh memory ledger on both,
closed after its test; ``@pytest.mark.jobcredits(balances=True, ...)`` passes
it ``Ledger`` options) and ``jobcredits_django_ledger`` (that ledger made the
one of every charging Django view, for the test). See docs/testing.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from jobcredits_plugin import Ledger
    from jobcredits_plugin.testing import FakeClock, RecordingPlugin

#: The marker whose keyword arguments go to the ``jobcredits_ledger`` fixture's
#: ``Ledger`` (the marker closest to the test wins, key by key).
MARKER = "jobcredits"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(**options): Ledger options for the jobcredits_ledger fixture, "
        "e.g. balances=True, ttl=60, lease=5, max_uses=3",
    )


@pytest.fixture
def jobcredits_clock() -> FakeClock:
    """A ``FakeClock`` at ``jobcredits_plugin.testing.DEFAULT_START``, the
    clock of ``jobcredits_ledger``: ``jobcredits_clock.advance(3601)`` closes
    a job's window."""
    from jobcredits_plugin.testing import FakeClock

    return FakeClock()


@pytest.fixture
def jobcredits_events() -> RecordingPlugin:
    """A ``RecordingPlugin`` registered on ``jobcredits_ledger``:
    ``jobcredits_events.kinds()`` lists the hooks fired so far."""
    from jobcredits_plugin.testing import RecordingPlugin

    return RecordingPlugin()


@pytest.fixture
def jobcredits_ledger(
    request: pytest.FixtureRequest,
    jobcredits_clock: FakeClock,
    jobcredits_events: RecordingPlugin,
) -> Iterator[Ledger]:
    """A fresh ledger on a ``MemoryStore``, with ``jobcredits_clock`` and
    ``jobcredits_events``; closed after the test. ``@pytest.mark.jobcredits(...)``
    (on the test, its class or its module) passes options to ``Ledger``."""
    from jobcredits_plugin.testing import make_ledger

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
    charges (``jobcredits_plugin.django.use_ledger``) for the test."""
    from jobcredits_plugin.django import use_ledger  # Django is optional

    with use_ledger(jobcredits_ledger):
        yield jobcredits_ledger
