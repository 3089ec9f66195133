"""The WSGI middleware: which requests it charges, and the charge's fate by the response.

What it shares with every adapter (charged once, refunds, problem answers,
streamed bodies) is the adapter contract, tests/adapters; here is what only
the middleware has: routes, what a WSGI server does with a body (lazy apps,
``write()``, ``close()``, malformed status lines), its options.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.util import setup_testing_defaults
from wsgiref.validate import validator

import pytest

from jobcredits_plugin import ConfigurationError, JobCreditsError, Ledger, current_charge, header
from jobcredits_plugin._middleware import Route, compile_routes
from jobcredits_plugin.testing import FakeClock, RecordingPlugin, make_ledger
from jobcredits_plugin.wsgi import JobCreditsMiddleware

ACCT = "acct-1"
JOB = "job-1"
PROBLEM = "application/problem+json"

Environ = dict[str, Any]


class Response:
    """What a WSGI server got: status code, headers, body."""

    def __init__(self, status: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = int(status.split()[0])
        self.status_line = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        assert len(values) <= 1, f"{name} sent {len(values)} times"
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)


def environ(method: str = "POST", path: str = "/v1/run", **headers: str) -> Environ:
    env: Environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SCRIPT_NAME": "",
    }
    for name, value in headers.items():
        env["HTTP_" + name.upper()] = value
    setup_testing_defaults(env)
    return env


def call(app: Callable[..., Iterable[bytes]], env: Environ) -> Response:
    """Play a WSGI server: call, iterate the body, close it."""
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        started.append((status, headers))
        return lambda data: None

    body = app(env, start_response)
    try:
        data = b"".join(body)
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    status, headers = started[-1]
    return Response(status, headers, data)


def req(
    method: str = "POST",
    path: str = "/v1/run",
    job: str | None = JOB,
    account: str | None = ACCT,
    **extra: str,
) -> Environ:
    headers = dict(extra)
    if job is not None:
        headers["X_JOB_ID"] = job
    if account is not None:
        headers["X_ACCOUNT"] = account
    return environ(method, path, **headers)


def make_app(
    status: str = "200 OK", body: bytes = b"ok"
) -> tuple[Callable[..., Iterable[bytes]], list[Environ]]:
    """A plain WSGI app that records the environs it served."""
    served: list[Environ] = []

    def app(env: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
        served.append(env)
        env["seen.charge"] = current_charge()
        start_response(status, [("Content-Type", "text/plain")])
        return [body]

    return app, served


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def events() -> RecordingPlugin:
    return RecordingPlugin()


@pytest.fixture
def ledger(clock: FakeClock, events: RecordingPlugin) -> Ledger:
    ledger = make_ledger(clock=clock, plugins=[events], balances=True)
    ledger.grant(ACCT, 10)
    return ledger


def mw(app: Any, ledger: Ledger, routes: Any = None, **kwargs: Any) -> JobCreditsMiddleware:
    kwargs.setdefault("account", header("X-Account"))
    return JobCreditsMiddleware(app, ledger, routes or {"POST /v1/run": 2}, **kwargs)


# -- which requests are charged ------------------------------------------------------------


def test_routes_match_by_method(ledger: Ledger) -> None:
    """A route with a method charges only that method; others pass through uncharged."""
    inner, served = make_app()
    app = mw(inner, ledger)
    r = call(app, req(method="GET"))
    assert r.status == 200
    assert r.header("X-Job-Charge") is None
    assert ledger.snapshot() == []
    assert len(served) == 1


def test_routes_with_several_methods_and_a_glob(ledger: Ledger) -> None:
    """'GET|POST /v1/jobs/*' matches both methods under the prefix, nothing else."""
    inner, _ = make_app()
    app = mw(inner, ledger, {"GET|POST /v1/jobs/*": {"scope": "jobs", "cost": 1}})
    assert call(app, req("GET", "/v1/jobs/a", job="j1")).header("X-Job-Charge") == "charged"
    assert call(app, req("POST", "/v1/jobs/b/c", job="j2")).header("X-Job-Charge") == "charged"
    assert call(app, req("PUT", "/v1/jobs/a", job="j3")).header("X-Job-Charge") is None
    assert call(app, req("GET", "/v1/jobs", job="j4")).header("X-Job-Charge") is None
    assert call(app, req("GET", "/v1/other", job="j5")).header("X-Job-Charge") is None
    assert {r.job_id for r in ledger.snapshot()} == {"j1", "j2"}
    assert {r.scope for r in ledger.snapshot()} == {"jobs"}


def test_a_route_without_methods_matches_every_method(ledger: Ledger) -> None:
    """'/v1/run' (no method) charges any method."""
    inner, _ = make_app()
    app = mw(inner, ledger, {"/v1/run": 1})
    for n, method in enumerate(["GET", "POST", "DELETE"]):
        assert call(app, req(method, job=f"j{n}")).header("X-Job-Charge") == "charged"


def test_the_first_matching_route_wins(ledger: Ledger) -> None:
    """Routes are tried in the order given."""
    inner, _ = make_app()
    app = mw(inner, ledger, {"/v1/special": {"cost": 5}, "/v1/*": {"cost": 1}})
    call(app, req(path="/v1/special", job="a"))
    call(app, req(path="/v1/plain", job="b"))
    costs = {r.job_id: r.cost for r in ledger.snapshot()}
    assert costs == {"a": 5, "b": 1}


def test_unmatched_requests_pass_through_untouched(ledger: Ledger) -> None:
    """A request no route matches reaches the app with the server's own start_response
    and its body comes back as is (the same object)."""
    body = [b"untouched"]
    seen: dict[str, Any] = {}

    def inner(env: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
        seen["start_response"] = start_response
        start_response("200 OK", [])
        return body

    def server_start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen["headers"] = headers
        return None

    app = mw(inner, ledger)
    result = app(req(path="/elsewhere"), server_start)
    assert result is body
    assert seen["start_response"] is server_start
    assert seen["headers"] == []
    assert ledger.snapshot() == []


def test_a_route_object_sequence_is_accepted(ledger: Ledger) -> None:
    """routes= may be a sequence of Route objects."""
    inner, _ = make_app()
    routes = [Route("/v1/run", methods=frozenset({"POST"}), scope="s", cost=3)]
    app = mw(inner, ledger, routes)
    assert call(app, req()).header("X-Job-Charge") == "charged"
    record = ledger.lookup(ACCT, JOB, scope="s")
    assert record is not None
    assert record.cost == 3


# -- errors as problem+json -------------------------------------------------------------------


def assert_problem(r: Response, status: int, code: str) -> dict[str, Any]:
    assert r.status == status
    assert r.header("Content-Type") == PROBLEM
    assert r.header("Content-Length") == str(len(r.body))
    doc: dict[str, Any] = r.json()
    assert doc["status"] == status
    assert doc["code"] == code
    assert doc["instance"] == "/v1/run"
    return doc


def test_no_account_is_401_and_the_app_never_runs(ledger: Ledger) -> None:
    """The account callable returned None: 401 problem+json."""
    inner, served = make_app()
    r = call(mw(inner, ledger), req(account=None))
    assert_problem(r, 401, "not_authenticated")
    assert r.status_line == "401 Unauthorized"
    assert served == []


def test_job_in_progress_is_409_with_retry_after(ledger: Ledger, clock: FakeClock) -> None:
    """A call of a job whose first call is still running: 409 job_in_progress with
    Retry-After, the lease left when uncapped (retry_after_max=None), else at most
    the cap."""
    inner_result: list[Response] = []
    app: JobCreditsMiddleware

    def inner(env: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
        clock.advance(15)
        inner_result.append(call(app, req()))
        start_response("200 OK", [])
        return [b"first"]

    app = mw(inner, ledger, retry_after_max=None)
    outer = call(app, req())
    assert outer.header("X-Job-Charge") == "charged"
    doc = assert_problem(inner_result[0], 409, "job_in_progress")
    assert inner_result[0].header("Retry-After") == "45"
    assert doc["retry_after"] == 45

    def inner_capped(env: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
        inner_result.append(call(app, req(job="job-capped")))
        start_response("200 OK", [])
        return [b"first"]

    inner_result.clear()
    app = mw(inner_capped, ledger, retry_after_max=10)
    call(app, req(job="job-capped"))
    doc = assert_problem(inner_result[0], 409, "job_in_progress")
    assert inner_result[0].header("Retry-After") == "10"
    assert doc["retry_after"] == 10


# -- confirm and refund by the response ------------------------------------------------------


def test_a_lazy_body_raising_before_it_starts_refunds(ledger: Ledger) -> None:
    """A generator app that raises on its first iteration, before start_response, is
    refunded."""

    def inner(env: Environ, start_response: Callable[..., Any]) -> Iterator[bytes]:
        raise RuntimeError("lazy app broke")
        yield b""  # pragma: no cover - makes this a generator

    with pytest.raises(RuntimeError, match="lazy app broke"):
        call(mw(inner, ledger), req())
    assert ledger.lookup(ACCT, JOB) is None
    assert ledger.balance(ACCT) == 10


def test_a_lazy_body_starting_late_is_settled_by_its_status(ledger: Ledger) -> None:
    """A generator app that calls start_response on its first iteration is settled
    then: 200 confirms."""

    def inner(env: Environ, start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"late"

    r = call(mw(inner, ledger), req())
    assert r.header("X-Job-Charge") == "charged"
    record = ledger.lookup(ACCT, JOB)
    assert record is not None
    assert record.state == "charged"


def test_a_body_failing_before_its_first_byte_refunds(
    ledger: Ledger, events: RecordingPlugin
) -> None:
    """start_response called, then the body raises before producing a byte
    (an empty chunk is none): refunded, and the server, which was handed no
    status yet, answers 500 itself."""
    started: list[str] = []

    def inner(env: Environ, start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b""
        raise RuntimeError("stream broke before its first byte")

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        started.append(status)
        return lambda data: None

    body = mw(inner, ledger)(req(), start_response)
    with pytest.raises(RuntimeError, match="before its first byte"):
        list(body)
    body.close()  # type: ignore[attr-defined]
    assert started == []
    assert ledger.lookup(ACCT, JOB) is None
    assert ledger.balance(ACCT) == 10
    assert events.kinds() == ["charge", "refund"]


def test_an_empty_body_is_settled_at_its_end(ledger: Ledger) -> None:
    """A response without a body (HEAD, 204) is confirmed when the body ends."""

    def inner(env: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("204 No Content", [])
        return []

    r = call(mw(inner, ledger), req())
    assert r.status == 204
    assert r.header("X-Job-Charge") == "charged"
    record = ledger.lookup(ACCT, JOB)
    assert record is not None
    assert record.state == "charged"


def test_the_write_callable_settles_at_its_first_byte(ledger: Ledger) -> None:
    """An app using the legacy write() callable: its first data is the first byte."""
    written: list[bytes] = []

    def inner(env: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
        write = start_response("200 OK", [])
        write(b"")
        assert ledger.lookup(ACCT, JOB).state == "pending"  # type: ignore[union-attr]
        write(b"data")
        assert ledger.lookup(ACCT, JOB).state == "charged"  # type: ignore[union-attr]
        return []

    headers: list[Any] = []

    def start_response(status: str, hdrs: Any, exc_info: Any = None) -> Any:
        headers.extend(hdrs)
        return written.append

    body = mw(inner, ledger)(req(), start_response)
    assert list(body) == []
    assert written == [b"data"]
    assert ("X-Job-Charge", "charged") in headers


def test_a_body_closed_before_it_started_refunds(ledger: Ledger) -> None:
    """The server closes the body without the app ever starting a response (the client
    went away): refunded. The app's own close() is called."""
    closed: list[bool] = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:  # pragma: no cover - never iterated
            yield b""

        def close(self) -> None:
            closed.append(True)

    def inner(env: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
        return Body()

    body = mw(inner, ledger)(req(), lambda *a: None)
    body.close()  # type: ignore[attr-defined]
    assert closed == [True]
    assert ledger.lookup(ACCT, JOB) is None


def test_a_status_line_without_a_code_refunds(ledger: Ledger) -> None:
    """A malformed status line from the app counts as a failure (refund), not a crash of
    the middleware."""
    for n, status in enumerate(["", "OK"]):
        inner, _ = make_app(status)
        started: list[list[tuple[str, str]]] = []

        def start_response(s: str, h: list[tuple[str, str]], e: Any = None) -> None:
            started.append(h)  # noqa: B023 - called before the loop moves on

        list(mw(inner, ledger)(req(job=f"bad-{n}"), start_response))
        assert ("X-Job-Charge", "refunded") in started[0]
        assert ledger.lookup(ACCT, f"bad-{n}") is None


def test_the_middleware_is_wsgi_compliant(ledger: Ledger) -> None:
    """wsgiref's validator finds nothing wrong on a charged call (warnings are errors in
    this suite)."""
    inner, _ = make_app()
    app = validator(mw(validator(inner), ledger))
    r = call(app, req())
    assert r.status == 200
    assert r.header("X-Job-Charge") == "charged"
    problem = call(app, req(account=None))
    assert problem.status == 401


# -- headers and options ------------------------------------------------------------------------


def test_per_route_header_and_on_missing(ledger: Ledger) -> None:
    """A route's header= names the job header read and echoed for it; its on_missing=
    overrides the middleware's."""
    inner, _ = make_app()
    app = mw(
        inner,
        ledger,
        {
            "/v1/recap": {"header": "X-Recap-Job-Id"},
            "/v1/strict": {"on_missing": "reject"},
            "/v1/lenient": {"on_missing": "charge"},
        },
        on_missing="reject",
    )
    r = call(app, environ("POST", "/v1/recap", X_RECAP_JOB_ID="recap-1", X_ACCOUNT=ACCT))
    assert r.header("X-Recap-Job-Id") == "recap-1"
    assert r.header("X-Job-Id") is None
    assert ledger.lookup(ACCT, "recap-1") is not None
    strict = call(app, req(path="/v1/strict", job=None))
    assert strict.status == 400
    lenient = call(app, req(path="/v1/lenient", job=None))
    assert lenient.header("X-Job-Charge") == "charged"


def test_middleware_job_header(ledger: Ledger) -> None:
    """job_header= renames the header for every route."""
    inner, _ = make_app()
    app = mw(inner, ledger, job_header="X-Recap-Job-Id")
    r = call(app, environ("POST", "/v1/run", X_RECAP_JOB_ID="r-1", X_ACCOUNT=ACCT))
    assert r.header("X-Recap-Job-Id") == "r-1"
    assert ledger.lookup(ACCT, "r-1") is not None


def test_cost_tier_and_backend_callables_of_the_environ(ledger: Ledger) -> None:
    """A route's cost, tier and backend may be callables of the environ."""
    inner, _ = make_app()
    route = {
        "cost": lambda env: int(env["HTTP_X_COST"]),
        "tier": lambda env: env.get("HTTP_X_TIER"),
        "backend": "whisper",
        "scope": "transcribe",
    }
    app = mw(inner, ledger, {"POST /v1/run": route})
    call(app, req(X_COST="3", X_TIER="pro"))
    record = ledger.lookup(ACCT, JOB, scope="transcribe")
    assert record is not None
    assert (record.cost, record.tier, record.backend) == (3, "pro", "whisper")
    assert ledger.balance(ACCT) == 7


# -- configuration checks -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "routes",
    [
        {"summarize": 1},
        {"post /v1/x": 1},
        {"POST  ": 1},
        {"POST /v1/x extra": 1},
        {42: 1},
        {"/v1/x": "two"},
        {"/v1/x": True},
        {"/v1/x": {"cost": 1, "price": 2}},
        {"/v1/x": {"scope": "bad scope"}},
        {"/v1/x": {"cost": "2"}},
        {"/v1/x": {"cost": -1}},
        {"/v1/x": -1},
        {"/v1/x": {"tier": ""}},
        {"/v1/x": {"backend": 7}},
        ["/v1/x"],
    ],
)
def test_compile_routes_rejects_mistakes(routes: Any) -> None:
    """Bad route keys, unknown options, bad specs, a bad fixed cost, tier or backend and
    non-Route sequence items fail at startup with ConfigurationError."""
    with pytest.raises(ConfigurationError):
        compile_routes(routes)


def test_compile_routes_forms() -> None:
    """An int is a cost, a dict gives options, a Route takes its path and methods from
    the key; method lists split on |."""
    routes = compile_routes(
        {
            "/a": 2,
            "GET|POST /b/*": {"scope": "b", "cost": 0},
            "PUT /c": Route("/ignored", scope="c"),
        }
    )
    assert routes[0] == Route("/a", cost=2)
    assert routes[1] == Route("/b/*", methods=frozenset({"GET", "POST"}), scope="b", cost=0)
    assert routes[2] == Route("/c", methods=frozenset({"PUT"}), scope="c")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ledger": "memory://"},
        {"account": "acct"},
        {"on_missing": "ignore"},
        {"routes": {"/x": {"on_missing": "ignore"}}},
        {"routes": {"/x": {"header": "X Bad"}}},
        {"job_header": "X Bad"},
    ],
)
def test_middleware_checks_its_arguments(ledger: Ledger, kwargs: dict[str, Any]) -> None:
    """Bad arguments to the middleware fail at construction with ConfigurationError."""
    inner, _ = make_app()
    args: dict[str, Any] = {"account": header("X-Account"), "routes": {"/x": 1}, **kwargs}
    with pytest.raises(ConfigurationError):
        JobCreditsMiddleware(inner, args.pop("ledger", ledger), **args)


@pytest.mark.parametrize(
    "options",
    [
        {"job_header": []},
        {"job_header": {"X-Job-Id": 1}},
        {"routes": {"/v1/x": {"header": []}}},
        {"routes": {"/v1/x": {"header": ["X-Job-Id"]}}},
        {"routes": {"/v1/x": {"header": ""}}},
        {"routes": {"/v1/x": {"header": 0}}},
        {"routes": [Route("/v1/x", header=[])]},  # type: ignore[arg-type]
    ],
)
def test_a_header_that_is_not_a_name_fails_at_startup(
    ledger: Ledger, options: dict[str, Any]
) -> None:
    """job_header=[] (or a route's) raised a bare TypeError ("unhashable") and
    a route's header="" was silently replaced by the middleware's; both are
    the header check's error when the app starts."""
    kwargs: dict[str, Any] = {"routes": {"/v1/x": 1}, **options}
    routes = kwargs.pop("routes")
    with pytest.raises(JobCreditsError):  # InvalidArgument, or the app's ConfigurationError
        mw(_ok_app, ledger, routes, **kwargs)


def _ok_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [])
    return [b"ok"]


@pytest.mark.parametrize("routes", [5, 0, 2**64, None, 1.5])
def test_routes_that_are_neither_a_dict_nor_a_list_fail_at_startup(
    ledger: Ledger, routes: Any
) -> None:
    """routes=5 raised a bare TypeError ("'int' object is not iterable")."""
    with pytest.raises(JobCreditsError):
        JobCreditsMiddleware(_ok_app, ledger, routes, account=header("X-Account"))
