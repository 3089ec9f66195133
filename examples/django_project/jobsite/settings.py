"""Settings of the example project: a paid "summarize" API in two calls.

Only what the example needs: no database (accounts come from API keys), and
the job ledger in a SQLite file every worker process shares; or, with
``EXAMPLE_DATABASE``, the ledger in the project's own database, through the
ORM (``JOBCREDITS_URL=django://default``).

Environment variables:

``JOBCREDITS_URL``
    the ledger's store (default: ``jobcredits.db`` next to ``manage.py``).
``EXAMPLE_API_KEYS``
    more API keys, as ``key-x=acct-x,key-y=acct-y`` (added to the demo keys
    ``key-ada`` and ``key-bob``); the system tests' load runs on such accounts.
``JOBCREDITS_LEASE``
    seconds a first call may run before it is presumed dead (default 60); the
    system tests use a few seconds, so that a killed worker's charges are
    refunded soon.
``JOBCREDITS_FAIL_OPEN``
    ``1`` lets calls through *uncharged* while the store is unreachable
    (logged) instead of answering 503; the system tests' Redis outage runs
    both ways.
``SUMMARIZE_LATENCY``
    seconds each call sleeps, standing in for the upstream model (default 0).
``EXAMPLE_DATABASE``
    the project's ``default`` database, as the JSON of a ``DATABASES`` entry,
    e.g. ``{"ENGINE": "django.db.backends.sqlite3", "NAME": "site.db"}``
    (default: none). With ``JOBCREDITS_URL=django://default`` the ledger's
    tables live there: create them with ``manage.py migrate`` before starting
    the workers. The system tests run the load on SQLite and PostgreSQL so.
"""

from __future__ import annotations

import json
import os
from importlib.util import find_spec
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-example-only")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = ["jobcredits_plugin.django"]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]
ROOT_URLCONF = "jobsite.urls"
WSGI_APPLICATION = "jobsite.wsgi.application"
DATABASES: dict[str, dict[str, object]] = (
    {"default": json.loads(os.environ["EXAMPLE_DATABASE"])}
    if os.environ.get("EXAMPLE_DATABASE")
    else {}
)
USE_TZ = True

#: Whether prometheus_client is installed (the "prometheus" extra).
PROMETHEUS = find_spec("prometheus_client") is not None

JOBCREDITS = {
    # One SQLite file for every worker: a job is charged once whichever
    # worker serves its calls. (memory:// would give each worker its own.)
    "URL": os.environ.get("JOBCREDITS_URL", f"sqlite:///{BASE_DIR / 'jobcredits.db'}"),
    "LEASE": float(os.environ.get("JOBCREDITS_LEASE", "60")),
    "FAIL_OPEN": os.environ.get("JOBCREDITS_FAIL_OPEN", "") == "1",
    "BALANCES": True,  # load credits with: manage.py jobcredits grant ada 100
    "ACCOUNT": "jobsite.accounts.api_key_account",
    # Hook plugins, by import string ("package.module:attribute" or
    # "package.module.attribute"; a class is instantiated). The Prometheus
    # counters that /metrics serves need the "prometheus" extra.
    "PLUGINS": ["jobsite.metrics:prometheus"] if PROMETHEUS else [],
}

#: API key -> account. A real project keeps these in its database.
API_KEYS = {"key-ada": "ada", "key-bob": "bob"}
API_KEYS.update(
    (key.strip(), account.strip())
    for key, _, account in (
        item.partition("=") for item in os.environ.get("EXAMPLE_API_KEYS", "").split(",")
    )
    if key.strip()
)

#: Seconds each call sleeps, standing in for the upstream model.
SUMMARIZE_LATENCY = float(os.environ.get("SUMMARIZE_LATENCY", "0"))
