"""The Django app: ``INSTALLED_APPS = [..., "jobcredits_plugin.django"]``."""

from __future__ import annotations

from django.apps import AppConfig  # type: ignore[import-untyped]
from django.core import checks  # type: ignore[import-untyped]


class JobCreditsConfig(AppConfig):  # type: ignore[misc]
    """Registers the system checks and makes ``manage.py jobcredits`` available.

    The app has no models and opens no store at startup: the ledger is built
    by the first request that needs it (see
    :func:`jobcredits_plugin.django.get_ledger`).
    """

    name = "jobcredits_plugin.django"
    label = "jobcredits"
    verbose_name = "Job credits"

    def ready(self) -> None:
        from .checks import check_settings

        checks.register(check_settings, "jobcredits")
