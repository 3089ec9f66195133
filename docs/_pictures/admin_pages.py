"""Screenshots of the ledger's admin pages for docs/django.md.

Builds a throwaway Django project around DjangoStore (a SQLite file in a
temporary directory), fills its ledger with a few jobs, grants and a cursor
on a fixed clock, serves it on a local port and has headless Chromium
(``chromium`` from the system's packages) photograph each list, logged in
as a staff user by a middleware of this script. Run it after changing the
admin: ``python docs/_pictures/admin_pages.py``; it writes
``docs/_static/admin-*.png``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

HERE = Path(__file__).resolve().parent
STATIC = HERE.parent / "_static"
PAGES = {
    "admin-jobs.png": "/admin/jobcredits/job/",
    "admin-balances.png": "/admin/jobcredits/balance/",
    "admin-journal.png": "/admin/jobcredits/journalentry/",
    "admin-cursors.png": "/admin/jobcredits/journalcursor/",
}


def log_in_as_admin(get_response: Any) -> Any:
    """Every request is the staff user's (the pictures need no login page)."""

    def middleware(request: Any) -> Any:
        from django.contrib.auth.models import User

        request.user = User.objects.get(username="admin")
        return get_response(request)

    return middleware


def configure(directory: Path) -> None:
    import django
    from django.conf import settings

    settings.configure(
        SECRET_KEY="pictures-only",  # noqa: S106 - a throwaway project
        DEBUG=True,
        ALLOWED_HOSTS=["127.0.0.1"],
        USE_TZ=True,
        INSTALLED_APPS=[
            "django.contrib.admin",
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.messages",
            "django.contrib.staticfiles",
            "jobcredits_plugin.django",
        ],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            f"{__name__}.log_in_as_admin",
            "django.contrib.messages.middleware.MessageMiddleware",
        ],
        SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies",
        ROOT_URLCONF=__name__,
        STATIC_URL="/static/",
        DATABASES={
            "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(directory / "db")}
        },
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        TEMPLATES=[
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
        ],
        JOBCREDITS={"URL": "django://default", "BALANCES": True},
    )
    django.setup()


def fill() -> None:
    """A few accounts' jobs, grants and a cursor, on a fixed clock."""
    from django.contrib.auth.models import User
    from django.core.management import call_command

    from jobcredits_plugin import Ledger
    from jobcredits_plugin.django import DjangoStore
    from jobcredits_plugin.testing import FakeClock

    call_command("migrate", verbosity=0)
    User.objects.create_superuser("admin", "admin@example.com", "unused")
    clock = FakeClock(1_767_225_600.0)  # 2026-01-01T00:00:00Z
    with Ledger(DjangoStore("default"), balances=True, clock=clock) as ledger:
        for account, credits in (("acme", 120), ("globex", 40), ("initech", 5)):
            ledger.grant(account, credits)
        for n, (account, scope) in enumerate(
            [
                ("acme", "summarize"),
                ("globex", "summarize"),
                ("acme", "translate"),
                ("initech", "summarize"),
                ("acme", "summarize"),
            ]
        ):
            clock.advance(37)
            c = ledger.charge(account, f"8f1c2d3e-{n:04d}", scope=scope, cost=2, tier="pro")
            if n != 3:  # one left pending: its first call is still running
                ledger.confirm(account, c.record.job_id, scope=scope, charge_id=c.record.charge_id)
            if n in (0, 4):
                ledger.charge(account, c.record.job_id, scope=scope, cost=2)  # a follow-up
        clock.advance(30)
        ledger.refund("globex", "8f1c2d3e-0001", scope="summarize")
        ledger.cursor("billing-export").advance(ledger.journal()[4])


def urlpatterns_() -> list[Any]:
    from django.contrib import admin
    from django.urls import path

    return [path("admin/", admin.site.urls)]


def __getattr__(name: str) -> Any:
    if name == "urlpatterns":  # read by Django once the project is set up
        return urlpatterns_()
    raise AttributeError(name)


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def main() -> int:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("needs chromium (apt-get install chromium)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        configure(Path(tmp))
        fill()
        from django.contrib.staticfiles.handlers import StaticFilesHandler
        from django.core.wsgi import get_wsgi_application

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = make_server(
            "127.0.0.1", port, StaticFilesHandler(get_wsgi_application()), handler_class=_Quiet
        )
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            for name, page in PAGES.items():
                subprocess.run(
                    [
                        chromium,
                        "--headless",
                        "--no-sandbox",
                        "--disable-gpu",
                        "--hide-scrollbars",
                        "--window-size=1500,600",
                        f"--screenshot={STATIC / name}",
                        f"http://127.0.0.1:{port}{page}",
                    ],
                    check=True,
                    capture_output=True,
                    timeout=120,
                )
                print(f"wrote {STATIC / name}")
        finally:
            server.shutdown()
            server.server_close()
    return 0


if __name__ == "__main__":
    sys.modules.setdefault(__name__, sys.modules["__main__"])
    raise SystemExit(main())
