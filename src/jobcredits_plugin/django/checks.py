"""System checks for ``settings.JOBCREDITS`` (registered by the app's ``ready()``).

They catch at deploy time what would otherwise surface as a 500 on the first
charged request, or worse, as silently wrong billing:

=================  ========================================================
``jobcredits.E001``  ``URL`` names no store (a typo, an unknown scheme)
``jobcredits.E002``  ``ACCOUNT`` does not import, or is not callable
``jobcredits.E003``  ``ON_MISSING`` is neither ``"charge"`` nor ``"reject"``
``jobcredits.E004``  an unknown key (a typo such as ``"TIL"``)
``jobcredits.E005``  a bad value: ``TTL``, ``LEASE``, ``MAX_USES``,
                     ``BALANCES``, ``FAIL_OPEN``, ``ENTRY_POINTS``,
                     ``JOB_HEADER``, ``PROBLEM_TYPE_BASE``,
                     ``RETRY_AFTER_MAX``, or the setting is not a dict
``jobcredits.E006``  ``PLUGINS`` is not a list, or an entry of it does not
                     import, implements no hook, or is a class that needs
                     constructor arguments (one message per bad entry)
``jobcredits.W001``  ``DEBUG`` is off and the store lives in each process
``jobcredits.W002``  the default account needs ``AuthenticationMiddleware``
``jobcredits.W003``  ``URL`` is ``django://ALIAS`` and that database has
                     ``ATOMIC_REQUESTS``: a charge in such a view is refused
=================  ========================================================
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from django.conf import settings  # type: ignore[import-untyped]
from django.core.checks import CheckMessage, Error, Warning  # type: ignore[import-untyped]

from ..stores import redact_url
from ._conf import DEFAULTS, per_process, raw_setting, read

__all__ = ["check_settings"]

AUTH_MIDDLEWARE = "django.contrib.auth.middleware.AuthenticationMiddleware"

W001_HINT = (
    "Each process keeps its own memory store, so a server with several worker "
    "processes (gunicorn -w 4, uwsgi --processes 4) charges a job once in every worker "
    "that serves one of its calls, and a restart forgets every job. Use a store the "
    "workers share, e.g. JOBCREDITS['URL'] = 'sqlite:////var/lib/app/jobcredits.db', or "
    "add 'jobcredits.W001' to SILENCED_SYSTEM_CHECKS if this process is really alone."
)

W002_HINT = (
    "Without ACCOUNT the account is request.user.pk, which Django sets through "
    f"{AUTH_MIDDLEWARE}; every call would be answered 401. Add the middleware, set "
    "JOBCREDITS['ACCOUNT'] to a callable of the request, or silence jobcredits.W002 if "
    "only Django REST framework views (with their own authentication) are charged."
)


W003_HINT = (
    "DjangoStore commits each ledger operation in a transaction of its own and refuses to "
    "run inside a view's transaction on its database alias (a charge joined to it would be "
    "rolled back with the view's error after the client was told it was charged). Give the "
    "ledger a second alias on the same database without ATOMIC_REQUESTS, e.g. "
    "DATABASES['ledger'] = {**DATABASES['default'], 'ATOMIC_REQUESTS': False} and "
    "JOBCREDITS['URL'] = 'django://ledger' (not on SQLite, where the view's transaction "
    "holds the file's one write lock), or mark each charged view "
    "@transaction.non_atomic_requests."
)


def _atomic_requests_alias(url: Any) -> str | None:
    """The alias of a ``django://`` URL whose database runs views in
    transactions (``ATOMIC_REQUESTS``), else None."""
    if not isinstance(url, str) or not url.lower().startswith("django://"):
        return None
    from django.db import connections  # type: ignore[import-untyped]

    alias = urllib.parse.unquote(urllib.parse.urlsplit(url).netloc)
    try:
        conf = connections.settings.get(alias)
    except Exception:  # noqa: BLE001 - a broken DATABASES is Django's own check to report
        return None
    if isinstance(conf, Mapping) and conf.get("ATOMIC_REQUESTS"):
        return alias
    return None


def check_settings(app_configs: Sequence[Any] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """Check ``settings.JOBCREDITS`` without opening any store."""
    raw = raw_setting()
    _, problems = read(raw)
    messages: list[CheckMessage] = [
        Error(p.msg, hint=p.hint, id=f"jobcredits.{p.id}") for p in problems
    ]
    conf = raw if isinstance(raw, Mapping) else {}
    url = conf.get("URL", DEFAULTS["URL"])
    if not settings.DEBUG and isinstance(url, str) and per_process(url):
        messages.append(
            Warning(
                f"JOBCREDITS['URL'] is {redact_url(url)!r}: "
                "the job ledger lives in each process's memory",
                hint=W001_HINT,
                id="jobcredits.W001",
            )
        )
    alias = _atomic_requests_alias(url)
    if alias is not None:
        messages.append(
            Warning(
                f"JOBCREDITS['URL'] is 'django://{alias}' and DATABASES[{alias!r}] has "
                "ATOMIC_REQUESTS: charged views that run in its transaction are refused",
                hint=W003_HINT,
                id="jobcredits.W003",
            )
        )
    middleware = getattr(settings, "MIDDLEWARE", None) or []
    if conf.get("ACCOUNT") is None and AUTH_MIDDLEWARE not in middleware:
        messages.append(
            Warning(
                "JOBCREDITS has no ACCOUNT and MIDDLEWARE lacks AuthenticationMiddleware",
                hint=W002_HINT,
                id="jobcredits.W002",
            )
        )
    return messages
