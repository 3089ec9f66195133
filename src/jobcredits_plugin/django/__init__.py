"""Django integration: per-job charging on Django views.

::

    # settings.py
    INSTALLED_APPS = [..., "jobcredits_plugin.django"]
    JOBCREDITS = {"URL": "django://default", "BALANCES": True}  # then manage.py migrate

    # views.py
    from jobcredits_plugin.django import charges_credit

    @charges_credit(cost=1, scope="summarize")
    def summarize(request):
        return JsonResponse({"outcome": request.job_credit.outcome})

The ledger is built once per process from ``settings.JOBCREDITS`` (see
:func:`get_ledger`; tests swap in their own with :func:`use_ledger`); the
account defaults to the authenticated ``request.user``. Installing the app
adds the system checks (``jobcredits.*``) and the ``manage.py jobcredits``
command; the decorator works without it.
"""

from __future__ import annotations

try:
    import django  # type: ignore[import-untyped]  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        'jobcredits_plugin.django needs Django: pip install "jobcredits-plugin[django]"'
    ) from exc

from ._conf import aget_ledger, get_ledger, use_ledger
from ._store import DjangoStore
from ._views import charges_credit, default_account

__all__ = [
    "DjangoStore",
    "aget_ledger",
    "charges_credit",
    "default_account",
    "get_ledger",
    "use_ledger",
]
