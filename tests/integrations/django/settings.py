"""Django settings for the adapter's tests (applied by :func:`configure_once`
with ``settings.configure``, so that no DJANGO_SETTINGS_MODULE leaks into the
environment of other tests or of the subprocesses they start)."""

import importlib.util

HAVE_DRF = importlib.util.find_spec("rest_framework") is not None

SECRET_KEY = "jobcredits-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "localhost"]
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    *(["rest_framework"] if HAVE_DRF else []),
    "jobcredits_plugin.django",
]
# Signed-cookie sessions: the auth middleware works without a database table.
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "tests.integrations.django.urls"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["tests.integrations.django.drf_auth.TokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": [],
    "UNAUTHENTICATED_USER": None,
}
# Most tests name the account in an X-Account header; the default account
# (request.user) has tests of its own.
JOBCREDITS = {"ACCOUNT": "tests.integrations.django.views.account_from_header"}


def configure_once() -> None:
    """Configure this process's Django with these settings, unless it is
    already (conftest.py here and tests/adapters/conftest.py both call it;
    whichever pytest loads first does the work)."""
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(**{name: value for name, value in globals().items() if name.isupper()})
    django.setup()
