"""Fixtures shared by the whole suite (store-parametrized ones live in
tests/stores/conftest.py)."""

from __future__ import annotations

import pytest

from jobcredits_plugin import Ledger
from jobcredits_plugin.testing import FakeClock, RecordingPlugin, make_ledger


def pytest_addoption(parser: pytest.Parser) -> None:
    # Here rather than in tests/system/conftest.py: pytest reads options only
    # from the conftest files it loads at startup.
    parser.addoption(
        "--system-report",
        metavar="PATH",
        default=None,
        help="write the figures of tests/system as JSON to PATH "
        "(default: system-report.json in the pytest temporary directory)",
    )


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
