"""settings.JOBCREDITS and the view decorator's options, fed every hostile
value of tests/test_hostile_input.py (issue 12, "done when").

Each key of the setting gets each value: ``manage.py check`` must report it
(never raise), ``get_ledger()`` must build the ledger or raise
ImproperlyConfigured, and the two must agree: what the checks pass, the
runtime builds; what they flag, it refuses. A documented bad value must be
flagged. The view decorator's options are built, or ConfigurationError.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

pytest.importorskip("django")

from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from jobcredits_plugin import Ledger
from jobcredits_plugin.django import charges_credit, get_ledger
from jobcredits_plugin.django._conf import DEFAULTS
from tests.test_hostile_input import (
    HOSTILE,
    LEDGER_REFUSES,
    ROUTE_REFUSES,
    SECRET,
    Failures,
    _bad_count,
    _bad_flag,
    _bad_header,
    _bad_retry_after_max,
    _bad_type_base,
    describe,
    judge_setup,
    keyword_options,
    warnings_ignored,
)

from . import settings as test_settings

#: Whole URLs that once broke the checks (a lone surrogate raised
#: UnicodeEncodeError from PostgreSQL's URL parsing) or could leak a password.
HOSTILE_URLS = [
    "postgresql://postgres@127.0.0.1/x?x=\udc80",
    f"postgresql://postgres:{SECRET}@127.0.0.1/\udc80",
    f"postgresql://postgres@127.0.0.1/x?password={SECRET}&sslmode=bogus",
    f"redis://:{SECRET}@127.0.0.1:6379/0?password={SECRET}",
    "redis://127.0.0.1:6379/0?db=-1",
    "sqlite:///a\x00b.db",
    "sqlite:///jobs.db?timeout=inf",
    "sqlite:///jobs.db?prune_batch=0",
    "memory://?journal_limit=99999999999999999999",
]


def _refuses(key: str, value: Any) -> bool:
    """What the setting must flag: the documented checks (Django settings
    are Python values, so no string is read as a number or a flag)."""
    if key in ("TTL", "LEASE"):
        return LEDGER_REFUSES[key.lower()](value)
    if key == "MAX_USES":
        return _bad_count(value)
    if key in ("BALANCES", "FAIL_OPEN", "ENTRY_POINTS"):
        return _bad_flag(value)
    if key == "JOB_HEADER":
        return _bad_header(value)
    if key == "ON_MISSING":
        return value not in ("charge", "reject")
    if key == "URL":
        return not isinstance(value, str) or "://" not in value
    if key == "ACCOUNT":
        return value is not None and not callable(value)
    if key == "PLUGINS":
        return value not in ([], ())
    if key == "PROBLEM_TYPE_BASE":
        return _bad_type_base(value)
    if key == "RETRY_AFTER_MAX":
        return _bad_retry_after_max(value)
    return False


def judge_settings(conf: dict[str, Any], refuse: bool) -> str | None:
    """The checks and the runtime on one JOBCREDITS value."""
    with override_settings(JOBCREDITS=conf), warnings_ignored():
        try:
            found = [m for m in checks.run_checks() if m.id.startswith("jobcredits.E")]
        except Exception as exc:
            return f"manage.py check raised {describe(exc)}"
        shown = " ".join(m.msg + " " + (m.hint or "") for m in found)
        if SECRET in shown:
            return "a check message shows the password"
        try:
            ledger = get_ledger()
        except ImproperlyConfigured as exc:
            if SECRET in str(exc):
                return "ImproperlyConfigured shows the password"
            if not found:
                return f"the checks passed it, get_ledger() refused: {describe(exc)}"
            return None
        except Exception as exc:
            return f"get_ledger() raised {describe(exc)}"
        if not isinstance(ledger, Ledger):
            return f"get_ledger() returned {ledger!r}"
        if found:
            return f"flagged ({found[0].id}) but get_ledger() built it"
        if refuse:
            return "accepted"
    return None


def test_every_setting_takes_every_hostile_value() -> None:
    failures = Failures()
    base = dict(test_settings.JOBCREDITS)
    for key in DEFAULTS:
        values = HOSTILE + HOSTILE_URLS if key == "URL" else HOSTILE
        for value in values:
            problem = judge_settings({**base, key: value}, _refuses(key, value))
            if problem:
                failures.add(f"JOBCREDITS[{key!r}]", value, problem)
    for value in HOSTILE:
        problem = judge_settings(value, not isinstance(value, dict) and value is not None)
        if problem:
            failures.add("JOBCREDITS", value, problem)
    assert not failures, str(failures)


def _view(request: Any) -> Any:
    return None


def test_view_decorator_options_take_every_hostile_value() -> None:
    """charges_credit(option=hostile) on a view: decorated, or
    ConfigurationError when the app is defined."""
    failures = Failures()
    for option in keyword_options(charges_credit):
        for value in HOSTILE:
            problem = judge_setup(
                lambda o=option, v=value: charges_credit(**{o: v})(_view),
                refuse=ROUTE_REFUSES[option](value) if option in ROUTE_REFUSES else False,
            )
            if problem:
                failures.add(f"django charges_credit({option}=...)", value, problem)
    assert not failures, str(failures)


@pytest.mark.parametrize("path", ["/charged", "/async/charged"])
def test_hostile_headers_through_django_views(dj_ledger: Ledger, path: str) -> None:
    """A client's job id and account headers (control characters, long,
    blank, non-ASCII) through a sync and an async charged view: 200, or the
    documented 4xx as problem+json with nothing recorded; never a 5xx."""
    from django.test import AsyncClient, Client

    from tests.test_hostile_input import HEADER_VALUES, _expected_status

    dj_ledger.grant("acct", 1_000_000)
    failures = Failures()
    for value in HEADER_VALUES:
        for field in ("job", "account"):
            headers = {"X-Job-Id": f"job-{uuid.uuid4().hex[:12]}", "X-Account": "acct"}
            headers["X-Job-Id" if field == "job" else "X-Account"] = value
            expected = _expected_status(field, value)
            where = f"django {path}, {field} header"
            before = (dj_ledger.snapshot(), dj_ledger.balance("acct"))
            try:
                if path.startswith("/async"):
                    response = asyncio.run(
                        AsyncClient(raise_request_exception=False).post(path, headers=headers)
                    )
                else:
                    response = Client(raise_request_exception=False).post(path, headers=headers)
            except Exception as exc:
                failures.add(where, value, f"raw {describe(exc)}")
                continue
            status = response.status_code
            if status not in expected:
                failures.add(where, value, f"answered {status}, not {sorted(expected)}")
            elif status >= 400:
                if response["Content-Type"] != "application/problem+json":
                    failures.add(where, value, f"{status} as {response['Content-Type']}")
                if (dj_ledger.snapshot(), dj_ledger.balance("acct")) != before:
                    failures.add(where, value, f"{status} but recorded something")
    assert not failures, str(failures)
