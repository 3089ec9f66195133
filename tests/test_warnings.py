"""The adapters warn when they charge on a store that lives in this process
(issue 12, item 17): with several worker processes each would charge the same
job again. A store the app passed in as an object is its choice and is never
warned about; debug and testing modes are quiet. A Flask app that never says
who pays fails in ``init_app``, not at its first request."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import jobcredits_plugin
from jobcredits_plugin import (
    ConfigurationError,
    InProcessStoreWarning,
    JobCreditsError,
    JobCreditsWarning,
    Ledger,
    header,
)
from jobcredits_plugin.stores import MemoryStore
from jobcredits_plugin.testing import make_ledger

ROUTES = {"POST /run": {"scope": "s"}}


@contextmanager
def no_in_process_warning() -> Iterator[None]:
    """Fail on an InProcessStoreWarning, whatever the filters around the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", InProcessStoreWarning)
        yield


def assert_points_here(record: Any) -> None:
    """The warning names the app's own line (this file), not the package's."""
    assert len(record) == 1
    assert Path(record[0].filename).resolve() == Path(__file__).resolve()


def test_the_warning_classes_are_exported() -> None:
    assert issubclass(JobCreditsWarning, UserWarning)
    assert issubclass(InProcessStoreWarning, JobCreditsWarning)
    assert {"JobCreditsWarning", "InProcessStoreWarning"} <= set(jobcredits_plugin.__all__)


@pytest.fixture(autouse=True)
def _framework_installed(request: pytest.FixtureRequest) -> None:
    """The Flask and FastAPI tests skip where their framework is not installed
    (tox's ``noframework``): importing the adapter would name the extra."""
    for framework in ("flask", "fastapi"):
        if request.node.name.startswith(f"test_{framework}_"):
            pytest.importorskip(framework)


@pytest.fixture(autouse=True)
def _close_every_ledger(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Close each ledger a test here builds (directly or through an adapter):
    an unclosed SQLite connection is a ResourceWarning on Python 3.13, which
    the suite's ``filterwarnings = error`` turns into another test's failure."""
    built: list[Ledger] = []
    init = Ledger.__init__

    def recording_init(self: Ledger, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(Ledger, "__init__", recording_init)
    yield
    for ledger in built:
        ledger.close()


def in_process_ledgers() -> dict[str, Callable[[], Ledger]]:
    """Ledgers on the in-process store nobody chose as an object."""
    return {
        "Ledger()": Ledger,
        "memory://": lambda: Ledger.from_url("memory://"),
        "sqlite://": lambda: Ledger.from_url("sqlite://"),
        "sqlite:///:memory:": lambda: Ledger.from_url("sqlite:///:memory:"),
    }


def chosen_ledgers(tmp_path: Path) -> dict[str, Callable[[], Ledger]]:
    """Ledgers the app built on purpose: a store object, or a shared store."""
    return {
        "make_ledger()": make_ledger,
        "Ledger(MemoryStore())": lambda: Ledger(MemoryStore()),
        "sqlite file": lambda: Ledger.from_url(f"sqlite:///{tmp_path / 'jobs.db'}"),
    }


# -- WSGI and ASGI middleware -----------------------------------------------------------


def wsgi_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [])
    return [b"ok"]


async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("not called")


def middleware_kinds() -> dict[str, Callable[[Ledger], object]]:
    from jobcredits_plugin.asgi import JobCreditsMiddleware as ASGIMiddleware
    from jobcredits_plugin.wsgi import JobCreditsMiddleware as WSGIMiddleware

    return {
        "wsgi": lambda ledger: WSGIMiddleware(
            wsgi_app, ledger, ROUTES, account=lambda environ: "acct"
        ),
        "asgi": lambda ledger: ASGIMiddleware(
            asgi_app, ledger, ROUTES, account=lambda scope: "acct"
        ),
    }


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
@pytest.mark.parametrize("ledger_kind", list(in_process_ledgers()))
def test_middleware_warns_on_an_in_process_default(kind: str, ledger_kind: str) -> None:
    ledger = in_process_ledgers()[ledger_kind]()
    with pytest.warns(InProcessStoreWarning, match="Ledger.from_url") as record:
        middleware_kinds()[kind](ledger)
    assert_points_here(record)
    message = str(record[0].message)
    assert "JobCreditsMiddleware" in message
    assert "worker" in message


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
@pytest.mark.parametrize("ledger_kind", ["make_ledger()", "Ledger(MemoryStore())", "sqlite file"])
def test_middleware_is_quiet_on_a_chosen_store(kind: str, ledger_kind: str, tmp_path: Path) -> None:
    ledger = chosen_ledgers(tmp_path)[ledger_kind]()
    try:
        with no_in_process_warning():
            middleware_kinds()[kind](ledger)
    finally:
        ledger.close()


# -- Flask ------------------------------------------------------------------------------


def flask_app(**config: Any) -> Any:
    flask = pytest.importorskip("flask")
    app = flask.Flask(__name__)
    app.config.update(config)
    return app


def test_flask_warns_on_the_default_url() -> None:
    from jobcredits_plugin.flask import JobCredits, get_ledger

    app = flask_app(JOBCREDITS_ACCOUNT=header("X-Account"))
    with pytest.warns(InProcessStoreWarning, match=r"JOBCREDITS_URL") as record:
        JobCredits(app)
    assert_points_here(record)
    message = str(record[0].message)
    assert repr(app.name) in message
    assert "gunicorn -w 2" in message
    assert "sqlite:////" in message  # a way out, spelled out
    assert isinstance(get_ledger(app).store, MemoryStore)


def test_flask_warns_in_init_app_too() -> None:
    from jobcredits_plugin.flask import JobCredits

    ext = JobCredits()
    app = flask_app(JOBCREDITS_ACCOUNT=header("X-Account"))
    with pytest.warns(InProcessStoreWarning) as record:
        ext.init_app(app)
    assert_points_here(record)


@pytest.mark.parametrize("url", ["memory://", "memory://?journal=false", "sqlite:///:memory:"])
def test_flask_warns_on_a_url_naming_an_in_process_store(url: str) -> None:
    """As Django's jobcredits.W001 does for JOBCREDITS['URL']."""
    from jobcredits_plugin.flask import JobCredits

    app = flask_app(JOBCREDITS_URL=url, JOBCREDITS_ACCOUNT=header("X-Account"))
    with pytest.warns(InProcessStoreWarning):
        JobCredits(app)


def test_flask_warns_on_a_default_ledger_passed_in() -> None:
    from jobcredits_plugin.flask import JobCredits

    app = flask_app(JOBCREDITS_ACCOUNT=header("X-Account"))
    with pytest.warns(InProcessStoreWarning, match=r"Ledger\.from_url"):
        JobCredits(app, Ledger())


@pytest.mark.parametrize("mode", ["DEBUG", "TESTING"])
def test_flask_is_quiet_in_debug_and_testing_mode(mode: str) -> None:
    from jobcredits_plugin.flask import JobCredits

    app = flask_app(JOBCREDITS_ACCOUNT=header("X-Account"), **{mode: True})
    with no_in_process_warning():
        JobCredits(app)


@pytest.mark.parametrize("ledger_kind", ["make_ledger()", "Ledger(MemoryStore())", "sqlite file"])
def test_flask_is_quiet_on_a_chosen_store(ledger_kind: str, tmp_path: Path) -> None:
    from jobcredits_plugin.flask import JobCredits

    ledger = chosen_ledgers(tmp_path)[ledger_kind]()
    app = flask_app(JOBCREDITS_ACCOUNT=header("X-Account"))
    try:
        with no_in_process_warning():
            JobCredits(app, ledger)
    finally:
        ledger.close()


def test_flask_is_quiet_on_a_shared_store_url(tmp_path: Path) -> None:
    from jobcredits_plugin.flask import JobCredits, get_ledger

    app = flask_app(
        JOBCREDITS_URL=f"sqlite:///{tmp_path / 'jobs.db'}", JOBCREDITS_ACCOUNT=header("X-Account")
    )
    with no_in_process_warning():
        JobCredits(app)
    get_ledger(app).close()


def test_flask_without_an_account_fails_in_init_app(tmp_path: Path) -> None:
    """No JOBCREDITS_ACCOUNT and no account=: a ConfigurationError naming the key,
    before any store is opened (not a 500 at the first request)."""
    from jobcredits_plugin.flask import JobCredits

    db = tmp_path / "jobs.db"
    app = flask_app(JOBCREDITS_URL=f"sqlite:///{db}")
    with pytest.raises(ConfigurationError, match="JOBCREDITS_ACCOUNT") as info:
        JobCredits(app)
    assert isinstance(info.value, JobCreditsError)
    assert info.value.status == 500
    assert "jobcredits" not in app.extensions
    assert not db.exists()


def test_flask_without_an_account_fails_also_with_a_ledger_passed_in() -> None:
    from jobcredits_plugin.flask import JobCredits

    with pytest.raises(ConfigurationError, match="JOBCREDITS_ACCOUNT"):
        JobCredits(flask_app(), make_ledger())
    with pytest.raises(ConfigurationError, match="JOBCREDITS_ACCOUNT"):
        JobCredits(ledger=make_ledger()).init_app(flask_app())


def test_flask_account_none_said_on_purpose_or_account_argument() -> None:
    """JOBCREDITS_ACCOUNT = None (the views pass their own account=) and
    JobCredits(account=...) both say who pays."""
    from jobcredits_plugin.flask import JobCredits, get_state

    JobCredits(flask_app(JOBCREDITS_ACCOUNT=None), make_ledger())
    account = header("X-Account")
    app = flask_app()
    JobCredits(app, make_ledger(), account=account)
    assert get_state(app).account is account


# -- FastAPI ----------------------------------------------------------------------------


def fastapi_install(ledger: Ledger, **app_options: Any) -> None:
    fastapi = pytest.importorskip("fastapi")
    from jobcredits_plugin.fastapi import JobCredits

    JobCredits(ledger, account=lambda request: "acct").install(fastapi.FastAPI(**app_options))


@pytest.mark.parametrize("ledger_kind", list(in_process_ledgers()))
def test_fastapi_install_warns_on_an_in_process_default(ledger_kind: str) -> None:
    pytest.importorskip("fastapi")
    ledger = in_process_ledgers()[ledger_kind]()
    with pytest.warns(InProcessStoreWarning, match="uvicorn --workers 2") as record:
        fastapi_install(ledger, title="Billing")
    assert_points_here(record)
    assert "FastAPI app 'Billing'" in str(record[0].message)


def test_fastapi_is_quiet_in_debug_mode() -> None:
    pytest.importorskip("fastapi")
    with no_in_process_warning():
        fastapi_install(Ledger(), debug=True)


@pytest.mark.parametrize("ledger_kind", ["make_ledger()", "Ledger(MemoryStore())", "sqlite file"])
def test_fastapi_is_quiet_on_a_chosen_store(ledger_kind: str, tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    ledger = chosen_ledgers(tmp_path)[ledger_kind]()
    try:
        with no_in_process_warning():
            fastapi_install(ledger)
    finally:
        ledger.close()


# -- the ledger itself ------------------------------------------------------------------


def test_a_ledger_alone_never_warns() -> None:
    """Only an adapter about to serve requests warns: scripts, the CLI and tests
    build in-process ledgers freely."""
    with no_in_process_warning():
        Ledger().close()
        Ledger.from_url("memory://").close()
        make_ledger().close()
