"""Django settings for the adapter's tests (applied by :func:`configure_once`
with ``settings.configure``, so that no DJANGO_SETTINGS_MODULE leaks into the
environment of other tests or of the subprocesses they start)."""

import atexit
import importlib.util
import os
import shutil
import tempfile
import urllib.parse
import uuid

HAVE_DRF = importlib.util.find_spec("rest_framework") is not None

SECRET_KEY = "jobcredits-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "localhost"]
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.messages",
    *(["rest_framework"] if HAVE_DRF else []),
    "jobcredits_plugin.django",
]
# Signed-cookie sessions: the auth middleware works without a database table.
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
# For the admin pages (tests/integrations/django/test_admin.py).
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
ROOT_URLCONF = "tests.integrations.django.urls"


def store_databases(sqlite_path: str, postgres_url: str, postgres_schema: str) -> dict:
    """The databases DjangoStore's tests use (tests/stores/_django.py): a
    SQLite file that several processes can share, and a PostgreSQL database
    whose tables live in a schema of this run (``search_path``), so that runs
    sharing a server never see each other's rows. A child process of a test
    rebuilds the same aliases from the same three values."""
    pg = urllib.parse.urlsplit(postgres_url)
    databases: dict = {
        # A long busy timeout: four processes on two slow cores take turns.
        "jc_sqlite": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": sqlite_path,
            "OPTIONS": {"timeout": 120},
        },
        "jc_postgres": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": urllib.parse.unquote(pg.path.lstrip("/")) or "postgres",
            "USER": urllib.parse.unquote(pg.username or ""),
            "PASSWORD": urllib.parse.unquote(pg.password or ""),
            "HOST": pg.hostname or "",
            "PORT": str(pg.port or ""),
            "OPTIONS": {"options": f"-c search_path={postgres_schema}"},
        },
    }
    # The same database under a second alias, as a project whose views run
    # in ATOMIC_REQUESTS transactions gives the ledger (docs/django.md).
    databases["jc_postgres_ledger"] = dict(databases["jc_postgres"])
    mysql_url = os.environ.get("JOBCREDITS_TEST_MYSQL_URL")
    if mysql_url:
        # MySQL/MariaDB, only when a server is named (none is started for
        # the tests): a database of this run, named after the schema.
        my = urllib.parse.urlsplit(mysql_url)
        databases["jc_mysql"] = {
            "ENGINE": "django.db.backends.mysql",
            "NAME": postgres_schema,
            "USER": urllib.parse.unquote(my.username or ""),
            "PASSWORD": urllib.parse.unquote(my.password or ""),
            "HOST": my.hostname or "",
            "PORT": str(my.port or ""),
            "OPTIONS": {"charset": "utf8mb4", "isolation_level": "read committed"},
        }
    return databases


def _store_database_values() -> tuple[str, str, str]:
    directory = tempfile.mkdtemp(prefix="jc-django-store-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return (
        os.path.join(directory, "store.db"),
        os.environ.get("JOBCREDITS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        f"jcdjango_{uuid.uuid4().hex[:12]}",
    )


#: (SQLite path, PostgreSQL URL, schema) of this process's store databases.
STORE_DATABASES = _store_database_values()
DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
    **store_databases(*STORE_DATABASES),
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["tests.integrations.django.drf_auth.TokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": [],
    "UNAUTHENTICATED_USER": None,
}
# Most tests name the account in an X-Account header; the default account
# (request.user) has tests of its own.
JOBCREDITS = {"ACCOUNT": "tests.integrations.django.views.account_from_header"}


def configure_once(store_databases_from: tuple[str, str, str] | None = None) -> None:
    """Configure this process's Django with these settings, unless it is
    already (conftest.py here, tests/adapters/conftest.py and
    tests/stores/conftest.py call it; whichever pytest loads first does the
    work). A child process passes its parent's ``STORE_DATABASES``."""
    import django
    from django.conf import settings

    if not settings.configured:
        values = {name: value for name, value in globals().items() if name.isupper()}
        if store_databases_from is not None:
            values["DATABASES"] = {
                **values["DATABASES"],
                **store_databases(*store_databases_from),
            }
        settings.configure(**values)
    django.setup()
