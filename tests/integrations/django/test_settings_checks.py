"""settings.JOBCREDITS: get_ledger() and the system checks."""

from __future__ import annotations

import threading
from typing import Any

import pytest

pytest.importorskip("django")

from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from jobcredits_plugin import InvalidArgument, StoreUnavailable
from jobcredits_plugin.django import aget_ledger, get_ledger, use_ledger
from jobcredits_plugin.stores import MemoryStore, SQLiteStore
from jobcredits_plugin.testing import RecordingPlugin, make_ledger

from . import views

ACCOUNT = "tests.integrations.django.views.account_from_header"


def ids(**overrides: Any) -> list[str]:
    """The jobcredits.* check ids run_checks() reports under these settings."""
    with override_settings(**overrides):
        return sorted(m.id for m in checks.run_checks() if m.id.startswith("jobcredits."))


def messages(**overrides: Any) -> list[checks.CheckMessage]:
    with override_settings(**overrides):
        return [m for m in checks.run_checks() if m.id.startswith("jobcredits.")]


# -- get_ledger --------------------------------------------------------------------------


def test_get_ledger_is_built_from_settings(jc_settings: Any, tmp_path: Any) -> None:
    """URL, TTL, LEASE, BALANCES and MAX_USES reach the ledger."""
    jc_settings(
        URL=f"sqlite:///{tmp_path / 'jobs.db'}", TTL=600, LEASE=30, BALANCES=True, MAX_USES=3
    )
    ledger = get_ledger()
    assert isinstance(ledger.store, SQLiteStore)
    assert (ledger.ttl, ledger.lease, ledger.balances, ledger.max_uses) == (600, 30, True, 3)
    assert (tmp_path / "jobs.db").exists()


def test_get_ledger_defaults_to_memory(jc_settings: Any) -> None:
    """With no settings, a memory ledger with the documented defaults."""
    with override_settings(JOBCREDITS=None):
        ledger = get_ledger()
        assert isinstance(ledger.store, MemoryStore)
        assert (ledger.ttl, ledger.lease, ledger.balances, ledger.max_uses) == (
            3600,
            60,
            False,
            None,
        )


def test_get_ledger_is_cached(jc_settings: Any) -> None:
    """The same ledger for every call in the process."""
    jc_settings()
    assert get_ledger() is get_ledger()


def test_use_ledger_puts_a_test_ledger_in_place_and_back(jc_settings: Any) -> None:
    """Inside use_ledger, get_ledger() (and so every charged view) answers the
    given ledger, nested blocks the innermost; after it, the settings' ledger
    is back, open, and the given one is left for its owner to close."""
    import asyncio

    jc_settings()
    settings_ledger = get_ledger()
    with make_ledger() as outer, make_ledger() as inner:
        with use_ledger(outer) as used:
            assert used is outer
            assert get_ledger() is outer
            with use_ledger(inner):
                assert get_ledger() is inner
                assert asyncio.run(aget_ledger()) is inner
            assert get_ledger() is outer
        assert get_ledger() is settings_ledger
        assert outer.lookup("acct", "job") is None  # not closed by the block
    settings_ledger.lookup("acct", "job")  # still open


def test_use_ledger_survives_a_settings_change(jc_settings: Any) -> None:
    """override_settings inside the block rebuilds the settings' ledger, never
    closes or replaces the test's."""
    jc_settings()
    with make_ledger() as mine, use_ledger(mine):
        jc_settings(BALANCES=True)
        assert get_ledger() is mine
        mine.lookup("acct", "job")
    assert get_ledger().balances


def test_use_ledger_takes_a_ledger_only() -> None:
    with pytest.raises(InvalidArgument, match="must be a Ledger"), use_ledger("memory://"):  # type: ignore[arg-type]
        pass


def test_aget_ledger_returns_the_same_ledger(jc_settings: Any) -> None:
    """The async accessor builds (in a thread) and returns the process's ledger."""
    import asyncio

    jc_settings()
    built = asyncio.run(aget_ledger())
    assert built is get_ledger()
    assert asyncio.run(aget_ledger()) is built


def test_get_ledger_concurrent_first_calls_share_one_ledger(jc_settings: Any) -> None:
    """Threads racing to build the ledger all get the same one."""
    jc_settings()
    barrier = threading.Barrier(8)
    got: list[Any] = []

    def worker() -> None:
        barrier.wait()
        got.append(get_ledger())

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(got) == 8
    assert all(ledger is got[0] for ledger in got)


def test_settings_change_rebuilds_and_closes_the_old_ledger(jc_settings: Any) -> None:
    """override_settings(JOBCREDITS=...) gives a new ledger; the old one is closed."""
    jc_settings(TTL=100)
    old = get_ledger()
    with override_settings(JOBCREDITS={"TTL": 200}):
        new = get_ledger()
        assert new is not old
        assert new.ttl == 200
    with pytest.raises(StoreUnavailable):
        old.charge("a", "j")
    assert get_ledger().ttl == 100


def test_other_settings_changes_keep_the_ledger(jc_settings: Any) -> None:
    """Only a change of JOBCREDITS drops the cache."""
    jc_settings()
    ledger = get_ledger()
    with override_settings(DEBUG=True):
        assert get_ledger() is ledger


def test_plugins_from_settings_receive_events(jc_settings: Any) -> None:
    """PLUGINS: a dotted path to an object is registered; to a class, instantiated."""
    jc_settings(
        PLUGINS=[
            "tests.integrations.django.views.EVENTS",
            "jobcredits_plugin.testing.RecordingPlugin",
        ]
    )
    views.EVENTS.clear()
    ledger = get_ledger()
    ledger.charge("acct", "job-1")
    assert views.EVENTS.kinds() == ["charge"]
    instances = [p for p in ledger.plugin_manager.get_plugins() if isinstance(p, RecordingPlugin)]
    assert len(instances) == 2
    assert all(p.kinds() == ["charge"] for p in instances)


def test_invalid_settings_raise_improperly_configured_at_runtime(jc_settings: Any) -> None:
    """A server that never ran the checks still refuses a bad setting, naming it."""
    jc_settings(TIL=60)
    with pytest.raises(ImproperlyConfigured, match="did you mean 'TTL'"):
        get_ledger()


# -- system checks -----------------------------------------------------------------------


def test_valid_settings_pass_the_checks(tmp_path: Any) -> None:
    """A complete, valid setting yields no jobcredits message."""
    conf = {
        "URL": f"sqlite:///{tmp_path / 'jobs.db'}?timeout=2",
        "TTL": 3600,
        "LEASE": 60,
        "BALANCES": True,
        "MAX_USES": 10,
        "JOB_HEADER": "X-Recap-Job-Id",
        "ACCOUNT": ACCOUNT,
        "ON_MISSING": "reject",
        "FAIL_OPEN": False,
        "PLUGINS": ["jobcredits_plugin.testing.RecordingPlugin"],
    }
    assert ids(JOBCREDITS=conf) == []
    assert not (tmp_path / "jobs.db").exists()  # checking opened no store


def test_memory_store_without_debug_warns_w001() -> None:
    """DEBUG off with memory:// (or in-memory SQLite): W001, whose hint explains workers."""
    for url in ("memory://", "sqlite://", "sqlite:///:memory:"):
        found = messages(DEBUG=False, JOBCREDITS={"URL": url, "ACCOUNT": ACCOUNT})
        assert [m.id for m in found] == ["jobcredits.W001"], url
        assert found[0].level == checks.WARNING
        assert "worker" in found[0].hint
        assert "once in every worker" in found[0].hint


def test_memory_store_with_debug_does_not_warn() -> None:
    """In development (DEBUG on) one runserver process is the norm: no W001."""
    assert ids(DEBUG=True, JOBCREDITS={"ACCOUNT": ACCOUNT}) == []


def test_default_settings_warn_w001() -> None:
    """No URL at all means memory://, so DEBUG off warns too."""
    assert ids(DEBUG=False, JOBCREDITS={"ACCOUNT": ACCOUNT}) == ["jobcredits.W001"]


def test_shared_store_does_not_warn(tmp_path: Any) -> None:
    """A SQLite file is shared by the workers of a host: no W001."""
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    assert ids(DEBUG=False, JOBCREDITS={"URL": url, "ACCOUNT": ACCOUNT}) == []


@pytest.mark.parametrize(
    "url",
    [
        "nope",
        "ftp://example.com/jobs",
        "sqlite://host/jobs.db",
        "sqlite:///jobs.db?nosuchoption=1",
        "memory://somewhere",
        "mongodb://localhost:27017/jobs",
        42,
        # found by the hostile-input sweep: a lone surrogate made the check
        # itself raise UnicodeEncodeError; a NUL in a SQLite path passed the
        # check (it probes :memory:) and failed only at runtime
        "postgresql://postgres@127.0.0.1/x?x=\udc80",
        "postgresql://postgres:pw@127.0.0.1/\udc80",
        "sqlite:///a\x00b.db",
        "sqlite:///a%00b.db",
    ],
)
def test_invalid_url_is_e001(url: Any) -> None:
    """A URL that names no store of this release: E001."""
    found = messages(DEBUG=True, JOBCREDITS={"URL": url, "ACCOUNT": ACCOUNT})
    assert [m.id for m in found] == ["jobcredits.E001"]
    assert found[0].level == checks.ERROR


@pytest.mark.parametrize(
    ("account", "fragment"),
    [
        ("no_such_module.account", "does not import"),
        ("tests.integrations.django.views.no_such_function", "does not import"),
        ("tests.integrations.django.views.SEEN", "is not callable"),
        (42, "must be"),
    ],
)
def test_bad_account_is_e002(account: Any, fragment: str) -> None:
    """ACCOUNT that does not import or is not callable: E002."""
    found = messages(DEBUG=True, JOBCREDITS={"ACCOUNT": account})
    assert [m.id for m in found] == ["jobcredits.E002"]
    assert fragment in found[0].msg


def test_account_may_be_a_callable_object() -> None:
    """ACCOUNT may also be the callable itself rather than its path."""
    assert ids(DEBUG=True, JOBCREDITS={"ACCOUNT": lambda request: "a"}) == []


def test_bad_on_missing_is_e003() -> None:
    """ON_MISSING other than "charge"/"reject": E003."""
    assert ids(DEBUG=True, JOBCREDITS={"ACCOUNT": ACCOUNT, "ON_MISSING": "charg"}) == [
        "jobcredits.E003"
    ]


def test_unknown_key_is_e004_with_a_suggestion() -> None:
    """A typo in a key: E004, and the hint names the key meant."""
    found = messages(DEBUG=True, JOBCREDITS={"ACCOUNT": ACCOUNT, "TIL": 60, "BALANCE": True})
    assert [m.id for m in found] == ["jobcredits.E004", "jobcredits.E004"]
    assert [m.hint for m in found] == ["did you mean 'BALANCES'?", "did you mean 'TTL'?"]


@pytest.mark.parametrize(
    "conf",
    [
        {"TTL": -1},
        {"TTL": 10, "LEASE": 60},
        {"LEASE": "soon"},
        {"MAX_USES": 0},
        {"BALANCES": "yes"},
        {"FAIL_OPEN": 1},
        {"JOB_HEADER": "X Job Id"},
    ],
)
def test_bad_values_are_e005(conf: dict[str, Any]) -> None:
    """Bad TTL/LEASE/MAX_USES/BALANCES/FAIL_OPEN/JOB_HEADER: E005."""
    assert ids(DEBUG=True, JOBCREDITS={"ACCOUNT": ACCOUNT, **conf}) == ["jobcredits.E005"]


def test_setting_not_a_dict_is_e005() -> None:
    """JOBCREDITS must be a dict."""
    assert "jobcredits.E005" in ids(DEBUG=True, JOBCREDITS="memory://")


@pytest.mark.parametrize("plugins", [["no_such_module.Plugin"], "jobcredits_plugin.testing"])
def test_bad_plugins_are_e006(plugins: Any) -> None:
    """A PLUGINS entry that does not import, or PLUGINS not a list: E006."""
    assert ids(DEBUG=True, JOBCREDITS={"ACCOUNT": ACCOUNT, "PLUGINS": plugins}) == [
        "jobcredits.E006"
    ]


def test_default_account_without_auth_middleware_warns_w002() -> None:
    """No ACCOUNT and no AuthenticationMiddleware: every call would be 401, so W002."""
    assert ids(DEBUG=True, JOBCREDITS={}, MIDDLEWARE=[]) == ["jobcredits.W002"]
    auth = [
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
    ]
    assert ids(DEBUG=True, JOBCREDITS={}, MIDDLEWARE=auth) == []


def test_checks_are_tagged_jobcredits() -> None:
    """`manage.py check --tag jobcredits` runs just these checks."""
    with override_settings(DEBUG=False, JOBCREDITS={"ACCOUNT": ACCOUNT}):
        found = checks.run_checks(tags=["jobcredits"])
    assert [m.id for m in found] == ["jobcredits.W001"]
