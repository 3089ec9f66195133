"""Fixtures shared by the whole suite (store-parametrized ones live in
tests/stores/conftest.py)."""

from __future__ import annotations

import pytest

from jobcredits_plugin import Ledger
from jobcredits_plugin.testing import FakeClock, RecordingPlugin, make_ledger


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def events() -> RecordingPlugin:
    return RecordingPlugin()


@pytest.fixture
def ledger(clock: FakeClock, events: RecordingPlugin) -> Ledger:
    """A memory ledger on the fake clock with a RecordingPlugin registered."""
    return make_ledger(clock=clock, plugins=[events])
