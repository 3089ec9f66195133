"""Configure Django for these tests only.

``settings.configure`` (not DJANGO_SETTINGS_MODULE) keeps the configuration
in this process's Django and out of the environment that other tests'
subprocesses inherit. Flask and FastAPI tests in the same run never touch
Django, so a configured Django does not concern them. Each test module also
calls ``pytest.importorskip("django")``; this file only configures Django
when it is installed.
"""

from __future__ import annotations

import pytest

try:
    import django  # noqa: F401
except ImportError:  # the test modules skip themselves
    pass
else:
    from .settings import configure_once

    configure_once()


@pytest.fixture
def jc_settings():
    """Apply a JOBCREDITS setting for one test (a fresh ledger each time)."""
    from django.test import override_settings

    from . import settings as test_settings

    overrides = []

    def apply(**conf):
        override = override_settings(JOBCREDITS={**test_settings.JOBCREDITS, **conf})
        override.enable()
        overrides.append(override)

    yield apply
    for override in reversed(overrides):
        override.disable()


@pytest.fixture
def dj_ledger(jc_settings):
    """The settings ledger, with balances on, fresh for this test."""
    from jobcredits_plugin.django import get_ledger

    jc_settings(BALANCES=True)
    return get_ledger()
