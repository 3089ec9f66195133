"""The Django app: ``INSTALLED_APPS = [..., "jobcredits_plugin.django"]``."""

from __future__ import annotations

from django.apps import AppConfig  # type: ignore[import-untyped]
from django.core import checks  # type: ignore[import-untyped]


class JobCreditsConfig(AppConfig):  # type: ignore[misc]
    """Registers the system checks and makes ``manage.py jobcredits`` available.

    Its models are the tables of :class:`~jobcredits_plugin.django.DjangoStore`
    (``JOBCREDITS = {"URL": "django://default"}``); they are created by
    ``manage.py migrate`` and unused with any other store. No store is opened
    at startup: the ledger is built by the first request that needs it (see
    :func:`jobcredits_plugin.django.get_ledger`).
    """

    name = "jobcredits_plugin.django"
    # Fixed here, not taken from the project's DEFAULT_AUTO_FIELD: the
    # shipped migrations must match the models in every project.
    default_auto_field = "django.db.models.BigAutoField"
    label = "jobcredits"
    verbose_name = "Job credits"

    def ready(self) -> None:
        from .checks import check_settings

        checks.register(check_settings, "jobcredits")
