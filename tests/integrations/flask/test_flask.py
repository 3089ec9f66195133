"""The Flask adapter, driven by Flask's test client.

What it shares with every adapter (DESIGN §2-3 at the web layer: charged
once, refunds, problem answers, streamed bodies) is the adapter contract,
tests/adapters, which runs on Flask sync and async views; here is what is
Flask's own: the extension and its config, job_credit(), abort(), class
views, two calls of a job really overlapping.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobcredits_plugin import ConfigurationError

flask = pytest.importorskip("flask")

from werkzeug.exceptions import HTTPException  # noqa: E402

from jobcredits_plugin import (  # noqa: E402
    InProcessStoreWarning,
    JobCreditsError,
    JobExhausted,
    Ledger,
    current_charge,
    header,
)
from jobcredits_plugin.flask import (  # noqa: E402
    JobCredits,
    JobCreditsState,
    charges_credit,
    get_ledger,
    get_state,
    job_credit,
)
from jobcredits_plugin.stores import (  # noqa: E402
    ClaimRequest,
    ClaimResult,
    MemoryStore,
)
from jobcredits_plugin.testing import FakeClock, RecordingPlugin, make_ledger  # noqa: E402

ACCT = "acct-1"
JOB = "job-1"
PROBLEM = "application/problem+json"


def account_of(request: Any) -> str | None:
    """The account callable the dotted-path test points JOBCREDITS_ACCOUNT at."""
    value: str | None = request.headers.get("X-Account")
    return value


class DownStore(MemoryStore):
    """A store whose backend is unreachable on every claim."""

    def claim(self, req: ClaimRequest) -> ClaimResult:
        raise ConnectionError("backend unreachable")


def make_app(ledger: Ledger | None = None, **config: Any) -> Any:
    """A Flask app with the adapter set up; the account is read from X-Account."""
    app = flask.Flask(__name__)
    app.testing = True  # exceptions reach the test, unless a test turns this off
    app.config.update(JOBCREDITS_ACCOUNT=header("X-Account"), **config)
    JobCredits(app, ledger)
    return app


def hdrs(job: str | None = JOB, account: str | None = ACCT, **extra: str) -> dict[str, str]:
    out = dict(extra)
    if job is not None:
        out["X-Job-Id"] = job
    if account is not None:
        out["X-Account"] = account
    return out


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def events() -> RecordingPlugin:
    return RecordingPlugin()


@pytest.fixture
def ledger(clock: FakeClock, events: RecordingPlugin) -> Ledger:
    return make_ledger(clock=clock, plugins=[events], balances=True)


@pytest.fixture
def app(ledger: Ledger) -> Any:
    ledger.grant(ACCT, 10)
    app = make_app(ledger)

    @app.post("/run")
    @charges_credit(cost=2, scope="summarize")
    def run() -> Any:
        charge = job_credit()
        return {"outcome": charge.outcome if charge else None}

    @app.post("/abort/<int:code>")
    @charges_credit(scope="summarize")
    def abort(code: int) -> Any:
        flask.abort(code)

    return app


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


def state_of(ledger: Ledger, job: str = JOB, scope: str = "summarize") -> str | None:
    record = ledger.lookup(ACCT, job, scope=scope)
    return None if record is None else record.state


# -- charged, reused, headers ---------------------------------------------------------------


def test_job_credit_is_current_charge_inside_the_view(ledger: Ledger) -> None:
    """Inside the view, job_credit() and jobcredits_plugin.current_charge() are the same
    Charge; outside a request both are None."""
    ledger.grant(ACCT, 5)
    app = make_app(ledger)
    seen: dict[str, Any] = {}

    @app.get("/v")
    @charges_credit()
    def view() -> str:
        seen["job_credit"] = job_credit()
        seen["current"] = current_charge()
        return "ok"

    app.test_client().get("/v", headers=hdrs())
    assert seen["job_credit"] is not None
    assert seen["job_credit"] is seen["current"]
    assert seen["job_credit"].record.job_id == JOB
    assert job_credit() is None
    with app.test_request_context("/"):
        assert job_credit() is None


# -- in progress, lease ---------------------------------------------------------------------


def test_follow_up_while_first_call_runs_gets_409_with_retry_after(app: Any) -> None:
    """A second call of the job arriving while the first still runs gets 409
    job_in_progress with Retry-After (the lease left), and nothing is charged for it."""
    inner: dict[str, Any] = {}

    @app.post("/slow")
    @charges_credit(scope="summarize")
    def slow() -> str:
        r = app.test_client().post("/slow", headers=hdrs())
        inner.update(status=r.status_code, headers=dict(r.headers), body=r.json)
        return "done"

    outer = app.test_client().post("/slow", headers=hdrs())
    assert outer.status_code == 200
    assert outer.headers["X-Job-Charge"] == "charged"
    assert inner["status"] == 409
    assert inner["headers"]["Content-Type"] == PROBLEM
    assert inner["headers"]["Retry-After"] == "5"  # the 60 s lease left, capped (retry_after_max)
    assert inner["body"]["code"] == "job_in_progress"
    assert inner["body"]["instance"] == "/slow"
    assert "X-Job-Charge" not in inner["headers"]


def test_first_call_outliving_its_lease_is_taken_over(
    app: Any, ledger: Ledger, clock: FakeClock, events: RecordingPlugin
) -> None:
    """A first call still running after its lease is refunded and the next call charges
    anew; the late first call's confirm cannot touch the new charge."""
    inner: dict[str, Any] = {}

    @app.post("/stuck")
    @charges_credit(scope="summarize")
    def stuck() -> str:
        if inner:  # the taking-over call: answer at once
            return "fresh"
        inner["running"] = True
        clock.advance(61)
        r = app.test_client().post("/stuck", headers=hdrs())
        inner["charge"] = r.headers.get("X-Job-Charge")
        return "late"

    outer = app.test_client().post("/stuck", headers=hdrs())
    assert outer.status_code == 200
    assert inner["charge"] == "charged"
    assert events.kinds() == ["charge", "refund", "charge"]
    assert ledger.balance(ACCT) == 9  # one live charge of 1, the stale one given back


# -- errors as problem+json -------------------------------------------------------------------


def test_on_missing_per_view_overrides_the_app(ledger: Ledger) -> None:
    """on_missing= on the decorator wins over the app's setting, both ways."""
    ledger.grant(ACCT, 5)
    app = make_app(ledger, JOBCREDITS_ON_MISSING="reject")

    @app.get("/lenient")
    @charges_credit(on_missing="charge")
    def lenient() -> str:
        return "ok"

    @app.get("/strict")
    @charges_credit(on_missing="reject")
    def strict() -> str:
        return "ok"

    client = app.test_client()
    assert client.get("/lenient", headers=hdrs(job=None)).status_code == 200
    app.extensions["jobcredits"].on_missing = "charge"
    assert client.get("/strict", headers=hdrs(job=None)).status_code == 400


def test_fail_open_lets_the_call_through_uncharged(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """JOBCREDITS_FAIL_OPEN with the store down: the view runs with no charge (None), the
    response has no X-Job-Charge, and the free pass is logged."""
    app = make_app(Ledger(DownStore(), clock=clock), JOBCREDITS_FAIL_OPEN="true")
    seen: list[Any] = []

    @app.get("/v")
    @charges_credit()
    def view() -> str:
        seen.append(job_credit())
        return "ok"

    with caplog.at_level(logging.WARNING, logger="jobcredits_plugin"):
        r = app.test_client().get("/v", headers=hdrs())
    assert r.status_code == 200
    assert seen == [None]
    assert "X-Job-Charge" not in r.headers
    assert r.headers["X-Job-Id"] == JOB
    assert "UNCHARGED" in caplog.text


def test_fail_open_per_view_overrides_the_app(clock: FakeClock) -> None:
    """fail_open= on the decorator wins over JOBCREDITS_FAIL_OPEN, both ways."""
    app = make_app(Ledger(DownStore(), clock=clock), JOBCREDITS_FAIL_OPEN=True)

    @app.get("/closed")
    @charges_credit(fail_open=False)
    def closed() -> str:
        return "ok"

    @app.get("/open")
    @charges_credit(fail_open=True)
    def opened() -> str:
        return "ok"

    client = app.test_client()
    assert client.get("/closed", headers=hdrs()).status_code == 503
    app.extensions["jobcredits"].fail_open = False
    assert client.get("/open", headers=hdrs()).status_code == 200


def test_job_credits_error_raised_by_a_view_is_problem_json(ledger: Ledger) -> None:
    """A JobCreditsError the view raises itself is answered as problem+json too (the app's
    error handler), and it refunds the call's charge."""
    app = make_app(ledger)
    ledger.grant(ACCT, 1)

    @app.get("/v")
    @charges_credit()
    def view() -> str:
        raise JobExhausted("done", max_uses=3)

    r = app.test_client().get("/v", headers=hdrs())
    assert r.status_code == 409
    assert r.json["max_uses"] == 3
    assert r.headers["X-Job-Charge"] == "refunded"
    assert ledger.balance(ACCT) == 1


# -- what counts as failure -------------------------------------------------------------------


@pytest.mark.parametrize("code", [429])
def test_a_4xx_http_exception_confirms_and_keeps_the_headers(
    client: Any, ledger: Ledger, code: int
) -> None:
    """abort(4xx) in the view confirms the charge; Flask's error page carries the
    X-Job-Charge header (400, 403 and 404: the adapter contract, tests/adapters)."""
    r = client.post(f"/abort/{code}", headers=hdrs())
    assert r.status_code == code
    assert r.headers["X-Job-Charge"] == "charged"
    assert state_of(ledger) == "charged"


@pytest.mark.parametrize("code", [500, 502, 503])
def test_a_5xx_http_exception_refunds(client: Any, ledger: Ledger, code: int) -> None:
    """abort(5xx) refunds the charge."""
    r = client.post(f"/abort/{code}", headers=hdrs())
    assert r.status_code == code
    assert r.headers["X-Job-Charge"] == "refunded"
    assert state_of(ledger) is None


def test_abort_with_a_response_uses_its_status(ledger: Ledger) -> None:
    """abort(response): the response's own status decides (418 confirms, 502 refunds)."""
    ledger.grant(ACCT, 5)
    app = make_app(ledger)

    @app.get("/v/<int:code>")
    @charges_credit()
    def view(code: int) -> str:
        flask.abort(flask.make_response("custom", code))

    client = app.test_client()
    assert client.get("/v/418", headers=hdrs(job="j418")).headers["X-Job-Charge"] == "charged"
    assert client.get("/v/502", headers=hdrs(job="j502")).headers["X-Job-Charge"] == "refunded"
    assert ledger.lookup(ACCT, "j418") is not None
    assert ledger.lookup(ACCT, "j502") is None


def test_a_non_response_return_value_refunds(ledger: Ledger) -> None:
    """A view returning something Flask cannot turn into a response failed: refunded."""
    ledger.grant(ACCT, 1)
    app = make_app(ledger)

    @app.get("/v")
    @charges_credit()
    def view() -> Any:
        return None

    with pytest.raises(TypeError):
        app.test_client().get("/v", headers=hdrs())
    assert ledger.lookup(ACCT, JOB) is None
    assert ledger.balance(ACCT) == 1


def test_streamed_body_closed_unread_is_refunded(ledger: Ledger) -> None:
    """A streamed body the server closes without reading (the client went
    away first) served nothing: refunded."""
    ledger.grant(ACCT, 3)
    app = make_app(ledger)

    @app.get("/stream")
    @charges_credit()
    def stream() -> Any:
        return flask.Response(iter([b"never read"]), mimetype="text/plain")

    from werkzeug.test import EnvironBuilder

    # Werkzeug's test client reads the first chunk by itself: be the server.
    environ = EnvironBuilder(path="/stream", headers=hdrs()).get_environ()
    body = app(environ, lambda status, headers, exc_info=None: None)
    body.close()
    assert ledger.lookup(ACCT, JOB) is None
    assert ledger.balance(ACCT) == 3


def test_job_credit_answers_after_the_view(ledger: Ledger) -> None:
    """job_credit() still returns the request's charge in after_request functions and in
    a body streamed with stream_with_context."""
    ledger.grant(ACCT, 3)
    app = make_app(ledger)
    seen: dict[str, Any] = {}

    @app.after_request
    def after(response: Any) -> Any:
        charge = job_credit()
        seen["after"] = charge.outcome if charge else None
        return response

    @app.get("/stream")
    @charges_credit()
    def stream() -> Any:
        @flask.stream_with_context
        def body() -> Iterator[str]:
            charge = job_credit()
            seen["body"] = charge.outcome if charge else None
            yield "x"

        return flask.Response(body())

    r = app.test_client().get("/stream", headers=hdrs())
    assert r.data == b"x"
    assert seen == {"after": "charged", "body": "charged"}


def test_job_credit_is_per_request_also_when_nested(ledger: Ledger) -> None:
    """A request nested in another of the same app (a test client called from a view)
    shares its flask.g; job_credit() still answers each request's own charge."""
    ledger.grant(ACCT, 3)
    app = make_app(ledger)
    seen: list[str] = []

    @app.after_request
    def after(response: Any) -> Any:
        charge = job_credit()
        seen.append(charge.record.job_id if charge else "-")
        return response

    @app.get("/outer")
    @charges_credit()
    def outer() -> str:
        app.test_client().get("/inner", headers=hdrs(job="inner-job"))
        return "ok"

    @app.get("/inner")
    @charges_credit()
    def inner() -> str:
        return "ok"

    app.test_client().get("/outer", headers=hdrs(job="outer-job"))
    assert seen == ["inner-job", "outer-job"]


# -- options of the decorator -----------------------------------------------------------------


def test_cost_tier_and_backend_may_be_callables_of_the_request(ledger: Ledger) -> None:
    """cost, tier and backend as callables of flask.request: the record holds what the
    first call resolved, and the balance is debited by the resolved cost."""
    ledger.grant(ACCT, 10)
    app = make_app(ledger)

    @app.get("/v")
    @charges_credit(
        cost=lambda r: int(r.args["cost"]),
        tier=lambda r: r.args.get("tier"),
        backend="whisper",
        scope="transcribe",
    )
    def view() -> Any:
        charge = job_credit()
        assert charge is not None
        return {"tier": charge.record.tier, "backend": charge.record.backend}

    r = app.test_client().get("/v?cost=3&tier=pro", headers=hdrs())
    assert r.json == {"tier": "pro", "backend": "whisper"}
    record = ledger.lookup(ACCT, JOB, scope="transcribe")
    assert record is not None
    assert (record.cost, record.tier, record.backend) == (3, "pro", "whisper")
    assert ledger.balance(ACCT) == 7


def test_ledger_on_the_decorator_overrides_the_apps(ledger: Ledger, clock: FakeClock) -> None:
    """ledger= on the decorator charges that ledger, not the app's."""
    other = make_ledger(clock=clock)
    app = make_app(ledger)
    ledger.grant(ACCT, 1)

    @app.get("/v")
    @charges_credit(ledger=other)
    def view() -> str:
        return "ok"

    r = app.test_client().get("/v", headers=hdrs())
    assert r.headers["X-Job-Charge"] == "charged"
    assert other.lookup(ACCT, JOB) is not None
    assert ledger.lookup(ACCT, JOB) is None
    assert ledger.balance(ACCT) == 1


def test_account_and_header_on_the_decorator_override_the_apps(ledger: Ledger) -> None:
    """account= and header= on the decorator replace the app's account callable and job
    header for that view (the echo uses the view's header)."""
    ledger.grant("from-view", 5)
    app = make_app(ledger)

    @app.get("/v")
    @charges_credit(account=lambda r: "from-view", header="X-Recap-Job-Id")
    def view() -> str:
        return "ok"

    r = app.test_client().get("/v", headers={"X-Recap-Job-Id": "recap-1", "X-Job-Id": "other"})
    assert r.status_code == 200
    assert r.headers["X-Recap-Job-Id"] == "recap-1"
    assert "X-Job-Id" not in r.headers
    assert ledger.lookup("from-view", "recap-1") is not None


def test_job_header_from_config(ledger: Ledger) -> None:
    """JOBCREDITS_JOB_HEADER renames the header read and echoed."""
    ledger.grant(ACCT, 5)
    app = make_app(ledger, JOBCREDITS_JOB_HEADER="X-Recap-Job-Id")

    @app.get("/v")
    @charges_credit()
    def view() -> str:
        return "ok"

    r = app.test_client().get("/v", headers={"X-Recap-Job-Id": "r-1", "X-Account": ACCT})
    assert r.headers["X-Recap-Job-Id"] == "r-1"
    assert ledger.lookup(ACCT, "r-1") is not None


def test_decorator_arguments_are_checked_at_decoration() -> None:
    """A bad scope, cost, on_missing, header, ledger or account fails when the view is
    decorated, not at the first request."""
    with pytest.raises(ConfigurationError):
        charges_credit(scope="bad scope")
    with pytest.raises(ConfigurationError):
        charges_credit(cost=-1)
    with pytest.raises(ConfigurationError):
        charges_credit(on_missing="ignore")
    with pytest.raises(ConfigurationError):
        charges_credit(header="X Job")
    with pytest.raises(ConfigurationError):
        charges_credit(ledger="memory://")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        charges_credit(account="acct")  # type: ignore[arg-type]


def test_class_based_views_take_the_decorator() -> None:
    """A MethodView lists charges_credit() in its decorators and is charged like a
    function view."""
    from flask.views import MethodView

    app = make_app()

    class Summarize(MethodView):
        decorators = [charges_credit(scope="summarize")]  # noqa: RUF012

        def post(self) -> Any:
            charge = job_credit()
            return {"outcome": charge.outcome if charge else None}

    app.add_url_rule("/s", view_func=Summarize.as_view("summarize"))
    client = app.test_client()
    assert client.post("/s", headers=hdrs()).json == {"outcome": "charged"}
    assert client.post("/s", headers=hdrs()).json == {"outcome": "reused"}


# -- async views ------------------------------------------------------------------------------


def test_async_view_is_charged_reused_and_refunded(ledger: Ledger) -> None:
    """An async def view (Flask[async]) is charged, then reused; one that raises is
    refunded."""
    pytest.importorskip("asgiref")
    ledger.grant(ACCT, 5)
    app = make_app(ledger)

    @app.get("/a")
    @charges_credit()
    async def view() -> Any:
        await asyncio.sleep(0)
        charge = job_credit()
        assert charge is current_charge()
        return {"outcome": charge.outcome if charge else None}

    @app.get("/fail")
    @charges_credit()
    async def fail() -> Any:
        await asyncio.sleep(0)
        return "upstream down", 502

    client = app.test_client()
    first = client.get("/a", headers=hdrs())
    assert first.json == {"outcome": "charged"}
    assert first.headers["X-Job-Charge"] == "charged"
    assert client.get("/a", headers=hdrs()).json == {"outcome": "reused"}
    failed = client.get("/fail", headers=hdrs(job="job-2"))
    assert failed.status_code == 502
    assert failed.headers["X-Job-Charge"] == "refunded"
    assert ledger.lookup(ACCT, "job-2") is None
    assert ledger.balance(ACCT) == 4


def test_cancelled_async_view_refunds(ledger: Ledger) -> None:
    """An async view that is cancelled refunds its charge."""
    pytest.importorskip("asgiref")
    ledger.grant(ACCT, 2)
    app = make_app(ledger)

    @app.get("/a")
    @charges_credit()
    async def view() -> str:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        app.test_client().get("/a", headers=hdrs())
    assert ledger.lookup(ACCT, JOB) is None
    assert ledger.balance(ACCT) == 2


# -- the extension: config, factory, state ------------------------------------------------


def test_init_app_factory_keeps_a_ledger_per_app() -> None:
    """One JobCredits() set up on two apps (the factory pattern): each app gets its own
    ledger from its config, and a job charged on one is new on the other."""
    ext = JobCredits()

    def create_app() -> Any:
        app = flask.Flask(__name__)
        app.testing = True  # memory://: no InProcessStoreWarning in testing mode
        app.config["JOBCREDITS_ACCOUNT"] = header("X-Account")
        ext.init_app(app)

        @app.get("/v")
        @charges_credit()
        def view() -> str:
            return "ok"

        return app

    one, two = create_app(), create_app()
    assert get_ledger(one) is not get_ledger(two)
    assert one.test_client().get("/v", headers=hdrs()).headers["X-Job-Charge"] == "charged"
    assert two.test_client().get("/v", headers=hdrs()).headers["X-Job-Charge"] == "charged"
    assert one.test_client().get("/v", headers=hdrs()).headers["X-Job-Charge"] == "reused"
    with one.app_context():
        assert ext.ledger is get_ledger(one)
    assert isinstance(one.extensions["jobcredits"], JobCreditsState)
    assert not hasattr(ext, "app")


def test_ledger_passed_to_the_extension_wins_over_the_url(tmp_path: Path) -> None:
    """JobCredits(app, ledger=...) uses that ledger; JOBCREDITS_URL is not opened."""
    db = tmp_path / "never.db"
    ledger = make_ledger()
    app = flask.Flask(__name__)
    app.config.update(JOBCREDITS_URL=f"sqlite:///{db}", JOBCREDITS_ACCOUNT=header("X-Account"))
    JobCredits(app, ledger=ledger)
    assert get_ledger(app) is ledger
    assert not db.exists()


def test_init_app_ledger_wins_over_the_constructors() -> None:
    """init_app(app, ledger=...) wins over JobCredits(ledger=...)."""
    first, second = make_ledger(), make_ledger()
    ext = JobCredits(ledger=first, account=header("X-Account"))
    app = flask.Flask(__name__)
    ext.init_app(app, ledger=second)
    assert get_ledger(app) is second


def test_config_builds_the_ledger(tmp_path: Path) -> None:
    """JOBCREDITS_URL, _TTL, _LEASE, _BALANCES and _MAX_USES build the app's ledger;
    environment-style strings are understood."""
    db = tmp_path / "jobs.db"
    app = flask.Flask(__name__)
    app.config.update(
        JOBCREDITS_URL=f"sqlite:///{db}",
        JOBCREDITS_TTL="120",
        JOBCREDITS_LEASE=30,
        JOBCREDITS_BALANCES="yes",
        JOBCREDITS_MAX_USES="3",
        JOBCREDITS_FAIL_OPEN="0",
        JOBCREDITS_ACCOUNT=header("X-Account"),
    )
    JobCredits(app)
    ledger = get_ledger(app)
    try:
        assert (ledger.ttl, ledger.lease, ledger.balances, ledger.max_uses) == (
            120.0,
            30.0,
            True,
            3,
        )
        assert get_state(app).fail_open is False
        assert db.exists()
    finally:
        ledger.close()


def test_config_defaults() -> None:
    """With only the account said, the app gets a memory ledger (and the warning that
    comes with it), X-Job-Id, on_missing="charge" and fail-closed; the defaults are
    written into app.config."""
    app = flask.Flask(__name__)
    account = header("X-Account")
    app.config["JOBCREDITS_ACCOUNT"] = account
    with pytest.warns(InProcessStoreWarning, match="JOBCREDITS_URL"):
        JobCredits(app)
    state = get_state(app)
    assert isinstance(state.ledger.store, MemoryStore)
    assert (state.job_header, state.on_missing, state.fail_open) == ("X-Job-Id", "charge", False)
    assert state.account is account
    assert app.config["JOBCREDITS_URL"] == "memory://"
    assert state.ledger.ttl == 3600.0


def test_account_from_a_dotted_path(ledger: Ledger) -> None:
    """JOBCREDITS_ACCOUNT may name the callable by its dotted path (module:attr or
    module.attr)."""
    ledger.grant(ACCT, 2)
    for path in (f"{__name__}:account_of", f"{__name__}.account_of"):
        app = flask.Flask(__name__)
        app.config["JOBCREDITS_ACCOUNT"] = path
        JobCredits(app, ledger)
        assert get_state(app).account is account_of


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("JOBCREDITS_ACCOUNT", "no.such.module:func"),
        ("JOBCREDITS_ACCOUNT", f"{__name__}:ACCT"),
        ("JOBCREDITS_ACCOUNT", 42),
        ("JOBCREDITS_ON_MISSING", "ignore"),
        ("JOBCREDITS_JOB_HEADER", "X Job Id"),
        ("JOBCREDITS_FAIL_OPEN", "maybe"),
        ("JOBCREDITS_BALANCES", 2),
        ("JOBCREDITS_TTL", "an hour"),
        ("JOBCREDITS_LEASE", -1),
        ("JOBCREDITS_MAX_USES", "many"),
        ("JOBCREDITS_URL", "nosuch://x"),
    ],
)
def test_bad_config_fails_at_init_app(key: str, value: Any) -> None:
    """A config mistake raises ConfigurationError when the app is set up, not per request."""
    app = flask.Flask(__name__)
    app.config["JOBCREDITS_ACCOUNT"] = header("X-Account")
    app.config[key] = value
    with pytest.raises(ConfigurationError):
        JobCredits(app)


@pytest.mark.parametrize("value", [[], ["X-Job-Id"], {"X-Job-Id": 1}, None, 5, b"X-Job-Id"])
def test_a_job_header_that_is_not_a_string_is_a_config_error(value: Any) -> None:
    """JOBCREDITS_JOB_HEADER = [] raised a bare TypeError ("unhashable") from
    the header cache; it is a setup mistake like any bad header name, and so
    is a view's header=[]."""
    app = flask.Flask(__name__)
    app.config["JOBCREDITS_JOB_HEADER"] = value
    with pytest.raises(JobCreditsError) as info:
        JobCredits(app)
    assert isinstance(info.value, ValueError)
    if value is not None:  # a view's header=None means the app's header
        with pytest.raises(JobCreditsError):
            charges_credit(header=value)


def test_a_view_on_an_app_without_the_extension_is_a_clear_error() -> None:
    """A decorated view on an app that never set up JobCredits fails with a RuntimeError
    that says what to do."""
    app = flask.Flask(__name__)
    app.testing = True

    @app.get("/v")
    @charges_credit()
    def view() -> str:
        return "ok"

    with pytest.raises(RuntimeError, match=r"JobCredits\(app\)"):
        app.test_client().get("/v", headers=hdrs())


def test_no_account_callable_anywhere_is_a_clear_error() -> None:
    """JOBCREDITS_ACCOUNT = None said on purpose, and a view without account=: a
    RuntimeError naming both at the request."""
    app = flask.Flask(__name__)
    app.testing = True
    app.config["JOBCREDITS_ACCOUNT"] = None
    JobCredits(app)

    @app.get("/v")
    @charges_credit()
    def view() -> str:
        return "ok"

    with pytest.raises(RuntimeError, match="JOBCREDITS_ACCOUNT"):
        app.test_client().get("/v", headers=hdrs())


def test_the_extension_registers_the_cli_and_the_error_handler() -> None:
    """init_app adds the `flask jobcredits` group and a JobCreditsError handler."""
    app = flask.Flask(__name__)
    app.testing = True
    app.config["JOBCREDITS_ACCOUNT"] = None
    JobCredits(app)
    assert "jobcredits" in app.cli.commands
    from jobcredits_plugin import JobCreditsError

    assert JobCreditsError in app.error_handler_spec[None][None]


def test_the_headers_do_not_leak_to_uncharged_views(app: Any) -> None:
    """A view without the decorator gets none of the charge headers."""

    @app.get("/free")
    def free() -> str:
        return "ok"

    r = app.test_client().get("/free", headers=hdrs())
    assert "X-Job-Charge" not in r.headers
    assert "X-Job-Id" not in r.headers


def test_http_exception_raised_before_charging_is_untouched(app: Any, ledger: Ledger) -> None:
    """A 405 from routing never reaches the decorator: nothing is charged."""
    r = app.test_client().get("/run", headers=hdrs())
    assert r.status_code == 405
    assert ledger.snapshot() == []
    assert issubclass(HTTPException, Exception)


def test_missing_flask_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing the adapter without Flask installed says which extra to install."""
    monkeypatch.setitem(sys.modules, "flask", None)
    monkeypatch.delitem(sys.modules, "jobcredits_plugin.flask")
    with pytest.raises(ImportError, match=r'pip install "jobcredits-plugin\[flask\]"'):
        importlib.import_module("jobcredits_plugin.flask")
    monkeypatch.undo()
    assert importlib.import_module("jobcredits_plugin.flask").charges_credit is charges_credit
