"""Settings of the example project: a paid "summarize" API in two calls.

Only what the example needs: no database (accounts come from API keys), and
the job ledger in a SQLite file every worker process shares.
"""

from __future__ import annotations

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
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

#: Whether prometheus_client is installed (the "prometheus" extra).
PROMETHEUS = find_spec("prometheus_client") is not None

JOBCREDITS = {
    # One SQLite file for every worker: a job is charged once whichever
    # worker serves its calls. (memory:// would give each worker its own.)
    "URL": os.environ.get("JOBCREDITS_URL", f"sqlite:///{BASE_DIR / 'jobcredits.db'}"),
    "BALANCES": True,  # load credits with: manage.py jobcredits grant ada 100
    "ACCOUNT": "jobsite.accounts.api_key_account",
    # Hook plugins, by import string ("package.module:attribute" or
    # "package.module.attribute"; a class is instantiated). The Prometheus
    # counters that /metrics serves need the "prometheus" extra.
    "PLUGINS": ["jobsite.metrics:prometheus"] if PROMETHEUS else [],
}

#: API key -> account. A real project keeps these in its database.
API_KEYS = {"key-ada": "ada", "key-bob": "bob"}
