"""docs/troubleshooting.md shows what users really get: every problem
document, log line and message on the page is reproduced here, through the
WSGI middleware (the same problem bodies every adapter sends) or the setup
call that raises it, and compared with the page.

A block is tied to its reproduction by the comment above it:
``<!-- problem: NAME -->`` above an ``http`` block (status line, the headers
shown, the JSON body), ``<!-- log: NAME -->`` above a ``text`` block of one log
line, ``<!-- message: NAME -->`` above a ``text`` block of one message.
"""

from __future__ import annotations

import io
import json
import logging
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest

from jobcredits_plugin import ConfigurationError, InProcessStoreWarning, Ledger, StoreUnavailable
from jobcredits_plugin.testing import make_ledger
from jobcredits_plugin.wsgi import JobCreditsMiddleware

PAGE = Path(__file__).resolve().parent.parent / "docs" / "troubleshooting.md"
_BLOCK = re.compile(
    r"^<!-- (?P<kind>problem|log|message): (?P<name>[\w-]+) -->\n\n"
    r"```(?P<lang>\w+)\n(?P<body>.*?)\n```$",
    re.MULTILINE | re.DOTALL,
)
KEYS = {"key-ada": "acct-ada", "key-new": "acct-new"}


def blocks(kind: str) -> dict[str, str]:
    found = {m["name"]: m["body"] for m in _BLOCK.finditer(PAGE.read_text()) if m["kind"] == kind}
    assert found, f"no {kind} blocks on the page"
    return found


# -- the app the page's answers come from ------------------------------------------------


Answer = tuple[str, dict[str, str], str]  # status line, headers, body


def relay(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    during = environ.get("during")
    if during is not None:
        during()  # a second call arrives while this one runs
    start_response("200 OK", [("Content-Type", "application/json")])
    return [b'{"summary": "..."}']


def build(ledger: Ledger, **options: Any) -> JobCreditsMiddleware:
    options.setdefault("account", lambda environ: KEYS.get(environ.get("HTTP_X_API_KEY", "")))
    routes = {"POST /v1/summarize": {"scope": "summarize"}}
    return JobCreditsMiddleware(relay, ledger, routes, **options)


def call(
    app: JobCreditsMiddleware, key: str = "key-ada", job: str | None = "job-1", **extra: Any
) -> Answer:
    environ: dict[str, Any] = {"REQUEST_METHOD": "POST", "PATH_INFO": "/v1/summarize", **extra}
    environ["HTTP_X_API_KEY"] = key
    if job is not None:
        environ["HTTP_X_JOB_ID"] = job
    setup_testing_defaults(environ)
    seen: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen[:] = [status, dict(headers)]

    body = b"".join(app(environ, start_response)).decode()
    return seen[0], seen[1], body


def never_granted() -> Answer:
    with make_ledger(balances=True) as ledger:
        return call(build(ledger), key="key-new")


def in_progress() -> Answer:
    with make_ledger() as ledger:
        app = build(ledger)
        second: list[Answer] = []
        call(app, during=lambda: second.append(call(app)))
        return second[0]


def store_down() -> Answer:
    pytest.importorskip("redis")
    with Ledger.from_url("redis://localhost:6390/0") as ledger:  # nothing listens there
        return call(build(ledger))


def missing_job_id() -> Answer:
    with make_ledger() as ledger:
        return call(build(ledger, on_missing="reject"), job=None)


def bad_job_id() -> Answer:
    with make_ledger() as ledger:
        return call(build(ledger), job="job 1")


def no_account() -> Answer:
    with make_ledger() as ledger:
        return call(build(ledger), key="key-nobody")


def exhausted() -> Answer:
    with make_ledger(max_uses=2) as ledger:
        app = build(ledger)
        call(app)
        call(app)
        return call(app)


def bad_account_callable() -> Answer:
    with make_ledger() as ledger:
        return call(build(ledger, account=lambda environ: 42))


PROBLEMS: dict[str, Callable[[], Answer]] = {
    "never-granted": never_granted,
    "in-progress": in_progress,
    "store-down": store_down,
    "missing-job-id": missing_job_id,
    "bad-job-id": bad_job_id,
    "no-account": no_account,
    "exhausted": exhausted,
    "bad-account-callable": bad_account_callable,
}


@pytest.fixture
def log() -> Iterator[io.StringIO]:
    """The jobcredits_plugin logger's lines, as the page prints them."""
    text = io.StringIO()
    handler = logging.StreamHandler(text)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    logger = logging.getLogger("jobcredits_plugin")
    logger.addHandler(handler)
    try:
        yield text
    finally:
        logger.removeHandler(handler)


def test_every_block_has_a_reproduction() -> None:
    assert set(blocks("problem")) == set(PROBLEMS)
    assert set(blocks("log")) <= set(PROBLEMS)
    assert set(blocks("message")) == set(MESSAGES)


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_the_page_shows_the_answer(name: str, log: io.StringIO) -> None:
    shown = blocks("problem")[name]
    head, _, body = shown.partition("\n\n")
    status_line, *header_lines = head.splitlines()
    status, headers, sent = PROBLEMS[name]()
    assert status_line == f"HTTP/1.1 {status}"
    assert dict(line.split(": ", 1) for line in header_lines) == {
        k: v for k, v in headers.items() if k in ("Content-Type", "Retry-After", "X-Job-Charge")
    }
    assert json.loads(body) == json.loads(sent)
    line = blocks("log").get(name)
    if line is not None:
        assert line in log.getvalue().splitlines()


def test_a_call_without_a_job_id_is_charged_under_a_fresh_one() -> None:
    """The symptom of "every call is charged": the default on_missing charges
    the call as its own job and echoes the id it minted."""
    with make_ledger() as ledger:
        app = build(ledger)
        answers = [call(app, job=None) for _ in range(2)]
    assert [a[1]["X-Job-Charge"] for a in answers] == ["charged", "charged"]
    minted = [a[1]["X-Job-Id"] for a in answers]
    assert minted[0] != minted[1]


# -- the messages -------------------------------------------------------------------------


def flask_without_account() -> str:
    flask = pytest.importorskip("flask")
    from jobcredits_plugin.flask import JobCredits

    app = flask.Flask("myapp")
    app.config["JOBCREDITS_URL"] = "sqlite:///jobs.db"
    with pytest.raises(ConfigurationError) as info:
        JobCredits(app)
    return str(info.value)


def flask_on_memory() -> str:
    flask = pytest.importorskip("flask")
    from jobcredits_plugin.flask import JobCredits, get_ledger

    app = flask.Flask("myapp")
    app.config["JOBCREDITS_ACCOUNT"] = None
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        JobCredits(app)
    get_ledger(app).close()
    (warning,) = [w for w in seen if issubclass(w.category, InProcessStoreWarning)]
    return str(warning.message)


def raised(make: Callable[[], object]) -> str:
    with pytest.raises(ConfigurationError) as info:
        make()
    return str(info.value)


MESSAGES: dict[str, Callable[[], str]] = {
    "memory-workers": flask_on_memory,
    "flask-no-account": flask_without_account,
    "lease-over-ttl": lambda: raised(lambda: Ledger(ttl=60, lease=120)),
    "unknown-scheme": lambda: raised(lambda: Ledger.from_url("mysql://db/app")),
}


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_the_page_shows_the_message(name: str, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)  # where a SQLite URL of the page would land
    assert blocks("message")[name] == MESSAGES[name]()


def test_a_closed_ledger_answers_503_and_says_why(log: io.StringIO) -> None:
    """The page's other 503 cause, in its log line."""
    ledger = make_ledger()
    app = build(ledger)
    ledger.close()
    status, _, body = call(app)
    assert status.startswith("503")
    assert json.loads(body)["detail"] == StoreUnavailable().client_detail
    assert "... to /v1/summarize: this ledger is closed" in PAGE.read_text()
    assert log.getvalue().splitlines() == [
        "WARNING jobcredits_plugin jobcredits answered 503 store_unavailable to "
        "/v1/summarize: this ledger is closed"
    ]
